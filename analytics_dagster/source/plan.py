"""Planning a run: how each table is synced (events or a listing), where the read of the stream
starts, and the backfills in chunks (the overview of events mode: `events`)."""


from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

from dlt.sources.helpers.rest_client import RESTClient
from requests import Response

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, parse_ns
from analytics_dagster.source.events import (
    DAY_NS,
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_MARGIN_DAYS,
    DEFAULT_VISIBILITY_LAG_SECONDS,
    EVENTS_PAGE_SIZE,
    EVENTS_PATH,
    INCREMENTAL_MODES,
    Cursor,
    Mode,
    api_now_ns,
    checked_ns,
    cursor_after,
    has_more,
    keyed,
    last_keyed,
    stream_cursor,
    window_floor,
)
from analytics_dagster.source.paginator import json_once, page_json
from analytics_dagster.source.permissions import grant_line, is_forbidden
from analytics_dagster.source.incremental import FROM_STATE, window_max
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster.source.state import part_key, unlisted_parts


@dataclass
class SyncPlan:
    """How each selected table is synced in one run, and the run's read of the event stream.

    Attributes:
        incremental: the mode the user chose (`events` or `listing`).
        modes: per selected table with events: `events` or `listing`.
        reasons: per such table, why it is listed (absent: it takes events).
        feeds: the tables the event stream feeds in this run, each with the id it reads after
            (None: from the oldest event the API keeps); `events` is one of them when selected.
        position: the newest event before this run's listings began: the cursor a table whose
            backfill starts now keeps. None when no backfill starts, or in `listing` mode.
        backfills: per table listed in chunks, its progress: `after` (the last id committed,
            None: from the start), `rows` committed, and in events mode `position` (the
            stream's position when the backfill began, its cursor once it is done), in
            `listing` mode `since_ns` (the `max_ns` its change window starts from) instead.
        chunk_rows: rows of a listing, and events of the stream, one load commits at most
            (customers: with their children); 0: no limit.
        chunk_seconds: seconds of extraction after which a listing, or the read of the stream,
            stops at its next page (the chunk's load commits it, the next chunk goes on);
            0: no limit. The clock starts with the chunk's extraction (`start_clock`).
        chunk_requests: a paced run's requests in `chunk_seconds` (0: unpaced): a listing
            with children stops once the children it owes reach it.
        api_now_ns: the API's clock at the run's first request (None: no request made yet).
        feed_more: the read of the stream stopped after a chunk (`chunk_rows` events or
            `chunk_seconds`) with more to read: the fed tables' cursors moved to the last event read, and another load
            (the next chunk, or the next run) reads on from there.
        lag_ns: how far behind its last read a fed table's read starts (late events).
        retention_ns: how long the API keeps events (and the project its findings).
        read_from: where the run's read of the stream starts (the earliest of `feeds`).
        seen: per fed table, the events of its window it has applied already (id: entity id).
        unkeyed: per fed table, the events without a string id it has seen (`~<digest>`).
        problems: the events this run could not apply (table, event_id, event_type, problem).
        gaps: per table, the events it missed because they passed the API's retention
            (`from`, `to`): only `events`, whose cursor is never listed again.
        client: the API's client the plan read the stream with; the feed fetches with it what
            events leave out (`ApiResource.event_omits`).
        forbidden: per table this run could not read for want of a permission of the key
            (403 `forbidden`), what to grant; the table is skipped, the others go on (`skip`).
        days: per daily series read in this run (`listing` "days": Paddle's metrics), its
            `from` and `to` dates (`days.plan_days`).
        committed: the tables' states the plan was made from (the last load's).
        live_states: the states this load's listings are writing (`backfill.record_page`).
    """

    incremental: str
    modes: dict[str, Mode] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    feeds: dict[str, Optional[str]] = field(default_factory=dict)
    position: Optional[Cursor] = None
    backfills: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunk_rows: int = 0
    chunk_seconds: float = 0
    chunk_requests: int = 0
    api_now_ns: Optional[int] = None
    feed_more: bool = False
    lag_ns: int = 0
    retention_ns: int = DEFAULT_RETENTION_DAYS * DAY_NS
    read_from: Optional[str] = None
    seen: dict[str, dict[str, Optional[str]]] = field(default_factory=dict)
    unkeyed: dict[str, list[str]] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    client: Optional[RESTClient] = None
    forbidden: dict[str, str] = field(default_factory=dict)
    days: dict[str, dict[str, str]] = field(default_factory=dict)
    committed: dict[str, dict[str, Any]] = field(default_factory=dict)
    live_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    _pages: Optional[Iterator[Any]] = None
    _clock: Optional[float] = None  # (monotonic) when this chunk's extraction began

    def start_clock(self) -> None:
        """The chunk's clock starts with its extraction: the first listing's first request, or
        the first page of the stream taken (whichever comes first; later calls keep it)."""
        if self._clock is None:
            self._clock = time.monotonic()

    def chunk_time_is_up(self) -> bool:
        """Whether this chunk has extracted for `chunk_seconds` (never, when 0)."""
        if self.chunk_seconds <= 0:
            return False
        self.start_clock()
        assert self._clock is not None
        return time.monotonic() - self._clock >= self.chunk_seconds

    def mode(self, table: str) -> str:
        """How `table` is synced in this run: events, listing, replace (tiny, no events), or
        days (a daily series read by dates)."""
        if table in self.feeds:
            return "events"
        api = RESOURCES_BY_NAME[table]
        return api.listing if api.listing in ("replace", "days") else "listing"

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        """The events after the oldest fed cursor, a page at a time (once per run)."""
        pages, self._pages = self._pages, None
        if pages is None:
            raise RuntimeError(
                "resource 'events': the event stream was not planned (the source was built without "
                "run_state) or was read already: build a new source for every run"
            )
        yield from pages

    def skip(self, table: str, why: str) -> None:
        """`table` cannot be read in this run (`why`: what to grant): recorded, and what the
        load wrote to its state so far undone (a customers listing records its children's
        progress with each page, before their own requests are answered)."""
        self.forbidden.setdefault(table, why)
        live = self.live_states.get(table)
        if live is not None:
            live.clear()
            live.update(copy.deepcopy(self.committed.get(table, {})))

    def since_ns(self, table: str) -> Any:
        """The `max_ns` a chunked listing of `listing` mode keeps its change window from;
        `FROM_STATE`: none kept, the state's applies."""
        return self.backfills.get(table, {}).get("since_ns", FROM_STATE)


