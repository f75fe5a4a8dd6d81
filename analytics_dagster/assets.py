"""The API's resources as Dagster assets, made by `@dlt_assets` from the dlt source."""


from collections import Counter
from typing import Any, Iterator, Optional

from dagster import AssetExecutionContext, AssetKey, AssetObservation, AssetSpec, Config, MaterializeResult
from dagster_dlt import DagsterDltResource, DagsterDltTranslator, dlt_assets
from dagster_dlt.translator import DltResourceTranslatorData

from analytics_dagster.source import RESOURCES_BY_NAME, Progress, SyncPlan, analytics_source
from analytics_dagster.source.pipeline import (
    DATASET_NAME,
    definition_pipeline,
    loader_file_format,
    locked_pipeline,
    resource_states,
    table_stats,
)

GROUP = "analytics"
# Every writer to the destination runs in this pool; its limit of 1 (dagster.yaml) keeps two
# runs from writing one DuckDB file at once (DuckDB allows one writer per file).
DESTINATION_POOL = "analytics_destination"
# a line per resource in the run's log, and an observation of each long listing's progress on
# its asset, at most this often
PROGRESS_EVERY_SECONDS = 10.0


def asset_key(resource: str) -> AssetKey:
    return AssetKey([GROUP, resource])


class AnalyticsTranslator(DagsterDltTranslator):
    """Keys `analytics/<resource>`, group `analytics`, and the customers -> children lineage
    that dagster-dlt does not draw by itself (it gives a child resource a dependency on a
    placeholder key of its parent resource, not on the parent's asset)."""

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
    """Run configuration of the sync.

    Attributes:
        full_refresh: forget the incremental state: list every table whole, write every row.
        incremental: `events` or `listing` for this run only (empty: the setting
            `sources.analytics.incremental`, default `events`).
    """

    full_refresh: bool = False
    incremental: str = ""


