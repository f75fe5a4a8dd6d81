"""The events sensor's window state machine (issue #30): its baseline and its reads cut by their
pages (`resume`) against what the API allows.

Each test states a claim of docs/design.md ("The events sensor, and why its runs take every table
with events", "How fast a change arrives", "Late events") and the API's behaviour that breaks it
(a strict xfail naming it). Ticks are evaluated every 10 s of the API's clock, as the daemon
would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is launched: the sensor's requests are the claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from analytics_dagster import automation
from analytics_dagster.automation import EventsSensorCursor
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate
from analytics_dagster_tests.test_automation_adversary_2 import (
    STRETCH_MS,
    add_run,
    hold_a_change,
    into_the_next_stretch,
    ms_of,
)

# more ids in one stretch than a read of the window takes (10 pages of 200)
BURST = 2100


def tick(admin: Admin, instance: DagsterInstance, cursor: str) -> tuple[Any, int]:
    """The next tick, 10 s of the API's clock after the last: its result and its requests."""
    admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
    admin.post("stats/reset")
    result = evaluate(instance, cursor)
    return result, admin.get("stats")["by_resource"].get("events", 0)


def a_cut_read_from_the_windows_start(state: EventsSensorCursor, requests: int) -> bool:
    """The tick read the window from its start, and its 10 pages cut that read (`resume` set)."""
    return requests > 1 and state.resume is not None and state.read_at is None


def assert_a_late_event_released_now_gets_a_run(
    admin: Admin, instance: DagsterInstance, cursor: str, late: str
) -> None:
    """Release the held event `late` (its id within the lag of the API's clock of the last read,
    `cursor`'s `polled_at`), then tick for the lag and 5 minutes more: some run is requested."""
    visible = EventsSensorCursor.decode(cursor).polled_at - ms_of(late) / 1000
    assert visible < DEFAULT_VISIBILITY_LAG_SECONDS, visible
    admin.post("release", event_ids=[late])
    keys = []
    for _ in range((DEFAULT_VISIBILITY_LAG_SECONDS + 300) // automation.EVENTS_SENSOR_INTERVAL_SECONDS):
        result, _ = tick(admin, instance, cursor)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert keys, f"the late event {late}, visible {visible:.0f} s after its id, requested no run"


@pytest.mark.xfail(strict=True, reason=(
    "open (#30): a late event in a stretch of more than 10 pages, visible after the second read from "
    "the window's start passed it, is never seen: the next such read (240 s later) drops the stretch "
    "from the window while it cuts it, and the read that would go on finds its resume behind the window"))
@pytest.mark.usefixtures("backfilled")
def test_a_late_event_in_a_long_stretch_seen_late_in_the_lag_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no late event (visible after a tick read past its id, within the visibility lag) is
    lost; "a stretch of more ids than 10 pages (a bulk import of 2,100 in 2 s) is read whole across
    reads and compared like any". The API: a customer's change whose write commits late, at the
    start of a stretch; 25 s later, in the same stretch, a bulk import of 2,100 changes. The
    sensor (running for a while: no baseline) requests the import's run; its window is read from
    its start every 4 minutes (cut at 10 pages inside the stretch, gone on with 2 minutes later).
    The late event becomes visible right after the second read from the window's start, about
    395 s after its id (within the 600 s lag). The read that goes on starts past it; the next
    read from the start (polled 240 s later) cuts the stretch again and prunes it from the
    window (its floor is the lag before that read); the read after finds its `resume` behind the
    window and drops it. No run is ever requested for the change (measured: none in 900 s; the
    window is empty 240 s after the release)."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    for _ in range(2):  # the window begins, and its first read ends the baseline
        result, _ = tick(admin, instance, cursor)
        cursor = result.cursor
    assert EventsSensorCursor.decode(cursor).baseline is None
    into_the_next_stretch(admin)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=25)
    admin.post("advance", seconds=0, updates=BURST, same_instant=True)
    assert automation._stretch(admin.truth("events")[-1]["event_id"]) == automation._stretch(late)
    cut_reads = 0
    while cut_reads < 2:
        result, requests = tick(admin, instance, cursor)
        cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
        cut_reads += a_cut_read_from_the_windows_start(state, requests)
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.xfail(strict=True, reason=(
    "open (#30): the baseline ends only by a read from the window's start that passes its stretch; "
    "with more than 10 pages of ids before it none does, and an event held since before the sensor "
    "started, visible after its first read of the window, is counted by no read"))
