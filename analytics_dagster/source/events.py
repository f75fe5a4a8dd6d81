"""The event stream: how the tables with events are kept current by `/v1/events`, not listings.

Every create or update of an entity of a resource with an `event_entity` (resources.py)
emits an event whose `data` is the entity's whole new snapshot
(docs/api.md, "The event stream"). So once such a table has been listed whole (its
backfill), a run takes its changes from the events after the table's own cursor: a run costs
about one request per 200 changes, not one listing of everything (plus one request per
customer for the children).

One run, in order:

1. `plan_sync` reads each selected table's `event_cursor` from the pipeline state and decides
   its mode. A table is **listed** when the user chose `incremental = "listing"`, on a full
   refresh, when it has no cursor yet, or when its cursor is older than the API's retention
   (90 days) minus a margin: the events in between may be gone. Otherwise it takes **events**.
2. It makes the run's first request to `/v1/events`, after the oldest cursor among the tables
   it feeds (the `events` table included), and reads the API's clock from the `Date` header.
   A table that is listed in this run is given the position where the stream stood *before*
   any listing began (the newest event), so the next run replays every change made while the
   listing paged. That costs nothing more when the first page is the last; else one request.
3. During extraction one feed resource pages through the stream once, and every fed table
   takes what is after its own start: the `events` table every event, the others the `data`
   of their own event types (`address.*` -> customer_addresses), merged on `id`. Of several
   snapshots of one entity, the one of the newest event wins: the stream's order (by id) is
   the order of changes, and `updated_at` is not (its precision varies from one update to the
   next, so a later update can carry an earlier-looking stamp). Each table's cursor moves to
   the newest event read, in its own resource state: it is committed with the rows, in the
   same load, so a failed run moves no cursor, and a run of any subset of tables never skips
   another table's changes.
4. Late events. An event's id is taken when its change happens, and it can become visible
   after events with later ids were listed. So a table's read starts `visibility_lag_seconds`
   behind the API time of its last read (at the smallest id of that instant), its cursor keeps
   the ids it applied in that window (`recent`), and an event read again is not applied again;
   one that appeared meanwhile is, unless a newer event of the same entity already was.
5. A listing in events mode is a backfill in chunks (`SyncPlan.listing_page`): it stops at
   the page that brings it to `chunk_seconds` of extraction or `chunk_rows` rows, whichever
   comes first, its progress (`backfill`) is committed with them, and the next chunk or run
   resumes after the last id committed. The read of the stream stops at the same bounds
   likewise (`feed_items`), with the fed tables' cursors where it stopped.

Event types with no table (`adjustment.*`, new ones) land in `events` only. An event that cannot
be applied (no `data`, no `data.id`, a `data.updated_at` that is no timestamp, an `event_id` that
is no string) is kept in `events` (when it has an id at all), reported in the run (`problems`)
and kept in its table's findings (`bad_events`), which the table's `events_applied` check
reports; every other change is applied, and later runs go on.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import dlt
import orjson
from dlt.common.jsonpath import compile_path
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from requests import Response, Session

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, id_floor, parse_ns
from analytics_dagster.source.paginator import HasMorePaginator, json_once, page_json
from analytics_dagster.source.incremental import window_max
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES_BY_NAME, ApiResource, table_of_event

EVENTS_PATH = RESOURCES_BY_NAME["events"].path  # under the API's root (`configured_api_root`)
EVENTS_PAGE_SIZE = 200  # the API's maximum
DEFAULT_RETENTION_DAYS = 90  # the API lists the events of the last 90 days
DEFAULT_RETENTION_MARGIN_DAYS = 3
# An event becomes visible in the stream up to this long after events with later ids were listed
# (its id is taken when the change happens, its write commits later: seconds, rarely minutes).
# Each read starts this far behind the API time of the last one, which costs a request only when
# more than a page of events (200) occurred in the window.
DEFAULT_VISIBILITY_LAG_SECONDS = 600
_DAY_NS = 24 * 3600 * NS_PER_SECOND

INCREMENTAL_MODES: tuple[str, ...] = ("events", "listing")
Mode = Literal["events", "listing"]
# {"event_id": the last event applied, None: the stream's start; "occurred_at": its time;
#  "as_of": the API's clock when the stream was last read to its end after it;
#  "read_at": the API's clock when the last read began (a read in chunks: its first chunk);
#  "partial": that read stopped after a chunk, "resume": the id it stopped at; "recent": the
#  ids applied in the window the next read starts with (see `_read_start`); "unkeyed": the
#  events without a string id it saw; "after_listing": the position a listing began at}
Cursor = dict[str, Any]


def event_client(base_url: str, api_key: str, session: Optional[Session] = None,
                 progress: Optional[Progress] = None) -> RESTClient:
    """A client of `/v1/events`: Bearer auth, the API's paging, the data selector compiled once
    (as a string, dlt's client parses the JSONPath again for every page)."""
    return RESTClient(
        base_url=base_url.rstrip("/"),
        auth=BearerTokenAuth(token=api_key),
        paginator=HasMorePaginator("events", progress=progress),
        data_selector=compile_path("data"),
        session=session,
    )


def api_now_ns(response: Optional[Response]) -> int:
    """The API's clock, from a response's `Date` header; this machine's when there is none."""
    header = response.headers.get("Date") if response is not None else None
    if header:
        try:
            return int(email.utils.parsedate_to_datetime(header).timestamp()) * NS_PER_SECOND
        except (TypeError, ValueError):
            pass
    return time.time_ns()


def _cursor(event: Optional[dict[str, Any]], as_of_ns: int) -> Cursor:
    """The cursor after `event` (None: the stream's start), read to the stream's end at `as_of_ns`."""
    occurred = event.get("occurred_at") if event else None
    return {"event_id": event["event_id"] if event else None,
            "occurred_at": occurred if isinstance(occurred, str) else None, "as_of": format_ns(as_of_ns, 0)}


def _checked_ns(cursor: Cursor) -> Optional[int]:
    """Since when the cursor is known current: no event after it had occurred by then. The
    events after it occurred later, so the API keeps them for its retention from then on."""
    for field_name in ("as_of", "occurred_at"):
        try:
            return parse_ns(cursor.get(field_name))  # type: ignore[arg-type]
        except ValueError:
            continue
    return None


def _stream_cursor(state: dict[str, Any]) -> Optional[Cursor]:
    cursor = state.get("event_cursor")
    if cursor is None and state.get("last_event_id"):  # the events table's state before events mode
        cursor = {"event_id": state["last_event_id"], "occurred_at": None}
    return cursor


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
    retention_ns: int = DEFAULT_RETENTION_DAYS * _DAY_NS
    read_from: Optional[str] = None
    seen: dict[str, dict[str, Optional[str]]] = field(default_factory=dict)
    unkeyed: dict[str, list[str]] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        """How `table` is synced in this run: events, listing, or replace (tiny, no events)."""
        if table in self.feeds:
            return "events"
        api = RESOURCES_BY_NAME[table]
        return "replace" if api.incremental == "replace" else "listing"

    def pages(self) -> Iterator[list[dict[str, Any]]]:
        """The events after the oldest fed cursor, a page at a time (once per run)."""
        pages, self._pages = self._pages, None
        if pages is None:
            raise RuntimeError(
                "resource 'events': the event stream was not planned (the source was built without "
                "run_state) or was read already: build a new source for every run"
            )
        yield from pages

    def since_ns(self, table: str) -> Any:
        """The `max_ns` a chunked listing of `listing` mode keeps its change window from;
        `...`: none kept, the state's applies."""
        return self.backfills.get(table, {}).get("since_ns", ...)

    def listing_params(self, tables: Iterable[str]) -> dict[str, str]:
        """Where a listing that serves `tables` starts: after the least far of their backfills."""
        backfills = [self.backfills[t] for t in tables if t in self.backfills]
        if not backfills:
            return {}
        afters = [b["after"] for b in backfills]
        return {} if None in afters else {"after": min(afters)}

    def listing_page(self, tables: Iterable[str], data: list[dict[str, Any]], key: str, has_more: bool) -> bool:
        """Record a page of a backfill's listing in the state of each of `tables` it serves
        (committed with the page's rows, in the same load); False: the chunk is full (its rows,
        or its time, `chunk_seconds`), stop: a chunk ends on a page, on time or on rows alike.

        When the listing is done, each table's cursor becomes the stream's position at the
        backfill's start, and the next run replays the changes made since from the events.
        """
        served = [t for t in tables if t in self.backfills]
        if not served:
            return True  # not a backfill: no chunks
        if any(not isinstance(row, dict) or not row.get(key) for row in data):
            raise ValueError(f"resource '{served[0]}': a record has no primary key '{key}' (the backfill stops here)")
        going = self.chunk_rows <= 0
        for table in served:
            backfill = self.backfills[table]
            state = dlt.current.resource_state(table)
            if data:
                backfill["after"] = max(backfill["after"] or "", data[-1][key])
            backfill["rows"] += len(data)
            backfill["run_rows"] = backfill.get("run_rows", 0) + len(data)
            if backfill["position"]:  # writes every row: listing mode's memory of them is obsolete
                state.pop("seen", None)
            if backfill.get("began_ns") is None and self.api_now_ns is not None:
                backfill["began_ns"] = self.api_now_ns  # the API's clock as the listing began
            if not has_more:
                if backfill["position"]:  # (a listing of `listing` mode has none)
                    state["event_cursor"] = {**backfill["position"], "after_listing": True}
                if backfill.get("began_ns") is not None:  # the next listing's window starts here
                    state["window_ns"] = backfill["began_ns"]
                state.pop("backfill", None)
                continue
            keep = ("after", "rows", "position", "since_ns", "began_ns")
            state["backfill"] = {k: backfill[k] for k in keep if k in backfill}
            going = going or backfill["run_rows"] < self.chunk_rows
        # a listing with children (customers) runs ahead of them: the children owed for what it
        # listed count against the chunk's request budget (its time, paced) before they are asked
        owed = (len(served) - 1) * max(self.backfills[t].get("run_rows", 0) for t in served)
        if owed and 0 < self.chunk_requests <= owed:
            return False
        return going and not self.chunk_time_is_up()


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
                    retention_ns=retention_days * _DAY_NS)
    cursors: dict[str, Cursor] = {}
    for table in tables:
        if not RESOURCES_BY_NAME[table].event_entity:
            continue
        state = resource_states.get(table, {})
        cursor, backfill = state.get("event_cursor"), state.get("backfill")
        if incremental == "listing" and backfill and backfill.get("position") is None and not full_refresh:
            plan.modes[table], plan.backfills[table] = "listing", {**backfill}
            plan.reasons[table] = f"incremental = listing, resumed after {backfill['rows']} rows ({backfill['after']})"
        elif incremental == "listing":
            plan.modes[table], plan.reasons[table] = "listing", "incremental = listing"
        elif full_refresh:
            plan.modes[table], plan.reasons[table] = "listing", "full refresh"
        elif backfill and backfill.get("position"):  # (not one of `listing` mode, left when the mode changed)
            plan.modes[table], plan.backfills[table] = "listing", {**backfill}
            plan.reasons[table] = f"backfill resumed after {backfill['rows']} rows ({backfill['after']})"
        elif not cursor:
            plan.modes[table], plan.reasons[table] = "listing", "first listing (no event cursor yet)"
        else:
            plan.modes[table], cursors[table] = "events", cursor
    if "events" in tables:
        cursor = None if full_refresh else _stream_cursor(resource_states.get("events", {}))
        cursors["events"] = cursor or {"event_id": None}

    first: Any = None
    if cursors:
        starts = {table: _read_start(cursor, plan.lag_ns) for table, cursor in cursors.items()}
        pages = _read_from(client, _earliest(starts.values()), page_size)
        first = _request(lambda: next(pages), tables)
        plan.api_now_ns = api_now_ns(first.response)
        trusted_since = plan.api_now_ns - (retention_days - retention_margin_days) * _DAY_NS
        for table, cursor in list(cursors.items()):
            checked = _checked_ns(cursor)
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
                    f"is older than the API's {retention_days}-day retention minus {retention_margin_days} days"
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

    starting = [t for t, mode in plan.modes.items() if mode == "listing" and t not in plan.backfills]
    if incremental == "events":
        if starting:
            plan.position = _position(client, first, plan, tables)
        for table in starting:
            plan.backfills[table] = {"after": None, "rows": 0, "position": plan.position}
    else:  # chunked too, its change window kept from its first chunk (`since_ns`)
        for table in starting:
            state = resource_states.get(table, {})
            since = None if full_refresh else window_max(state)
            plan.backfills[table] = {"after": None, "rows": 0, "position": None, "since_ns": since}
    return plan


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
    began = _window_from(cursor)
    if event_id is None or began is None or lag_ns <= 0:
        return event_id
    return min(event_id, id_floor("evt", began - lag_ns))


