"""Incremental listing: a listing writes only the rows that changed since the last one.

A listing is how a table is backfilled, and how it is kept current in `listing` mode (in
`events` mode, see `analytics_dagster.source.events`). The API's listing filters are thin
(of the lists, only transactions filter by `updated_at` on the server), so each resource gets the cheapest correct strategy it allows
(`ApiResource.listing`):

- ``server_updated_at`` (transactions): the API filters, ``updated_at[GTE]=<window start>``.
- ``client_updated_at`` (everything else with ``updated_at``): listed whole, filtered here.

The window. ``window_ns`` is the API's clock (its ``Date`` header) when the last complete
listing began, ``max_ns`` the newest ``updated_at`` it saw. The next run treats every row
updated at or after the earlier of the two, less the lookback, as possibly new, and writes it unless the same key with the same ``updated_at`` and the same
content is already in ``seen`` (the rows it wrote inside the window). A row updated before the
listing began was listed in its new state; one updated while the listing paged (however long
that took: at 240 requests a minute, hours) is inside the next window. The lookback covers
the API's clock and its stamps disagreeing, and the ``Date`` header's whole seconds. Content
is compared because two updates within one second can carry the same stamp (0 to 9 fractional
digits: ``…52Z`` twice). Timestamps are compared as integer nanoseconds.

The state is dlt resource state: it is loaded into the destination with the rows it describes,
in the same load package, so a crashed or failed run never leaves a cursor ahead of the data,
and a machine with an empty dlt working directory resumes from the destination.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import dlt

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, parse_ns
from analytics_dagster.source.events import digest
from analytics_dagster.source.resources import ApiResource

DEFAULT_LOOKBACK_SECONDS = 600


def _state(resource: str) -> dict[str, Any]:
    return dlt.current.resource_state(resource)


class _FromState:
    """The `since` of a listing that kept none: its change window comes from the table's state."""

    def __repr__(self) -> str:
        return "FROM_STATE"


FROM_STATE: Any = _FromState()


def window_max(state: dict[str, Any], since: Any = FROM_STATE) -> Optional[int]:
    """The instant (ns) a listing's change window starts from, before the lookback: the earlier
    of when the last complete listing began on the API's clock (`window_ns`) and the newest
    `updated_at` it saw (`max_ns`), or `since` when a chunked listing kept its first chunk's (its
    later chunks' state moved with the rows committed, not with the ones still to list)."""
    if since is not FROM_STATE:
        return since
    known = [state[k] for k in ("window_ns", "max_ns") if state.get(k) is not None]
    return min(known) if known else None


def _mark(stamp: str, row: dict[str, Any]) -> str:
    """What `seen` keeps of a row: its `updated_at` and a digest of its content."""
    return f"{stamp}#{digest(row)}"


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

    def key(self, row: dict[str, Any]) -> Any:
        """The row's primary key; a row without one stops the listing, saying so."""
        key = row.get(self.api.primary_key)
        if key is None:
            raise ValueError(
                f"resource '{self.api.name}': a record has no primary key "
                f"'{self.api.primary_key}' (fields: {sorted(row)[:12]})"
            )
        return key


class ChangedSince(_Step):
    """Keeps rows whose `updated_at` moved since the last run (strategies *_updated_at)."""

    def __init__(self, api: ApiResource, full_refresh: bool, lookback_ns: int, since: Any = FROM_STATE,
                 began: Callable[[], Optional[int]] = lambda: None) -> None:
        super().__init__(api, full_refresh)
        self.lookback_ns = lookback_ns
        self.since = since
        self.began = began
        self.cursor: Optional[int] = None
        self.previous_max: Optional[int] = None
        self.window_ns: Optional[int] = None

    def begin(self) -> dict[str, Any]:
        state = super().begin()
        self.previous_max = window_max(state, self.since)
        self.cursor = window_start(self.previous_max, self.lookback_ns)
        self.window_ns = self.began()
        if self.since is FROM_STATE and self.window_ns is not None:
            # a listing in one load: the next window starts where this one began (a chunked
            # listing's is set when its last chunk is listed: `state.end_backfill`)
            state["window_ns"] = self.window_ns
        seen = state.setdefault("seen", {})
        if self.cursor is not None:  # forget what slid out of the window
            for key in [k for k, mark in seen.items() if parse_ns(mark.split("#")[0]) < self.cursor]:
                del seen[key]
        return state

    def judge(self, row: dict[str, Any]) -> tuple[bool, str]:
        assert self.state is not None
        key = self.key(row)
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
        mark = _mark(stamp, row)  # type: ignore[arg-type]
        if seen.get(key) == mark:
            return False, "unchanged"
        # Remembered only while it can fall inside the next run's window, which starts at
        # the lookback before this listing began, or before its newest row when that is older.
        # A first run so keeps a handful of keys, not every key of the table (state is saved
        # with every load).
        newest = self.state["max_ns"] if self.window_ns is None else min(self.state["max_ns"], self.window_ns)
        if ns >= newest - self.lookback_ns:
            seen[key] = mark
        created = row.get("created_at")
        is_new = self.previous_max is None or (
            isinstance(created, str) and parse_ns(created) > self.previous_max
        )
        return True, "new" if is_new else "updated"


class ChangedContent(_Step):
    """Keeps the rows whose content changed since they were last written: for a table listed
    whole every run because fields of it change with no event and no new `updated_at`
    (`ApiResource.unnotified`: a discount's `times_used`), so that an unchanged row is not
    written again. A digest per row (8 bytes, hex) in the table's state (`content`): a few
    dozen kB for thousands of discounts."""

    def begin(self) -> dict[str, Any]:
        state = super().begin()
        state.setdefault("content", {})
        return state

    def judge(self, row: dict[str, Any]) -> tuple[bool, str]:
        assert self.state is not None
        key = self.key(row)
        content, mark = self.state["content"], digest(row)
        if content.get(key) == mark:
            return False, "unchanged"
        kind = "updated" if key in content else "new"
        content[key] = mark
        return True, kind


def change_filter(api: ApiResource, *, full_refresh: bool, lookback_seconds: int, since: Any = FROM_STATE,
                  began: Callable[[], Optional[int]] = lambda: None) -> Optional[_Step]:
    """The filter step of a listing of `api` (None: every row it reads is written); `since`:
    the instant its window starts from, when not the state's (a chunked listing's); `began`:
    the API's clock when the listing began (None: not known). A table with fields that change
    without moving `updated_at` (`unnotified`) is filtered on its rows' content instead."""
    if api.unnotified:
        return ChangedContent(api, full_refresh)
    if api.listing in ("client_updated_at", "server_updated_at"):
        return ChangedSince(api, full_refresh, lookback_seconds * NS_PER_SECOND, since, began)
    return None


def start_params(
    api: ApiResource, *, full_refresh: bool, lookback_seconds: int, since: Any = FROM_STATE,
) -> Optional[Callable[[], dict[str, str]]]:
    """Query parameters of a listing's first request, from the state (None: the resource has
    none); `since` as for `change_filter`."""
    if api.listing == "server_updated_at":

        def since_params() -> dict[str, str]:
            start = None if full_refresh else window_start(window_max(_state(api.name), since),
                                                           lookback_seconds * NS_PER_SECOND)
            return {} if start is None else {"updated_at[GTE]": format_ns(max(start, 0))}

        return since_params
    return None
