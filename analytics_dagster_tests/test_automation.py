"""Sensors evaluated with Dagster's test contexts, against the sandbox."""

from __future__ import annotations

from pathlib import Path

from dagster import AssetKey, DagsterEventType, DagsterInstance, build_run_status_sensor_context, build_sensor_context

from analytics_dagster.automation import (
    api_events_sensor,
    assets_for_events,
    failure_report,
    report_failed_runs,
)
from analytics_dagster.definitions import defs
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_sync import sync


def test_events_sensor_requests_a_run_only_for_new_events(warehouse: Path, admin: Admin) -> None:
    assert sync().success  # the backfill
    first = api_events_sensor.evaluate_tick(build_sensor_context(cursor=None))
    assert not first.run_requests
    newest = admin.truth("events")[-1]["event_id"]
    assert first.cursor == newest

    quiet = api_events_sensor.evaluate_tick(build_sensor_context(cursor=first.cursor))
    assert not quiet.run_requests and quiet.cursor in (None, first.cursor)

    admin.post("advance", new_transactions=2, new_customers=1)
    tick = api_events_sensor.evaluate_tick(build_sensor_context(cursor=first.cursor))
    assert len(tick.run_requests) == 1
    request = tick.run_requests[0]
    selected = {k.path[-1] for k in request.asset_selection}
    assert {"events", "transactions", "customers"} <= selected
    assert tick.cursor == admin.truth("events")[-1]["event_id"] != first.cursor
    # the run it requests is fed by the events: one request, and exact
    admin.post("stats/reset")
    assert sync(sorted(selected)).success
    assert admin.get("stats")["by_resource"] == {"events": 1}
    assert_warehouse_equals_api(warehouse, admin, sorted(selected))

    again = api_events_sensor.evaluate_tick(build_sensor_context(cursor=tick.cursor))
    assert not again.run_requests


def test_event_types_map_to_assets() -> None:
    events = [{"event_type": "address.updated"}, {"event_type": "business.created"}, {"event_type": "adjustment.created"}]
    assert assets_for_events(events) == ["businesses", "customer_addresses", "events"]


def test_failed_run_is_reported_with_its_error(warehouse: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", "a-wrong-key-0123456789")
    instance = DagsterInstance.ephemeral()
    result = defs.resolve_job_def("sync_all").execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[AssetKey(["analytics", "products"])]
    )
    assert not result.success
    failure = instance.all_logs(result.run_id, of_type=DagsterEventType.RUN_FAILURE)[0].dagster_event
    context = build_run_status_sensor_context(
        sensor_name="report_failed_runs", dagster_event=failure, dagster_instance=instance,
        dagster_run=result.dagster_run,
    ).for_run_failure()
    report_failed_runs(context)  # logs the report; it must not raise
    report = failure_report(context)
    assert result.run_id in report and "sync_all" in report and "analytics_api" in report
    # a run's first request reads the event stream, to plan it
    assert "products" in report and "403" in report and "/v1/events" in report, report
    assert "a-wrong-key-0123456789" not in report
