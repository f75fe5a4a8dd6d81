"""The events sensor's late-event window kept in the instance's key-value storage (issue #30,
`WINDOW_KEY`): its baseline, the token `kept` its ids are written under, and the API's clock,
against what the API and the daemon allow.

Each test states a claim of docs/design.md ("Late events", "The events sensor, and why its runs
take every table with events", "How fast a change arrives") and what broke it when the window's
ids were kept under one key with a count of writes (the numbers measured then are in each
docstring; each was a strict xfail until fixed). Ticks are evaluated every 10 s of the API's
clock, as the daemon would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is launched: the sensor's
requests are the claim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from analytics_dagster import automation
from analytics_dagster.automation import RUN_KEY_TAG, EventsSensorCursor, window_key
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate, kept_ids
from analytics_dagster_tests.test_automation_adversary_2 import add_run, hold_a_change, ms_of
from analytics_dagster_tests.test_automation_adversary_3 import (
    api_clock,
    assert_a_late_event_released_now_gets_a_run,
    tick,
)


def ticks_for(admin: Admin, instance: DagsterInstance, cursor: str, seconds: int) -> tuple[list[str], str]:
    """Ticks for `seconds` of the API's clock, every run they request succeeding at once (a run
    key already launched launches nothing, as with the daemon): the keys requested and the
    cursor after."""
    keys = []
    for _ in range(seconds // automation.EVENTS_SENSOR_INTERVAL_SECONDS):
        result, _ = tick(admin, instance, cursor)
        keys += launch(instance, result)
        cursor = result.cursor
    return keys, cursor


def launch(instance: DagsterInstance, result: Any) -> list[str]:
    """Launch a tick's run requests as the daemon would (no run key twice), each run succeeding
    at once: the keys requested."""
    for request in result.run_requests:
        if not instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: request.run_key}), limit=1):
            add_run(instance, request, DagsterRunStatus.SUCCESS)
    return [request.run_key for request in result.run_requests]


def the_windows_first_read_ended(admin: Admin, instance: DagsterInstance) -> str:
    """The sensor turned on, then ticks until its window's first read ended: the cursor."""
    cursor = evaluate(instance, None).cursor
    _, cursor = ticks_for(admin, instance, cursor, 20)
    assert EventsSensorCursor.decode(cursor).baseline is None
    return cursor