def _window_from(cursor: Cursor) -> Optional[int]:
    """The API time the table's last read of the stream began (its first chunk's, for a read
    in chunks): an event not visible then occurred after it, less the visibility lag."""
    try:
        return parse_ns(cursor["read_at"])
    except (KeyError, TypeError, ValueError):
        return _checked_ns(cursor)


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
    if first is not None and not _has_more(first):
        assert plan.api_now_ns is not None
        newest = _last_keyed(first)
        if newest is not None:  # the first page of the run's read of the stream is also its last
            return _cursor(newest, plan.api_now_ns)
        # nothing after the feed's start: the stream stands there
        return {**_cursor(None, plan.api_now_ns), "event_id": first.request_after}
    response = _request(lambda: _ok(client.get(EVENTS_PATH, params={"per_page": 1})), tables)
    now = api_now_ns(response)
    plan.api_now_ns = plan.api_now_ns or now
    newest = [e for e in page_json("events", response).get("data") or [] if _keyed(e)]
    return _cursor(newest[0] if newest else None, now)


def _has_more(page: Any) -> bool:
    """Whether more events follow a page of the stream (as read by the paginator)."""
    return bool(page_json("events", page.response)["meta"]["pagination"]["has_more"])


def _ok(response: Response) -> Response:
    response.raise_for_status()
    return response


