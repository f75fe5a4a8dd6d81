"""Faults, bad keys, bad pages and secrets: the run fails clearly or recovers, and loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import duckdb
import pytest
from dagster import DagsterInstance
from dlt.common.pipeline import get_dlt_pipelines_dir

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster.source.pipeline import PIPELINE_NAME, definition_pipeline
from analytics_dagster_tests.conftest import (
    MATERIALIZE_ALL,
    PACE_UNDER_A_SHORT_WINDOW,
    REPO,
    TABLES,
    Admin,
    assert_warehouse_equals_api,
    poll,
)
from analytics_dagster_tests.test_sync import sync


def step_error(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.step_failure_data.error.to_string()


def table_counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM analytics.{t}").fetchone()[0] for t in TABLES}


def test_syncs_are_exact_through_15_percent_faults(warehouse: Path, admin: Admin, sandbox: SandboxServer) -> None:
    # the seed's retry policy as configured in .dlt/config.toml: 3 retries, backoff factor 2
    admin.post("config", fault_rate=0.15)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)
    statuses = admin.get("stats")["by_status"]
    assert {"429", "500", "502", "503", "504"} & set(statuses), statuses
    admin.post("advance", updates=10, archives=2, new_customers=2, new_transactions=3)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


def test_a_list_waiting_out_a_backoff_holds_up_no_other_resource(
    warehouse: Path, admin: Admin, sandbox: SandboxServer
) -> None:
    # the first page of transactions fails once: its retry waits 2 s (backoff factor 2)
    admin.post("inject", resource="transactions", kind="status", status=503, count=1)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)
    times = list(sandbox.app.stats.times)
    failed, retried = [at for at, resource in times if resource == "transactions"][:2]
    assert retried - failed >= 1.5
    # meanwhile the other lists and the customers' children went on: more requests than the 20
    # futures dlt keeps in flight, which is all a wait on the extract's main thread would allow
    between = [resource for at, resource in times if failed < at < retried]
    assert len(between) > 40 and {"customer_addresses", "businesses"} <= set(between), between


def test_a_wrong_key_fails_at_once_without_retries(warehouse: Path, admin: Admin, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", "wrong-key-xyz-42")
    admin.post("stats/reset")
    result = sync(["products"], raise_on_error=False)
    assert not result.success
    error = step_error(result)
    # the run's first request reads the event stream, to plan the products' backfill
    assert "403" in error and "products" in error and "/v1/events" in error
    assert "wrong-key-xyz-42" not in error
    assert admin.get("stats")["by_resource"] == {"events": 1}, "a 403 is final: never retried"


def test_an_unreachable_api_fails_with_the_url(warehouse: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("RUNTIME__REQUEST_MAX_ATTEMPTS", "1")
    result = sync(["products"], raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "products" in error and "127.0.0.1" in error


@pytest.mark.parametrize(
    "resource, kind, message, incremental",
    [
        # listings (in events mode a table is listed by its backfill only)
        ("customers", "malformed_json", "not valid JSON", "listing"),
        ("customers", "no_data", "has no 'data'", "listing"),
        ("customers", "no_has_more", "has_more is None", "listing"),
        # (a customers page without ids fails earlier, in dlt's binding of the children's path:
        # "expects a field `id` ... from resource `customer_listing`")
        ("products", "missing_pk", "has no primary key 'id'", "listing"),
        # the event stream, read by every run
        ("events", "malformed_json", "not valid JSON", "events"),
        ("events", "no_has_more", "has_more is None", "events"),
        # (an event without an event_id is reported and stops nothing: test_exactness.py)
    ],
)
def test_a_bad_page_fails_naming_the_resource_and_leaves_the_warehouse_alone(
    warehouse: Path, admin: Admin, resource: str, kind: str, message: str, incremental: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", incremental)
    assert sync().success
    before = table_counts(warehouse)
    admin.post("advance", updates=10, new_customers=2)
    admin.post("inject", resource=resource, kind=kind)
    result = sync(raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert f"resource '{resource}'" in error and message in error, error[-2000:]
    assert table_counts(warehouse) == before, "nothing of the failed run was loaded"
    assert sync().success, "the next run completes"
    assert_warehouse_equals_api(warehouse, admin)


def test_the_key_appears_nowhere(warehouse: Path, admin: Admin, sandbox: SandboxServer, monkeypatch, capfd) -> None:
    key = "sk_live_" + "7f3a9c" * 6
    sandbox.config.api_key = key
    monkeypatch.setenv("SOURCES__ANALYTICS__API_KEY", key)
    instance = DagsterInstance.ephemeral()
    from analytics_dagster.definitions import defs

    result = defs.resolve_job_def("sync_all").execute_in_process(instance=instance)
    assert result.success
    events = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    out, err = capfd.readouterr()
    with duckdb.connect(str(warehouse), read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema='analytics'").fetchall()]
        dump = "\n".join(str(con.execute(f"SELECT * FROM analytics.{t}").fetchall()) for t in tables)
    assert key not in events and key not in out and key not in err and key not in dump
    assert len(dump) > 10_000 and "analytics/customers" in events, "the dumps hold the run"


def test_two_materializations_at_once_both_succeed(warehouse: Path, admin: Admin, tmp_path: Path) -> None:
    """Two real `dagster asset materialize` processes started together: the second waits its
    turn on the pipeline lock instead of failing on DuckDB's single-writer lock."""
    # (their logs to files: a pipe read only once they end fills, and blocks a run that logs more)
    logs = [tmp_path / f"materialize_{n}.log" for n in range(2)]
    processes = []
    for log in logs:
        with open(log, "w") as err:
            processes.append(subprocess.Popen(MATERIALIZE_ALL, cwd=REPO, env=dict(os.environ),
                                              stdout=subprocess.DEVNULL, stderr=err, text=True))
    outcomes = [(p.wait(timeout=600), log.read_text()) for p, log in zip(processes, logs)]
    for code, err in outcomes:
        assert code == 0, err[-3000:]
    assert_warehouse_equals_api(warehouse, admin)


