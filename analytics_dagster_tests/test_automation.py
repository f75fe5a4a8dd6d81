"""Sensors evaluated with Dagster's test contexts, against the sandbox."""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import dlt
import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunRequest,
    build_run_status_sensor_context,
    build_sensor_context,
)

from analytics_dagster import automation
from analytics_dagster.automation import (
    MAX_RETRIES,
    RUN_KEY_TAG,
    SENSOR_NAME,
    SENSOR_NAME_TAG,
    STREAM_TABLES,
    EventsSensorCursor,
    api_events_sensor,
    assets_for_events,
    failure_report,
    report_failed_runs,
    window_key,
)
from analytics_dagster.definitions import defs
from analytics_dagster.models import analytics_models
from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxServer, World
from analytics_dagster.source import configured_api_root
from analytics_dagster.source.events import EVENTS_PATH, event_client
from analytics_dagster.source.resources import RESOURCES_BY_NAME, table_of_event
from analytics_dagster_tests.conftest import Admin, assert_events_cover_api, assert_warehouse_equals_api
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_sync import sync

DAY = 24 * 3600
# the tables the event stream keeps; and those of its selection listed every run (fields of theirs
# change with no event: discounts), with the requests a small world's listing costs (one a part)
KEPT = [t for t in STREAM_TABLES if t != "events" and not RESOURCES_BY_NAME[t].unnotified]
LISTED = {t: len(RESOURCES_BY_NAME[t].parts) for t in STREAM_TABLES if RESOURCES_BY_NAME[t].unnotified}
MODELS = {spec.key.path[-1] for spec in analytics_models.specs}  # every model reads a table of the stream


def evaluate(instance: DagsterInstance, cursor: Optional[str]) -> Any:
    """One tick of the events sensor, with the instance the daemon would give it."""
    return api_events_sensor.evaluate_tick(build_sensor_context(cursor=cursor, instance=instance))


def launch(instance: DagsterInstance, request: RunRequest) -> Any:
    """Run a run request of the sensor in-process, in `instance`, as the daemon would launch it:
    job sync_all (the sensor's), the request's selection and tags, plus the tags the daemon
    adds to a sensor's run (its run_key as `dagster/run_key`, the sensor's name as
    `dagster/sensor_name`), by which the sensor finds the run on its next tick."""
    return defs.resolve_job_def("sync_all").execute_in_process(
        instance=instance,
        asset_selection=list(request.asset_selection or []),
        tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME},
        raise_on_error=False,
    )


def followed(cursor: Optional[str]) -> EventsSensorCursor:
    """The sensor's cursor but for its late-event window (`floor`, `read_at`, `reached`, `baseline`,
    `kept`, `kept_from`), the events without an id it read (`unkeyed`) and when it ticked."""
    return dataclasses.replace(EventsSensorCursor.decode(cursor), floor=None, read_at=None, reached=None,
                               baseline=None, kept=None, parent=None, kept_from=None, unkeyed=[], ticked_at=None)


def kept_ids(instance: DagsterInstance, cursor: str) -> list[str]:
    """The late-event window's ids the sensor keeps in `instance`'s key-value storage for `cursor`
    (under its token, `kept`)."""
    key = window_key(EventsSensorCursor.decode(cursor).kept)
    return json.loads(instance.run_storage.get_cursor_values({key})[key])["ids"]


def selected(request: RunRequest) -> set[str]:
    return {k.path[-1] for k in request.asset_selection or []}


@pytest.mark.usefixtures("backfilled")
def test_events_sensor_requests_a_run_only_for_new_events(warehouse: Path, admin: Admin) -> None:
    instance = DagsterInstance.ephemeral()
    first = evaluate(instance, None)
    assert not first.run_requests
    newest = admin.truth("events")[-1]["event_id"]
    # (its late-event window begun: its first read made in the first tick)
    assert followed(first.cursor) == EventsSensorCursor(event_id=newest)
    assert EventsSensorCursor.decode(first.cursor).floor

    quiet = evaluate(instance, first.cursor)
    assert not quiet.run_requests
    assert followed(quiet.cursor) == EventsSensorCursor(event_id=newest)

    admin.post("advance", new_transactions=2, new_customers=1)
    # a cursor of before runs were followed (the event id alone) still works
    tick = evaluate(instance, newest)
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    # every table the stream keeps, not only those the events touch (customers, transactions),
    # and the models reading them (every model), built in the same run
    assert selected(request) == set(STREAM_TABLES) | MODELS
    state = EventsSensorCursor.decode(tick.cursor)
    assert state.event_id == admin.truth("events")[-1]["event_id"] != newest
    assert state.run_key == request.run_key and not state.owed
    # the run it requests is fed by the events: one request (and the discounts' listing), and exact
    admin.post("stats/reset")
    result = launch(instance, request)
    assert result.success
    assert admin.get("stats")["by_resource"] == {"events": 1, **LISTED}
    assert_warehouse_equals_api(warehouse, admin, STREAM_TABLES)
    built = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert built == set(STREAM_TABLES) | MODELS

    again = evaluate(instance, tick.cursor)
    assert not again.run_requests
    assert "succeeded" in again.skip_message
    assert followed(again.cursor) == EventsSensorCursor(event_id=state.event_id)


