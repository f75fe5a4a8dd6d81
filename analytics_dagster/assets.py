"""The twelve API resources as Dagster assets, made by `@dlt_assets` from the dlt source."""


from typing import Any, Iterator

from dagster import AssetExecutionContext, AssetKey, AssetSpec, Config, MaterializeResult
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData

from analytics_dagster.source import RESOURCES_BY_NAME, Progress, analytics_source
from analytics_dagster.source.pipeline import (
    DATASET_NAME,
    definition_pipeline,
    loader_file_format,
    make_pipeline,
    pipeline_lock,
    table_stats,
)

GROUP = "analytics"
# Every writer to the destination runs in this pool; its limit of 1 (dagster.yaml) keeps two
# runs from writing one DuckDB file at once (shared/NOTES.md #5).
DESTINATION_POOL = "analytics_destination"
PROGRESS_EVERY_SECONDS = 10.0  # a line per resource in the run's log, at most this often


def asset_key(resource: str) -> AssetKey:
    return AssetKey([GROUP, resource])


class AnalyticsTranslator(DagsterDltTranslator):
    """Keys `analytics/<resource>`, group `analytics`, and the customers -> children lineage
    that dagster-dlt does not draw by itself (shared/NOTES.md #2)."""

    def get_asset_spec(self, data: DltResourceTranslatorData) -> AssetSpec:
        spec = super().get_asset_spec(data)
        api = RESOURCES_BY_NAME[data.resource.name]
        return spec.replace_attributes(
            key=asset_key(api.name),
            deps=[asset_key(api.parent)] if api.parent else [],
            group_name=GROUP,
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
    """Run configuration of the sync."""

    full_refresh: bool = False


def _definition_source() -> Any:
    # Placeholders: only the resources' names and hints are used to build the asset specs. The
    # real settings are resolved when a run starts, so the code location loads with none set
    # (shared/NOTES.md #13).
    return analytics_source(base_url="http://configured.at.run.time", api_key="unset")


@dlt_assets(
    dlt_source=_definition_source(),
    dlt_pipeline=definition_pipeline(),
    name="analytics_api",
    dagster_dlt_translator=AnalyticsTranslator(),
    pool=DESTINATION_POOL,
)
def analytics_assets(
    context: AssetExecutionContext, dlt: DagsterDltResource, config: SyncConfig
) -> Iterator[MaterializeResult]:
    """One dlt run for the selected resources, with a fresh source and pipeline each time
    (dagster-dlt mutates the source's schema in place: dagster-io/dagster#34052, NOTES #4)."""
    pipeline = make_pipeline()
    progress = Progress(report=context.log.info, every=PROGRESS_EVERY_SECONDS)
    source = analytics_source(full_refresh=config.full_refresh, progress=progress)
    with pipeline_lock(pipeline):
        results = list(
            dlt.run(
                context=context,
                dlt_source=source,
                dlt_pipeline=pipeline,
                loader_file_format=loader_file_format(pipeline),
            )
        )
        context.log.info("read: " + "; ".join(progress.summary()))
        by_table = {r.asset_key.path[-1]: r for r in results if isinstance(r, MaterializeResult) and r.asset_key}
        # the row count is all this step needs: the checks step queries the keys
        stats = table_stats(pipeline, by_table, keys=False)
    resource_states = pipeline.state.get("sources", {}).get(source.name, {}).get("resources", {})
    for name, result in by_table.items():
        last_run = resource_states.get(name, {}).get("last_run", {})
        yield MaterializeResult(
            asset_key=result.asset_key,
            metadata={
                **(result.metadata or {}),
                "dagster/row_count": stats[name]["rows"],
                # a run that finds nothing new writes 0 rows and succeeds (shared/NOTES.md #9)
                "rows_written": int(pipeline.last_trace.last_normalize_info.row_counts.get(name, 0)),
                "rows_new": int(last_run.get("new", 0)),
                "rows_updated": int(last_run.get("updated", 0)),
                "rows_unchanged": int(last_run.get("unchanged", 0)),
                "full_refresh": config.full_refresh,
            },
        )
