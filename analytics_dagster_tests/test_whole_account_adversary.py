"""Adversarial tests of the whole account (non-catalog prices and products, custom discounts,
listed in parts): states the API allows in which the warehouse is not the API."""

from __future__ import annotations

from pathlib import Path
import pytest

from analytics_dagster.source.resources import ApiResource
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_sync import sync
from analytics_dagster_tests.test_whole_account import HIDDEN, hidden


@pytest.mark.parametrize("mode", ["events", "listing"])
def test_a_warehouse_synced_before_the_change_gets_the_non_catalog_entities(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    """A deployment upgraded to this change: its warehouse was synced by the release before,
    whose listings asked only `status=active,archived` (Paddle then lists the catalog: standard
    prices and products, standard discounts). The API has non-catalog ones that existed all
    along, and no change to them follows the upgrade. After the upgrade a sync must leave the
    warehouse equal to the API: the custom entities listed before the upgrade was deployed
    are part of it."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", mode)
    with monkeypatch.context() as before:  # the release before: one listing, the API's defaults (catalog only)
        whole = ApiResource.parts.fget  # type: ignore[attr-defined]
        before.setattr(ApiResource, "parts", property(lambda self: whole(self)[:1]))
        assert sync(["prices", "products", "discounts"]).success
    missing = {t: len(hidden(admin, t)) for t in HIDDEN}
    assert all(missing.values()), missing
    # the upgrade: the same warehouse synced by this change, the API as it was plus some activity
    admin.post("advance", updates=10, new_customers=1, new_transactions=5)
    result = sync(["prices", "products", "discounts"])
    assert result.success
    reasons = {t: metadata(result)[t].get("sync_reason") for t in HIDDEN}
    assert_warehouse_equals_api(warehouse, admin, list(HIDDEN)), reasons


def test_models_built_without_the_catalog_tables_are_reported(warehouse: Path, admin: Admin) -> None:
    """A key without price.read and product.read (the reason the change gives for the
    relationships that warn), or a deployment that materializes transactions and the models
    before the catalog: the warehouse has no `prices` or `products` table at all. dbt builds
    every model; the relationship tests to the catalog error (their source table is missing).
    The run must still report what dbt built and tested: the models' materializations, every
    check (those three as failed), and dbt's own error. `failing_samples` runs the errored
    tests' queries again and its exception ends the step before any result is yielded."""
    from dagster import AssetSelection, DagsterInstance

    from analytics_dagster.assets import asset_key
    from analytics_dagster.definitions import defs
    from analytics_dagster.models import MODELS_GROUP, model_key
    from analytics_dagster.source.resources import RESOURCES

    tables = [r.name for r in RESOURCES if r.name not in ("prices", "products")]
    models = AssetSelection.groups(MODELS_GROUP).resolve(defs.resolve_asset_graph())
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False,
        asset_selection=[asset_key(t) for t in tables] + list(models))
    errors = [e.step_failure_data.error.to_string() for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    built = {m.asset_key for m in result.asset_materializations_for_node("analytics_models")}
    assert model_key("mrr_daily") in built and model_key("revenue_monthly") in built, (sorted(built), [l for e in errors for l in e.splitlines() if "Exception:" in l or "Relation:" in l][:2])
    catalog = [e for e in result.get_asset_check_evaluations()
               if e.check_name.startswith("relationships") and "source_analytics_pr" in e.check_name]
    assert len(catalog) == 3 and not any(e.passed for e in catalog), errors
    # the step's error is dbt's (its command, the tests that errored), not the samples' query's
    assert not any("DatabaseUndefinedRelation" in error for error in errors), errors