def a_burst_left_the_window(
    admin: Admin, instance: DagsterInstance, cursor: str, spread: bool, below: int
) -> tuple[str, list[str]]:
    """A burst of 150 changes (over 30 s, or `same_instant`), its run; then idle ticks until the
    window's read moved past the burst's ids but `below` of them (pruned from the kept ids): the
    cursor, and the keys requested. The kept ids are pruned at the lag before the newest id's
    instant (at most the API's clock's), so a change 20 s more than the lag after the burst's
    first id, and its run, moves that past the burst's first 20 s."""
    if spread:
        for _ in range(30):
            admin.post("advance", seconds=1, updates=5)
    else:
        admin.post("advance", seconds=1, updates=150, same_instant=True)
    keys, cursor = ticks_for(admin, instance, cursor, 10)
    assert keys == [f"events-up-to-{admin.truth('events')[-1]['event_id']}"] and len(kept_ids(instance, cursor)) == 150
    burst = {e["event_id"] for e in admin.truth("events")[-150:]}
    first = ms_of(min(burst)) / 1000
    for _ in range(100):
        if len(keys) == 1 and api_clock(admin) - first > DEFAULT_VISIBILITY_LAG_SECONDS + 20:
            admin.post("advance", seconds=0, updates=1)
        more, cursor = ticks_for(admin, instance, cursor, 10)
        keys += more
        if len(burst & set(kept_ids(instance, cursor))) < below:
            return cursor, keys
    raise AssertionError("the burst's ids were not pruned in 100 ticks")


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_visible_during_the_first_read_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no late event (visible within the lag of its id) is
    lost. The API: a customer's change whose write commits late (held 11 s), taken a few
    seconds before the sensor is turned on, with 3 changes listed at once after it. The first
    tick sets the cursor after those, the second begins the window; then the change's event
    becomes visible, 11 s after its id. Before, the window's first read began at the next tick,
    found its id up to `baseline` and took it as seen, not late: no run was requested for it in
    the 900 s that followed (measured: none), and the customer's change waited for some other
    change or a schedule (the backfill before the sensor started read the stream while the
    event was not listed). Now the tick that begins the window reads its first page (here the
    whole window: no baseline), so the event, not listed then, is late when it shows."""
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    result, _ = tick(admin, instance, cursor)  # the window begins, and its first read ends
    cursor, state = result.cursor, EventsSensorCursor.decode(result.cursor)
    assert state.baseline is None and state.reached is None and late not in kept_ids(instance, cursor)
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_found_by_a_tick_whose_cursor_was_not_kept_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no late event is lost, and ids the cursor does not go
    with are never compared (the window begins again). The daemon: a tick's evaluation that
    outlasts its timeout (Dagster's 60 s for a sensor; the API blocks an address for 60 s after
    a 429, docs/api.md, and another client on the same address can cause it) is recorded as
    failed and its cursor is not kept, while the evaluation goes on in the code server and
    writes the window's ids to the key-value storage. The API: a customer's change whose
    write commits late, changes listed after it, their run; then the event becomes visible
    and the next tick finds it (a run keyed by it), but is not kept. The tick again from the
    cursor before found the kept ids written by that tick (`kept` one more), began the window
    again at a baseline past the late event, and took it as seen: no run was requested for it
    in the 900 s that followed (measured: none). Now that tick's ids are under a token of its
    own: the tick again loads its cursor's ids, and reads the late event as late again."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    keys, cursor = ticks_for(admin, instance, cursor, 10)
    assert len(keys) == 1 and late < EventsSensorCursor.decode(cursor).event_id
    admin.post("release", event_ids=[late])
    lost, _ = tick(admin, instance, cursor)
    assert [r.run_key for r in lost.run_requests] == [f"events-up-to-{late}"], lost.skip_message
    assert late in kept_ids(instance, lost.cursor)  # written; the cursor that goes with it is not kept
    keys, cursor = ticks_for(admin, instance, cursor, DEFAULT_VISIBILITY_LAG_SECONDS + 300)
    assert f"events-up-to-{late}" in keys, (
        f"the late event {late}, found by a tick whose cursor was not kept, requested no run in "
        f"{DEFAULT_VISIBILITY_LAG_SECONDS + 300} s: {keys}")


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_seen_by_an_overlapping_evaluation_gets_a_run(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/design.md, "Late events"): ids the cursor does not go with are never compared;
    no late event is lost. Before, the ids were held with a count of writes (`kept`). The daemon: an
    evaluation that outlasts its timeout (the API's 429 blocks the address for 60 s,
    docs/api.md) is recorded as failed, and the next tick is evaluated from the same cursor
    while the first still runs in the code server. Both load the ids of count k; the second
    (3 new changes) writes count k+1 and its cursor is kept; a customer's change held until
    then becomes visible; the first reads it as late and writes count k+1 too, with its id,
    its cursor not kept. The kept cursor's count matches those ids: the late event's id is
    among them, so no tick after took it as late, and no run was requested for it in the
    900 s that followed (measured: none). The overlap is reproduced by putting back the ids the
    first evaluation loaded before it reads (now each writes under a token of its own). The
    tokens are drawn in turn here, each in a slot of its own: two evaluations drawing the same
    one of the 4,095 slots (`window_key`) would start the window again, as design.md says."""
    import uuid
    from itertools import count

    drawn = count(1)
    monkeypatch.setattr(automation, "uuid4", lambda: uuid.UUID(int=next(drawn) << 116 | 0xABC))
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    key = window_key(EventsSensorCursor.decode(cursor).kept)
    loaded = instance.run_storage.get_cursor_values({key})  # what both evaluations load
    kept, _ = tick(admin, instance, cursor)  # the second evaluation: its cursor is kept
    assert len(kept.run_requests) == 1 and EventsSensorCursor.decode(kept.cursor).kept != (
        EventsSensorCursor.decode(cursor).kept)
    add_run(instance, kept.run_requests[0], DagsterRunStatus.SUCCESS)
    admin.post("release", event_ids=[late])
    instance.run_storage.set_cursor_values(loaded)
    timed_out = evaluate(instance, cursor)  # the first goes on, reads the late event; not kept
    assert len(timed_out.run_requests) == 1 and late in kept_ids(instance, timed_out.cursor)
    assert EventsSensorCursor.decode(timed_out.cursor).kept != EventsSensorCursor.decode(kept.cursor).kept
    keys, _ = ticks_for(admin, instance, kept.cursor, DEFAULT_VISIBILITY_LAG_SECONDS + 300)
    assert f"events-up-to-{late}" in keys, (
        f"the late event {late}, seen by an evaluation whose cursor was not kept, requested no run "
        f"in {DEFAULT_VISIBILITY_LAG_SECONDS + 300} s: {keys}")


