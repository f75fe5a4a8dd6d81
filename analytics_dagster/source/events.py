"""The event stream: how eight tables are kept current by `/v1/events` instead of listings.

Every create or update of a customer, address, business, discount, price, product,
subscription or transaction emits an event whose `data` is the entity's whole new snapshot
(shared/API_CONTRACT.md, "The event stream"). So once such a table has been listed whole (its
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
   takes what is after its own cursor: the `events` table every event, the others the `data`
   of their own event types (`address.*` -> customer_addresses), merged on `id`. The newest
   snapshot of an entity wins, by `updated_at` and then by the order of events. Each table's
   cursor moves to the last event read, in its own resource state: it is committed with the
   rows, in the same load, so a failed run moves no cursor, and a run of any subset of tables
   never skips another table's changes.
4. A listing in events mode is a backfill in chunks (`SyncPlan.listing_page`): it stops after
   `chunk_rows` rows, its progress (`backfill`) is committed with them, and the next chunk or
   run resumes after the last id committed. The read of the stream stops after `chunk_rows`
   events likewise (`feed_items`), with the fed tables' cursors where it stopped.

Event types with no table (`adjustment.*`, new ones) land in `events` only. An event of a
table's type whose `data` has no `id` fails the run, naming the event: nothing of it is written.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

import dlt
from dlt.common.jsonpath import compile_path
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from requests import Response, Session

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, parse_ns
from analytics_dagster.source.paginator import HasMorePaginator, json_once, page_json
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES_BY_NAME, ApiResource, table_of_event

EVENTS_PATH = "/v1/events"
EVENTS_PAGE_SIZE = 200  # the API's maximum
DEFAULT_RETENTION_DAYS = 90  # the API lists the events of the last 90 days
DEFAULT_RETENTION_MARGIN_DAYS = 3
_DAY_NS = 24 * 3600 * NS_PER_SECOND

INCREMENTAL_MODES: tuple[str, ...] = ("events", "listing")
Mode = Literal["events", "listing"]
# {"event_id": the last event applied, None: the stream's start; "occurred_at": its time;
#  "as_of": the API's clock when the stream was last read to its end after it}
Cursor = dict[str, Optional[str]]


class EventStreamError(ValueError):
    """An event this project cannot apply; names the event, its type and what was wrong."""


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
        api_now_ns: the API's clock at the run's first request (None: no request made yet).
        feed_more: the read of the stream stopped after `chunk_rows` events with more to
            read: the fed tables' cursors moved to the last event read, and another load
            (the next chunk, or the next run) reads on from there.
    """

    incremental: str
    modes: dict[str, Mode] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    feeds: dict[str, Optional[str]] = field(default_factory=dict)
    position: Optional[Cursor] = None
    backfills: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunk_rows: int = 0
    api_now_ns: Optional[int] = None
    feed_more: bool = False
    _pages: Optional[Iterator[Any]] = None

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
        (committed with the page's rows, in the same load); False: the chunk is full, stop.

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
            if not has_more:
                if backfill["position"]:  # (a listing of `listing` mode has none)
                    state["event_cursor"] = dict(backfill["position"])
                state.pop("backfill", None)
                continue
            state["backfill"] = {k: backfill[k] for k in ("after", "rows", "position", "since_ns") if k in backfill}
            going = going or backfill["run_rows"] < self.chunk_rows
        return going


def plan_sync(
    client: RESTClient,
    resource_states: dict[str, dict[str, Any]],
    tables: Iterable[str],
    *,
    incremental: str,
    full_refresh: bool,
    retention_days: int = DEFAULT_RETENTION_DAYS,
    retention_margin_days: int = DEFAULT_RETENTION_MARGIN_DAYS,
    page_size: int = EVENTS_PAGE_SIZE,
    chunk_rows: int = 0,
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
        page_size: events per request.
        chunk_rows: in events mode, rows of a listing one run commits (0: all).
    """
    if incremental not in INCREMENTAL_MODES:
        raise ValueError(f"sources.analytics.incremental is {incremental!r}: it must be one of {list(INCREMENTAL_MODES)}")
    tables = list(tables)
    plan = SyncPlan(incremental=incremental, chunk_rows=chunk_rows)
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
    start: Cursor = {"event_id": None, "occurred_at": None}
    if cursors:
        if all(c["event_id"] for c in cursors.values()):
            start = min(cursors.values(), key=lambda c: c["event_id"])  # type: ignore[arg-type,return-value]
        params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": page_size}
        if start["event_id"]:
            params["after"] = start["event_id"]
        # hooks given replace dlt's, which raise for an error status: raise first, then parse once
        hooks = {"response": [lambda response, *_, **__: _ok(response), json_once("events")]}
        pages = client.paginate(EVENTS_PATH, params=params, hooks=hooks)
        first = _request(lambda: next(pages), tables)
        plan.api_now_ns = api_now_ns(first.response)
        trusted_since = plan.api_now_ns - (retention_days - retention_margin_days) * _DAY_NS
        for table, cursor in list(cursors.items()):
            checked = _checked_ns(cursor)
            if table != "events" and (checked is None or checked < trusted_since):
                plan.modes[table] = "listing"
                plan.reasons[table] = (
                    f"its event cursor (current as of {cursor.get('as_of') or cursor.get('occurred_at')}) "
                    f"is older than the API's {retention_days}-day retention minus {retention_margin_days} days"
                )
                del cursors[table]
        plan.feeds = {table: cursor["event_id"] for table, cursor in cursors.items()}
        plan._pages = _chain_first(first, pages)

    starting = [t for t, mode in plan.modes.items() if mode == "listing" and t not in plan.backfills]
    if incremental == "events":
        if starting:
            plan.position = _position(client, first, start, plan, tables)
        for table in starting:
            plan.backfills[table] = {"after": None, "rows": 0, "position": plan.position}
    else:  # chunked too, its change window kept from its first chunk (`since_ns`)
        for table in starting:
            since = None if full_refresh else resource_states.get(table, {}).get("max_ns")
            plan.backfills[table] = {"after": None, "rows": 0, "position": None, "since_ns": since}
    return plan


def _position(client: RESTClient, first: Any, start: Cursor, plan: SyncPlan, tables: list[str]) -> Cursor:
    """The newest event now, before any listing of the run begins."""
    if first is not None and not _has_more(first):
        assert plan.api_now_ns is not None
        if first:  # the first page of the run's read of the stream is also its last
            return _cursor(first[-1], plan.api_now_ns)
        # nothing after the feed's start: the stream stands there
        return {**_cursor(None, plan.api_now_ns), "event_id": start["event_id"], "occurred_at": start.get("occurred_at")}
    response = _request(lambda: _ok(client.get(EVENTS_PATH, params={"per_page": 1})), tables)
    now = api_now_ns(response)
    plan.api_now_ns = plan.api_now_ns or now
    newest = page_json("events", response).get("data") or []
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


class _End:
    """The feed's last item: every fed table finishes (writes its winners, moves its cursor)."""


END = _End()


def feed_items(plan: SyncPlan) -> Iterator[Any]:
    """The feed resource's items: each page of events, then `END`. The read stops after the
    page that brings it to `plan.chunk_rows` events (`plan.feed_more`), so that one load holds
    at most a chunk of the stream, however long it is (a first sync reads 90 days of it)."""
    read = 0
    for page in plan.pages():
        for event in page:
            if not isinstance(event, dict) or not event.get("event_id"):
                kind = event.get("event_type") if isinstance(event, dict) else type(event).__name__
                raise EventStreamError(f"resource 'events': an event has no event_id (type {kind!r})")
        yield list(page)
        read += len(page)
        if 0 < plan.chunk_rows <= read and _has_more(page):
            plan.feed_more = True
            break
    yield END


def _updated_ns(api: ApiResource, event: dict[str, Any], data: dict[str, Any]) -> int:
    stamp = data.get("updated_at")
    try:
        return parse_ns(stamp)  # type: ignore[arg-type]
    except ValueError:
        raise EventStreamError(
            f"resource '{api.name}': event {event.get('event_id')} ({event.get('event_type')}) has "
            f"data.updated_at {stamp!r}, not an RFC 3339 timestamp"
        ) from None


def table_from_events(api: ApiResource, plan: SyncPlan) -> Callable[[Any], Iterator[Any]]:
    """The transformer of the feed that keeps `api`'s table: the newest snapshot per `id` of the
    events of its type after its cursor, written when the feed ends."""
    after = plan.feeds[api.name]
    winners: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
    created: set[str] = set()
    read: dict[str, Any] = {"last": None}
    order = 0

    def apply(item: Any) -> Iterator[Any]:
        nonlocal order
        if item is END:
            _finish(api.name, read["last"], plan, len(winners), len(created))
            rows = [row for _, row in winners.values()]
            winners.clear()
            if rows:
                yield rows
            return
        for event in item:
            order += 1
            event_id = event.get("event_id")
            if after is not None and event_id <= after:  # read for a table with an older cursor
                continue
            read["last"] = event
            if table_of_event(event.get("event_type")) != api.name:
                continue
            data = event.get("data")
            key = data.get("id") if isinstance(data, dict) else None
            if not key:
                raise EventStreamError(
                    f"resource '{api.name}': event {event_id} ({event.get('event_type')}) has no "
                    f"data.id, so it cannot be applied; nothing of this run was written"
                )
            rank = (_updated_ns(api, event, data), order)
            if key not in winners or rank >= winners[key][0]:
                winners[key] = (rank, data)
            if str(event.get("event_type", "")).endswith(".created"):
                created.add(key)

    return apply


def events_from_feed(plan: SyncPlan) -> Callable[[Any], Iterator[Any]]:
    """The transformer of the feed that keeps the `events` table: every event after its cursor."""
    after = plan.feeds.get("events")
    read: dict[str, Any] = {"last": None, "rows": 0}

    def apply(item: Any) -> Iterator[Any]:
        if item is END:
            _finish("events", read["last"], plan, read["rows"], read["rows"])
            return
        rows = []
        for event in item:
            if after is None or event["event_id"] > after:
                rows.append(event)
                read["last"] = event
        read["rows"] += len(rows)
        if rows:
            yield rows

    return apply


def _finish(table: str, last: Optional[dict[str, Any]], plan: SyncPlan, written: int, new: int) -> None:
    """Move the table's cursor to the last event after it that the feed read; record what this
    run did."""
    state = dlt.current.resource_state(table)
    now = plan.api_now_ns or time.time_ns()
    if last is not None:
        state["event_cursor"] = _cursor(last, now)
        if plan.feed_more:  # read part of the stream: current as of its last event only
            state["event_cursor"]["as_of"] = state["event_cursor"]["occurred_at"]
    elif not plan.feed_more:  # read to the end, nothing after the cursor: current as of now
        state["event_cursor"] = {**(state.get("event_cursor") or _cursor(None, now)), "as_of": format_ns(now, 0)}
    state.pop("last_event_id", None)
    state.pop("backfill", None)  # a chunked listing of `listing` mode, left when the mode changed
    state["last_run"] = {"new": new, "updated": written - new, "unchanged": 0}


# ---------------------------------------------------------------------- for the events sensor
def latest_event_id(base_url: str, api_key: str) -> Optional[str]:
    """The newest event's id, or None when the API has no events."""
    response = event_client(base_url, api_key).get(EVENTS_PATH, params={"per_page": 1})
    response.raise_for_status()
    data = response.json().get("data") or []
    return data[0]["event_id"] if data else None


def events_after(
    base_url: str, api_key: str, after: Optional[str], max_pages: int = 10
) -> list[dict[str, Any]]:
    """Events newer than `after`, oldest first (at most `max_pages` pages of 200)."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": EVENTS_PAGE_SIZE}
    if after:
        params["after"] = after
    events: list[dict[str, Any]] = []
    for pages, page in enumerate(event_client(base_url, api_key).paginate(EVENTS_PATH, params=params), 1):
        events.extend(page)
        if pages >= max_pages:
            break
    return events