def plan_sync(
    client: RESTClient,
    resource_states: dict[str, dict[str, Any]],
    tables: Iterable[str],
    *,
    incremental: str,
    full_refresh: bool,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    retention_margin_days: int = DEFAULT_RETENTION_MARGIN_DAYS,
    visibility_lag_seconds: int = DEFAULT_VISIBILITY_LAG_SECONDS,
    page_size: int = EVENTS_PAGE_SIZE,
    chunk_rows: int = 0,
    chunk_seconds: float = 0,
) -> SyncPlan:
    """Decide, table by table, how this run syncs `tables`, and make its first events request.

    Args:
        client: a client of the API (see `event_client`).
        resource_states: the pipeline's resource states of this source, by table.
        tables: the tables this run loads.
        incremental: `events` (the default) or `listing` (every table listed, as before events).
        full_refresh: list everything whole, whatever the cursors say.
        retention_days: how long the API keeps events.
        retention_margin_days: a cursor older than `retention_days - retention_margin_days`
            days is not trusted: the table is listed again.
        visibility_lag_seconds: how late an event may become visible after events with later
            ids were listed: each read starts this far behind what the last one saw.
        page_size: events per request.
        chunk_rows: rows of a listing (or events of the stream) one load commits (0: all).
        chunk_seconds: seconds of extraction after which a listing, or the stream, stops at its
            next page and the load commits it (0: no limit).
    """
    if incremental not in INCREMENTAL_MODES:
        raise ValueError(f"sources.analytics.incremental is {incremental!r}: it must be one of {list(INCREMENTAL_MODES)}")
    tables = list(tables)
    plan = SyncPlan(incremental=incremental, chunk_rows=chunk_rows, chunk_seconds=chunk_seconds, lag_ns=visibility_lag_seconds * NS_PER_SECOND,
                    retention_ns=retention_days * DAY_NS, client=client, committed=resource_states)
    cursors = _choose_modes(plan, resource_states, tables, full_refresh)
    first: Any = None
    if cursors:
        try:
            first = _plan_the_read(plan, client, cursors, tables, page_size,
                                   retention_days=retention_days, margin_days=retention_margin_days)
        except StreamForbidden as exc:
            if plan.incremental != "listing":
                raise
            # listing mode reads the stream for the `events` table alone: that table is skipped
            plan.skip("events", grant_line("events"))
    _start_backfills(plan, client, first, resource_states, tables, full_refresh)
    return plan