def _request(call: Callable[[], Any], tables: list[str]) -> Any:
    """A planning request; its failure names what the run was for (the text of the error is
    kept whole, as a chained cause would be cut to its innermost part by the run's report)."""
    try:
        return call()
    except Exception as exc:
        raise RuntimeError(
            f"resource 'events': the run's first request, to the event stream ({EVENTS_PATH}), "
            f"made to plan the sync of {', '.join(tables)}, failed: {exc}"
        ) from None


def _chain_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


# rows a fed table's winners are handed to dlt in at the end of a read
_WRITE_BATCH = 1000


class _End:
    """The feed's last item: every fed table finishes (writes its winners, moves its cursor)."""


END = _End()


def feed_items(plan: SyncPlan) -> Iterator[Any]:
    """The feed resource's items: each page of events, then `END`. The read stops after the
    page that brings it to `plan.chunk_rows` events or `plan.chunk_seconds` of the chunk's
    extraction (`plan.feed_more`), whichever comes first, so that one load holds at most a
    chunk of the stream, however long it is (a first sync reads 90 days of it). A chunk that
    ends on time ends exactly as one that ends on rows: after a whole page, cursors there."""
    plan.start_clock()
    read = 0
    for page in plan.pages():
        yield list(page)
        read += len(page)
        # (only after a page with an id in it: the next chunk resumes after that id, and a page
        # of events without ids would be read again and again)
        if (0 < plan.chunk_rows <= read or plan.chunk_time_is_up()) and _has_more(page) and _last_keyed(page):
            plan.feed_more = True
            break
    yield END


