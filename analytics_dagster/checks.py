"""Checks on every table after each merge: primary keys (blocking); for the tables the event
stream keeps, that every event was applied and none passed the API's retention unread; and that
the API key may read the table (both warnings: one bad event, or one permission missing, must
block nothing downstream)."""


from typing import Iterator, Optional

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    EventLogEntry,
    multi_asset_check,
)

from analytics_dagster.assets import DESTINATION_POOL, NOT_SYNCED, asset_key
from analytics_dagster.source import RESOURCES, RESOURCES_BY_NAME
from analytics_dagster.source.pipeline import locked_pipeline, resource_states, table_stats
from analytics_dagster.source.resources import STREAM_TABLES
from analytics_dagster.source.state import TableState, findings, gaps_text

PK_CHECK = "primary_key_unique_not_null"
EVENTS_CHECK = "events_applied"
READ_CHECK = "api_key_may_read"


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            PK_CHECK,
            asset=asset_key(r.name),
            blocking=True,
            description=f"Every row of {r.name} has a `{r.primary_key}`, and no two share one.",
        )
        for r in RESOURCES
    ] + [
        AssetCheckSpec(
            EVENTS_CHECK,
            asset=asset_key(name),
            blocking=False,
            description=(
                f"Every event of {name} in the stream was applied: none malformed (no data, no "
                "data.id, no timestamp, no string event_id), none past the API's retention "
                "unread. Warns, naming the events, for as long as the API keeps them."
            ),
        )
        for name in STREAM_TABLES
    ] + [
        AssetCheckSpec(
            READ_CHECK,
            asset=asset_key(r.name),
            blocking=False,
            description=(
                f"The API key may read {r.name} (it has {r.permission}): the last sync did not skip it "
                "for a 403 forbidden. Warns, naming the permission to grant."
            ),
        )
        for r in RESOURCES if r.permission
    ],
    can_subset=True,
    name="primary_key_checks",
    pool=DESTINATION_POOL,
)
def primary_key_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """One query per selected table: row count, null keys and the most duplicated keys."""
    selected = sorted({key.asset_key.path[-1] for key in context.selected_asset_check_keys
                       if key.name == PK_CHECK})
    applied = sorted({key.asset_key.path[-1] for key in context.selected_asset_check_keys
                      if key.name == EVENTS_CHECK})
    with locked_pipeline(report=context.log.warning) as pipeline:  # waits for a DuckDB file held elsewhere
        stats = table_stats(pipeline, selected)
        states = resource_states(pipeline) if applied else {}
    for name in applied:
        yield events_applied(name, states.get(name, {}))
    for name in sorted({key.asset_key.path[-1] for key in context.selected_asset_check_keys if key.name == READ_CHECK}):
        yield may_read(name, context.instance.get_latest_materialization_event(asset_key(name)))
    for name, table in stats.items():
        key = RESOURCES_BY_NAME[name].primary_key
        duplicates = table["duplicate_keys"]
        null_keys = table["null_keys"]
        passed = not duplicates and not null_keys
        problems = []
        if duplicates:
            shown = ", ".join(f"{k} (x{n})" for k, n in duplicates.items())  # type: ignore[union-attr]
            problems.append(f"duplicated {key}: {shown}")
        if null_keys:
            problems.append(f"{null_keys} rows without {key}")
        yield AssetCheckResult(
            asset_key=asset_key(name),
            check_name=PK_CHECK,
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=(
                f"{table['rows']} rows, {key} unique and not null"
                if passed
                else f"{name}: " + "; ".join(problems)
            ),
            metadata={
                "rows": table["rows"],
                "null_keys": null_keys,
                "duplicate_keys": ", ".join(duplicates) or "none",  # type: ignore[arg-type]
            },
        )


def events_applied(table: str, state: TableState) -> AssetCheckResult:
    """The table's findings, kept in its dlt state by the runs that read the stream: events it
    could not apply, and (for `events`) the span the API dropped before it was read."""
    bad, gaps = findings(state)
    problems = [f"event {b.get('event_id')} ({b.get('event_type')}): {b.get('problem')}" for b in bad]
    problems += [f"events from {g.get('from')} to {g.get('to')} passed the API's retention unread" for g in gaps]
    return AssetCheckResult(
        asset_key=asset_key(table),
        check_name=EVENTS_CHECK,
        passed=not problems,
        severity=AssetCheckSeverity.WARN,
        description=("every event applied" if not problems else
                     f"{table}: {len(bad)} events not applied, {len(gaps)} gaps; " + "; ".join(problems[:5])),
        metadata={
            "bad_event_ids": ", ".join(str(b.get("event_id")) for b in bad) or "none",
            "bad_events": len(bad),
            "gaps": gaps_text(gaps),
        },
    )


def may_read(table: str, latest: Optional[EventLogEntry]) -> AssetCheckResult:
    """Whether the last sync of `table` read it, from its latest materialization: a table the
    key may not read was skipped, its metadata saying what to grant (`assets.NOT_SYNCED`)."""
    materialization = latest.asset_materialization if latest is not None else None
    entry = (materialization.metadata if materialization is not None else {}).get(NOT_SYNCED)
    grant = getattr(entry, "value", entry)
    permission = RESOURCES_BY_NAME[table].permission
    return AssetCheckResult(
        asset_key=asset_key(table),
        check_name=READ_CHECK,
        passed=not grant,
        severity=AssetCheckSeverity.WARN,
        description=str(grant) if grant else f"the API key may read {table} ({permission})",
        metadata={"permission": permission or "", "synced": not grant},
    )