class StreamForbidden(RuntimeError):
    """The key may not read the event stream (403 `forbidden`: it lacks `notification.read`)."""


def _choose_modes(plan: SyncPlan, resource_states: dict[str, dict[str, Any]], tables: list[str],
                  full_refresh: bool) -> dict[str, Cursor]:
    """Each evented table's mode by its state (`plan.modes`, `plan.reasons`, resumed backfills);
    the cursors of the tables that take events (and of `events`), by table."""
    cursors: dict[str, Cursor] = {}
    for table in tables:
        if not RESOURCES_BY_NAME[table].event_entity:
            continue
        state = resource_states.get(table, {})
        cursor, backfill = state.get("event_cursor"), state.get("backfill")
        if plan.incremental == "listing" and backfill and backfill.get("position") is None and not full_refresh:
            plan.modes[table], plan.backfills[table] = "listing", {**backfill}
            plan.reasons[table] = f"incremental = listing, resumed after {backfill['rows']} rows ({backfill['after']})"
        elif plan.incremental == "listing":
            plan.modes[table], plan.reasons[table] = "listing", "incremental = listing"
            if not full_refresh and (unlisted := unlisted_parts(state, RESOURCES_BY_NAME[table].parts)):
                plan.reasons[table] += f", whole: {_unlisted_reason(unlisted)}"
        elif full_refresh:
            plan.modes[table], plan.reasons[table] = "listing", "full refresh"
        elif RESOURCES_BY_NAME[table].unnotified:
            plan.modes[table], plan.reasons[table] = "listing", _unnotified_reason(table)
            if backfill:  # its listing in chunks goes on where the last chunk stopped
                plan.backfills[table] = {**backfill}
        elif backfill and backfill.get("position"):  # (not one of `listing` mode, left when the mode changed)
            plan.modes[table], plan.backfills[table] = "listing", {**backfill}
            plan.reasons[table] = f"backfill resumed after {backfill['rows']} rows ({backfill['after']})"
        elif not cursor:
            plan.modes[table], plan.reasons[table] = "listing", "first listing (no event cursor yet)"
        elif unlisted := unlisted_parts(state, RESOURCES_BY_NAME[table].parts):
            plan.modes[table], plan.reasons[table] = "listing", _unlisted_reason(unlisted)
        else:
            plan.modes[table], cursors[table] = "events", cursor
    if "events" in tables:
        cursor = None if full_refresh else stream_cursor(resource_states.get("events", {}))
        cursors["events"] = cursor or {"event_id": None}
    return cursors


