"""End to end: the sandbox over HTTP, Dagster runs, rows in a DuckDB file under tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import duckdb
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    define_asset_job,
    in_process_executor,
)
from dagster_dlt import DagsterDltResource

from analytics_dagster.assets import analytics_assets
from analytics_dagster.checks import PK_CHECK, primary_key_checks

from analytics_dagster.definitions import defs
from analytics_dagster.sandbox import SandboxServer, World
from analytics_dagster.source.sync import sync as engine_sync
from analytics_dagster_tests.conftest import (
    MATERIALIZE_ALL,
    REPO,
    TABLES,
    Admin,
    assert_table_equals_truth,
    assert_warehouse_equals_api,
)



def sync(tables: Optional[list[str]] = None, raise_on_error: bool = True, run_config: Any = None) -> Any:
    """Materialize `tables` (default: all) and their checks in-process, as the UI would."""
    job = defs.resolve_implicit_global_asset_job_def()
    selection = [AssetKey(["analytics", t]) for t in (tables or TABLES)]
    return job.execute_in_process(
        instance=DagsterInstance.ephemeral(),
        asset_selection=selection,
        raise_on_error=raise_on_error,
        run_config=run_config,
    )


def check_results(result: Any, name: str = PK_CHECK) -> dict[str, Any]:
    """The evaluations of one check (default: the primary-key check), by table."""
    return {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations() if e.check_name == name}


@pytest.mark.smoke
def test_full_sync_equals_the_api_and_stays_equal_after_changes(warehouse: Path, admin: Admin) -> None:
    result = sync()
    assert result.success
    assert_warehouse_equals_api(warehouse, admin)
    checks = check_results(result)
    assert set(checks) == set(TABLES) and all(c.passed for c in checks.values())

    materializations = {m.asset_key.path[-1]: m for m in result.asset_materializations_for_node("analytics_api")}
    assert set(materializations) == set(TABLES)
    customers = materializations["customers"].metadata
    assert customers["dagster/row_count"].value == len(admin.truth("customers"))
    assert "dagster/column_schema" in customers
    assert customers["dagster/table_name"].value.endswith("analytics.customers")

    admin.post("advance", updates=25, archives=6, new_customers=4, new_transactions=7)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


def test_child_only_run_then_parent_stays_exact(warehouse: Path, admin: Admin) -> None:
    assert sync(["customer_addresses"]).success
    assert_table_equals_truth(warehouse, "customer_addresses", admin.truth("customer_addresses"))
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='analytics'").fetchall()}
    assert "customers" not in tables, "a child-only run must not load the parent"
    admin.post("advance", updates=10, new_customers=3)
    assert sync(["customers"]).success
    assert_table_equals_truth(warehouse, "customers", admin.truth("customers"))


def run_checks_only(table: str) -> Any:
    """The primary-key check of one table, with no materialization: as `dagster asset check` does."""
    job = define_asset_job(
        "check_only", selection=AssetSelection.checks(AssetCheckKey(AssetKey(["analytics", table]), PK_CHECK))
    )
    location = Definitions(
        assets=[analytics_assets], asset_checks=[primary_key_checks], jobs=[job],
        resources={"dlt": DagsterDltResource()}, executor=in_process_executor,
    )
    result = location.resolve_job_def("check_only").execute_in_process(
        instance=DagsterInstance.ephemeral(), raise_on_error=False
    )
    return check_results(result)[table]


def test_primary_key_check_fails_on_a_duplicate_and_names_it(warehouse: Path, admin: Admin) -> None:
    assert sync(["products"]).success
    assert run_checks_only("products").passed
    victim = admin.truth("products")[0]["id"]
    with duckdb.connect(str(warehouse)) as con:
        con.execute(f"INSERT INTO analytics.products SELECT * FROM analytics.products WHERE id = '{victim}'")
    evaluation = run_checks_only("products")
    assert not evaluation.passed
    assert victim in evaluation.description and "x2" in evaluation.description
    # a null key cannot reach DuckDB at all: dlt declares primary keys NOT NULL there
    with duckdb.connect(str(warehouse)) as con, pytest.raises(duckdb.ConstraintException):
        con.execute("UPDATE analytics.products SET id = NULL")


def test_dagster_cli_materialize_is_exact(warehouse: Path, admin: Admin, tmp_path: Path) -> None:
    """The command users run, in a process of its own, with only the documented env set."""
    env = {k: v for k, v in os.environ.items()}
    for round_ in range(2):
        result = subprocess.run(MATERIALIZE_ALL, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert_warehouse_equals_api(warehouse, admin)
        admin.post("advance", updates=15, archives=4, new_customers=3, new_transactions=5)


def test_relative_duckdb_path_is_taken_from_the_working_directory(
    warehouse: Path, admin: Admin, tmp_path: Path, monkeypatch
) -> None:
    """Regression: dlt resolved a relative path against its own dir, and two steps of one run
    opened two different files."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", "data/relative.duckdb")
    result = sync(["products", "prices"])
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_table_equals_truth(workdir / "data" / "relative.duckdb", "products", admin.truth("products"))