def _keyed(event: Any) -> bool:
    """Whether an event has an id this project can order and key it by."""
    return isinstance(event, dict) and isinstance(event.get("event_id"), str) and bool(event["event_id"])


def _digest(event: Any) -> str:
    return hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=str), digest_size=8).hexdigest()


def _last_keyed(page: Iterable[Any]) -> Optional[dict[str, Any]]:
    keyed = [e for e in page if _keyed(e)]
    return keyed[-1] if keyed else None


def event_problem(event: Any) -> Optional[str]:
    """What makes an event of a table's type impossible to apply; None: nothing."""
    if not _keyed(event):
        value = event.get("event_id") if isinstance(event, dict) else event
        return f"its event_id is {value!r}, not a string"
    if "data" not in event:
        return "it has no data"
    data = event["data"]
    if not isinstance(data, dict):
        return "its data is null" if data is None else f"its data is a {type(data).__name__}, not an object"
    if not data.get("id"):
        return "its data has no id"
    if not isinstance(data["id"], str):
        return f"its data.id is {data['id']!r}, not a string"
    try:
        parse_ns(data.get("updated_at"))  # type: ignore[arg-type]
    except ValueError:
        return f"its data.updated_at is {data.get('updated_at')!r}, not an RFC 3339 timestamp"
    return None


