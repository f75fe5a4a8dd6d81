"""The code location: `dagster dev` and `dagster asset materialize -m analytics_dagster.definitions`."""

from dagster import Definitions, in_process_executor
from dagster_dlt import DagsterDltResource

from analytics_dagster.assets import analytics_assets
from analytics_dagster.automation import (
    api_events_sensor,
    daily_all,
    full_refresh_job,
    hourly_fast_moving,
    report_failed_runs,
    sync_all_job,
    sync_fast_moving_job,
    weekly_full_refresh,
)
from analytics_dagster.checks import primary_key_checks

defs = Definitions(
    assets=[analytics_assets],
    asset_checks=[primary_key_checks],
    jobs=[sync_all_job, sync_fast_moving_job, full_refresh_job],
    schedules=[hourly_fast_moving, daily_all, weekly_full_refresh],
    sensors=[api_events_sensor, report_failed_runs],
    resources={"dlt": DagsterDltResource()},
    # One process per run, not per step: the sync is one step and the checks another, and a
    # process each costs seconds (shared/NOTES.md #12). Steps run one after the other, so a run
    # never has two writers on the destination either.
    executor=in_process_executor,
)