def test_page_sizes_per_resource(warehouse: Path, admin: Admin, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", '{"customers": 7, "transactions": 5}')
    admin.post("stats/reset")
    assert sync(["customers", "transactions"]).success
    requests = admin.get("stats")["by_resource"]
    customers, transactions = len(admin.truth("customers")), len(admin.truth("transactions"))
    assert requests["customers"] == -(-customers // 7)
    assert requests["transactions"] == -(-transactions // 5)
    assert_warehouse_equals_api(warehouse, admin, ["customers", "transactions"])
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", '{"customerz": 7}')
    result = sync(["customers"], raise_on_error=False)
    assert not result.success


def test_the_run_log_reports_progress_per_resource(warehouse: Path, admin: Admin) -> None:
    instance = DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, asset_selection=[AssetKey(["analytics", "customer_addresses"])])
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    summary = next(m for m in messages if m.startswith("read: "))
    customers = len(admin.truth("customers"))
    assert f"customer_addresses: {customers} pages" in summary, summary
    assert f"customers: 1 pages, {customers} rows read" in summary


def test_paddle_configuration_syncs_paddle_paths_exactly(tmp_path: Path, monkeypatch) -> None:
    """A Paddle account's settings (`environment = live`: paths with no `/v1`), the base URL
    overridden to a sandbox that serves Paddle's paths: the backfill, then a run from the event
    stream, are exact, and no request went anywhere else."""
    with SandboxServer(World(customers=40, seed=7), path_prefix="") as server:
        admin = Admin(server.url)
        db = tmp_path / "warehouse" / "paddle.duckdb"
        monkeypatch.setenv("SOURCES__ANALYTICS__BASE_URL", server.url)  # instead of https://api.paddle.com
        monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", server.config.api_key)
        monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(db))
        monkeypatch.setenv("DLT_DATA_DIR", str(tmp_path / "dlt"))
        monkeypatch.setenv("SOURCES__ANALYTICS__REQUESTS_PER_MINUTE", "0")
        # without the environment, the seed API's paths (/v1/...): a 404 fails the run at once
        failed = sync(["products"], raise_on_error=False)
        error = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error
        assert not failed.success and "404" in error.to_string() and "/v1/events" in error.to_string()
        monkeypatch.setenv("SOURCES__ANALYTICS__ENVIRONMENT", "live")
        assert sync().success
        assert_warehouse_equals_api(db, admin)
        admin.post("advance", updates=25, archives=6, new_customers=4, new_transactions=7, adjustments=3)
        admin.post("stats/reset")
        result = sync()
        assert result.success
        assert_warehouse_equals_api(db, admin)
        modes = {m.asset_key.path[-1]: m.metadata["sync_mode"].value
                 for m in result.asset_materializations_for_node("analytics_api")}
        assert {modes[t] for t in ("customers", "subscriptions", "transactions")} == {"events"}
        stats = admin.get("stats")
        assert stats["total"] > 0 and stats["by_status"] == {"200": stats["total"]}


@pytest.mark.smoke
def test_the_sync_engine_runs_without_dagster(warehouse: Path, admin: Admin) -> None:
    """The engine is plain dlt: imported, it brings no Dagster; a run of it through
    `pipeline.run` lands the API exactly, and keeps it so after changes."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, analytics_dagster.source.sync; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_dlt')))"],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]", imported.stdout
    lines: list[str] = []
    run = engine_sync(report=lines.append, warn=lines.append)
    assert_warehouse_equals_api(warehouse, admin)
    assert run.plans and lines[0].startswith("plan 1: ") and lines[-1].startswith("read: "), lines
    admin.post("advance", updates=10, new_customers=2)
    run = engine_sync(report=lines.append, warn=lines.append)
    assert_warehouse_equals_api(warehouse, admin)
    assert run.plans[0].mode("customers") == "events" and sum(run.written.values()) > 0