@pytest.mark.usefixtures("backfilled")
def test_a_late_event_from_before_a_busy_start_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): "an event held since before the sensor started that
    becomes visible after that read gets its run". The API: a customer's change whose write commits
    late, then a bulk import of 2,100 changes in the same stretch, all before the sensor is turned
    on; 300 more changes before its second tick (a busy account: the window holds 200 ids after
    the baseline, so it is no longer read in the tick's one request). Every read from the
    window's start is cut at 10 pages inside the baseline's stretch, and a read that goes on
    never ends a baseline: the stretch counts only ids after the baseline until it leaves the
    window. The late event, visible right after the first read of the window (138 s after its
    id), requests no run in the 900 s that follow (measured)."""
    into_the_next_stretch(admin)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=0, updates=BURST, same_instant=True)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=1, updates=300)
    result, _ = tick(admin, instance, cursor)  # the window begins: the baseline
    cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
    assert state.baseline and automation._stretch(late) <= automation._stretch(state.baseline) and late < state.baseline
    requests = 0
    while not a_cut_read_from_the_windows_start(state, requests):
        result, requests = tick(admin, instance, cursor)
        cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.xfail(strict=True, reason=(
    "open (#30): the window's baseline counts no id before it, so a window of thousands of ids before "
    "the sensor started reads as under a page: read in the tick's own read of what is new, 50 pages, "
    "again at every tick after each read that goes on, until the import leaves the window"))
@pytest.mark.usefixtures("backfilled")
def test_idle_ticks_after_a_start_behind_an_import_cost_what_is_claimed(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "How fast a change arrives", step 1): an idle tick costs one request;
    after a burst the window is read every 2 minutes, 10 pages at most: under 11 requests a
    minute. The API: a bulk import of 10,500 changes, then the sensor is turned on, and nothing
    changes for 11 minutes. Its second tick starts the window (a baseline); the third finds the
    window "small" (it holds no id after the baseline: fewer than a page) and reads it from its
    start in the tick's read of what is new, up to 50 pages; cut there, the read that goes on 2
    minutes later does not end the baseline, so the next tick reads 50 pages again. Measured:
    [1, 50, 1 x 11, 4, 50, ...]: 326 requests in 11 minutes, 29.6 a minute, idle (after an
    import of 2,500: 13 requests at the third tick, once)."""
    into_the_next_stretch(admin)
    admin.post("advance", seconds=0, updates=10500, same_instant=True)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    minutes, costs = 11, []
    for _ in range(minutes * 60 // automation.EVENTS_SENSOR_INTERVAL_SECONDS):
        result, requests = tick(admin, instance, cursor)
        assert not result.run_requests, result.run_requests[0].run_key
        cursor = result.cursor
        costs.append(requests)
    assert max(costs) <= automation.WINDOW_PAGES + 1 and sum(costs) <= 11 * minutes, (
        f"idle ticks for {minutes} minutes after the sensor was turned on cost {sum(costs)} requests "
        f"({sum(costs) / minutes:.1f} a minute, up to {max(costs)} a tick): {costs}")


@pytest.mark.xfail(strict=True, reason=(
    "open (#30): at a steady 13 events a second the reads that go on (10 pages every 2 minutes) fall "
    "behind the cursor: the window's start stays where its last read from the start left it for 13 "
    "minutes and more, and the cursor keeps every stretch since (46, the lag's is 20)"))
@pytest.mark.usefixtures("backfilled")
def test_the_window_at_a_steady_rate_stays_the_lag_before_its_last_read(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): the window is the lag before its last read, kept as
    "about 20 stretches, 40 bytes each whatever the rate"; a read cut by its pages is gone on with
    2 minutes later. The API: a steady stream of changes, 190 every tick (12.8 a second of the
    API's clock: an account's busy hour; every run the sensor requests succeeds at once). A read
    that goes on takes at most 10 pages up to the cursor, which moves on meanwhile: the reads go
    on for 13 minutes and more without reaching it, so the window's start (`polled_at`) stays,
    every stretch since stays in the cursor, and a late event's stretch is read again ever later
    after its id. Measured after 2,211 s of the API's clock: 46 stretches (2,141 bytes), the last
    read from the start 787 s before the last read going on; in a longer run, 83 stretches
    (3,584 bytes) after 231 ticks, one more every 33 s."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    # the span a window may hold: the lag, plus the 4 minutes of a read from its start and the
    # read that goes on, in whole stretches
    most = (DEFAULT_VISIBILITY_LAG_SECONDS + 2 * automation.WINDOW_SECONDS) * 1000 // STRETCH_MS + 2
    ticks, per_tick = 150, 190
    for n in range(ticks):
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS, updates=per_tick)
        result = evaluate(instance, cursor)
        for request in result.run_requests:
            add_run(instance, request, DagsterRunStatus.SUCCESS)
        cursor = result.cursor
        first = first if n else EventsSensorCursor.decode(cursor).event_id  # (the rate: from the first tick's newest)
    state = EventsSensorCursor.decode(cursor)
    seconds = (ms_of(state.event_id) - ms_of(first)) / 1000
    assert len(state.window) <= most, (
        f"after {seconds:.0f} s at {(ticks - 1) * per_tick / seconds:.1f} events a second the window holds "
        f"{len(state.window)} stretches "
        f"({len(cursor)} bytes of cursor; at most {most} span the lag and two reads), its last read from "
        f"the start at {state.polled_at}, going on at {state.read_at} (the API's clock)")
