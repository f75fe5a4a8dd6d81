"""The API's resources as Dagster assets, made by `@dlt_assets` from the dlt source."""


from typing import Any, Iterator, Optional

from dagster import AssetExecutionContext, AssetKey, AssetObservation, AssetSpec, Config, MaterializeResult
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData

from analytics_dagster.source import RESOURCES_BY_NAME, Progress, described_source
from analytics_dagster.source.days import newest_points
from analytics_dagster.source.pipeline import DATASET_NAME, definition_pipeline, loader_file_format, locked_pipeline, table_stats
from analytics_dagster.source.state import EventCursor, TableState, event_cursor, findings, gaps_text, last_run
from analytics_dagster.source.sync import SyncRun

GROUP = "analytics"
# Paddle's own daily figures (`/metrics/*`): a group of their own, with no lineage to the raw
# tables (they come from Paddle, not from the entities); keys `analytics/metrics_<operation>`
METRICS_GROUP = "metrics"
# Every writer to the destination runs in this pool; its limit of 1 (dagster.yaml) keeps two
# runs from writing one DuckDB file at once (DuckDB allows one writer per file).
DESTINATION_POOL = "analytics_destination"
# the metadata of a table the run skipped because the key may not read it, saying what to grant
NOT_SYNCED = "not_synced"
# a line per resource in the run's log, and an observation of each long listing's progress on
# its asset, at most this often
PROGRESS_EVERY_SECONDS = 10.0


def asset_key(resource: str) -> AssetKey:
    return AssetKey([GROUP, resource])


class AnalyticsTranslator(DagsterDltTranslator):
    """Keys `analytics/<resource>`, group `analytics` (`metrics`: Paddle's metrics), and the customers -> children lineage
    that dagster-dlt does not draw by itself (it gives a child resource a dependency on a
    placeholder key of its parent resource, not on the parent's asset)."""

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        spec = super().get_asset_spec(data)
        api = RESOURCES_BY_NAME[data.resource.name]
        return spec.replace_attributes(
            key=asset_key(api.name),
            deps=[asset_key(api.parent)] if api.parent else [],
            group_name=api.group,
            description=f"{api.description}\n\n`GET {api.path}`, merged on `{api.primary_key}`.",
            kinds={"dlt"},
            metadata={
                **spec.metadata,
                "dagster/table_name": f"{DATASET_NAME}.{api.name}",
                "api_path": api.path,
                "primary_key": api.primary_key,
            },
        )


class SyncConfig(Config):
    """Run configuration of the sync.

    Attributes:
        full_refresh: forget the incremental state: list every table whole, write every row.
        incremental: `events` or `listing` for this run only (empty: the setting
            `sources.analytics.incremental`, default `events`).
    """

    full_refresh: bool = False
    incremental: str = ""


@dlt_assets(
    dlt_source=described_source(),
    dlt_pipeline=definition_pipeline(),
    name="analytics_api",
    dagster_dlt_translator=AnalyticsTranslator(),
    pool=DESTINATION_POOL,
)
def analytics_assets(
    context: AssetExecutionContext, dlt: DagsterDltResource, config: SyncConfig
) -> Iterator[MaterializeResult]:
    """dlt runs of the selected resources (one, or one per chunk of a backfill), with a fresh
    source each time (dagster-dlt mutates the source's schema in place:
    dagster-io/dagster#34052)."""
    tables = sorted(key.path[-1] for key in context.selected_asset_keys)

    def observe(statuses: dict[str, dict[str, Any]]) -> None:
        """How far each long listing has got, on its asset while the run goes on."""
        for name, status in statuses.items():
            if name in tables:
                context.log_event(AssetObservation(asset_key=asset_key(name), metadata={
                    f"listing_{k}": v for k, v in status.items()}))

    progress = Progress(report=context.log.info, every=PROGRESS_EVERY_SECONDS, observe=observe)
    # dagster-dlt's metadata of each table, merged over the loads that carried it (a load
    # with no rows for a table has no schema or table name to say)
    by_table: dict[str, dict[str, Any]] = {}
    # a DuckDB file held by another process is waited for, saying so in the run's log
    with locked_pipeline(report=context.log.warning) as pipeline:
        run = SyncRun(pipeline, tables, full_refresh=config.full_refresh, incremental=config.incremental,
                      progress=progress, report=context.log.info, warn=context.log.warning)
        for load in run.run(lambda source: dlt.run(context=context, dlt_source=source, dlt_pipeline=pipeline,
                                                   loader_file_format=loader_file_format(pipeline))):
            for result in load.results:
                if isinstance(result, MaterializeResult) and result.asset_key:
                    name = result.asset_key.path[-1]
                    by_table[name] = {**by_table.get(name, {}), **(result.metadata or {})}
        # the row count is all this step needs: the checks step queries the keys
        stats = table_stats(pipeline, tables, keys=False)
        # the newest day of each of Paddle's metrics, as numbers its asset plots
        newest = newest_points(pipeline, [t for t in tables if RESOURCES_BY_NAME[t].listing == "days"])
    # every table (a load loaded again with more memory returned no dagster-dlt metadata), a
    # parent before its children (Dagster wants a multi-asset's outputs in topological order)
    for name in sorted(tables, key=lambda t: RESOURCES_BY_NAME[t].parent is not None):
        yield MaterializeResult(asset_key=asset_key(name), metadata={
            **by_table.get(name, {}), "dagster/row_count": stats[name]["rows"], **_run_metadata(run, name, config),
            **newest.get(name, {})})


def _run_metadata(run: SyncRun, name: str, config: SyncConfig) -> dict[str, Any]:
    """What the run did to the table `name`, and where the table stands, as its asset shows it."""
    state = run.states.get(name, {})
    done = last_run(state)
    return {
        # a run that finds nothing new writes 0 rows and succeeds (dagster-dlt's fetch_row_count raises on
        # a load of 0 rows: dagster-io/dagster#34158)
        "rows_written": run.written[name],
        "rows_new": int(done["new"]),
        "rows_updated": int(done["updated"]),
        "rows_unchanged": int(done["unchanged"]),
        "full_refresh": config.full_refresh,
        "sync_mode": "skipped" if name in run.forbidden else run.plans[0].mode(name),
        "sync_reason": run.plans[0].reasons.get(name, ""),
        "loads": run.loads[name],
        "api_requests": run.requests_for(name),
        "api_requests_in_run": sum(run.progress.requests.values()),
        # the key may not read the table (403 forbidden): what to grant (the `api_key_may_read` check)
        **({NOT_SYNCED: run.forbidden[name]} if name in run.forbidden else {}),
        **_cursor_metadata(event_cursor(state)),
        **_findings_metadata(state),
    }


def _findings_metadata(state: TableState) -> dict[str, Any]:
    """Events the table could not apply, and spans of the stream it missed, as its check says."""
    if event_cursor(state) is None:
        return {}
    bad, gaps = findings(state)
    return {"bad_events": len(bad), "events_gap": gaps_text(gaps)}


def _cursor_metadata(cursor: Optional[EventCursor]) -> dict[str, Any]:
    """The newest event the table has applied, when it occurred, and the API's time as of which
    the table holds every change (how far behind the API it is)."""
    if not cursor:
        return {}
    return {
        "event_cursor": cursor.get("event_id") or "(start of the stream)",
        "event_cursor_occurred_at": cursor.get("occurred_at") or "",
        "current_as_of": cursor.get("as_of") or "",
    }