@pytest.mark.usefixtures("backfilled")
def test_events_during_a_run_go_in_one_run_after_it(warehouse: Path, admin: Admin) -> None:
    """A burst of changes while the sensor's run is in flight launches nothing more until it
    ends; then exactly one run, which brings in every change made meanwhile."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=2)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    first = tick.run_requests[0]
    assert launch(instance, first).success  # it syncs the changes it was requested for...
    # ... and, as the sensor sees it, is still going: a newer run of its key, in flight
    running = DagsterRun(job_name="sync_all", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED,
                         tags={RUN_KEY_TAG: first.run_key, SENSOR_NAME_TAG: SENSOR_NAME})
    instance.add_run(running)
    cursor = tick.cursor
    for burst in range(3):  # new events at every tick: none requests a run
        admin.post("advance", updates=2, new_transactions=1)
        meanwhile = evaluate(instance, cursor)
        assert not meanwhile.run_requests, burst
        assert "is started" in meanwhile.skip_message and "the run after it" in meanwhile.skip_message
        state = EventsSensorCursor.decode(meanwhile.cursor)
        assert state.owed and state.run_key == first.run_key
        cursor = meanwhile.cursor
    instance.delete_run(running.run_id)  # it ended: the sensor finds the run that succeeded
    after = evaluate(instance, cursor)
    assert len(after.run_requests) == 1, after.skip_message
    assert after.run_requests[0].run_key != first.run_key
    with pytest.raises(AssertionError):  # the burst's changes are not in yet...
        assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert launch(instance, after.run_requests[0]).success  # ... the one run after it brings them all
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert not evaluate(instance, after.cursor).run_requests


@pytest.mark.usefixtures("backfilled")
def test_the_sensor_keeps_quiet_tables_current_and_never_lists_them_again(warehouse: Path, admin: Admin) -> None:
    """100 days of changes to customers and transactions only, synced by the sensor's runs alone:
    the other tables are current as of every run, so none ages past the 87 days after which a
    table is listed again."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    customers = [c["id"] for c in admin.truth("customers")]
    quiet = [t for t in KEPT if t not in ("customers", "transactions")]
    as_of: dict[str, int] = {}
    for step in range(4):
        last_event = admin.truth("events")[-1]["event_id"]
        admin.post("advance", seconds=25 * DAY)
        admin.post("mutate", resource="customers", key=customers[step], set={"name": f"Renamed {step}"})
        admin.post("advance", new_transactions=2)
        tick = evaluate(instance, cursor)
        assert len(tick.run_requests) == 1, tick.skip_message
        request = tick.run_requests[0]
        assert selected(request) == set(STREAM_TABLES) | MODELS
        admin.post("stats/reset")
        result = launch(instance, request)
        assert result.success
        # one read of the stream, and no listing of any table but those listed every run
        assert admin.get("stats")["by_resource"] == {"events": 1, **LISTED}, step
        meta = metadata(result)
        assert {t: meta[t]["sync_mode"] for t in KEPT} == {t: "events" for t in KEPT}, step
        # a new transaction may bill a non-catalog price (and product) made with it: their
        # tables take those, and nothing else
        made = {}
        for event in admin.truth("events"):
            if event["event_id"] > last_event:
                made.setdefault(table_of_event(event["event_type"]), set()).add(event["data"]["id"])
        assert set(made) <= {"customers", "transactions", "prices", "products"}, made
        for table in quiet:
            assert meta[table]["rows_written"] == len(made.get(table, ())), (step, table)
            moved = parse_ns(meta[table]["current_as_of"])
            assert moved > as_of.get(table, 0), (step, table)
            as_of[table] = moved
        cursor = tick.cursor
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert_events_cover_api(warehouse, admin)  # the API keeps 90 days of them; the warehouse all


