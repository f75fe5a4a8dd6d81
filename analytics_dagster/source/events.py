"""The event stream as the project reads it (client, cursors, constants), and how events mode works.

The tables with events are kept current by `/v1/events`, not listings. The parts: `plan`
(step 1, 2, 5), `feed` (step 3, 4), and the events sensor's reads (`analytics_dagster.automation`).

Every create or update of an entity of a resource with an `event_entity` (resources.py)
emits an event whose `data` is the entity's whole new snapshot
(docs/api.md, "The event stream"). So once such a table has been listed whole (its
backfill), a run takes its changes from the events after the table's own cursor: a run costs
about one request per 200 changes, not one listing of everything (plus one request per
customer for the children).

One run, in order:

1. `plan.plan_sync` reads each selected table's `event_cursor` from the pipeline state and decides
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
5. A listing in events mode is a backfill in chunks (`backfill.record_page`): it stops at
   the page that brings it to `chunk_seconds` of extraction or `chunk_rows` rows, whichever
   comes first, its progress (`backfill`) is committed with them, and the next chunk or run
   resumes after the last id committed. The read of the stream stops at the same bounds
   likewise (`feed.feed_items`), with the fed tables' cursors where it stopped.

Event types with no table (`payout.*`, new ones) land in `events` only. An event that cannot
be applied (no `data`, no `data.id`, a `data.updated_at` that is no timestamp, an `event_id` that
is no string) is kept in `events` (when it has an id at all), reported in the run (`problems`)
and kept in its table's findings (`bad_events`), which the table's `events_applied` check
reports; every other change is applied, and later runs go on.
"""

from __future__ import annotations

import email.utils
import hashlib
import time
from typing import Any, Iterable, Literal, Optional

import orjson
from dlt.common.jsonpath import compile_path
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from requests import Response, Session

from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, id_floor, parse_ns
from analytics_dagster.source.paginator import HasMorePaginator, page_json
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES_BY_NAME

EVENTS_PATH = RESOURCES_BY_NAME["events"].path  # under the API's root (`configured_api_root`)
EVENTS_PAGE_SIZE = 200  # the API's maximum
DEFAULT_RETENTION_DAYS = 90  # the API lists the events of the last 90 days
DEFAULT_RETENTION_MARGIN_DAYS = 3
# An event becomes visible in the stream up to this long after events with later ids were listed
# (its id is taken when the change happens, its write commits later: seconds, rarely minutes).
# Each read starts this far behind the API time of the last one, which costs a request only when
# more than a page of events (200) occurred in the window.
DEFAULT_VISIBILITY_LAG_SECONDS = 600
DAY_NS = 24 * 3600 * NS_PER_SECOND

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


def cursor_after(event: Optional[dict[str, Any]], as_of_ns: int) -> Cursor:
    """The cursor after `event` (None: the stream's start), read to the stream's end at `as_of_ns`."""
    occurred = event.get("occurred_at") if event else None
    return {"event_id": event["event_id"] if event else None,
            "occurred_at": occurred if isinstance(occurred, str) else None, "as_of": format_ns(as_of_ns, 0)}


def checked_ns(cursor: Cursor) -> Optional[int]:
    """Since when the cursor is known current: no event after it had occurred by then. The
    events after it occurred later, so the API keeps them for its retention from then on."""
    for field_name in ("as_of", "occurred_at"):
        try:
            return parse_ns(cursor.get(field_name))  # type: ignore[arg-type]
        except ValueError:
            continue
    return None


def stream_cursor(state: dict[str, Any]) -> Optional[Cursor]:
    cursor = state.get("event_cursor")
    if cursor is None and state.get("last_event_id"):  # the events table's state before events mode
        cursor = {"event_id": state["last_event_id"], "occurred_at": None}
    return cursor


def has_more(page: Any) -> bool:
    """Whether more events follow a page of the stream (as read by the paginator)."""
    return bool(page_json("events", page.response)["meta"]["pagination"]["has_more"])


def keyed(event: Any) -> bool:
    """Whether an event has an id this project can order and key it by."""
    return isinstance(event, dict) and isinstance(event.get("event_id"), str) and bool(event["event_id"])


def digest(event: Any) -> str:
    """A short digest of an event's or a row's content: what tells apart the events without an
    id, and what listing mode's mark of a row compares."""
    return hashlib.blake2b(orjson.dumps(event, option=orjson.OPT_SORT_KEYS, default=str), digest_size=8).hexdigest()


def last_keyed(page: Iterable[Any]) -> Optional[dict[str, Any]]:
    """The last event of a page that has an id (None: none has)."""
    with_ids = [e for e in page if keyed(e)]
    return with_ids[-1] if with_ids else None


def window_floor(ns: int, lag_ns: int) -> str:
    """The smallest event id of the instant `lag_ns` before `ns`: where a late-event window
    starts (ids are ULIDs, their first characters the instant they were taken)."""
    return id_floor(RESOURCES_BY_NAME["events"].id_prefix or "evt", ns - lag_ns)