def _definition_source() -> Any:
    # Placeholders: only the resources' names and hints are used to build the asset specs. The
    # real settings are resolved when a run starts, so the code location loads with none set
    # (reading a secret while the definitions are built would make the location fail to load).
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
    overrides = {"incremental": config.incremental} if config.incremental else {}
    # dagster-dlt's metadata of each table, merged over the loads that carried it (a load
    # with no rows for a table has no schema or table name to say)
    by_table: dict[str, dict[str, Any]] = {}
    written: Counter[str] = Counter()
    loads: Counter[str] = Counter()
    plans: list[SyncPlan] = []
    # a DuckDB file held by another process is waited for, saying so in the run's log
    with locked_pipeline(report=context.log.warning) as pipeline:
        # Chunk by chunk: a backfill, and a read of the event stream, commits after
        # `backfill_chunk_seconds` of extraction or `backfill_chunk_rows` rows (events), whichever
        # comes first, each chunk a load with its own state,
        # and the next chunk (or the next run, after a failure) resumes after it. In events mode
        # the tables whose backfill ends (and `events`) take, last, the events of the changes
        # made while they were listed: the run ends with every table current.
        # Built here, under the lock: a plan reads what the last load committed (from the
        # destination for the first chunk; a later chunk's is the state its previous chunk's
        # load just committed, so it is not read again).
        chunk, finished, caught_up, states = tables, set(), False, resource_states(pipeline)
        while chunk:
            source = analytics_source(
                full_refresh=config.full_refresh and not plans, run_state=states,
                tables=chunk, progress=progress, **overrides,
            )
            plans.append(progress.plan)
            context.log.info(f"plan {len(plans)}: " + "; ".join(_plan_line(progress.plan, t) for t in chunk))
            results = dlt.run(
                context=context,
                dlt_source=source if chunk == tables else source.with_resources(*chunk),
                dlt_pipeline=pipeline,
                loader_file_format=loader_file_format(pipeline),
            )
            for result in results:
                if isinstance(result, MaterializeResult) and result.asset_key:
                    name = result.asset_key.path[-1]
                    by_table[name] = {**by_table.get(name, {}), **(result.metadata or {})}
            for problem in progress.plan.problems:  # applied none of it; every other change went in
                context.log.warning(f"resource '{problem['table']}': event {problem['event_id']} "
                                    f"({problem['event_type']}) was not applied: {problem['problem']}")
            for table, gap in progress.plan.gaps.items():
                context.log.warning(f"resource '{table}': the events from {gap['from']} to {gap['to']} passed "
                                    "the API's retention before this run read them: they are missing")
            written.update({t: n for t, n in pipeline.last_trace.last_normalize_info.row_counts.items() if t in tables})
            loads.update(chunk)
            states = resource_states(pipeline, from_destination=False)
            backfilling = [t for t in chunk if "backfill" in states.get(t, {}) and t in progress.plan.backfills]
            finished |= {t for t, b in progress.plan.backfills.items() if b["position"]} - set(backfilling)
            # the tables fed by a read of the stream that stopped after a chunk read on
            reading = sorted(progress.plan.feeds) if progress.plan.feed_more else []
            if backfilling or reading:
                context.log.info(f"chunk {len(plans)} committed; " + "; ".join(
                    [f"{t} {states[t]['backfill']['rows']} rows, after {states[t]['backfill']['after']}"
                     for t in backfilling] + [f"{t} events to {states[t].get('event_cursor', {}).get('event_id')}" for t in reading]))
                chunk = sorted(set(backfilling) | set(reading))
            elif finished and not caught_up:
                chunk, caught_up = sorted(finished | ({"events"} & set(tables))), True
            else:
                chunk = []
        context.log.info("read: " + "; ".join(progress.summary()))
        # the row count is all this step needs: the checks step queries the keys
        stats = table_stats(pipeline, by_table, keys=False)
    plan = plans[0]
    run_requests = sum(progress.requests.values())
    for name, dlt_metadata in by_table.items():
        state = states.get(name, {})
        last_run = state.get("last_run", {})
        yield MaterializeResult(
            asset_key=asset_key(name),
            metadata={
                **dlt_metadata,
                "dagster/row_count": stats[name]["rows"],
                # a run that finds nothing new writes 0 rows and succeeds (dagster-dlt's fetch_row_count raises on
                # a load of 0 rows: dagster-io/dagster#34158)
                "rows_written": written[name],
                "rows_new": int(last_run.get("new", 0)),
                "rows_updated": int(last_run.get("updated", 0)),
                "rows_unchanged": int(last_run.get("unchanged", 0)),
                "full_refresh": config.full_refresh,
                "sync_mode": plan.mode(name),
                "sync_reason": plan.reasons.get(name, ""),
                "loads": loads[name],
                "api_requests": _requests_for(progress, plan, name),
                "api_requests_in_run": run_requests,
                **_cursor_metadata(state.get("event_cursor")),
                **_findings_metadata(state),
            },
        )


def _plan_line(plan: SyncPlan, table: str) -> str:
    mode = plan.mode(table)
    if table in plan.feeds:
        return f"{table}: events after {plan.feeds[table] or 'the oldest kept'}"
    return f"{table}: {mode}" + (f" ({plan.reasons[table]})" if table in plan.reasons else "")


def _requests_for(progress: Progress, plan: SyncPlan, table: str) -> int:
    """The requests this run made for `table`: its own listing's, and the event stream's it read."""
    own = progress.requests.get(table, 0) if table != "events" else 0
    return own + (progress.requests.get("events", 0) if table in plan.feeds else 0)


def _findings_metadata(state: dict[str, Any]) -> dict[str, Any]:
    """Events the table could not apply, and spans of the stream it missed, as its check says."""
    if "event_cursor" not in state:
        return {}
    gaps = state.get("gaps", [])
    return {"bad_events": len(state.get("bad_events", [])),
            "events_gap": "; ".join(f"{g['from']} to {g['to']}" for g in gaps) or "none"}


def _cursor_metadata(cursor: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The newest event the table has applied, when it occurred, and the API's time as of which
    the table holds every change (how far behind the API it is)."""
    if not cursor:
        return {}
    return {
        "event_cursor": cursor.get("event_id") or "(start of the stream)",
        "event_cursor_occurred_at": cursor.get("occurred_at") or "",
        "current_as_of": cursor.get("as_of") or "",
    }
