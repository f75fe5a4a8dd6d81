"""The events sensor as fix30f left it (issue #30): its late-event window's start (`floor`) that
never moved back, against the API's clock stepping forward then back and the lag setting
changed between ticks; its cursor cleared while a run is owed; its ids' slots against a test of
the sensor in Dagster's UI (an evaluation whose cursor is not kept) before every tick (held).
The three strict xfails were fixed by fix30h: the start moves back, never below where the kept
ids are complete from (`kept_from`); a cursor cleared owes a run.

Each test states a claim of docs/design.md ("Late events": no late event, visible within
`event_visibility_lag_seconds` of its id, is lost; it is found within two reads of the window)
and what breaks it (measured numbers in each docstring), or that it held. Ticks are evaluated every 10 s of the
API's clock, as the daemon would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is launched: the
sensor's requests are the claim.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from analytics_dagster import automation
from analytics_dagster.automation import EventsSensorCursor, window_key
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate
from analytics_dagster_tests.test_automation_adversary_2 import add_run, hold_a_change, ms_of
from analytics_dagster_tests.test_automation_adversary_3 import (
    api_clock,
    assert_a_late_event_released_now_gets_a_run,
    tick,
)
from analytics_dagster_tests.test_automation_adversary_4 import launch, the_windows_first_read_ended, ticks_for


def a_late_event_and_its_neighbours_run(admin: Admin, instance: DagsterInstance, cursor: str) -> tuple[str, str]:
    """A customer's change whose write commits late, 3 changes listed 2 s after it, and ticks
    for 10 s (their run): the late event's id and the cursor."""
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    keys, cursor = ticks_for(admin, instance, cursor, 10)
    assert len(keys) == 1 and late < EventsSensorCursor.decode(cursor).event_id
    return late, cursor