def _plan_the_read(plan: SyncPlan, client: RESTClient, cursors: dict[str, Cursor], tables: list[str],
                   page_size: int, *, retention_days: int, margin_days: int) -> Any:
    """Make the run's first request (the API's clock), list instead the tables whose cursor is
    older than the retention it trusts, and set where the read of the stream starts for each
    fed table (`plan.feeds`); the first page read."""
    starts = {table: _read_start(cursor, plan.lag_ns) for table, cursor in cursors.items()}
    pages = _read_from(client, _earliest(starts.values()), page_size)
    first = _request(lambda: next(pages), tables)
    plan.api_now_ns = api_now_ns(first.response)
    trusted_since = plan.api_now_ns - (retention_days - margin_days) * DAY_NS
    for table, cursor in list(cursors.items()):
        checked = checked_ns(cursor)
        if table == "events":
            if cursor["event_id"] and checked is not None and checked < plan.api_now_ns - plan.retention_ns:
                # what occurred between the cursor and the oldest event the API keeps is gone
                gap_from = cursor.get("as_of") or cursor.get("occurred_at")
                gap_to = format_ns(plan.api_now_ns - plan.retention_ns, 0)
                plan.gaps["events"] = {"from": gap_from, "to": gap_to, "key": f"{gap_from}..{gap_to}"}
        elif checked is None or checked < trusted_since:
            plan.modes[table] = "listing"
            plan.reasons[table] = (
                f"its event cursor (current as of {cursor.get('as_of') or cursor.get('occurred_at')}) "
                f"is older than the API's {retention_days}-day retention minus {margin_days} days"
            )
            del cursors[table], starts[table]
    if cursors and _earliest(starts.values()) != first.request_after:
        # the oldest cursor was a table now listed instead: read only from where the others need
        pages = _read_from(client, _earliest(starts.values()), page_size)
        first = _request(lambda: next(pages), tables)
    plan.feeds, plan.read_from = starts, _earliest(starts.values())
    plan.seen = {table: _recent(cursor) for table, cursor in cursors.items()}
    plan.unkeyed = {table: list(cursor.get("unkeyed") or ()) for table, cursor in cursors.items()}
    plan._pages = _chain_first(first, pages) if cursors else None
    return first


def _start_backfills(plan: SyncPlan, client: RESTClient, first: Any, resource_states: dict[str, dict[str, Any]],
                     tables: list[str], full_refresh: bool) -> None:
    """The backfills that start in this run: in events mode each keeps the stream's position
    before any listing began; in `listing` mode, the change window of its first chunk."""
    starting = [t for t, mode in plan.modes.items() if mode == "listing" and t not in plan.backfills]
    if plan.incremental == "events":
        # (a table listed every run, `unnotified`, takes no events after its listing: no position)
        if any(not RESOURCES_BY_NAME[t].unnotified for t in starting):
            plan.position = _position(client, first, plan, tables)
        for table in starting:
            position = None if RESOURCES_BY_NAME[table].unnotified else plan.position
            plan.backfills[table] = {"after": None, "rows": 0, "position": position}
    else:  # chunked too, its change window kept from its first chunk (`since_ns`)
        for table in starting:
            state = resource_states.get(table, {})
            # a part never listed is listed whole: what it holds may be older than any window
            whole = full_refresh or bool(unlisted_parts(state, RESOURCES_BY_NAME[table].parts))
            since = None if whole else window_max(state)
            plan.backfills[table] = {"after": None, "rows": 0, "position": None, "since_ns": since}


def _unnotified_reason(table: str) -> str:
    fields = ", ".join(RESOURCES_BY_NAME[table].unnotified)
    return f"listed every run: its {fields} change{'s' if ',' not in fields else ''} with no event"


def _unlisted_reason(unlisted: list[dict[str, str]]) -> str:
    return (f"no listing of it asked for {', '.join(part_key(p) for p in unlisted)} (a filter whose default "
            "hides entities, declared since its last listing): listed again")


def _recent(cursor: Cursor) -> dict[str, Optional[str]]:
    """The ids the cursor's table applied in its window, each with its entity's id (None: not
    known, or none: `events`; a cursor from before kept the ids alone)."""
    recent = cursor.get("recent") or {}
    return dict(recent) if isinstance(recent, dict) else dict.fromkeys(recent)