@pytest.mark.usefixtures("backfilled")
def test_a_failed_run_is_run_again_without_a_new_event(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = DagsterInstance.ephemeral()
    first = evaluate(instance, None)
    admin.post("advance", updates=10, archives=2, new_customers=2, new_transactions=3)
    tick = evaluate(instance, first.cursor)
    assert len(tick.run_requests) == 1
    # the run's first request, to the event stream, fails: no retry, the run fails
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")
    admin.post("inject", resource="events", kind="status", status=500, count=1)
    assert not launch(instance, tick.run_requests[0]).success

    # no new event: the next tick finds the run failed and requests another at once
    retry = evaluate(instance, tick.cursor)
    assert len(retry.run_requests) == 1, retry.skip_message
    assert retry.run_requests[0].run_key != tick.run_requests[0].run_key
    assert selected(retry.run_requests[0]) == set(STREAM_TABLES) | MODELS
    assert EventsSensorCursor.decode(retry.cursor).failures == 1

    # that one fails too: the next waits 5 minutes, however often the sensor ticks
    admin.post("inject", resource="events", kind="status", status=500, count=1)
    assert not launch(instance, retry.run_requests[0]).success
    waiting = evaluate(instance, retry.cursor)
    assert not waiting.run_requests and "waits" in waiting.skip_message
    state = EventsSensorCursor.decode(waiting.cursor)
    assert state.failures == 2 and state.owed and state.run_key is None
    assert not evaluate(instance, waiting.cursor).run_requests

    later = time.time() + 301
    monkeypatch.setattr(automation, "_now", lambda: later)
    again = evaluate(instance, waiting.cursor)
    assert len(again.run_requests) == 1, again.skip_message
    assert launch(instance, again.run_requests[0]).success
    assert_warehouse_equals_api(warehouse, admin, STREAM_TABLES)  # what the sensor's run syncs

    done = evaluate(instance, again.cursor)
    assert not done.run_requests
    assert followed(done.cursor) == EventsSensorCursor(event_id=state.event_id)


def test_a_run_that_keeps_failing_is_not_run_again_forever(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the last retry failed, only a new event brings a run, and then not before an hour."""
    instance = DagsterInstance.ephemeral()
    newest = admin.truth("events")[-1]["event_id"]
    request = RunRequest(run_key=f"events-up-to-{newest}-after-{MAX_RETRIES}-failed", asset_selection=[
        AssetKey(["analytics", t]) for t in STREAM_TABLES
    ])
    key = os.environ["SOURCES__ANALYTICS__API_KEY"]
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", "a-wrong-key-0123456789")  # 403 at once
    assert not launch(instance, request).success
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", key)
    failing = EventsSensorCursor(event_id=newest, run_key=request.run_key, failures=MAX_RETRIES)

    gave_up = evaluate(instance, failing.encode())
    assert not gave_up.run_requests and "no more retries" in gave_up.skip_message
    state = EventsSensorCursor.decode(gave_up.cursor)
    assert state.failures == MAX_RETRIES + 1 and not state.owed and state.run_key is None
    assert not evaluate(instance, gave_up.cursor).run_requests

    admin.post("advance", updates=3)
    soon = evaluate(instance, gave_up.cursor)
    assert not soon.run_requests and "waits" in soon.skip_message
    later = time.time() + 3601
    monkeypatch.setattr(automation, "_now", lambda: later)
    assert len(evaluate(instance, soon.cursor).run_requests) == 1


def test_the_sensor_finds_the_stream_where_a_run_does(monkeypatch) -> None:
    """The sensor resolves the API's root as a run does: `environment = sandbox` reads Paddle's
    `/events` (here a sandbox serving Paddle's paths at the base URL given), not `/v1/events`."""
    with SandboxServer(World(customers=10, seed=3), path_prefix="") as server:
        admin = Admin(server.url)
        monkeypatch.setenv("SOURCES__ANALYTICS__ENVIRONMENT", "sandbox")
        monkeypatch.setenv("SOURCES__ANALYTICS__BASE_URL", server.url)
        monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", server.config.api_key)
        instance = DagsterInstance.ephemeral()
        first = evaluate(instance, None)
        assert EventsSensorCursor.decode(first.cursor).event_id == admin.truth("events")[-1]["event_id"]
        admin.post("advance", new_transactions=2)
        assert len(evaluate(instance, first.cursor).run_requests) == 1
        # the first tick: the newest event and the window's first read; then the tick's read
        assert admin.get("stats")["by_resource"] == {"events": 3}
        monkeypatch.delenv("SOURCES__ANALYTICS__ENVIRONMENT")  # the seed API's /v1/events: not served
        with pytest.raises(Exception, match="404"):
            evaluate(instance, first.cursor)


def test_the_sensor_cursor_reads_the_old_format_and_backs_off() -> None:
    assert EventsSensorCursor.decode("evt_01abc") == EventsSensorCursor(event_id="evt_01abc")
    # a blank cursor (the old one of an empty stream, or Dagster's UI's "Edit cursor" emptied) is a
    # cleared one: nothing seen, nothing read (`automation.cleared`)
    for blank in (None, "", " \n"):
        assert EventsSensorCursor.decode(blank) == EventsSensorCursor(unkeyed=None)
    state = EventsSensorCursor(event_id="evt_1", run_key="k", owed=True, failures=2, failed_at=1000.0)
    assert EventsSensorCursor.decode(state.encode()) == state
    waits = [EventsSensorCursor(failures=n, failed_at=1000.0).wait_seconds(1000.0) for n in range(7)]
    assert waits == [0, 0, 300, 900, 3600, 3600, 3600]
    assert EventsSensorCursor(failures=3, failed_at=1000.0).wait_seconds(1000.0 + 900) == 0


def _use_the_clients_one_request(admin: Admin, block: float) -> None:
    """The API allows this client one request a minute and blocks it for `block` seconds past
    that (Paddle: 240, and 60 s); that one request is made here."""
    admin.post("config", rate_limit=1, rate_limit_block=block)
    root, key = configured_api_root(), dlt.secrets["sources.analytics.api_key"]
    assert event_client(root, key).get(EVENTS_PATH, params={"per_page": 1}).status_code == 200
    admin.post("stats/reset")


def rest_over(cursor: str) -> str:
    """`cursor` with its rest (`rest_until`) over a second ago: the tick evaluated with it reads on."""
    return dataclasses.replace(EventsSensorCursor.decode(cursor), rest_until=time.time() - 1).encode()


def test_a_tick_the_api_blocks_longer_than_it_waits_skips_and_asks_nothing_until_the_wait_is_over(
    warehouse: Path, admin: Admin
) -> None:
    """Paddle blocks a client past its rate limit for 60 s (429, `Retry-After`), and Dagster fails
    a sensor tick that runs past 60 s: a tick that met the block waited it out (dlt's retries obey
    Retry-After) and failed as timed out, each tick of the block. A tick now retries only while the
    wait ends within `TICK_WAIT_SECONDS` of its start: a longer one ends the tick at once, skipped,
    its cursor kept, and the ticks until the Retry-After is over make no request; the tick after
    reads what came meanwhile. A wait within it is waited, as before."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=3)
    _use_the_clients_one_request(admin, block=60)
    blocked = evaluate(instance, cursor)
    assert not blocked.run_requests
    assert "429" in blocked.skip_message and "Retry-After 60" in blocked.skip_message, blocked.skip_message
    assert "this tick read nothing, its cursor is kept" in blocked.skip_message
    assert admin.get("stats")["by_status"] == {"429": 1}  # one try: the retry's wait would pass the tick's
    # the cursor as it was, but for the rest and the tick's clocks (the API's from the 429's Date)
    state, before = EventsSensorCursor.decode(blocked.cursor), EventsSensorCursor.decode(cursor)
    assert dataclasses.replace(state, rest_until=None, ticked_at=before.ticked_at) == before
    assert time.time() + 50 < state.rest_until <= time.time() + 60
    assert state.ticked_at[0] >= before.ticked_at[0] and state.ticked_at[1] > before.ticked_at[1]

    resting = evaluate(instance, blocked.cursor)
    assert not resting.run_requests and "no request before then" in resting.skip_message
    assert admin.get("stats")["total"] == 1

    # the wait over (the cursor says it ended a second ago), the block lifted
    admin.post("config", rate_limit=0)
    after = evaluate(instance, rest_over(blocked.cursor))
    assert len(after.run_requests) == 1
    assert EventsSensorCursor.decode(after.cursor).rest_until is None
    assert EventsSensorCursor.decode(after.cursor).event_id == admin.truth("events")[-1]["event_id"]

    # a block within what a tick waits is waited: the tick retries and reads
    admin.post("advance", updates=2)
    _use_the_clients_one_request(admin, block=1)
    within = evaluate(instance, after.cursor)
    assert admin.get("stats")["by_status"]["429"] >= 1
    assert len(within.run_requests) == 1, within.skip_message
    assert EventsSensorCursor.decode(within.cursor).event_id == admin.truth("events")[-1]["event_id"]


def test_event_types_map_to_assets() -> None:
    events = [{"event_type": "address.updated"}, {"event_type": "business.created"}, {"event_type": "adjustment.created"},
              {"event_type": "payout.created"}]  # a type with no table: `events` only
    assert assets_for_events(events) == ["adjustments", "businesses", "customer_addresses", "events"]


def run_failure_context(instance: DagsterInstance, result: Any) -> Any:
    """What report_failed_runs is given for the failed run of `result`."""
    failure = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)[0].dagster_event
    return build_run_status_sensor_context(
        sensor_name="report_failed_runs", dagster_event=failure, dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()


def test_failed_run_is_reported_with_its_error(warehouse: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", "a-wrong-key-0123456789")
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("sync_all").execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[AssetKey(["analytics", "products"])]
    )
    assert not result.success
    context = run_failure_context(instance, result)
    report_failed_runs(context)  # logs the report; it must not raise
    report = failure_report(context)
    assert result.run_id in report and "sync_all" in report and "analytics_api" in report
    # a run's first request reads the event stream, to plan it
    assert "products" in report and "403" in report and "/v1/events" in report, report
    assert "a-wrong-key-0123456789" not in report


def watching_a_held_event(admin: Admin, customer: int, name: str) -> tuple[DagsterInstance, Optional[str], dict]:
    """After a backfill, the sensor's first tick; then a customer's change whose event is held
    (listed once released), and, two seconds on, changes whose events are listed at once."""
    assert sync().success
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    key = admin.truth("customers")[customer]["id"]
    late = admin.post("mutate", resource="customers", key=key, set={"name": name}, hold_event=True)
    admin.post("advance", seconds=2, updates=3)
    return instance, cursor, late


def test_the_sensor_sees_an_event_that_became_visible_late(warehouse: Path, admin: Admin) -> None:
    instance, cursor, late = watching_a_held_event(admin, 0, "late")
    tick = evaluate(instance, cursor)  # sees the visible events, not the held one
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    quiet = evaluate(instance, tick.cursor)
    assert not quiet.run_requests
    # the late event alone, with nothing newer: the next tick requests a run for it
    admin.post("release", event_ids=[late["event_id"]])
    again = evaluate(instance, quiet.cursor)
    assert len(again.run_requests) == 1 and late["event_id"] in again.run_requests[0].run_key
    assert launch(instance, again.run_requests[0]).success
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert not evaluate(instance, again.cursor).run_requests, "seen once, requested once"


def test_no_two_runs_of_the_sensor_share_a_run_key(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon launches nothing for a run key already used: a retry after a late event's
    failed run must not reuse the key of an earlier retry."""
    instance, cursor, late = watching_a_held_event(admin, 5, "Late Name")
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")
    keys = []

    def tick_and_launch(fail: bool) -> None:
        nonlocal cursor
        tick = evaluate(instance, cursor)
        cursor = tick.cursor
        for request in tick.run_requests:
            assert request.run_key not in keys, f"run key {request.run_key} used twice"
            keys.append(request.run_key)
            if fail:
                admin.post("inject", resource="events", kind="status", status=500, count=1)
            assert launch(instance, request).success != fail

    tick_and_launch(fail=True)  # the run of the new events fails
    tick_and_launch(fail=False)  # its retry succeeds
    admin.post("release", event_ids=[late["event_id"]])
    tick_and_launch(fail=True)  # the late event's run fails
    tick_and_launch(fail=False)  # its retry: a key of its own
    assert len(keys) == 4
    assert_warehouse_equals_api(warehouse, admin, KEPT)


def test_after_a_burst_a_tick_reads_what_is_new_and_a_page_of_the_window(
    warehouse: Path, admin: Admin
) -> None:
    """With more ids in its late-event window than a page holds, a tick reads the events after its
    cursor and a page of the window on from where the tick before stopped (two requests when none
    is new); an event that became visible late is seen when the read gets to it, within a read
    of the window (a page per 200 ids of it)."""
    instance, cursor, late = watching_a_held_event(admin, 0, "late after a burst")
    admin.post("advance", seconds=1, updates=300)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    cursor = evaluate(instance, tick.cursor).cursor  # its first read: what was there before, as it is
    admin.post("release", event_ids=[late["event_id"]])
    requests, keys = [], []
    for _ in range(4):  # the window holds about 300 ids: two pages
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
        admin.post("stats/reset")
        later = evaluate(instance, cursor)
        requests.append(admin.get("stats")["by_resource"].get("events", 0))
        keys += [r.run_key for r in later.run_requests]
        for request in later.run_requests:
            assert launch(instance, request).success
        cursor = later.cursor
    assert keys == [f"events-up-to-{late['event_id']}"], (keys, requests)
    assert max(requests) <= 1 + automation.WINDOW_PAGES, requests
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert not evaluate(instance, cursor).run_requests, "seen once, requested once"


def assert_the_window_holds_in(instance: DagsterInstance, admin: Admin) -> None:
    """The late-event window kept in `instance`'s key-value storage: behind a burst of 300 changes
    (more ids than a page), an event that becomes visible late gets its run, once; the storage
    holds its id then."""
    cursor = evaluate(instance, None).cursor
    late = admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"],
                      set={"name": "late, kept"}, hold_event=True)["event_id"]
    admin.post("advance", seconds=1, updates=300)
    tick = evaluate(instance, cursor)  # the window begins
    assert len(tick.run_requests) == 1
    cursor = evaluate(instance, tick.cursor).cursor  # (its run is not in the instance: not followed)
    admin.post("release", event_ids=[late])
    keys = []
    for _ in range(4):
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS)
        result = evaluate(instance, cursor)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor
    assert keys == [f"events-up-to-{late}"], keys
    kept = kept_ids(instance, cursor)
    assert late in kept and len(kept) > 300


def test_the_window_is_kept_in_a_sqlite_instance(warehouse: Path, admin: Admin, tmp_path: Path) -> None:
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert_the_window_holds_in(instance, admin)


@pytest.mark.parametrize("held", [2, 3])
def test_late_events_of_one_write_request_one_run(warehouse: Path, admin: Admin, held: int) -> None:
    """Events of the window become visible late together (a write that commits late, with them):
    the tick that reads them again requests one run for them all, keyed by the newest (apart
    from every other), and the next tick, seeing the same window, requests nothing."""
    assert sync().success
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    late = [admin.post("mutate", resource="customers", key=admin.truth("customers")[n]["id"],
                       set={"name": f"late {n}"}, hold_event=True)["event_id"] for n in range(held)]
    admin.post("advance", seconds=1, updates=3)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    quiet = evaluate(instance, tick.cursor)
    assert not quiet.run_requests
    admin.post("release", event_ids=late)
    again = evaluate(instance, quiet.cursor)
    assert [r.run_key for r in again.run_requests] == [f"events-up-to-{max(late)}"], again.skip_message
    assert launch(instance, again.run_requests[0]).success
    assert_warehouse_equals_api(warehouse, admin, KEPT)
    assert not evaluate(instance, again.cursor).run_requests, "seen once, requested once"


@pytest.mark.usefixtures("backfilled")
def test_an_event_late_since_before_the_sensor_started_is_seen_after_its_first_read(
    warehouse: Path, admin: Admin
) -> None:
    """The window's first read takes the stretches before the sensor started as they are, none
    of their events late (its baseline); an event of those stretches that becomes visible after
    that read is late like any: a change whose write commits late, made before the sensor was
    turned on, gets a run keyed by its event."""
    late = admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"],
                      set={"name": "late since before"}, hold_event=True)["event_id"]
    admin.post("advance", seconds=2, updates=3)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor  # the stream's end: after the held event
    for _ in range(2):  # the window begins, then its first read: the events before, as they are
        tick = evaluate(instance, cursor)
        assert not tick.run_requests, tick.run_requests[0].run_key
        cursor = tick.cursor
    assert EventsSensorCursor.decode(cursor).baseline is None  # read whole
    admin.post("release", event_ids=[late])
    again = evaluate(instance, cursor)
    assert [r.run_key for r in again.run_requests] == [f"events-up-to-{late}"], again.skip_message


