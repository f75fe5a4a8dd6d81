"""The state a run keeps per table (dlt's resource state), defined once: its keys and their readers.

dlt commits a table's state with the table's rows, in the same load, so a killed or failed run
moves nothing. The writers are where the state changes (named beside each key below); every
reader outside them goes through the functions here.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict


class EventCursor(TypedDict, total=False):
    """Where a table kept by the event stream is (`event_cursor`; written by `feed._finish`).

    event_id: the newest event applied (None: the stream's start).
    occurred_at: that event's `occurred_at`.
    as_of: since when the cursor is known current (the API's clock).
    read_at: when the read that wrote it began: the next read's late-event window is behind it.
    partial: the read stopped after a chunk; `resume` is the id the next chunk reads after.
    recent: the ids applied in the window the next read meets again, each with its entity id.
    unkeyed: digests of the events without a string id seen (kept newest first, at most 1,000).
    after_listing: set by a listing that just ended: the next read starts at `event_id`, no window.
    """

    event_id: Optional[str]
    occurred_at: Optional[str]
    as_of: str
    read_at: str
    partial: bool
    resume: Optional[str]
    recent: dict[str, Optional[str]]
    unkeyed: list[str]
    after_listing: bool


class Backfill(TypedDict, total=False):
    """A listing in chunks, between its loads (`backfill`; written by `plan.SyncPlan.listing_page`).

    after: the last id committed (None: from the start); rows: the rows committed so far.
    position: events mode: the stream's cursor when the backfill began (the table's cursor once
        it is done). since_ns: listing mode: the change window its first chunk began with.
    began_ns: the API's clock as the listing began: where the next listing's window starts.
    """

    after: Optional[str]
    rows: int
    position: Optional[EventCursor]
    since_ns: int
    began_ns: int


class LastRun(TypedDict):
    """What the last run did to the table's rows (`last_run`)."""

    new: int
    updated: int
    unchanged: int


class Finding(TypedDict, total=False):
    """An event the stream could not apply (`bad_events`), or the events lost past the API's
    retention (`gaps`: `from`, `to`), with when it was found (`found_at`); written by
    `feed._keep_findings`, kept for the API's retention, at most 50 of each."""

    event_id: Any
    event_type: Any
    problem: str
    key: str
    found_at: str


class TableState(TypedDict, total=False):
    """One table's state. `window_ns`, `max_ns` and `seen` are listing mode's
    (`incremental.ChangeFilter`): where the last complete listing began, the newest `updated_at`
    seen, and a mark of each row written (`stamp#digest`)."""

    event_cursor: EventCursor
    backfill: Backfill
    last_run: LastRun
    bad_events: list[Finding]
    gaps: list[Finding]
    window_ns: int
    max_ns: int
    seen: dict[str, str]
    last_event_id: str  # the events table's cursor before events mode (read once, then dropped)


def event_cursor(state: TableState) -> Optional[EventCursor]:
    """The table's cursor in the event stream (None: it does not take events yet)."""
    return state.get("event_cursor")


def backfill(state: TableState) -> Optional[Backfill]:
    """The table's backfill in progress (None: none)."""
    return state.get("backfill")


def last_run(state: TableState) -> LastRun:
    """What the last run did (zeros: nothing recorded)."""
    return {"new": 0, "updated": 0, "unchanged": 0, **state.get("last_run", {})}  # type: ignore[typeddict-item]


def findings(state: TableState) -> tuple[list[Finding], list[Finding]]:
    """The table's bad events and gaps, as its `events_applied` check reports them."""
    return list(state.get("bad_events", [])), list(state.get("gaps", []))