@pytest.mark.usefixtures("backfilled")
def test_the_apis_clock_stepping_back_requests_no_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no run is requested when nothing changed; an id
    the read finds and the kept ids do not hold became visible late. The API: its clock (the
    `Date` header: docs/api.md, "What the project relies on beyond that") steps back 15 s, as
    a server's clock corrected by NTP or another server behind the balancer answers, ids
    still in order; a burst of 150 changes over 30 s left the window in part (the ids before
    its start pruned). Before, the next read started 5 s before the last one did, read ids the
    kept ids no longer held, took them as late, and requested a run keyed by one of them
    (measured: events-up-to- an id of the burst, a run for changes synced 10 minutes before; 90
    ids taken as late at a step of 30 s). Now the window's start never moves back."""
    instance = DagsterInstance.ephemeral()
    cursor, before = a_burst_left_the_window(
        admin, instance, the_windows_first_read_ended(admin, instance), spread=True, below=100)
    clock = api_clock(admin)
    admin.post("advance", seconds=-15)
    assert api_clock(admin) == clock - 15
    keys, _ = ticks_for(admin, instance, cursor, 60)
    assert not keys, f"the API's clock stepped back 15 s, with no change: {keys} requested (before: {before})"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_below_the_floor_after_the_clock_stepped_back_requests_no_key_launched_before(
    warehouse: Path, admin: Admin
) -> None:
    """Claim (docs/design.md, "Late events"): a late event requests a run by itself, keyed by
    that event; ids pruned from the window are not read again. The API: a customer's change
    whose write commits late, then a burst of 150 changes a second later (their run is keyed by
    the burst's newest id); the window's read moves past them all (pruned from the kept ids);
    the API's clock steps back 60 s (as in the test before) and the change's event becomes
    visible, 560 s after its id by the clock stepped back, 620 s by the clock the window was
    read with. Before, the next read started below the pruned ids, took the burst's ids as late
    with it, and keyed its request by the newest of them, the burst's: the key of the run
    launched 10 minutes before. The daemon launches no run key twice, the sensor found that run
    succeeded, nothing was owed: no run was launched for the late event in the 900 s that
    followed (measured: the one request, its key launched before). Now the window's start never
    moves back: no id below it is read, none taken as late, no key launched before requested;
    the late event, below it (beyond the lag by the clock its reads began with), is not the
    sensor's to claim: the next run of any kind reads it (its own window, by the clock then)."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 0)
    cursor, before = a_burst_left_the_window(admin, instance, cursor, spread=False, below=1)
    admin.post("advance", seconds=-60)
    admin.post("release", event_ids=[late])
    visible = api_clock(admin) - ms_of(late) / 1000
    assert visible < DEFAULT_VISIBILITY_LAG_SECONDS, visible
    keys, _ = ticks_for(admin, instance, cursor, DEFAULT_VISIBILITY_LAG_SECONDS + 300)
    assert not [k for k in keys if k in before], (
        f"after the API's clock stepped back 60 s, {keys} requested, launched before: {before}")


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_visible_at_the_end_of_the_lag_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): a late event visible within the lag of its id is
    read by the read in progress or the next (which starts at the lag before the one in
    progress began), whatever the `Date` header's whole seconds. The API: a customer's change
    whose write commits late, 3 changes listed after it and their run; the event becomes
    visible 599 s after its id (the API's clock), the window long read past it, a tick
    having come 0 to 10 s before, the next 10 s after. It gets its run (held: that tick's read
    starts 600 s before the tick before began, 1 to 11 s before the late event's id; a read
    starting at the lag before itself would miss it)."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    keys, cursor = ticks_for(admin, instance, cursor, 10)
    assert len(keys) == 1
    def age() -> float:  # of the late event's id, by the API's clock
        return api_clock(admin) - ms_of(late) / 1000

    while age() < DEFAULT_VISIBILITY_LAG_SECONDS - 11:
        keys, cursor = ticks_for(admin, instance, cursor, automation.EVENTS_SENSOR_INTERVAL_SECONDS)
        assert not keys
    # released 599 s after its id (the API's clock): the next tick, 10 s on, reads it
    admin.post("advance", seconds=DEFAULT_VISIBILITY_LAG_SECONDS - 1 - age())
    assert_a_late_event_released_now_gets_a_run(admin, instance, cursor, late)


@pytest.mark.usefixtures("backfilled")
def test_two_code_locations_on_one_instance_each_find_a_late_event(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): no late event is lost; the ids are written only
    when they change. The deployment: two code locations of this project on one Dagster
    instance (say Paddle's sandbox and live environments, deploy/dagster.yaml's PostgreSQL),
    each with its `api_events_sensor` and its own cursor, but one `WINDOW_KEY` in the
    instance's key-value storage; here both watch the same API, the mildest case. The API:
    changes for 50 s, a customer's change whose write commits late among them, then none;
    the late event becomes visible 90 s after its id. Before (one key for the ids), no run was
    launched for it in the 900 s that followed (with one sensor: its run at the next tick); now
    each cursor's ids are under its own token. Measured then, in 101 ticks (all but 5 idle):
    the second sensor's window was a baseline after 66 of them (begun again: it took the late
    event as seen); the first took ids of its window as late and requested a run at 66, keyed
    by the newest, the key of a run launched before; the ids written 66 times by each."""
    instance = DagsterInstance.ephemeral()
    cursors = [evaluate(instance, None).cursor, evaluate(instance, None).cursor]
    launched: list[str] = []

    def both_tick(updates: int = 0) -> list[str]:
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS, updates=updates)
        keys = []
        for n, cursor in enumerate(cursors):
            result = evaluate(instance, cursor)
            keys += [k for k in launch(instance, result) if k not in launched + keys]
            cursors[n] = result.cursor
        launched.extend(keys)
        return keys

    for n in range(5):
        if n == 2:
            late = hold_a_change(admin, 0)
        both_tick(updates=4)
    for _ in range(6):
        both_tick()
    admin.post("release", event_ids=[late])
    visible = api_clock(admin) - ms_of(late) / 1000
    assert visible < DEFAULT_VISIBILITY_LAG_SECONDS, visible
    after = [k for _ in range((DEFAULT_VISIBILITY_LAG_SECONDS + 300) // automation.EVENTS_SENSOR_INTERVAL_SECONDS)
             for k in both_tick()]
    assert after, (f"the late event {late}, visible {visible:.0f} s after its id, launched no run with two "
                   f"events sensors on one instance (kept ids: {[len(kept_ids(instance, c)) for c in cursors]}, cursors' `kept`: "
                   f"{[EventsSensorCursor.decode(c).kept for c in cursors]})")
