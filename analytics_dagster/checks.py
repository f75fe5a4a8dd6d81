"""Primary-key checks on every table, queried from the destination after each merge."""


from typing import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    multi_asset_check,
)

from analytics_dagster.assets import DESTINATION_POOL, asset_key
from analytics_dagster.source import RESOURCES, RESOURCES_BY_NAME
from analytics_dagster.source.pipeline import make_pipeline, pipeline_lock, table_stats

PK_CHECK = "primary_key_unique_not_null"


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            PK_CHECK,
            asset=asset_key(r.name),
            blocking=True,
            description=f"Every row of {r.name} has a `{r.primary_key}`, and no two share one.",
        )
        for r in RESOURCES
    ],
    can_subset=True,
    name="primary_key_checks",
    pool=DESTINATION_POOL,
)
def primary_key_checks(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """One query per selected table: row count, null keys and the most duplicated keys."""
    selected = sorted(key.asset_key.path[-1] for key in context.selected_asset_check_keys)
    pipeline = make_pipeline(report=context.log.warning)  # waits for a DuckDB file held elsewhere
    with pipeline_lock(pipeline):
        stats = table_stats(pipeline, selected)
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
