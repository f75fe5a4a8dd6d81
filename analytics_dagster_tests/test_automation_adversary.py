"""The events sensor (issue #30) against what the API allows: bursts, failures, cancels.

Each test states a claim of docs/design.md ("The events sensor, and why its runs take every table
with events", "How fast a change arrives") and the API's behaviour that breaks it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, RunRequest

from analytics_dagster.automation import (
    RUN_KEY_TAG,
    SENSOR_NAME,
    SENSOR_NAME_TAG,
    EVENTS_SENSOR_INTERVAL_SECONDS,
    EventsSensorCursor,
    failure_report,
)
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_automation import KEPT, evaluate, launch, run_failure_context

# a burst of more changes than the sensor reads in a tick (10 pages of 200 events), all within
# the visibility window (600 s of the API's clock) it reads again at every tick
BURST = 2100


def break_a_transaction(admin: Admin) -> None:
    """A transaction whose subtotal is a cent more than its lines': the models' test
    line_items_add_up_to_their_transaction (error severity) fails, so does the models step."""
    txn = next(t for t in admin.truth("transactions") if t["details"]["line_items"])
    details = {**txn["details"], "totals": {**txn["details"]["totals"]}}
    details["totals"]["subtotal"] = str(int(details["totals"]["subtotal"]) + 1)
    admin.post("mutate", resource="transactions", key=txn["id"], set={"details": details})


@pytest.mark.usefixtures("backfilled")
def test_a_change_after_a_burst_larger_than_ten_pages_requests_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no change waits for more than one run after the current one (p95 lag < 30 s).
    The API: a burst of 2,100 changes (a bulk import), then, after the sensor's run synced it,
    one more change. The sensor re-reads its window (600 s before its last poll) from the
    start at every tick, but reads at most 10 pages: the window holds more than 2,000 events, all
    seen, so the new change is beyond what it reads and no run is requested until the API's clock
    moves 10 minutes on."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=BURST)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    assert_warehouse_equals_api(warehouse, admin, KEPT)  # the run read the stream to its end
    cursor = evaluate(instance, tick.cursor).cursor  # the run succeeded: nothing owed
    customer = admin.truth("customers")[0]["id"]
    admin.post("advance", seconds=5)
    admin.post("mutate", resource="customers", key=customer, set={"name": "After the burst"})
    after = evaluate(instance, cursor)
    state = EventsSensorCursor.decode(after.cursor)
    assert len(after.run_requests) == 1, (
        f"a change after a burst of {BURST} events requested no run: {after.skip_message!r}; the sensor's "
        f"newest event is {state.event_id}, the API's {admin.truth('events')[-1]['event_id']}")


@pytest.mark.usefixtures("backfilled")
def test_idle_ticks_after_a_burst_cost_what_is_claimed(warehouse: Path, admin: Admin) -> None:
    """Claim: a tick with nothing new makes one request, and a page of the late-event window when
    that holds more than a page of ids: idle cost <= 12 a minute (5% of 240). The API: a burst of
    1,000 changes, synced by the sensor's run; then nothing for minutes. Before, every tick for the
    next 10 minutes of the API's clock read the whole window again (5 pages), all events seen: 30
    requests a minute with nothing new."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=1000)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    cursor = evaluate(instance, tick.cursor).cursor
    kept, costs = EventsSensorCursor.decode(cursor).kept, []
    for _ in range(60 // EVENTS_SENSOR_INTERVAL_SECONDS):  # the minute after, nothing new
        admin.post("advance", seconds=EVENTS_SENSOR_INTERVAL_SECONDS)
        admin.post("stats/reset")
        idle = evaluate(instance, cursor)
        assert not idle.run_requests
        cursor = idle.cursor
        costs.append(admin.get("stats")["by_resource"].get("events", 0))
    assert sum(costs) <= 12, f"the idle minute after a burst made {sum(costs)} requests: {costs}"
    # the window's ids (the burst's, still in it) are written only when they change
    assert EventsSensorCursor.decode(cursor).kept == kept


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_failing_model_does_not_hold_back_the_raw_tables(warehouse: Path, admin: Admin) -> None:
    """Claim: p95 lag < 30 s to the raw tables being exact; a failed model fails the sensor's
    run, retried like any failed run, "the raw tables stay exact". The API: a transaction whose
    totals disagree with its lines by a cent (a model test of error severity fails: the models
    step fails, the raw step succeeded). The run fails, its retry fails the same way; then a
    customer changes: the raw step would sync it in seconds, but the sensor's backoff (5 min, then
    15 min, then 1 h) is on the whole run, so the raw tables wait minutes to an hour for a change
    no model is needed for."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    break_a_transaction(admin)
    keys = set()
    for attempt in range(2):  # the run of the change, then its retry at the next tick
        tick = evaluate(instance, cursor)
        assert len(tick.run_requests) == 1, (attempt, tick.skip_message)
        keys.add(tick.run_requests[0].run_key)
        result = launch(instance, tick.run_requests[0])
        assert not result.success, attempt
        failed = {e.step_key for e in result.get_step_failure_events()}
        assert failed == {"analytics_models"}, failed  # the raw step succeeded...
        assert_warehouse_equals_api(warehouse, admin, KEPT)  # ... and the raw tables are exact
        cursor = tick.cursor
    assert len(keys) == 2, f"the retry repeats its run's key (the daemon would launch nothing): {keys}"
    idle = evaluate(instance, cursor)  # retried once: with no new event, no run a tick
    assert not idle.run_requests and "models step alone (2 in a row" in idle.skip_message, idle.skip_message
    cursor = idle.cursor
    customer = admin.truth("customers")[0]["id"]
    admin.post("mutate", resource="customers", key=customer, set={"name": "Changed meanwhile"})
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1, (
        f"a customer's change after two runs failed in their models step requests no run: {tick.skip_message!r}")


@pytest.mark.usefixtures("backfilled")
def test_an_idle_ticks_cursor_stays_small_after_a_burst(warehouse: Path, admin: Admin) -> None:
    """Claim: the idle cost is a request a tick. But the daemon writes every tick, with its cursor,
    to the instance's tick storage (the sensor daemon's `SensorLaunchContext._write`), and keeps skipped ticks
    7 days, successful ones for good (Dagster's default retention for sensors): 60,480 ticks a
    week at 10 s. The API: 1,000 changes in a few minutes, then nothing. The cursor of every
    idle tick for the next 10 minutes holds the ids of the window (about 32 bytes each): ~33 KB a
    tick; at a steady event a second, 600 ids (~19 KB) on every tick: over 1 GB of tick storage a
    week."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=1000)
    cursor = evaluate(instance, cursor).cursor
    admin.post("advance", seconds=60)  # a minute later, nothing new
    idle = evaluate(instance, cursor)
    assert not idle.run_requests
    size = len(idle.cursor or "")
    assert size < 4096, f"an idle tick's cursor is {size} bytes: {idle.cursor}"


@pytest.mark.usefixtures("backfilled")
def test_the_changes_of_a_canceled_run_get_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no change waits for more than one run after the current one. The API: changes, then
    nothing. The sensor's run is canceled (by a user, a script, a deployment that terminates the runs in
    flight: the run's status tells them apart by nothing). The sensor
    consumed the events into its cursor: unless it owes a run for them, the warehouse stays
    without those changes until some other change or a schedule, however long the API stays
    quiet. It owes exactly one: a canceled retry is not run again (a user who cancels twice is
    not fought)."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=5, new_customers=1)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1

    def cancel(request: RunRequest) -> None:
        instance.add_run(DagsterRun(job_name="sync_all", run_id=str(uuid.uuid4()), status=DagsterRunStatus.CANCELED,
                                    tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME}))

    cancel(tick.run_requests[0])
    with pytest.raises(AssertionError):  # the changes are not in the warehouse
        assert_warehouse_equals_api(warehouse, admin, KEPT)
    after = evaluate(instance, tick.cursor)
    assert len(after.run_requests) == 1, f"the changes of a canceled run get no run: {after.skip_message!r}"
    assert after.run_requests[0].run_key != tick.run_requests[0].run_key  # (the daemon launches no key twice)
    assert launch(instance, after.run_requests[0]).success  # the retry brings the changes in
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    done = evaluate(instance, after.cursor)
    assert not done.run_requests and "succeeded" in done.skip_message, done.skip_message

    # a change whose run is canceled, then its retry: no third run, however many ticks follow
    admin.post("advance", updates=1)
    tick = evaluate(instance, done.cursor)
    cancel(tick.run_requests[0])
    retry = evaluate(instance, tick.cursor)
    assert len(retry.run_requests) == 1, retry.skip_message
    cancel(retry.run_requests[0])
    again = evaluate(instance, retry.cursor)
    assert not again.run_requests and "canceled (2 in a row)" in again.skip_message, again.skip_message
    assert not evaluate(instance, again.cursor).run_requests
    assert not EventsSensorCursor.decode(again.cursor).owed


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_run_failed_in_its_models_is_reported_with_the_failing_test(warehouse: Path, admin: Admin) -> None:
    """Claim: a failed run gets one clear line naming what was wrong (report_failed_runs). The
    API: a transaction whose totals disagree with its lines (the sensor's run fails in its
    models step). The line should name the dbt test that failed, not only dbt's exit code."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    break_a_transaction(admin)
    tick = evaluate(instance, cursor)
    result = launch(instance, tick.run_requests[0])
    assert not result.success
    report = failure_report(run_failure_context(instance, result))
    assert "analytics_models" in report, report
    assert "line_items_add_up_to_their_transaction" in report, report


@pytest.mark.usefixtures("backfilled_with_models")
def test_the_sensors_run_in_listing_mode_costs_what_its_events_cost(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim: the sensor's run reads the stream once (a request per 200 changes). With
    `incremental = "listing"` (a setting the project offers, and the sensor's own advice to a key
    without notification.read), every run lists every table it takes: a run of every table of
    the stream, here 40 customers and a rename of one, costs 91 requests (two per customer for
    their addresses and businesses); on a real account hours at 240 a minute, one such run after
    another while changes keep coming. The run takes the tables the events touched instead."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    customer = admin.truth("customers")[0]["id"]
    admin.post("mutate", resource="customers", key=customer, set={"name": "Renamed"})
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert {k.path[-1] for k in tick.run_requests[0].asset_selection or []} >= {"events", "customers"}
    admin.post("stats/reset")
    assert launch(instance, tick.run_requests[0]).success
    by_resource = admin.get("stats")["by_resource"]
    assert sum(by_resource.values()) <= 10, f"the sensor's run for one rename made {sum(by_resource.values())} requests: {by_resource}"
    assert_warehouse_equals_api(warehouse, admin, ["customers"])
