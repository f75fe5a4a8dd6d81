"""The events sensor as 85c515d left it (issue #30): a tick more than the lag after the last, by
the API's clock (`EventsSensorCursor.ticked_at`), begins the late-event window again, as on a
cleared cursor, and owes a run of every table (`events-up-to-~stopped-<ms>`), against what the
API's clock does between two ticks without the sensor ever stopping: one answer ahead of the
others by more than the lag (adversary 5's step, which docs/design.md answers), one answer
behind them (each taken for a stop: a run for no change, and a late event lost); and a lag set
low, with one tick late by a little more than it. Held: a late event of a real stop, visible
just after the restart, gets its run. All four fixed since: a stop is told by both clocks, the
API's and this machine's, each later than the kept ids span (the lag, 600 s at least).

Each test states a claim of docs/design.md ("Late events") and what broke it (measured numbers
in each docstring). Ticks are evaluated every 10 s of the API's clock, as the daemon would
(`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is executed: each run the sensor requests succeeds
at once, and the sensor's requests are the claim.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from analytics_dagster import automation
from analytics_dagster.automation import EventsSensorCursor
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation_adversary_2 import hold_a_change, ms_of
from analytics_dagster_tests.test_automation_adversary_3 import (
    api_clock,
    assert_a_late_event_released_now_gets_a_run,
    tick,
)
from analytics_dagster_tests.test_automation_adversary_4 import launch, the_windows_first_read_ended, ticks_for
from analytics_dagster_tests.test_automation_adversary_5 import a_late_event_and_its_neighbours_run


@pytest.mark.usefixtures("backfilled")
def test_one_answer_ahead_by_more_than_the_lag_loses_no_late_event(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events": "A clock ahead for a while, then right again (one
    answer 900 s ahead): the newest id's instant is the right one, so nothing a late event needs
    is pruned, and the start goes back to the lag before the clock"). The API: adversary 5's
    (`analytics_dagster_tests/test_automation_adversary_5.py`): one tick's answer 900 s ahead
    (a server behind the balancer whose clock is ahead), then right again; a customer's change
    whose write commits late, 3 changes after it and their run, and the change's event visible
    11 s after its id.
    Measured: that tick, 910 s after the last by its `Date`, is taken for a stop: it requests
    `events-up-to-~stopped-<ms>` (a run of every table and the models, for no change) and begins
    the window again at the lag before its `Date`, 300 s ahead of the clock, with `kept_from`
    there; `floor` never goes below `kept_from`, so the start stays 287 s ahead of the clock
    once it is right again, past the late event's id, and no run is requested for it in the 900
    s that follow: the case design.md says fixed, lost again (its own test,
    `test_the_apis_clock_stepping_forward_then_back_loses_no_late_event`, fails on its first
    assert since 85c515d: the run requested at the step).
    Fixed: a stop is told by both clocks, the API's and this machine's (`ticked_at`), each later
    than the kept ids span (the lag, the default's 600 s at least): one answer off, or a tick late
    with a low lag, is no stop."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=900)
    result, _ = tick(admin, instance, cursor)  # its response's Date 900 s ahead
    launch(instance, result)
    admin.post("advance", seconds=-900)
    late, cursor = a_late_event_and_its_neighbours_run(admin, instance, result.cursor)
    state = EventsSensorCursor.decode(cursor)
    ahead = [ms_of(at) / 1000 - api_clock(admin) for at in (state.floor, state.kept_from)]
    visible = api_clock(admin) - ms_of(late) / 1000
    assert visible < DEFAULT_VISIBILITY_LAG_SECONDS, visible
    admin.post("release", event_ids=[late])
    keys, _ = ticks_for(admin, instance, cursor, DEFAULT_VISIBILITY_LAG_SECONDS + 300)
    assert keys == [f"events-up-to-{late}"], (
        f"the late event {late}, visible {visible:.0f} s after its id: runs {keys}; at its release "
        f"the window's start and kept_from were {ahead[0]:.0f} s and {ahead[1]:.0f} s ahead of the clock")


@pytest.mark.parametrize("step", ["one answer 700 s behind", "one answer 700 s ahead"])
@pytest.mark.usefixtures("backfilled")
def test_one_answer_off_by_more_than_the_lag_requests_no_run(warehouse: Path, admin: Admin, step: str) -> None:
    """Claim (docs/design.md, "Late events": "A clock stepping back (NTP, another server behind a
    balancer) moves the start back, to ids still kept at most: none read before is late" -- the
    case answered because a step back of 15 s requested a run for changes synced before; README's
    sensor row: a run is requested for new events, a failed run, a cursor cleared). The API: no
    change at all; one tick's answer 700 s off (a server behind the balancer whose clock is off,
    or NTP stepping it), then right again; the sensor never stops. Measured: behind, the tick
    after the answer is 710 s after it by the `Date`, ahead, the answer 710 s after the tick
    before: either way taken for a sensor stopped for longer than the lag, and one run of every
    table and the models reading them is requested (`events-up-to-~stopped-<ms>`), for nothing;
    behind, the window also begins again with its baseline at the cursor (the ids up to it that
    its first read finds taken as seen, a page a tick). The `Date` is the API's clock (docs/api.md,
    "What the project relies on beyond that"), but nothing else there relies on two answers'
    clocks within seconds of each other; this machine's clock (`_now`, which `held` reads)
    would tell a stopped sensor from a step of the API's.
    Fixed: a stop is told by both clocks, the API's and this machine's (`ticked_at`), each later
    than the kept ids span (the lag, the default's 600 s at least): one answer off, or a tick late
    with a low lag, is no stop."""
    offset = 700 if step.endswith("ahead") else -700
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=offset)
    result, _ = tick(admin, instance, cursor)  # its response's Date `offset` s off
    keys = launch(instance, result)
    admin.post("advance", seconds=-offset)
    more, _ = ticks_for(admin, instance, result.cursor, 60)
    assert not keys + more, f"no change, {step}: runs {keys + more}"


@pytest.mark.usefixtures("backfilled")
def test_a_tick_late_by_a_little_more_than_a_low_lag_requests_no_run(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/design.md, "Late events": "A sensor stopped for longer than the lag (stopped in
    Dagster's UI ...; the daemon down)" begins the window again and owes a run; the kept ids span
    the default's 600 s whatever the lag, "A lag lowered": so a short gap loses nothing kept).
    The deployment: `event_visibility_lag_seconds` set to 30 (an API whose late events come
    within seconds; a window of a page); the daemon evaluates the sensor 40 s after its last tick
    once (a code location reloaded, the daemon busy with other sensors, a tick before slowed by
    retries: the gap is measured between the first answers of two ticks). No change at all.
    Measured: one run of every table and the models reading them
    (`events-up-to-~stopped-<ms>`), for a gap of 30 s more than usual, in which the kept ids
    (600 s at least) lost nothing (by the code, again at every such gap).
    Fixed: a stop is told by both clocks, the API's and this machine's (`ticked_at`), each later
    than the kept ids span (the lag, the default's 600 s at least): one answer off, or a tick late
    with a low lag, is no stop."""
    monkeypatch.setenv("SOURCES__ANALYTICS__EVENT_VISIBILITY_LAG_SECONDS", "30")
    assert automation._lag_ns() == 30 * 10**9
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    keys, cursor = ticks_for(admin, instance, cursor, 60)
    assert not keys, keys  # ticks every 10 s with the lag of 30 s: nothing
    admin.post("advance", seconds=30)  # the next tick 40 s after the last
    more, _ = ticks_for(admin, instance, cursor, 60)
    assert not more, f"no change, a tick 40 s after the last with a lag of 30 s: runs {more}"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_of_a_stop_visible_after_the_restart_gets_a_run(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/design.md, "Late events": after "a sensor stopped for longer than the lag" the
    window begins again, as on a cleared cursor; no late event visible within the lag of its id
    is lost). The operator: stops the sensor for 12 minutes (Dagster's UI keeps its cursor), then
    starts it again. The API: a customer's change 100 s before the start whose write commits
    late, 3 changes after it; its event visible just after the first ticks (their run,
    `events-up-to-~stopped-<ms>`, read the stream without it). Held: one run, keyed by it (the
    window begun again starts at the lag before the start, below its id). (This machine's clock
    moves with the API's: a stop is told by both.)"""
    clock = [automation._now()]
    monkeypatch.setattr(automation, "_now", lambda: clock[0])
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=620)
    clock[0] += 720
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=100, updates=3)
    keys, cursor = ticks_for(admin, instance, cursor, 20)
    assert len(keys) == 1 and keys[0].startswith("events-up-to-~stopped-"), keys
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_one_answer_behind_by_more_than_the_lag_loses_no_late_event(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events": no late event visible within the lag of its id is
    lost; "A clock stepping back (NTP, another server behind a balancer) moves the start back, to
    ids still kept at most"). The API: 300 changes over 30 s (a small import), a customer's
    change whose write commits late, 3 changes after it and their run; then one tick's answer 700
    s behind the others (a server behind the balancer whose clock is behind), then right again;
    the late change's event visible a tick after that, 32 s after its id. Measured: the tick after the answer, 710 s
    after it by its `Date`, is taken for a stop: a run of every table
    (`events-up-to-~stopped-<ms>`, launched and ended before the event is visible) and the
    window begun again at the lag before the clock, its baseline at the cursor, its first read a
    page a tick; the late event, past that page, is found by the next read below the baseline
    and taken as seen: no run for it in the 900 s that follow. The kept ids, which held every
    id of the 300 and would have told it late, were dropped. With 30 changes instead of 300
    (the window's first read ends in a page), it gets its run.
    Fixed: a stop is told by both clocks, the API's and this machine's (`ticked_at`), each later
    than the kept ids span (the lag, the default's 600 s at least): one answer off, or a tick late
    with a low lag, is no stop."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    for _ in range(30):
        admin.post("advance", seconds=1, updates=10)
    late, cursor = a_late_event_and_its_neighbours_run(admin, instance, cursor)
    admin.post("advance", seconds=-700)
    result, _ = tick(admin, instance, cursor)  # its response's Date 700 s behind
    keys = launch(instance, result)
    admin.post("advance", seconds=700)
    result, _ = tick(admin, instance, result.cursor)
    keys += launch(instance, result)
    assert not [k for k in keys if "~stopped-" in k], keys
    assert_a_late_event_released_now_gets_a_run(admin, instance, result.cursor, late)