@pytest.mark.parametrize("before", [
    "evt_01jd9z00000000000000000003",  # the newest event id alone
    '{"event_id": "evt_01jd9z00000000000000000003", "polled_at": 1.0, "recent": ["evt_01jd0000000000000000000001"]}',
    '{"event_id": "evt_01jd9z00000000000000000003", "polled_at": 1.0, "window": {"evt_01jd000": [1, "00ff"]}, '
    '"baseline": "evt_01jd0000000000000000000001", "resume": null, "read_at": 2.0}',
    '{"event_id": "evt_01jd9z00000000000000000003", "floor": "evt_01jd0000000000000000000000", "read_at": 2.0, '
    '"reached": null, "baseline": null, "kept": 7}',  # the window's ids under one key, `kept` a count of writes
])
def test_a_cursor_of_before_begins_its_window_again(before: str) -> None:
    """A cursor written before the window's ids went to the key-value storage under a token of
    their own (the event id alone, the window's ids in it as `recent`, their counts and digests
    per stretch as `window`, or its ids under one key with `kept` a count of writes) is read with
    no window: the next tick begins one."""
    state = EventsSensorCursor.decode(before)
    assert state.event_id == "evt_01jd9z00000000000000000003"
    assert (state.floor, state.read_at, state.reached, state.baseline, state.kept) == (None, None, None, None, None)


