"""The code location: `dagster dev` and `dagster asset materialize -m analytics_dagster.definitions`."""

# Loading the code location is mostly importing dagster and dlt, which build hundreds of
# thousands of long-lived objects; every full collection the garbage collector runs meanwhile
# walks all of them again. Freezing what is loaded moves it out of the collector's way (it lives
# as long as the process anyway). Measured: loading this module 1.5 s without, 1.05 s with
# (`import dagster` alone: 0.7 s).
import gc

from dagster import Definitions, in_process_executor

gc.freeze()
from dagster_dlt import DagsterDltResource  # noqa: E402  (imports dlt)

gc.freeze()
from analytics_dagster.assets import analytics_assets  # noqa: E402
from analytics_dagster.automation import (  # noqa: E402
    api_events_sensor,
    daily_all,
    full_refresh_job,
    hourly_fast_moving,
    models_automation,
    report_failed_runs,
    sync_all_job,
    sync_fast_moving_job,
    weekly_full_refresh,
)
from analytics_dagster.checks import primary_key_checks  # noqa: E402
from analytics_dagster.models import analytics_models  # noqa: E402  (the manifest, read as JSON: no dbt import)
from analytics_dagster.reconcile import paddle_reconciliation  # noqa: E402

defs = Definitions(
    assets=[analytics_assets, analytics_models],
    asset_checks=[primary_key_checks, paddle_reconciliation],
    jobs=[sync_all_job, sync_fast_moving_job, full_refresh_job],
    schedules=[hourly_fast_moving, daily_all, weekly_full_refresh],
    sensors=[api_events_sensor, report_failed_runs, models_automation],
    resources={"dlt": DagsterDltResource()},
    # One process per run, not per step: the sync is one step and the checks another, and a
    # process each costs seconds (measured: docs/benchmark.md, "Levers"). Steps run one after the other, so a run
    # never has two writers on the destination either.
    executor=in_process_executor,
)