@pytest.mark.usefixtures("backfilled")
def test_the_apis_clock_stepping_forward_then_back_loses_no_late_event(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no late event visible within the lag of its id is
    lost. The API: its clock (the `Date` header: docs/api.md) is 900 s ahead for one tick's
    response (one server behind the balancer with a clock ahead, or a clock corrected by NTP the
    other way: the mirror of adversary 4's step back, which design.md answers), then right
    again; no change meanwhile, ids in order. The read that tick ends, `read_at` 900 s ahead;
    the next read ends and moves the start to the lag before that: 300 s past the stream's end,
    and it never moves back. Then a customer's change whose write commits late, 3 changes after
    it and their run, and the change's event visible 11 s after its id: below the start,
    never read. Measured: no run requested for it in the 900 s that followed (the window's start
    start stayed 287 s ahead of the clock, past every id); by the code, a step of S s (S over
    the lag) blinds the window to late events until S - 600 s after the step. Fixed: the start
    moves back to the lag before the API's clock when that is lower, and the kept ids are pruned
    at the lag before the earlier of the clock and the newest id's instant (`kept_from`), so
    nothing read before is taken as late."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    clock = api_clock(admin)
    admin.post("advance", seconds=900)
    result, _ = tick(admin, instance, cursor)  # its response's Date 900 s ahead
    assert not result.run_requests
    admin.post("advance", seconds=-900)
    assert abs(api_clock(admin) - (clock + 10)) < 1
    late, cursor = a_late_event_and_its_neighbours_run(admin, instance, result.cursor)
    ahead = ms_of(EventsSensorCursor.decode(cursor).floor) / 1000 - api_clock(admin)
    assert ahead < 0, ahead  # the window's start, behind the clock again (before: 287 s ahead)
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_the_lag_lowered_then_set_back_loses_no_late_event(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/design.md, "Late events"): no late event visible within
    `event_visibility_lag_seconds` of its id is lost. The deployment: an operator lowers the
    lag to 30 s for a minute (to cut the window's requests behind an import, say) and sets it
    back to 600; each read that ends meanwhile moves the start to 30 s before it began, and the
    start never moves back. The API: a customer's change whose write commits late, 3 changes
    after it and their run, just before the lag is lowered; the change's event visible 120 s
    after its id, once the lag is back (well within the 600 s in force). Measured: no run requested for it in the 900 s that followed:
    the window's start stayed where the lag of 30 s left it, past the late event's id, for the
    10 minutes the lag of 600 s takes to catch up with it. Fixed: the kept ids are pruned at the
    default lag at least (`kept_from`), and the start moves back to the lag before the API's
    clock, down to them, once the lag is raised."""
    instance = DagsterInstance.ephemeral()
    late, cursor = a_late_event_and_its_neighbours_run(admin, instance, the_windows_first_read_ended(admin, instance))
    variable = "SOURCES__ANALYTICS__EVENT_VISIBILITY_LAG_SECONDS"
    monkeypatch.setenv(variable, "30")
    assert automation._lag_ns() == 30 * 10**9
    keys, cursor = ticks_for(admin, instance, cursor, 60)
    assert not keys and EventsSensorCursor.decode(cursor).floor > late
    monkeypatch.setenv(variable, str(DEFAULT_VISIBILITY_LAG_SECONDS))
    assert automation._lag_ns() == DEFAULT_VISIBILITY_LAG_SECONDS * 10**9
    admin.post("advance", seconds=120 - (api_clock(admin) - ms_of(late) / 1000))
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_changes_owed_a_run_when_the_cursor_is_cleared_get_one(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "How fast a change arrives"; README: "events that come while its
    run is in flight go in one run after it"): no change waits more than one run after the
    current one. The daemon: 3 changes and their run, in flight; 2 changes more, which the next
    tick sees and owes a run ("the new events go in the run after it"); then the sensor's
    cursor is cleared (Dagster's UI, the sensor's page: its cursor set to nothing, GraphQL
    `setSensorCursor`; what an operator does to start a misbehaving sensor afresh, and what a
    code location renamed or moved does to its sensor's state); the run in flight ends
    (succeeded: it read the stream before the 2 changes). The first tick after the clear sets
    the cursor to the stream's end and drops what was owed (its `owed`, `newest_new`, `tables`,
    `run_key`); design.md says nothing of a cleared cursor. Measured: no run requested in the
    900 s that followed: the 2 changes stay out of the warehouse until another change or a
    schedule. Fixed: a cursor cleared, the sensor having runs in the instance, follows its newest
    run still in flight and owes the run after it (what it owed is not known)."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=2, updates=3)
    result, _ = tick(admin, instance, cursor)
    assert len(result.run_requests) == 1
    first = result.run_requests[0]
    running = add_run(instance, first, DagsterRunStatus.STARTED)
    admin.post("advance", seconds=2, updates=2)
    result, _ = tick(admin, instance, result.cursor)
    state = EventsSensorCursor.decode(result.cursor)
    assert not result.run_requests and state.owed and state.run_key == first.run_key, result.skip_message
    cleared = evaluate(instance, None)
    instance.delete_run(running.run_id)
    add_run(instance, first, DagsterRunStatus.SUCCESS)  # it ended: it read the stream before the 2 changes
    keys, _ = ticks_for(admin, instance, cleared.cursor, DEFAULT_VISIBILITY_LAG_SECONDS + 300)
    assert keys, f"2 changes owed a run when the sensor's cursor was cleared requested none (cursor then: {state})"


@pytest.mark.usefixtures("backfilled")
def test_a_cursor_cleared_after_its_run_ended_requests_one_run_at_once(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "The events sensor, and why its runs take every table with
    events"): a cursor cleared owes a run, since what it owed is not known. The daemon: 3
    changes and their run, which failed (its retry owed), then the cursor cleared. The tick
    after requests one run at once, keyed apart by the reset (a second reset, another key), and
    the tick after that, nothing; a first start ever (no run of the sensor) requests none."""
    instance = DagsterInstance.ephemeral()
    assert not evaluate(instance, None).run_requests  # a first start
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=2, updates=3)
    result, _ = tick(admin, instance, cursor)
    assert len(result.run_requests) == 1
    add_run(instance, result.run_requests[0], DagsterRunStatus.FAILURE)
    keys = []
    for _ in range(2):
        cleared = evaluate(instance, None)
        keys += [r.run_key for r in cleared.run_requests]
        assert len(cleared.run_requests) == 1 and keys[-1].startswith("events-cursor-reset-"), cleared.skip_message
        add_run(instance, cleared.run_requests[0], DagsterRunStatus.SUCCESS)
    assert len(set(keys)) == 2, keys
    after, _ = tick(admin, instance, cleared.cursor)
    assert not after.run_requests, after.run_requests


@pytest.mark.usefixtures("backfilled")
def test_a_test_of_the_sensor_before_each_tick_loses_no_late_event(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no late event is lost; a tick loads the ids of its
    own cursor, never those of an evaluation from the same cursor. The daemon and the UI: before
    every tick, an evaluation from the sensor's current cursor whose cursor is not kept (Dagster's
    UI, the sensor's "Test sensor", a dry run: it blanks the cursor's parent key and writes ids
    under a token of its own, in a slot other than the cursor's); a change every tick, a
    customer's change whose write commits late among them, visible 2 minutes after its id.
    Held: no tick began its window again (each cursor's ids load, under its token), and the late
    event got its run (the dry run, which saw it first, requested nothing that was launched)."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 0)
    keys: list[str] = []

    def dry_run_then_tick(updates: int) -> None:
        nonlocal cursor
        admin.post("advance", seconds=2, updates=updates)
        evaluate(instance, cursor)  # the UI's test of the sensor: its cursor is not kept
        result, _ = tick(admin, instance, cursor)
        keys.extend(launch(instance, result))
        cursor = result.cursor
        key = window_key(EventsSensorCursor.decode(cursor).kept)
        assert json.loads(instance.run_storage.get_cursor_values({key})[key])["token"] == (
            EventsSensorCursor.decode(cursor).kept), "the window's ids kept are not the cursor's"

    for _ in range(10):
        dry_run_then_tick(updates=1)
    assert len(keys) == 10 and late < EventsSensorCursor.decode(cursor).event_id
    admin.post("release", event_ids=[late])
    assert api_clock(admin) - ms_of(late) / 1000 < DEFAULT_VISIBILITY_LAG_SECONDS
    for _ in range((DEFAULT_VISIBILITY_LAG_SECONDS + 300) // automation.EVENTS_SENSOR_INTERVAL_SECONDS):
        dry_run_then_tick(updates=0)
    assert keys[10:] == [f"events-up-to-{late}"], keys[10:]
