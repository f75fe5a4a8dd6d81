"""The state a run keeps per table (dlt's resource state), defined once: its keys, their readers and writers.

dlt commits a table's state with the table's rows, in the same load, so a killed or failed run
moves nothing. Every reader and writer of a backfill, an event cursor, the last run and the
findings goes through the functions here; listing mode's own marks (`window_ns`, `max_ns`,
`seen`) are its filter's (`incremental.ChangedSince`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, TypedDict

from analytics_dagster.rfc3339 import parse_ns


class EventCursor(TypedDict, total=False):
    """Where a table kept by the event stream is (`event_cursor`; written by `write_event_cursor`).

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
    """A listing in chunks, between its loads (`backfill`; written by `record_backfill`, `end_backfill`).

    after: the last id committed (None: from the start); rows: the rows committed so far.
    part: the part of the listing `after` is in (`ApiResource.parts`; absent: the first).
    position: events mode: the stream's cursor when the backfill began (the table's cursor once
        it is done). since_ns: listing mode: the change window its first chunk began with.
    began_ns: the API's clock as the listing began: where the next listing's window starts.
    """

    after: Optional[str]
    part: int
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
    `keep_findings`, kept for the API's retention, at most `MAX_FINDINGS` of each."""

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
    listed_parts: list[str]  # the parts of its listing the last complete listing went through (`part_key`)
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


def gaps_text(gaps: list[Finding]) -> str:
    """The spans of the stream a table missed, as its asset and its check say them."""
    return "; ".join(f"{g.get('from')} to {g.get('to')}" for g in gaps) or "none"


# ------------------------------------------------------------------------------------ writers
_BACKFILL_KEPT = ("after", "part", "rows", "position", "since_ns", "began_ns")
MAX_FINDINGS = 50  # of each kind, per table


def record_backfill(state: TableState, progress: dict[str, Any]) -> None:
    """A backfill goes on after this chunk: what the next chunk (or run) resumes from."""
    state["backfill"] = {k: progress[k] for k in _BACKFILL_KEPT if k in progress}  # type: ignore[typeddict-item]


def end_backfill(state: TableState, progress: dict[str, Any], parts: Sequence[dict[str, str]]) -> None:
    """A backfill is done: in events mode the table's cursor becomes the stream's position when
    it began (the next read replays the changes made since, with no window); the next
    listing's change window starts where it began (`window_ns`); `parts`, the parts of the
    listing it went through (`ApiResource.parts`), are the table's `listed_parts`."""
    if progress.get("position"):  # (a listing of `listing` mode has none)
        state["event_cursor"] = {**progress["position"], "after_listing": True}
    if progress.get("began_ns") is not None:
        state["window_ns"] = progress["began_ns"]
    state["listed_parts"] = [part_key(part) for part in parts]
    state.pop("backfill", None)


def part_key(part: dict[str, str]) -> str:
    """A part of a listing as the state keeps it: its query parameters (`status=...&type=custom`)."""
    return "&".join(f"{name}={value}" for name, value in sorted(part.items()))


def unlisted_parts(state: TableState, parts: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The parts of a table's listing (`ApiResource.parts`) that no complete listing of it went
    through: a warehouse synced before the registry declared a filter (`type=custom` of prices)
    lacks what that part holds, and neither the stream (no event of an entity that did not
    change) nor a change window (rows older than it) brings those rows. A state from before
    listings had parts was listed with the API's defaults beyond `status`: the first part."""
    listed = state.get("listed_parts")
    if listed is None:
        listed = [part_key(parts[0])]
    return [part for part in parts if part_key(part) not in listed]


def forget_listed(state: TableState, ids: Optional[list[str]] = None) -> None:
    """Listing mode's marks of these rows (all, by default) are stale: they were written otherwise."""
    if ids is None:
        state.pop("seen", None)
        return
    seen = state.get("seen") or {}
    for key in ids:
        seen.pop(key, None)


def write_event_cursor(state: TableState, cursor: EventCursor, *, new: int, written: int) -> None:
    """The table took events up to `cursor`: what the run did is its last run; a backfill of
    `listing` mode left when the mode changed, and the cursor of before events mode, go."""
    state["event_cursor"] = cursor
    state.pop("last_event_id", None)
    state.pop("backfill", None)
    state["last_run"] = {"new": new, "updated": written - new, "unchanged": 0}


def keep_findings(state: TableState, bad: list[Finding], gaps: list[Finding], *, now_ns: int, retention_ns: int) -> None:
    """Add a read's bad events and gaps to the table's findings (once each: by `key`, else
    `event_id`), and drop those found longer ago than the API's retention."""
    for name, new in (("bad_events", bad), ("gaps", gaps)):
        kept = [f for f in state.get(name, []) if parse_ns(f["found_at"]) >= now_ns - retention_ns]  # type: ignore[attr-defined]
        known = {f.get("key", f.get("event_id")) for f in kept}
        kept += [f for f in new if f.get("key", f.get("event_id")) not in known]
        if kept:
            state[name] = kept[-MAX_FINDINGS:]  # type: ignore[literal-required]
        else:
            state.pop(name, None)  # type: ignore[misc]
