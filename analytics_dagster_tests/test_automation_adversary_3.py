"""The events sensor's late-event window (issue #30): its baseline and its rolling read, a few
pages a tick, against what the API allows.

Each test states a claim of docs/design.md ("The events sensor, and why its runs take every table
with events", "How fast a change arrives", "Late events") and the API's behaviour that broke the
window as it was before (its ids folded per stretch of 33 s into a count and a digest, read
10 pages every 2 minutes): the numbers measured then are in each docstring. Ticks are evaluated
every 10 s of the API's clock, as the daemon would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is
launched: the sensor's requests are the claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dlt
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from analytics_dagster import automation
from analytics_dagster.automation import EventsSensorCursor
from analytics_dagster.source import configured_api_root
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS, EVENTS_PATH, api_now_ns, event_client
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate, kept_ids
from analytics_dagster_tests.test_automation_adversary_2 import (
    STRETCH_MS,
    add_run,
    hold_a_change,
    into_the_next_stretch,
    ms_of,
)

# more ids in one stretch of 33 s than the window's read took before (10 pages of 200)
BURST = 2100


def tick(admin: Admin, instance: DagsterInstance, cursor: str) -> tuple[Any, int]:
    """The next tick, 10 s of the API's clock after the last: its result and its requests."""
    admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
    admin.post("stats/reset")
    result = evaluate(instance, cursor)
    return result, admin.get("stats")["by_resource"].get("events", 0)


def api_clock(admin: Admin) -> float:
    """The API's clock (the `Date` of a response of its event stream), seconds since the epoch."""
    response = event_client(configured_api_root(), dlt.secrets["sources.analytics.api_key"]).get(
        EVENTS_PATH, params={"per_page": 1})
    return api_now_ns(response) / 1e9


def assert_a_late_event_released_now_gets_a_run(
    admin: Admin, instance: DagsterInstance, cursor: str, late: str
) -> None:
    """Release the held event `late` (its id within the lag of the API's clock), then tick for
    the lag and 5 minutes more: one run is requested, keyed by it."""
    visible = api_clock(admin) - ms_of(late) / 1000
    assert visible < DEFAULT_VISIBILITY_LAG_SECONDS, visible
    admin.post("release", event_ids=[late])
    keys = []
    for _ in range((DEFAULT_VISIBILITY_LAG_SECONDS + 300) // automation.EVENTS_SENSOR_INTERVAL_SECONDS):
        result, _ = tick(admin, instance, cursor)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert keys == [f"events-up-to-{late}"], f"the late event {late}, visible {visible:.0f} s after its id: {keys}"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_in_a_long_stretch_seen_late_in_the_lag_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no late event (visible after a tick read past its id, within the visibility lag) is
    lost, however many ids its part of the window holds. The API: a customer's change whose write
    commits late, at the start of a stretch; 25 s later, in the same stretch, a bulk import of
    2,100 changes. The sensor (running for a while: no baseline) requests the import's run; the
    late event becomes visible after the window's read passed its id a second time. Before, the
    window was read in chunks of 10 pages every 2 minutes and its count and digest compared per
    stretch: a read from the window's start pruned the stretch it cut, the read going on found
    itself behind the window, and no run was ever requested for the change (none in 900 s)."""
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
    assert ms_of(admin.truth("events")[-1]["event_id"]) // STRETCH_MS == ms_of(late) // STRETCH_MS
    passes, was_past = 0, False
    for _ in range(100):
        result, _ = tick(admin, instance, cursor)
        cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
        past = state.reached is not None and state.reached > late  # the read in progress passed it
        passes += past and not was_past
        was_past = past
        if passes == 2:
            break
    assert passes == 2, "the window's read did not pass the late event's id twice in 100 ticks"
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_from_before_a_busy_start_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): "an event held since before the sensor started that
    becomes visible after the window's first read passed its id gets its run". The API: a
    customer's change whose write commits late, then a bulk import of 2,100 changes in the same
    stretch, all before the sensor is turned on; 300 more changes before its second tick (a busy
    account). The late event becomes visible right after the window's first read (a page a
    tick) passed its id. Before, every read from the window's start was cut at 10 pages inside
    the baseline's stretch, a read going on never ended a baseline, and the late event requested
    no run in the 900 s that followed."""
    into_the_next_stretch(admin)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=0, updates=BURST, same_instant=True)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=1, updates=300)
    result, _ = tick(admin, instance, cursor)  # the window begins: the baseline
    cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
    assert state.baseline and late < state.baseline
    for _ in range(100):
        result, _ = tick(admin, instance, cursor)
        cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
        if state.reached is not None and state.reached > late:
            break
    assert state.baseline and state.reached > late, "the window's first read did not pass the late event in 100 ticks"
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_idle_ticks_after_a_start_behind_an_import_cost_what_is_claimed(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "How fast a change arrives", step 1): an idle tick costs one request,
    and a page of the window while that holds more than a page of ids: at most 12 requests a
    minute, 5% of Paddle's 240, however large the window. The API: a bulk import of 10,500
    changes, then the sensor is turned on, and nothing changes for 11 minutes. Before, the third
    tick found the window "small" (it held no id after the baseline) and read it from its start
    in the tick's read of what is new, up to 50 pages, again after each read that went on:
    [1, 50, 1 x 11, 4, 50, ...], 326 requests in 11 minutes, 29.6 a minute, idle."""
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
    assert max(costs) <= automation.WINDOW_PAGES + 1 and sum(costs) <= 12 * minutes, (
        f"idle ticks for {minutes} minutes after the sensor was turned on cost {sum(costs)} requests "
        f"({sum(costs) / minutes:.1f} a minute, up to {max(costs)} a tick): {costs}")


@pytest.mark.usefixtures("backfilled")
def test_the_window_at_a_steady_rate_stays_the_lag_before_its_last_read(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): the window's read keeps up with the stream (a page a
    tick, two more per page of new events), so the window stays the lag before the read before
    the one in progress: the lag and two reads. The API: a steady stream of changes, 190 every
    tick (12.8 a second of the API's clock: an account's busy hour; every run the sensor requests
    succeeds at once). Before, the reads that went on took 10 pages every 2 minutes and never
    caught the cursor: after 2,211 s of the API's clock the window's start was 787 s behind the
    last read and the cursor kept 46 stretches (2,141 bytes), one more every 33 s."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    # the span a window may hold: the lag and two reads, each at most 5 minutes at this rate
    most = DEFAULT_VISIBILITY_LAG_SECONDS + 2 * 300
    ticks, per_tick = 150, 190
    for n in range(ticks):
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS, updates=per_tick)
        result = evaluate(instance, cursor)
        for request in result.run_requests:
            add_run(instance, request, DagsterRunStatus.SUCCESS)
        cursor = result.cursor
        first = first if n else EventsSensorCursor.decode(cursor).event_id  # (the rate: from the first tick's newest)
    state, ids = EventsSensorCursor.decode(cursor), kept_ids(instance, cursor)
    seconds = (ms_of(state.event_id) - ms_of(first)) / 1000
    span = api_clock(admin) - ms_of(ids[0]) / 1000
    assert span <= most, (
        f"after {seconds:.0f} s at {(ticks - 1) * per_tick / seconds:.1f} events a second the window holds "
        f"{len(ids)} ids over {span:.0f} s (at most {most} span the lag and two reads), its read begun "
        f"at {state.read_at} (the API's clock), at {state.reached}")
