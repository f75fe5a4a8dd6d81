"""The code location: loads with nothing configured, and has exactly the assets we promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DefaultSensorStatus, build_schedule_context

from analytics_dagster.definitions import defs
from analytics_dagster.models import MODEL_CHECK_SPECS, MODEL_SPECS
from analytics_dagster.reconcile import SPECS
from analytics_dagster.source import RESOURCES, RESOURCES_BY_NAME
from analytics_dagster_tests.conftest import DAGSTER, METRICS, REPO, TABLES, poll



def test_loads_with_no_settings_and_no_network(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCES__", "DESTINATION"))}
    env["DLT_DATA_DIR"] = str(tmp_path / "dlt")
    code = (
        "from analytics_dagster.definitions import defs\n"
        "g = defs.resolve_asset_graph()\n"
        "print(len(g.get_all_asset_keys()))\n"
    )
    # run from an empty folder: no .dlt/ there, so no settings at all
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(RESOURCES) + len(MODEL_SPECS))
    assert not (tmp_path / "data").exists(), "loading must not create the warehouse"


def test_asset_keys_groups_lineage_and_descriptions() -> None:
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys() - {spec.key for spec in MODEL_SPECS}  # the models: test_models.py
    assert keys == {AssetKey(["analytics", name]) for name in TABLES + METRICS}
    for key in keys:
        node = graph.get(key)
        assert node.group_name == ("metrics" if key.path[-1] in METRICS else "analytics")
        # the path under the API's root (its prefix, `/v1` by default, is a setting)
        assert node.description and f"`GET {RESOURCES_BY_NAME[key.path[-1]].path}`" in node.description
        expected = {AssetKey(["analytics", "customers"])} if key.path[-1] in ("customer_addresses", "businesses") else set()
        assert set(node.parent_keys) == expected, key


def test_every_asset_has_a_blocking_primary_key_check() -> None:
    graph = defs.resolve_asset_graph()
    checks = {k.asset_key.path[-1]: k for k in graph.asset_check_keys if k.name == "primary_key_unique_not_null"}
    assert set(checks) == set(TABLES + METRICS)
    for key in checks.values():
        assert graph.get_check_spec(key).blocking


def test_every_table_the_stream_keeps_has_a_warning_check_of_its_events() -> None:
    graph = defs.resolve_asset_graph()
    checks = {k.asset_key.path[-1]: k for k in graph.asset_check_keys if k.name == "events_applied"}
    assert set(checks) == {r.name for r in RESOURCES if r.event_entity} | {"events"}
    assert {k.name for k in graph.asset_check_keys} == {"primary_key_unique_not_null", "events_applied",
                                                        "api_key_may_read"} | {c.name for c in MODEL_CHECK_SPECS + SPECS}
    for key in checks.values():
        assert not graph.get_check_spec(key).blocking, "one bad event must block nothing downstream"


def test_jobs_schedules_and_sensors() -> None:
    sync_all = defs.resolve_job_def("sync_all")
    fast = defs.resolve_job_def("sync_fast_moving")
    assert sync_all and fast
    hourly = defs.resolve_schedule_def("hourly_fast_moving")
    daily = defs.resolve_schedule_def("daily_all")
    assert hourly.cron_schedule == "0 * * * *" and hourly.job_name == "sync_fast_moving"
    assert daily.cron_schedule == "30 2 * * *" and daily.job_name == "sync_all"
    weekly = defs.resolve_schedule_def("weekly_full_refresh")
    assert weekly.cron_schedule == "0 4 * * 0" and weekly.job_name == "full_refresh"
    assert hourly.description and daily.description and weekly.description
    for schedule in (hourly, daily, weekly):
        requests = schedule.evaluate_tick(build_schedule_context()).run_requests
        assert requests and len(requests) == 1
    events = defs.resolve_sensor_def("api_events_sensor")
    failures = defs.resolve_sensor_def("report_failed_runs")
    assert events.description and failures.description
    assert failures.default_status == DefaultSensorStatus.RUNNING


def test_dagster_cli_validates_the_definitions() -> None:
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "analytics_dagster.definitions"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dg_checks_the_definitions() -> None:
    """`dg check defs` (dagster-dg-cli, configured under [tool.dg] in pyproject.toml) loads them."""
    dg = str(Path(sys.executable).parent / "dg")
    result = subprocess.run([dg, "check", "defs"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


@pytest.mark.slow
def test_dg_dev_serves_the_project_from_its_root(tmp_path: Path) -> None:
    """`dg dev` from the project's root (its [tool.dg] in pyproject.toml): the UI serves the raw
    tables and the models of the one code location, loaded without error."""
    from analytics_dagster_tests.conftest import dagster_ui, graphql

    dg = str(Path(sys.executable).parent / "dg")
    query = """{ workspaceOrError { ... on Workspace { locationEntries { name
        locationOrLoadError { __typename ... on PythonError { message } } } } }
        assetNodes { assetKey { path } } }"""

    def loaded() -> dict | None:
        data = graphql(url, query)
        entries = data["workspaceOrError"]["locationEntries"]
        return data if entries and entries[0]["locationOrLoadError"] else None

    with dagster_ui([dg, "dev"], tmp_path) as url:
        data = poll(loaded, timeout=120, interval=0.5)
    assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in data["workspaceOrError"]["locationEntries"]] \
        == [("analytics_dagster", "RepositoryLocation")], data["workspaceOrError"]
    keys = {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}
    assert {"analytics/transactions", "analytics_models/mrr_daily"} <= keys