def test_loading_the_definitions_leaves_a_runs_working_folder_alone(warehouse: Path) -> None:
    """Every process that loads the code location builds the assets' pipeline, while a run may
    be between dropping its working folder and restoring its state from the destination: dlt,
    finding no state there, would wipe the folder under that run."""
    folder = Path(get_dlt_pipelines_dir()) / PIPELINE_NAME
    folder.mkdir(parents=True)
    (folder / "a_run_in_progress").write_text("its files")
    definition_pipeline()
    assert (folder / "a_run_in_progress").read_text() == "its files"


def test_paced_sync_gets_no_429_from_a_rate_limited_api(warehouse: Path, admin: Admin, monkeypatch) -> None:
    # listing mode: a run of many requests (in events mode only a backfill makes that many)
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    # 600/minute, counted over 2 s windows (20 requests) so that the test crosses it quickly
    # control: unpaced, the same sync does cross it (a short block, so it recovers)
    admin.post("config", rate_limit=600, rate_limit_window=2, rate_limit_block=1)
    assert sync(["products", "customer_addresses"]).success
    assert admin.get("stats")["by_status"].get("429", 0) > 0, "the control must hit the limit"

    admin.post("config", rate_limit=600, rate_limit_window=2, rate_limit_block=60)
    admin.post("stats/reset")
    admin.post("advance", updates=10, new_customers=2)
    pace = int(600 * PACE_UNDER_A_SHORT_WINDOW)  # under the 2 s window's limit (conftest says why)
    monkeypatch.setenv("SOURCES__ANALYTICS__REQUESTS_PER_MINUTE", str(pace))
    assert sync().success
    stats = admin.get("stats?during=customer_addresses,businesses")
    assert "429" not in stats["by_status"], stats
    assert stats["total"] > 60, "three times the window's allowance"
    # and it is not timid: while the children are fetched it uses >= 90% of its budget
    fan_out = stats["during"]
    assert fan_out["requests"] > 40 and fan_out["per_minute"] >= 0.9 * pace, fan_out
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.parametrize("stage", ["extract", "load"])
def test_a_run_killed_mid_way_loses_nothing(
    stage: str, warehouse: Path, admin: Admin, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """SIGKILL a real `dagster asset materialize` mid-extract (of the backfill, the run with many
    requests) or mid-load (of a run fed by events); the next run is exact: no duplicates,
    nothing lost, no cursor ahead of the loaded data."""
    if stage == "load":
        assert sync().success
    admin.post("advance", updates=30, archives=5, new_customers=5, new_transactions=8)
    admin.post("stats/reset")
    if stage == "extract":
        admin.post("config", latency=0.02)  # slow enough to be caught paging
    process = subprocess.Popen(MATERIALIZE_ALL, cwd=REPO, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    normalized = tmp_path / "dlt" / "pipelines" / "analytics_sync" / "load" / "normalized"
    if stage == "extract":
        poll(lambda: admin.get("stats")["total"] > 20, timeout=120, interval=0.02)
    else:
        poll(lambda: normalized.exists() and any(normalized.iterdir()), timeout=120, interval=0.005)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "killed before it finished"
    admin.post("config", latency=0.0)
    admin.post("advance", updates=10, new_customers=2)  # and the world moves on meanwhile
    result = sync()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_warehouse_equals_api(warehouse, admin)


def test_a_new_field_evolves_the_schema(warehouse: Path, admin: Admin) -> None:
    assert sync(["customers"]).success
    key = admin.truth("customers")[0]["id"]
    admin.post("mutate", resource="customers", key=key, set={"loyalty_tier": "gold"})
    assert sync(["customers"]).success
    assert_warehouse_equals_api(warehouse, admin, ["customers"])


def test_a_changed_type_lands_in_a_variant_column(warehouse: Path, admin: Admin) -> None:
    """dlt's default schema contract ("evolve"): a value of another type goes to a variant
    column `<field>__v_<type>`; the rows already loaded keep their type."""
    from analytics_dagster_tests.conftest import warehouse_rows

    assert sync(["customers"]).success
    key = admin.truth("customers")[1]["id"]
    admin.post("mutate", resource="customers", key=key, set={"marketing_consent": "only by post"})
    assert sync(["customers"]).success
    row = warehouse_rows(warehouse, "customers")[key]
    assert row["marketing_consent"] is None and row["marketing_consent__v_text"] == "only by post"
    others = [r for k, r in warehouse_rows(warehouse, "customers").items() if k != key]
    assert all(isinstance(r["marketing_consent"], bool) for r in others)


def test_a_10_mb_field_is_loaded_whole(warehouse: Path, admin: Admin) -> None:
    from analytics_dagster_tests.conftest import warehouse_rows

    assert sync(["products"]).success
    key = admin.truth("products")[0]["id"]
    blob = "x" * 10_000_000
    admin.post("mutate", resource="products", key=key, set={"custom_data": {"blob": blob}})
    assert sync(["products"]).success
    assert_warehouse_equals_api(warehouse, admin, ["products"])
    assert len(warehouse_rows(warehouse, "products")[key]["custom_data"]) > 10_000_000


@pytest.mark.usefixtures("backfilled")
def test_a_resource_that_keeps_failing_fails_the_run_then_recovers(warehouse: Path, admin: Admin) -> None:
    before = table_counts(warehouse)
    admin.post("advance", updates=8, new_transactions=3)
    admin.post("stats/reset")
    admin.post("inject", resource="events", kind="status", status=503, count=4)  # 1 try + 3 retries
    result = sync(raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "events" in error and "503" in error and "/v1/events" in error
    assert admin.get("stats")["by_status"]["503"] == 4, "exactly 3 retries"
    assert table_counts(warehouse) == before
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)
