"""The events sensor's late-event window (issue #30) against what the API allows.

Each test states a claim of docs/design.md ("The events sensor, and why its runs take every table
with events", "How fast a change arrives", "Late events") and the API's behaviour that breaks it
(a strict xfail naming it) or that it withstands. Ids are ULIDs (docs/api.md, "Resources", its
**Ids**): their first 10 characters the millisecond they were taken, a stretch the first 7 of
them (2^15 ms).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRequest

from analytics_dagster import automation
from analytics_dagster.automation import (
    RUN_KEY_TAG,
    SENSOR_NAME,
    SENSOR_NAME_TAG,
    STREAM_TABLES,
    EventsSensorCursor,
)
from analytics_dagster.rfc3339 import id_ns
from analytics_dagster.source.events import DEFAULT_VISIBILITY_LAG_SECONDS
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate, kept_ids, renamed_in_listing_mode, selected

STRETCH_MS = 1 << 15  # what the first 7 characters of a ULID say: 2^15 ms


def ms_of(event_id: str) -> int:
    """The instant an id was taken (its ULID's first 10 characters: milliseconds)."""
    ns = id_ns(event_id)
    assert ns is not None, f"{event_id} is not a ULID's"
    return ns // 1_000_000


def into_the_next_stretch(admin: Admin, offset_ms: int = 100) -> None:
    """A customer's change (its event listed at once), then the API's clock moved to `offset_ms`
    from the start of the next stretch (100: what follows within 32 s shares a stretch). A
    change made with `mutate` moves the clock a second on first."""
    customer = admin.truth("customers")[-1]["id"]
    now = ms_of(admin.post("mutate", resource="customers", key=customer, set={"name": "Before"})["event_id"])
    admin.post("advance", seconds=((now // STRETCH_MS + 1) * STRETCH_MS + offset_ms - now) / 1000)


def hold_a_change(admin: Admin, customer: int) -> str:
    """A customer's change whose write commits late: its event's id, listed once released."""
    key = admin.truth("customers")[customer]["id"]
    return admin.post("mutate", resource="customers", key=key, set={"name": f"Late {customer}"}, hold_event=True)["event_id"]


def add_run(instance: DagsterInstance, request: RunRequest, status: DagsterRunStatus) -> DagsterRun:
    """A run of the sensor's `request` in `instance`, as the daemon launches it, in `status`."""
    run = DagsterRun(job_name="sync_all", run_id=str(uuid.uuid4()), status=status,
                     asset_selection=frozenset(request.asset_selection or ()),
                     tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME})
    instance.add_run(run)
    return run


@pytest.mark.usefixtures("backfilled")
def test_the_sensors_first_ticks_request_no_run_without_a_change(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim: the first tick only sets the cursor; a run is requested for a new or late event, and
    an idle tick costs one request. The API: changes a few seconds before the sensor is turned on
    (any live account), then none. The second tick reads what is after the cursor (nothing) and
    starts the window; the third reads the window from 600 s before, finds those events in no
    stretch of its cursor, and requests a run "for late events not told apart": in listing mode
    of every table, a listing of the account (91 requests at 40 customers, 36 s with the models;
    measured), for no change at all."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    admin.post("advance", seconds=5, updates=5)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    for tick in range(2):
        result = evaluate(instance, cursor)
        assert not result.run_requests, (
            f"tick {tick + 2} after the sensor was turned on, with no change since, requests "
            f"{result.run_requests[0].run_key} of {sorted(selected(result.run_requests[0]) & set(STREAM_TABLES))}")
        cursor = result.cursor


@pytest.mark.parametrize("kept", ["id", "recent", "window"])
@pytest.mark.usefixtures("backfilled")
def test_a_cursor_of_before_requests_no_run_after_the_upgrade(warehouse: Path, admin: Admin, kept: str) -> None:
    """Claim (docs/design.md, "The events sensor, and why its runs take every table with events"):
    a cursor of before (the event id alone; or one that kept the window's ids, `recent`, or their
    counts and digests per stretch, `window`) begins its window again, a baseline, and a tick
    after the upgrade sees no old event as late. The API: changes within a stretch, the old
    sensor's window starting a second after them (its last poll 601 s later: `recent` holds
    none of them). Before, the first tick after the upgrade from `recent` read from the start of
    their stretch, found 5 ids its window did not hold, and requested a run for them, though
    every one was seen long ago."""
    into_the_next_stretch(admin)
    admin.post("advance", seconds=0, updates=5)
    ids = [e["event_id"] for e in admin.truth("events")[-5:]]
    assert len({ms_of(i) // STRETCH_MS for i in ids}) == 1
    polled_at = (ms_of(ids[-1]) + 1000) / 1000 + 600
    old = {"id": ids[-1],
           "recent": json.dumps({"event_id": ids[-1], "polled_at": polled_at, "recent": []}),
           "window": json.dumps({"event_id": ids[-1], "polled_at": polled_at, "window": {}, "baseline": ids[-1],
                                 "resume": None, "read_at": None})}[kept]
    instance, cursor = DagsterInstance.ephemeral(), old
    for n in range(3):  # the window begins, then its first read, then a read of it again
        tick = evaluate(instance, cursor)
        assert not tick.run_requests, f"tick {n + 1} after the upgrade requests {tick.run_requests[0].run_key}"
        cursor = tick.cursor
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
    assert EventsSensorCursor.decode(cursor).baseline is None  # its first read ended


@pytest.mark.usefixtures("backfilled")
def test_a_cursor_without_its_windows_ids_requests_no_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events"): ids the cursor does not go with are never compared.
    The window's ids are in the instance's key-value storage, the cursor in its tick storage: a
    cursor whose ids are not there (the sensor's cursor set on another instance, or a tick whose
    cursor was not kept after it wrote the ids) would take every id of its window as late, a run
    for events long seen. The window begins again instead, a baseline: no run."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=1, updates=300)
    for _ in range(3):  # the burst's run (not launched: not followed), the window's first reads
        cursor = evaluate(instance, cursor).cursor
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
    assert EventsSensorCursor.decode(cursor).kept
    elsewhere, other = DagsterInstance.ephemeral(), cursor  # another instance: none of its ids
    for _ in range(4):
        tick = evaluate(elsewhere, other)
        assert not tick.run_requests, f"a cursor without its window's ids requests {tick.run_requests[0].run_key}"
        other = tick.cursor
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
    # a tick whose cursor was not kept after it wrote the ids: the tick that prunes the burst's ids
    # (their instant left the window), then the same tick again, which must not take them as late.
    # The kept ids are pruned at the lag before the newest id's instant at most: a change the lag
    # after the burst, and its tick, first
    admin.post("advance", seconds=DEFAULT_VISIBILITY_LAG_SECONDS, updates=1)
    cursor = evaluate(instance, cursor).cursor
    for _ in range(30):
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
        first = evaluate(instance, cursor)
        if len(kept_ids(instance, first.cursor)) < 300:
            break
        cursor = first.cursor
    assert not first.run_requests and len(kept_ids(instance, first.cursor)) < 300, "the burst's ids were not pruned in 30 ticks"
    again = evaluate(instance, cursor)
    assert not again.run_requests, f"the tick again requests {again.run_requests[0].run_key}"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_before_a_burst_larger_than_ten_pages_requests_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no late event (visible after a tick read past its id, within the visibility lag) is
    lost; after a burst the window is read again every 2 minutes, 10 pages at most. The API: a
    customer's change whose write commits late, then a bulk import of 2,100 changes in the same
    2 s (one stretch); the late event becomes visible. Every window read (11 requests every 2
    minutes) stops at 2,000 ids, inside the stretch: the late event is on its first page, yet
    no run is requested until the stretch leaves the window (600 s), and the customer's change
    waits for some other change or a schedule."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    into_the_next_stretch(admin)
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=0, updates=2100, same_instant=True)
    newest = admin.truth("events")[-1]["event_id"]
    assert ms_of(newest) // STRETCH_MS == ms_of(late) // STRETCH_MS  # one stretch: the change and the burst
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1  # the burst's run (it ran before the late event was visible)
    cursor = tick.cursor
    admin.post("release", event_ids=[late])
    requested = []
    for _ in range(DEFAULT_VISIBILITY_LAG_SECONDS // 120):  # within the lag, a tick every 2 minutes
        admin.post("advance", seconds=120)
        result = evaluate(instance, cursor)
        requested += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert requested, f"the late event {late}, visible for 10 minutes, requested no run"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_seen_while_the_run_is_in_flight_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: events that come while the sensor's run is in flight go in one run after it, and no
    late event is lost. The API: a customer's change whose write commits late, then changes
    listed at once; the sensor's run for those starts, reads the stream (not the late event yet),
    and is still going when the late event becomes visible. The next tick sees it, owes a run
    after the one in flight; when that ends, the run requested repeats the key of the run that
    just ended (`events-up-to-<the cursor's event>`: a late event does not move the cursor), and
    the daemon, which launches no run key twice, launches nothing."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    late = hold_a_change(admin, 0)
    admin.post("advance", seconds=2, updates=3)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    first = tick.run_requests[0]
    running = add_run(instance, first, DagsterRunStatus.STARTED)
    admin.post("release", event_ids=[late])
    meanwhile = evaluate(instance, tick.cursor)
    assert not meanwhile.run_requests and "the run after it" in meanwhile.skip_message, meanwhile.skip_message
    instance.delete_run(running.run_id)
    add_run(instance, first, DagsterRunStatus.SUCCESS)  # it ended
    after = evaluate(instance, meanwhile.cursor)
    assert len(after.run_requests) == 1, after.skip_message
    assert after.run_requests[0].run_key != first.run_key, (
        f"the run for the late event {late} is keyed {first.run_key}, as the run that ended: never launched")


@pytest.mark.usefixtures("backfilled")
def test_late_events_either_side_of_a_stretchs_end_are_each_told_apart(warehouse: Path, admin: Admin) -> None:
    """Claim: every late event read again in the window is seen, by its id (before, the window kept
    a count and a digest per stretch of 33 s, which told one or two new ids apart). The API: two
    changes whose writes commit late, a second apart, the first in the last 50 ms of a stretch,
    the second in the next; changes listed at once after them. Both are seen (the run keyed by
    the newer), and the tick after requests nothing (seen once, requested once)."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    into_the_next_stretch(admin, offset_ms=STRETCH_MS - 1050)
    late = [hold_a_change(admin, 0), hold_a_change(admin, 1)]  # a second apart
    assert ms_of(late[1]) // STRETCH_MS == ms_of(late[0]) // STRETCH_MS + 1, late
    admin.post("advance", seconds=2, updates=3)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    add_run(instance, tick.run_requests[0], DagsterRunStatus.SUCCESS)
    admin.post("release", event_ids=late)
    again = evaluate(instance, tick.cursor)
    assert [r.run_key for r in again.run_requests] == [f"events-up-to-{late[1]}"], again.skip_message
    assert "told apart" not in (again.skip_message or "")
    add_run(instance, again.run_requests[0], DagsterRunStatus.SUCCESS)
    assert not evaluate(instance, again.cursor).run_requests, "seen once, requested once"


@pytest.mark.usefixtures("backfilled")
def test_in_listing_mode_a_canceled_runs_tables_go_to_the_run_again(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim: in listing mode the sensor's run takes the tables the events touched; a canceled
    run is run again once, and its tables go to that run. The API: a customer renamed, its run
    canceled; meanwhile a transaction is created. The run again takes customers and
    transactions (with the tables a new transaction makes), and events; after it succeeded
    nothing is owed."""
    instance, tick = renamed_in_listing_mode(admin, monkeypatch)
    add_run(instance, tick.run_requests[0], DagsterRunStatus.CANCELED)
    admin.post("advance", new_transactions=1)
    again = evaluate(instance, tick.cursor)
    assert len(again.run_requests) == 1, again.skip_message
    assert {"events", "customers", "transactions"} <= selected(again.run_requests[0]) & set(STREAM_TABLES)
    assert not EventsSensorCursor.decode(again.cursor).tables  # requested: none owed
    add_run(instance, again.run_requests[0], DagsterRunStatus.SUCCESS)
    done = evaluate(instance, again.cursor)
    assert not done.run_requests and "succeeded" in done.skip_message, done.skip_message
