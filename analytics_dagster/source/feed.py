"""Applying the event stream: the feed resource, and the transformers of it that keep the tables."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Optional

import dlt
import orjson

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.source.paginator import HasMorePaginator
from analytics_dagster.source.permissions import grant_line, is_forbidden
from analytics_dagster.source.events import cursor_after, digest, has_more, keyed, last_keyed, window_floor
from analytics_dagster.source.plan import SyncPlan, window_from
from analytics_dagster.source.resources import ApiResource, table_of_event
from analytics_dagster.source.state import forget_listed, keep_findings, write_event_cursor

# rows a fed table's winners are handed to dlt in at the end of a read
_WRITE_BATCH = 1000
# at most this many events without an id seen are kept per table
_MAX_UNKEYED = 1000
# entities fetched by id in one request, for the fields their events leave out: 100 ids of
# Paddle's (30 characters each, comma-separated) keep the URL near 3 KB
_FETCH_BATCH = 100


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
        if (0 < plan.chunk_rows <= read or plan.chunk_time_is_up()) and has_more(page) and last_keyed(page):
            plan.feed_more = True
            break
    yield END




def event_problem(event: Any) -> Optional[str]:
    """What makes an event of a table's type impossible to apply; None: nothing."""
    if not keyed(event):
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
            if not keyed(event):
                if self.start is None or (self._before or "") >= self.start:
                    yield "~" + digest(event), event
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
            # listing mode's memory of these rows is stale now; (the state is what `plan.skip`
            # restores, if the key may not fetch what the events leave out)
            state = plan.live_states[api.name] = dlt.current.resource_state(api.name)
            forget_listed(state, [key for key, _ in fresh])
            winners.clear()
            for start in range(0, len(fresh), _WRITE_BATCH):
                batch = with_omitted(api, plan, [orjson.loads(data) for _, data in fresh[start:start + _WRITE_BATCH]])
                if api.name in plan.forbidden:
                    return  # skipped: nothing written, its cursor where it was
                yield batch
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


def with_omitted(api: ApiResource, plan: SyncPlan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (events' snapshots) with the fields the API's events leave out
    (`api.event_omits`) as the API holds them now: the entities fetched by id, `_FETCH_BATCH`
    a request. Without them the merge would null those columns. An entity the API no longer
    lists keeps its snapshot as it is. A key that may read the stream but not the list
    (403 `forbidden`) skips the table for the run (`plan.skip`: its cursor stays)."""
    if not api.event_omits or not rows:
        return rows
    assert plan.client is not None, "the plan keeps the client it was made with"
    current: dict[str, dict[str, Any]] = {}
    ids = [row[api.primary_key] for row in rows]
    for start in range(0, len(ids), _FETCH_BATCH):
        batch = ids[start:start + _FETCH_BATCH]
        params = {"id": ",".join(batch), "per_page": min(len(batch), api.max_page_size)}
        try:
            for page in plan.client.paginate(api.path, params=params, data_selector="data",
                                             paginator=HasMorePaginator(api.name, parts=api.parts)):
                current.update((entity[api.primary_key], entity) for entity in page if isinstance(entity, dict))
        except Exception as exc:
            if is_forbidden(getattr(exc, "response", None)):  # the stream, but not the list: the table waits
                plan.skip(api.name, grant_line(api.name))
                return rows
            raise RuntimeError(f"resource '{api.name}': fetching {', '.join(api.event_omits)} of "
                               f"{len(batch)} entities its events changed (events leave them out) failed: {exc}") from None
    for row in rows:
        entity = current.get(row[api.primary_key])
        if entity is not None:
            row.update((name, entity.get(name)) for name in api.event_omits)
    return rows


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
            if not keyed(event):
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
    before = dict(state.get("event_cursor") or cursor_after(None, now))
    cursor = dict(before)
    cursor.pop("after_listing", None)
    if read.last is not None and (cursor.get("event_id") is None or read.last["event_id"] > cursor["event_id"]):
        cursor = cursor_after(read.last, now)
    if plan.feed_more:  # read part of the stream: current as of its last event only
        if read.last is not None:
            cursor["as_of"] = cursor_after(read.last, now)["occurred_at"] or cursor.get("as_of")
    else:  # read to the end: current as of the API's clock when the read began
        cursor["as_of"] = format_ns(now, 0)
    # a read in chunks began with its first chunk: that is where the next read's window starts
    began = window_from(before) if before.get("partial") else now
    cursor["read_at"] = format_ns(began if began is not None else now, 0)
    cursor["partial"] = plan.feed_more
    if plan.feed_more:  # the next chunk reads on from the last event this one read for the table
        cursor["resume"] = read.last["event_id"] if read.last is not None else read.start
    else:
        cursor.pop("resume", None)
    # what the next read's window meets again; while this read goes on in chunks, also what its
    # later chunks meet (after where it stopped)
    floor = window_floor(parse_ns(cursor["read_at"]), plan.lag_ns)
    if plan.feed_more:
        floor = min(floor, cursor["resume"] or "")
    window = {**read.seen, **read.ids} if plan.lag_ns > 0 else {}
    cursor["recent"] = {i: window[i] for i in sorted(window) if i > floor}
    if read.unkeyed:  # no id places them: the newest are kept, whatever the window
        cursor["unkeyed"] = read.unkeyed[-_MAX_UNKEYED:]
    write_event_cursor(state, cursor, new=new, written=written)
    found = format_ns(now, 0)
    keep_findings(state, [{**p, "found_at": found} for p in plan.problems if p["table"] == read.table],
                  [{**plan.gaps[read.table], "found_at": found}] if read.table in plan.gaps else [],
                  now_ns=now, retention_ns=plan.retention_ns)
