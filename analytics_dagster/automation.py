"""Jobs, schedules and sensors: when the sync runs, and what watches it."""


from collections import defaultdict
from typing import Any

import dlt
from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    run_failure_sensor,
    sensor,
)

from analytics_dagster.assets import GROUP, asset_key
from analytics_dagster.source.events import events_after, latest_event_id
from analytics_dagster.source.resources import table_of_event

FAST_MOVING = ["events", "transactions", "subscriptions", "customers", "customer_addresses", "businesses"]

sync_all_job = define_asset_job(
    "sync_all",
    selection=AssetSelection.groups(GROUP),
    description="Sync every resource of the API into the warehouse, then check primary keys.",
)
sync_fast_moving_job = define_asset_job(
    "sync_fast_moving",
    selection=AssetSelection.assets(*[asset_key(n) for n in FAST_MOVING]),
    description="Sync the resources that change by the hour: " + ", ".join(FAST_MOVING) + ".",
)

full_refresh_job = define_asset_job(
    "full_refresh",
    selection=AssetSelection.groups(GROUP),
    config={"ops": {"analytics_api": {"config": {"full_refresh": True}}}},
    description=(
        "Forget the incremental state: read every resource whole and write every row (merged on "
        "its key). The safety net for whatever incremental sync cannot see."
    ),
)

def _schedule(name: str, job: Any, cron: str, description: str) -> ScheduleDefinition:
    # schedules ship stopped: a user turns on what fits their API budget
    return ScheduleDefinition(
        name=name, job=job, cron_schedule=cron, description=description,
        default_status=DefaultScheduleStatus.STOPPED,
    )


hourly_fast_moving = _schedule(
    "hourly_fast_moving", sync_fast_moving_job, "0 * * * *",
    "Every hour: events, transactions, subscriptions, customers and their children.",
)
daily_all = _schedule("daily_all", sync_all_job, "30 2 * * *", "Every day at 02:30: every resource.")
weekly_full_refresh = _schedule(
    "weekly_full_refresh", full_refresh_job, "0 4 * * 0",
    "Every Sunday at 04:00: a full refresh of every resource.",
)

def assets_for_events(events: list[dict]) -> list[str]:
    """The assets a batch of events makes stale, `events` included, in a stable order."""
    touched = {"events"}
    for event in events:
        table = table_of_event(event.get("event_type"))
        if table:
            touched.add(table)
    return sorted(touched)


@sensor(
    name="api_events_sensor",
    job=sync_all_job,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Polls the API's /v1/events for events newer than its cursor (the last event_id seen) "
        "and requests a sync of the assets they touch; in events mode such a run costs a "
        "request per 200 events. The first tick only sets the cursor."
    ),
)
def api_events_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    # settings are resolved here, at evaluation, never when the code location loads
    base_url = dlt.config["sources.analytics.base_url"]
    api_key = dlt.secrets["sources.analytics.api_key"]
    if context.cursor is None:
        newest = latest_event_id(base_url, api_key)
        return SensorResult(skip_reason=SkipReason(f"cursor set to the newest event {newest}"), cursor=newest or "")
    events = events_after(base_url, api_key, context.cursor or None)
    if not events:
        return SkipReason(f"no events after {context.cursor}")
    newest = events[-1]["event_id"]
    names = assets_for_events(events)
    by_type: dict[str, int] = defaultdict(int)
    for event in events:
        by_type[str(event.get("event_type"))] += 1
    context.log.info(f"{len(events)} new events up to {newest}: {dict(by_type)}; syncing {names}")
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=f"events-up-to-{newest}",
                asset_selection=[asset_key(n) for n in names],
                tags={"analytics/events_up_to": newest},
            )
        ],
        cursor=newest,
    )


@run_failure_sensor(
    name="report_failed_runs",
    default_status=DefaultSensorStatus.RUNNING,
    description="Writes one clear line per failed run to the log: job, run id, failed steps, error.",
)
def report_failed_runs(context: RunFailureSensorContext) -> None:
    context.log.error(failure_report(context))


def failure_report(context: RunFailureSensorContext) -> str:
    """One line: which run of which job failed, in which steps, and the first line of each error."""
    run = context.dagster_run
    errors = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        cause = error
        while cause is not None and cause.cause is not None:  # the innermost error says most
            cause = cause.cause
        text = (cause.message if cause else error.message if error else "").strip().splitlines()
        errors.append(f"{event.step_key}: {text[0] if text else 'no message'}")
    detail = "; ".join(errors) or (context.failure_event.message or "no message")
    return f"Run {run.run_id} of job {run.job_name} failed. {detail}"