def _read_start(cursor: Cursor, lag_ns: int) -> Optional[str]:
    """Where a table's read of the stream starts: `lag_ns` behind the API time its last read
    began (an event of that window may have become visible since), or at its cursor when that
    is older (every event before then was visible when it read them); None: the stream's
    start. A read that stopped after a chunk goes on where it stopped (`resume`): the window
    is read once, at a read's first chunk, not at every chunk."""
    event_id = cursor.get("event_id")
    if cursor.get("partial"):  # where that read stopped (in the window, maybe: not the cursor)
        return cursor.get("resume", event_id)
    if cursor.get("after_listing"):
        # a listing that began after this position saw every change made before it, late
        # events' included: reading those again would put older snapshots over the listed rows
        return event_id
    began = window_from(cursor)
    if event_id is None or began is None or lag_ns <= 0:
        return event_id
    return min(event_id, window_floor(began, lag_ns))


def window_from(cursor: Cursor) -> Optional[int]:
    """The API time the table's last read of the stream began (its first chunk's, for a read
    in chunks): an event not visible then occurred after it, less the visibility lag."""
    try:
        return parse_ns(cursor["read_at"])
    except (KeyError, TypeError, ValueError):
        return checked_ns(cursor)


def _earliest(starts: Iterable[Optional[str]]) -> Optional[str]:
    starts = list(starts)
    return None if None in starts else min(starts)  # type: ignore[type-var]


def _read_from(client: RESTClient, after: Optional[str], page_size: int) -> Iterator[Any]:
    """The stream's pages after `after` (None: from the oldest event the API keeps), oldest first."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": page_size}
    if after:
        params["after"] = after
    # hooks given replace dlt's, which raise for an error status: raise first, then parse once
    hooks = {"response": [lambda response, *_, **__: _ok(response), json_once("events")]}

    def pages() -> Iterator[Any]:
        for page in client.paginate(EVENTS_PATH, params=params, hooks=hooks):
            page.request_after = after  # type: ignore[attr-defined]
            yield page

    return pages()


def _position(client: RESTClient, first: Any, plan: SyncPlan, tables: list[str]) -> Cursor:
    """The newest event now, before any listing of the run begins."""
    if first is not None and not has_more(first):
        assert plan.api_now_ns is not None
        newest = last_keyed(first)
        if newest is not None:  # the first page of the run's read of the stream is also its last
            return cursor_after(newest, plan.api_now_ns)
        # nothing after the feed's start: the stream stands there
        return {**cursor_after(None, plan.api_now_ns), "event_id": first.request_after}
    response = _request(lambda: _ok(client.get(EVENTS_PATH, params={"per_page": 1})), tables)
    now = api_now_ns(response)
    plan.api_now_ns = plan.api_now_ns or now
    newest = [e for e in page_json("events", response).get("data") or [] if keyed(e)]
    return cursor_after(newest[0] if newest else None, now)


def _ok(response: Response) -> Response:
    response.raise_for_status()
    return response


def _request(call: Callable[[], Any], tables: list[str]) -> Any:
    """A planning request; its failure names what the run was for (the text of the error is
    kept whole, as a chained cause would be cut to its innermost part by the run's report)."""
    try:
        return call()
    except Exception as exc:
        if is_forbidden(getattr(exc, "response", None)):
            permission = RESOURCES_BY_NAME["events"].permission
            raise StreamForbidden(
                f"resource 'events': the API key lacks the permission {permission} (403 forbidden on "
                f"{EVENTS_PATH}), and events mode keeps {', '.join(t for t in tables if t != 'events') or 'the tables'} "
                f"from the event stream. Grant {permission} to the key (Paddle: Developer tools > "
                "Authentication), or set sources.analytics.incremental = \"listing\" (every run then lists "
                "every table whole or by its change window: many more requests; the events table is skipped)"
            ) from None
        raise RuntimeError(
            f"resource 'events': the run's first request, to the event stream ({EVENTS_PATH}), "
            f"made to plan the sync of {', '.join(tables)}, failed: {exc}"
        ) from None


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
