"""Incremental listing: a listing writes only the rows that changed since the last one.

A listing is how a table is backfilled, and how it is kept current in `listing` mode (in
`events` mode, see `analytics_dagster.source.events`). The API's listing filters are thin
(shared/NOTES.md #11), so each resource gets the cheapest correct strategy it allows
(`ApiResource.incremental`):

- ``server_updated_at`` (transactions): the API filters, ``updated_at[GTE]=<window start>``.
- ``client_updated_at`` (everything else with ``updated_at``): listed whole, filtered here.

The window. ``max_ns`` is the newest ``updated_at`` a run has seen. The next run treats every
row updated at or after ``max_ns - lookback`` as possibly new, and writes it unless the same
``updated_at`` of the same key is already in ``seen`` (the keys it wrote inside the window).
That makes the boundary exact for rows updated at the very same instant as the cursor, and for
rows changed while a run was paging (as long as paging a resource takes less than the
lookback). Timestamps are compared as integer nanoseconds (0 to 9 fractional digits).

The state is dlt resource state: it is loaded into the destination with the rows it describes,
in the same load package, so a crashed or failed run never leaves a cursor ahead of the data,
and a machine with an empty dlt working directory resumes from the destination.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import dlt

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, parse_ns
from analytics_dagster.source.resources import ApiResource

DEFAULT_LOOKBACK_SECONDS = 600


def _state(resource: str) -> dict[str, Any]:
    return dlt.current.resource_state(resource)


def window_max(state: dict[str, Any], since: Any = ...) -> Optional[int]:
    """The newest `updated_at` (ns) a listing's change window starts from: the state's `max_ns`,
    or `since` when a chunked listing kept its first chunk's (its later chunks' `max_ns` moved
    with the rows committed, not with the ones still to list)."""
    return state.get("max_ns") if since is ... else since


def window_start(newest: Optional[int], lookback_ns: int) -> Optional[int]:
    """The earliest `updated_at` (ns) a run must look at, from `window_max`; None: read everything."""
    return None if newest is None else int(newest) - lookback_ns


class _Step:
    """A dlt filter step over the rows of one table; its state is read on the first row."""

    def __init__(self, api: ApiResource, full_refresh: bool) -> None:
        self.api = api
        self.full_refresh = full_refresh
        self.state: Optional[dict[str, Any]] = None

    def begin(self) -> dict[str, Any]:
        state = _state(self.api.name)
        if self.full_refresh:  # (a chunked listing's progress stays: it is this run's)
            backfill = state.get("backfill")
            state.clear()
            if backfill is not None:
                state["backfill"] = backfill
        state["last_run"] = {"new": 0, "updated": 0, "unchanged": 0}
        return state

    def __call__(self, row: dict[str, Any]) -> bool:
        if self.state is None:
            self.state = self.begin()
        keep, kind = self.judge(row)
        self.state["last_run"][kind] += 1
        return keep

    def judge(self, row: dict[str, Any]) -> tuple[bool, str]:
        raise NotImplementedError


class ChangedSince(_Step):
    """Keeps rows whose `updated_at` moved since the last run (strategies *_updated_at)."""

    def __init__(self, api: ApiResource, full_refresh: bool, lookback_ns: int, since: Any = ...) -> None:
        super().__init__(api, full_refresh)
        self.lookback_ns = lookback_ns
        self.since = since
        self.cursor: Optional[int] = None
        self.previous_max: Optional[int] = None

    def begin(self) -> dict[str, Any]:
        state = super().begin()
        self.previous_max = window_max(state, self.since)
        self.cursor = window_start(self.previous_max, self.lookback_ns)
        seen = state.setdefault("seen", {})
        if self.cursor is not None:  # forget what slid out of the window
            for key in [k for k, stamp in seen.items() if parse_ns(stamp) < self.cursor]:
                del seen[key]
        return state

    def judge(self, row: dict[str, Any]) -> tuple[bool, str]:
        assert self.state is not None
        key = row.get(self.api.primary_key)
        if key is None:
            raise ValueError(
                f"resource '{self.api.name}': a record has no primary key "
                f"'{self.api.primary_key}' (fields: {sorted(row)[:12]})"
            )
        stamp = row.get("updated_at")
        try:
            ns = parse_ns(stamp)  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(
                f"resource '{self.api.name}': record {key} has updated_at {stamp!r}, not an RFC 3339 timestamp"
            ) from None
        if ns > self.state.get("max_ns", -1):
            self.state["max_ns"] = ns
        if self.cursor is not None and ns < self.cursor:
            return False, "unchanged"
        seen = self.state["seen"]
        if seen.get(key) == stamp:
            return False, "unchanged"
        # Remembered only while it can fall inside the next run's window: that window starts at
        # the final max_ns - lookback, at or after this one. A first run so keeps a handful of
        # keys, not every key of the table (state is saved with every load).
        if ns >= self.state["max_ns"] - self.lookback_ns:
            seen[key] = stamp
        created = row.get("created_at")
        is_new = self.previous_max is None or (
            isinstance(created, str) and parse_ns(created) > self.previous_max
        )
        return True, "new" if is_new else "updated"


def change_filter(api: ApiResource, *, full_refresh: bool, lookback_seconds: int, since: Any = ...,
                  ) -> Optional[ChangedSince]:
    """The filter step of a listing of `api` (None: every row it reads is written); `since`:
    the `max_ns` its window starts from, when not the state's (a chunked listing's)."""
    if api.incremental in ("client_updated_at", "server_updated_at"):
        return ChangedSince(api, full_refresh, lookback_seconds * NS_PER_SECOND, since)
    return None


def start_params(
    api: ApiResource, *, full_refresh: bool, lookback_seconds: int, since: Any = ...,
) -> Optional[Callable[[], dict[str, str]]]:
    """Query parameters of a listing's first request, from the state (None: the resource has
    none); `since` as for `change_filter`."""
    if api.incremental == "server_updated_at":

        def since_params() -> dict[str, str]:
            start = None if full_refresh else window_start(window_max(_state(api.name), since),
                                                           lookback_seconds * NS_PER_SECOND)
            return {} if start is None else {"updated_at[GTE]": format_ns(max(start, 0))}

        return since_params
    return None