@pytest.mark.usefixtures("backfilled")
def test_the_ids_a_kept_cursor_replaced_are_blanked(warehouse: Path, admin: Admin) -> None:
    """The window's ids are written under a new token at each change (`kept`), in another of the
    sensor's slots; the first tick that loads a cursor blanks the ids of the token it replaced
    (`parent`): that cursor was kept, no tick loads them again. Only the ids of a tick whose
    cursor was not kept linger, until their slot is written again."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    tokens = []
    for _ in range(3):  # the window begins, then two ticks with new events: a write each
        admin.post("advance", seconds=automation.EVENTS_SENSOR_INTERVAL_SECONDS, updates=3)
        cursor = evaluate(instance, cursor).cursor
        tokens.append(EventsSensorCursor.decode(cursor).kept)

    def held() -> list[bool]:  # whether the storage holds each token's ids
        values = instance.run_storage.get_cursor_values({window_key(t) for t in tokens})
        return [json.loads(values.get(window_key(t)) or "{}").get("token") == t for t in tokens]

    assert len({t[:8] for t in tokens}) == 1 and len(set(tokens)) == 3  # one sensor's keys
    assert EventsSensorCursor.decode(cursor).parent == tokens[1]
    # the third tick loaded the second's cursor: the first's ids blanked; the second's are the
    # third's parent, blanked by the tick that loads the third's cursor
    assert held() == [False, True, True]
    evaluate(instance, cursor)
    assert held() == [False, False, True]


def renamed_in_listing_mode(admin: Admin, monkeypatch: pytest.MonkeyPatch) -> tuple[DagsterInstance, Any]:
    """`incremental = listing`, the sensor's cursor set, then a customer renamed: the instance and
    the tick, whose run takes `events` and `customers` alone of the stream's tables."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"], set={"name": "Renamed"})
    tick = evaluate(instance, cursor)
    assert selected(tick.run_requests[0]) & set(STREAM_TABLES) == {"events", "customers"}
    return instance, tick


@pytest.mark.usefixtures("backfilled")
def test_in_listing_mode_the_run_takes_the_tables_touched_and_its_retry_too(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`incremental = listing`: the sensor's run lists the tables the events touched (and
    `events`), not every table of the stream; a retry of a failed run takes its tables, with
    those of the events seen since."""
    instance, tick = renamed_in_listing_mode(admin, monkeypatch)
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")
    admin.post("inject", resource="events", kind="status", status=500, count=1)
    assert not launch(instance, tick.run_requests[0]).success
    admin.post("advance", new_transactions=1)
    retry = evaluate(instance, tick.cursor)
    assert len(retry.run_requests) == 1, retry.skip_message
    assert {"events", "customers", "transactions"} <= selected(retry.run_requests[0]) & set(STREAM_TABLES)
    assert not EventsSensorCursor.decode(retry.cursor).tables  # requested: none owed