class _Read:
    """What one table took from a read of the stream: the events after its start, by id."""

    def __init__(self, table: str, plan: SyncPlan) -> None:
        self.table = table
        self.plan = plan
        self.start = plan.feeds.get(table)
        self.seen = plan.seen.get(table, {})
        self.last: Optional[dict[str, Any]] = None  # the newest keyed event read after the start
        self.ids: dict[str, Optional[str]] = {}  # the events it took (its type; `events`: all): id: entity id
        # per entity, the newest event an earlier read applied: a late event older than it loses
        self.applied: dict[str, str] = {}
        for event_id, entity in self.seen.items():
            if entity is not None and event_id > self.applied.get(entity, ""):
                self.applied[entity] = event_id
        self._before: Optional[str] = plan.read_from  # the id of the keyed event the feed read last
        self.unkeyed: list[str] = list(plan.unkeyed.get(table, ()))  # events without an id, seen

    def has_seen(self, key: str) -> bool:
        """Whether an earlier read applied (or reported) the event of this key."""
        return key in self.unkeyed if key.startswith("~") else key in self.seen

    def after_start(self, events: Iterable[Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The events after the table's start, each with its key: its id, or for an event
        without a string id, `~` and a digest of its content (it is placed after the event
        before it, and told apart by what it says when a window reads it again)."""
        for event in events:
            if not _keyed(event):
                if self.start is None or (self._before or "") >= self.start:
                    yield "~" + _digest(event), event
                continue
            self._before = event["event_id"]
            if self.start is not None and event["event_id"] <= self.start:
                continue  # read for a table whose read starts earlier
            if self.last is None or event["event_id"] > self.last["event_id"]:
                self.last = event
            yield event["event_id"], event

    def bad(self, key: str, event: Any, problem: str) -> None:
        """Report an event that cannot be applied, once (not again when a window reads it again)."""
        if self.has_seen(key):
            return
        if key.startswith("~"):
            self.unkeyed.append(key)
        else:
            self.ids[key] = None
        event_id = event.get("event_id") if isinstance(event, dict) else None
        event_type = event.get("event_type") if isinstance(event, dict) else None
        self.plan.problems.append({"table": self.table, "key": key, "event_id": event_id,
                                   "event_type": event_type, "problem": problem})

    def finish(self, written: int, new: int) -> None:
        _finish(self, written, new)


def table_from_events(api: ApiResource, plan: SyncPlan) -> Callable[[Any], Iterator[Any]]:
    """The transformer of the feed that keeps `api`'s table: per `id`, the snapshot of the
    newest event of its type (by event id: the stream's order is the order of changes; the
    entities' `updated_at`, whose precision varies, is not), written when the feed ends unless
    that event was applied already (a read starts a window behind the last one)."""
    read = _Read(api.name, plan)
    # by entity id: its newest event's id and snapshot, the snapshot as JSON bytes until the
    # feed ends (a chunk's winners are most of its entities: as dicts they were most of a
    # load's memory)
    winners: dict[str, tuple[str, bytes]] = {}
    created: set[str] = set()

    def apply(item: Any) -> Iterator[Any]:
        if item is END:
            # a winner is written unless it was applied already, or an earlier read (another
            # chunk, another run) applied a newer event of its entity: a late event loses to it
            fresh = [(key, data) for key, (event_id, data) in winners.items()
                     if event_id not in read.seen and event_id > read.applied.get(key, "")]
            new = sum(1 for key, _ in fresh if key in created)
            read.finish(len(fresh), new)
            listed = dlt.current.resource_state(api.name).get("seen") or {}
            for key, _ in fresh:  # listing mode's memory of these rows is stale now
                listed.pop(key, None)
            winners.clear()
            for start in range(0, len(fresh), _WRITE_BATCH):
                yield [orjson.loads(data) for _, data in fresh[start:start + _WRITE_BATCH]]
            return
        for key, event in read.after_start(item):
            if table_of_event(event.get("event_type") if isinstance(event, dict) else None) != api.name:
                continue
            problem = event_problem(event)
            if problem is not None:
                read.bad(key, event, problem)
                continue
            entity = event["data"]["id"]
            read.ids[event["event_id"]] = entity
            if entity not in winners or event["event_id"] > winners[entity][0]:
                winners[entity] = (event["event_id"], orjson.dumps(event["data"]))
            if str(event.get("event_type", "")).endswith(".created") and event["event_id"] not in read.seen:
                created.add(entity)

    return apply


def events_from_feed(plan: SyncPlan) -> Callable[[Any], Iterator[Any]]:
    """The transformer of the feed that keeps the `events` table: every event after its start
    that it does not have yet. An event whose `event_id` is not a string is kept under its
    text (an event with none at all cannot be keyed: it is reported, not kept)."""
    read = _Read("events", plan)
    counts = {"rows": 0}

    def apply(item: Any) -> Iterator[Any]:
        if item is END:
            read.finish(counts["rows"], counts["rows"])
            return
        rows = []
        for key, event in read.after_start(item):
            if not _keyed(event):
                value = event.get("event_id") if isinstance(event, dict) else None
                seen = read.has_seen(key)
                read.bad(key, event, event_problem(event) or "")
                if seen or value is None or value == "" or not isinstance(event, dict):
                    continue
                rows.append({**event, "event_id": str(value)})
                continue
            read.ids[key] = None
            if key not in read.seen:
                rows.append(event)
        counts["rows"] += len(rows)
        if rows:
            yield rows

    return apply


def _finish(read: _Read, written: int, new: int) -> None:
    """Move the table's cursor to the newest event the feed read after it (never back); keep
    the ids of the events of the window the next read starts with; record what this run did."""
    plan, state = read.plan, dlt.current.resource_state(read.table)
    now = plan.api_now_ns or time.time_ns()
    before = dict(state.get("event_cursor") or _cursor(None, now))
    cursor = dict(before)
    cursor.pop("after_listing", None)
    if read.last is not None and (cursor.get("event_id") is None or read.last["event_id"] > cursor["event_id"]):
        cursor = _cursor(read.last, now)
    if plan.feed_more:  # read part of the stream: current as of its last event only
        if read.last is not None:
            cursor["as_of"] = _cursor(read.last, now)["occurred_at"] or cursor.get("as_of")
    else:  # read to the end: current as of the API's clock when the read began
        cursor["as_of"] = format_ns(now, 0)
    # a read in chunks began with its first chunk: that is where the next read's window starts
    began = _window_from(before) if before.get("partial") else now
    cursor["read_at"] = format_ns(began if began is not None else now, 0)
    cursor["partial"] = plan.feed_more
    if plan.feed_more:  # the next chunk reads on from the last event this one read for the table
        cursor["resume"] = read.last["event_id"] if read.last is not None else read.start
    else:
        cursor.pop("resume", None)
    # what the next read's window meets again; while this read goes on in chunks, also what its
    # later chunks meet (after where it stopped)
    floor = id_floor("evt", parse_ns(cursor["read_at"]) - plan.lag_ns)
    if plan.feed_more:
        floor = min(floor, cursor["resume"] or "")
    window = {**read.seen, **read.ids} if plan.lag_ns > 0 else {}
    cursor["recent"] = {i: window[i] for i in sorted(window) if i > floor}
    if read.unkeyed:  # no id places them: the newest are kept, whatever the window
        cursor["unkeyed"] = read.unkeyed[-_MAX_UNKEYED:]
    state["event_cursor"] = cursor
    _keep_findings(state, read, now)
    state.pop("last_event_id", None)
    state.pop("backfill", None)  # a chunked listing of `listing` mode, left when the mode changed
    state["last_run"] = {"new": new, "updated": written - new, "unchanged": 0}


# at most this many findings of each kind are kept per table, and events without an id seen
_MAX_FINDINGS = 50
_MAX_UNKEYED = 1000


def _keep_findings(state: dict[str, Any], read: _Read, now: int) -> None:
    """Add this read's bad events (and the stream's gap, for `events`) to the table's findings,
    which its `events_applied` check reports, and drop those older than the API's retention."""
    found = format_ns(now, 0)
    bad = [{**p, "found_at": found} for p in read.plan.problems if p["table"] == read.table]
    gaps = [{**read.plan.gaps[read.table], "found_at": found}] if read.table in read.plan.gaps else []
    for name, new in (("bad_events", bad), ("gaps", gaps)):
        kept = [f for f in state.get(name, []) if parse_ns(f["found_at"]) >= now - read.plan.retention_ns]
        known = {f.get("key", f.get("event_id")) for f in kept}
        kept += [f for f in new if f.get("key", f.get("event_id")) not in known]
        if kept:
            state[name] = kept[-_MAX_FINDINGS:]
        else:
            state.pop(name, None)


# ---------------------------------------------------------------------- for the events sensor
def latest_event_id(base_url: str, api_key: str) -> Optional[str]:
    """The newest event's id, or None when the API has no events (`base_url`: the API's root,
    prefix included)."""
    response = event_client(base_url, api_key).get(EVENTS_PATH, params={"per_page": 1})
    response.raise_for_status()
    data = [e for e in response.json().get("data") or [] if _keyed(e)]
    return data[0]["event_id"] if data else None


def events_after(
    base_url: str, api_key: str, after: Optional[str], max_pages: int = 10
) -> tuple[list[dict[str, Any]], int]:
    """Events newer than `after`, oldest first (at most `max_pages` pages of 200), and the API's
    clock when the read began (its first page's `Date`)."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": EVENTS_PAGE_SIZE}
    if after:
        params["after"] = after
    events: list[dict[str, Any]] = []
    now: Optional[int] = None
    for pages, page in enumerate(event_client(base_url, api_key).paginate(EVENTS_PATH, params=params), 1):
        now = now or api_now_ns(page.response)
        events.extend(e for e in page if _keyed(e))  # (one without a string id cannot be a cursor)
        if pages >= max_pages:
            break
    return events, now or time.time_ns()
