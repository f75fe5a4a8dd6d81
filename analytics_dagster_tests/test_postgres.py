"""PostgreSQL: as the warehouse (dlt destination) and behind a production Dagster instance.

Needs a server: ANALYTICS_TEST_POSTGRES=postgresql://user:password@127.0.0.1:5432/db of a role
that may create databases (`.ci/postgres` installs Debian's PostgreSQL, starts it on 127.0.0.1
and prints such a DSN). Without it these tests skip, saying so; under CI they fail instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import pytest

from analytics_dagster.models import MODEL_CHECK_SPECS
from analytics_dagster.reconcile import SPECS as RECONCILIATION
from analytics_dagster.source.resources import RESOURCES, STREAM_TABLES
from analytics_dagster_tests.conftest import (LOCALIZED_WORLD, METRICS, REPLACED, REPO, TABLES, Admin,
                                             assert_warehouse_equals_api, poll)
from analytics_dagster_tests.test_sync import check_results, sync

SERVER = os.environ.get("ANALYTICS_TEST_POSTGRES")

if not SERVER:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the PostgreSQL tests: set ANALYTICS_TEST_POSTGRES (.ci/run does)")
    pytest.skip("no PostgreSQL server: set ANALYTICS_TEST_POSTGRES (see .ci/postgres)", allow_module_level=True)

import psycopg2  # noqa: E402


def _on_server(statement: str) -> None:
    # not `with connection:`, which would wrap the statement in a transaction block
    connection = psycopg2.connect(SERVER)
    try:
        connection.autocommit = True
        connection.cursor().execute(statement)
    finally:
        connection.close()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the server, dropped afterwards; yields its DSN."""
    name = f"analytics_{uuid.uuid4().hex[:10]}"
    _on_server(f"CREATE DATABASE {name}")
    yield urlparse(SERVER)._replace(path=f"/{name}").geturl()
    _on_server(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_warehouse(warehouse: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The project configured, the dlt way, to load into PostgreSQL instead of DuckDB."""
    monkeypatch.setenv("DESTINATION_TYPE", "postgres")
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", database)
    return database


def test_full_and_incremental_syncs_into_postgres_are_exact(postgres_warehouse: str, admin: Admin) -> None:
    result = sync()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_warehouse_equals_api(postgres_warehouse, admin)
    for _ in range(2):
        admin.post("advance", updates=12, archives=3, new_customers=2, new_transactions=4)
        result = sync()
        assert result.success
        assert_warehouse_equals_api(postgres_warehouse, admin)
    admin.post("stats/reset")
    materializations = sync().asset_materializations_for_node("analytics_api")
    # nothing written but the two tables every run replaces (read whole: a CIDR can leave)
    assert all(m.metadata["rows_written"].value == 0 for m in materializations
               if m.asset_key.path[-1] not in REPLACED)
    assert admin.get("stats")["by_resource"]["events"] == 1


def test_primary_key_check_queries_postgres(postgres_warehouse: str, admin: Admin) -> None:
    from analytics_dagster_tests.test_sync import run_checks_only

    assert sync(["products"]).success
    victim = admin.truth("products")[0]["id"]
    with psycopg2.connect(postgres_warehouse) as connection, connection.cursor() as cursor:
        # dlt declares no unique key on `id` in PostgreSQL (only on _dlt_id): a duplicate gets in
        cursor.execute(f"CREATE TEMP TABLE copy AS SELECT * FROM analytics.products WHERE id = '{victim}'")
        cursor.execute("UPDATE copy SET _dlt_id = _dlt_id || 'x'")
        cursor.execute("INSERT INTO analytics.products SELECT * FROM copy")
    connection.close()
    evaluation = run_checks_only("products")
    assert not evaluation.passed and victim in evaluation.description


def test_runs_launched_through_a_postgres_backed_instance(
    postgres_warehouse: str, database: str, admin: Admin, tmp_path: Path
) -> None:
    """deploy/dagster.yaml as shipped: runs queued, started by the daemon, recorded in PostgreSQL."""
    from dagster import DagsterInstance, DagsterRunStatus

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        # the instance's tables in the same database as the warehouse's `analytics` schema
        "DAGSTER_PG_URL": database.replace("postgresql://", "postgresql+psycopg2://", 1),
    }
    bin_dir = Path(sys.executable).parent
    daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-m", "analytics_dagster.definitions"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        launched = subprocess.run(
            [str(bin_dir / "dagster"), "job", "launch", "-m", "analytics_dagster.definitions", "-j", "sync_all"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
        assert launched.returncode == 0, launched.stderr[-3000:]
        for key, value in env.items():
            if key.startswith("DAGSTER_"):
                os.environ[key] = value
        instance = DagsterInstance.get()
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"

        def done() -> list:
            runs = instance.get_runs()
            return [r for r in runs if r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE)]

        finished = poll(done, timeout=300, interval=1.0)
        assert [r.status for r in finished] == [DagsterRunStatus.SUCCESS]
        checks = [e for e in instance.all_logs(finished[0].run_id) if e.dagster_event
                  and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"]
        # primary keys (Paddle's metrics' too), events applied, the key's permissions, the models'
        # dbt tests (the models built on PostgreSQL) and their reconciliation with Paddle's metrics
        permissions = [r for r in RESOURCES if r.permission]
        assert len(checks) == (len(TABLES) + len(METRICS) + len(STREAM_TABLES) + len(permissions) + len(MODEL_CHECK_SPECS)
                               + len(RECONCILIATION))
        assert all(e.dagster_event.asset_check_evaluation_data.passed for e in checks)
        assert_warehouse_equals_api(postgres_warehouse, admin)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=30)
        for key in ("DAGSTER_HOME", "DAGSTER_PG_URL"):
            os.environ.pop(key, None)


def test_the_events_sensors_window_is_kept_in_a_postgres_instance(
    warehouse: Path, database: str, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The events sensor's late-event window, in the key-value storage of an instance as
    deploy/dagster.yaml makes it (PostgreSQL)."""
    from dagster import DagsterInstance

    from analytics_dagster_tests.test_automation import assert_the_window_holds_in

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", database.replace("postgresql://", "postgresql+psycopg2://", 1))
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert_the_window_holds_in(instance, admin)


def test_a_load_that_fails_leaves_the_replaced_tables_as_they_were_in_postgres(
    postgres_warehouse: str, admin: Admin, sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real failure of the load itself: PostgreSQL refuses a NUL character in text, so the
    COPY of an event type whose description holds one fails. Loaded into the staging dataset
    and swapped in by one transaction, event_types keeps its previous rows; dlt's default,
    truncate-and-insert, emptied it at the start of the load (the control below)."""
    from analytics_dagster_tests.conftest import warehouse_rows
    from analytics_dagster_tests.test_failures import step_error

    assert sync().success
    before = {t: warehouse_rows(postgres_warehouse, t) for t in sorted(REPLACED)}
    assert all(before.values())
    admin.post("advance", new_event_types=1, cidrs_swapped=1)
    sandbox.world.event_types[-1]["description"] = "a NUL \u0000 in the text"
    result = sync(sorted(REPLACED), raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "0x00" in error and "event_types" in error, error[-3000:]
    after = {t: warehouse_rows(postgres_warehouse, t) for t in sorted(REPLACED)}
    assert after["event_types"] == before["event_types"], "the previous rows, the very same (same _dlt_load_id)"
    ips = set(after["ip_addresses"])
    assert after["ip_addresses"] == before["ip_addresses"] or ips == {r["ipv4_cidr"] for r in admin.truth("ip_addresses")}

    monkeypatch.setenv("DESTINATION__REPLACE_STRATEGY", "truncate-and-insert")  # the control
    assert not sync(sorted(REPLACED), raise_on_error=False).success
    assert warehouse_rows(postgres_warehouse, "event_types") == {}

    monkeypatch.delenv("DESTINATION__REPLACE_STRATEGY")
    sandbox.world.event_types[-1]["description"] = "no NUL any more"
    assert sync().success
    assert_warehouse_equals_api(postgres_warehouse, admin)


@pytest.fixture
def own_role(postgres_warehouse: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """The warehouse's database reached as a role of its own, owning it, whose password is a
    random token found nowhere else (so that the run's logs can be searched for it): the
    destination's credentials are that DSN. Yields (DSN, password)."""
    dsn = urlparse(postgres_warehouse)
    role, password = f"analytics_{uuid.uuid4().hex[:10]}", f"pw{uuid.uuid4().hex}"
    _on_server(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    _on_server(f"ALTER DATABASE {dsn.path.lstrip('/')} OWNER TO {role}")
    own = dsn._replace(netloc=f"{role}:{password}@{dsn.hostname}:{dsn.port or 5432}").geturl()
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", own)
    yield own, password
    _on_server(f"DROP DATABASE IF EXISTS {dsn.path.lstrip('/')} WITH (FORCE)")
    _on_server(f"DROP ROLE IF EXISTS {role}")


class _Records(logging.Handler):
    """Every log record of this process's loggers, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_models_build_and_test_on_postgres(own_role: tuple[str, str], admin: Admin,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    """sync_all into PostgreSQL builds every model and passes every dbt test, and the marts
    equal the sandbox's own figures, after a full sync and after a round of changes; the
    password is nowhere in the run's logs, its events or the dbt command."""
    from dagster import DagsterInstance

    from analytics_dagster_tests.test_models import (
        assert_history_contiguous,
        assert_history_has_the_changes,
        assert_metrics_equal_the_sandbox,
        assert_models_built_and_tested,
        change_the_sandbox,
        query,
        sync_all,
    )

    dsn, password = own_role
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("", "dagster", "dagster_dbt")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        logger.setLevel(logging.DEBUG)
    try:
        instance = DagsterInstance.ephemeral()
        first = sync_all(instance)
        assert_models_built_and_tested(first, dsn)
        assert_metrics_equal_the_sandbox(dsn, admin)
        before = assert_history_contiguous(dsn)
        assert set(before) == {s["id"] for s in admin.truth("subscriptions")}
        # the models are PostgreSQL's, in their schema, as the role the credentials name
        owners = query(dsn, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'analytics_models'")
        assert owners == [{"tableowner": urlparse(dsn).username}]

        subs, changed = change_the_sandbox(admin)
        second = sync_all(instance)
        assert_models_built_and_tested(second, dsn)
        assert_metrics_equal_the_sandbox(dsn, admin)
        after = assert_history_contiguous(dsn)
        assert_history_has_the_changes(before, after, subs, changed, admin)
        assert query(dsn, "SELECT sum(refunds) AS r FROM analytics_models.revenue_monthly")[0]["r"] > 0
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(records)
            logger.setLevel(level)

    # the password: not in any event or log message of either run, nor anything printed, nor
    # the dbt command (whose log line is there: the search did see the dbt step's logs)
    entries = [str(entry) for run in (first, second) for entry in instance.all_logs(run.run_id)]
    assert any("analytics_models" in entry for entry in entries)
    commands = [line for line in records.lines if "dbt build" in line]
    assert commands and all("--target postgres" in line for line in commands), records.lines[-20:]
    printed = capfd.readouterr()
    for where, texts in (("events", entries), ("logs", records.lines), ("output", [printed.out, printed.err])):
        leaked = [text[:300] for text in texts if password in text]
        assert not leaked, (where, leaked)


def test_dbt_on_a_session_not_in_utc_fails_before_building(postgres_warehouse: str, tmp_path: Path) -> None:
    """The models' days are UTC's: dbt run by hand on PostgreSQL with the session in another time
    zone (here PGTZ; else the server's default) stops at its start, saying why, and builds nothing."""
    from analytics_dagster.models import DBT_PROJECT_DIR, dbt_environment
    from analytics_dagster_tests.test_models import query

    env = {**os.environ, **dbt_environment("postgres"), "PGTZ": "Europe/Berlin", "DBT_TARGET_PATH": str(tmp_path),
           "DBT_LOG_PATH": str(tmp_path), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    dbt = [str(Path(sys.executable).parent / "dbt"), "build", "--target", "postgres", "--select", "stg_customer_addresses",
           "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    refused = subprocess.run(dbt, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    assert "the session's time zone is Europe/Berlin, not UTC" in refused.stdout, refused.stdout[-3000:]
    assert query(postgres_warehouse, "SELECT table_name FROM information_schema.tables "
                                     "WHERE table_schema = 'analytics_models'") == []


def test_the_models_sessions_run_without_jit(postgres_warehouse: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL compiled each model's query with its JIT (the planner's estimates for unnested
    JSON cost them past jit_above_cost): 1.5 to 5 s a query, 9 s of a 40-customer build, for
    plans that run in milliseconds. A session opened with the environment the step gives dbt
    (libpq reads PGOPTIONS) has JIT off, and keeps the user's own PGOPTIONS."""
    import psycopg2

    from analytics_dagster.models import dbt_environment

    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=600000")
    for name, value in dbt_environment("postgres").items():
        monkeypatch.setenv(name, value)
    connection = psycopg2.connect(postgres_warehouse)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('jit'), current_setting('statement_timeout'), current_setting('TimeZone')")
            assert cursor.fetchone() == ("off", "10min", "UTC")
    finally:
        connection.close()


@pytest.mark.world(**LOCALIZED_WORLD)
def test_mrr_is_what_a_localized_world_bills_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    """test_models.py's localized world on PostgreSQL: overrides, converted and tax-inclusive
    prices (the macros' PostgreSQL dialect: jsonb overrides, whole-number tax), MRR as billed."""
    from analytics_dagster_tests.test_models import assert_mrr_is_what_a_localized_world_bills

    assert_mrr_is_what_a_localized_world_bills(postgres_warehouse, admin)


@pytest.mark.world(lifecycles=True)
def test_mrr_is_right_for_every_day_from_the_first_sync_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    """test_history.py's world on PostgreSQL: the states inferred from transactions (jsonb items
    and billing periods, string_agg, the line standing at a state's start), every day's MRR the
    sandbox's, after the first sync and two rounds of changes."""
    from analytics_dagster_tests.test_history import assert_history_right_from_the_first_sync

    assert assert_history_right_from_the_first_sync(postgres_warehouse, admin)[0]["flagged"] > 0


@pytest.mark.world(customers=0)
def test_a_new_account_builds_empty_models_then_real_ones_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    """test_models.py's new account on PostgreSQL: the empty stand-ins of the raw tables (jsonb,
    timestamptz), then the real ones."""
    from analytics_dagster_tests.test_models import assert_a_new_account_builds_empty_models_then_real_ones

    assert_a_new_account_builds_empty_models_then_real_ones(postgres_warehouse, admin)


def test_a_first_sync_of_an_account_with_no_event_in_90_days_builds_on_postgres(postgres_warehouse: str,
                                                                                admin: Admin) -> None:
    from analytics_dagster_tests.test_history_adversary import assert_a_first_sync_with_no_event_builds

    assert_a_first_sync_with_no_event_builds(postgres_warehouse, admin)


# ---------------------------------------------------------------- the second adversary's (test_models_adversary_2.py)
def test_a_lower_case_rfc3339_stamp_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    from analytics_dagster_tests.test_models import assert_close, query, sync_all, truth_mrr
    from analytics_dagster_tests.test_models_adversary import active_recurring, run_ok, world_now
    from analytics_dagster_tests.test_models_adversary_2 import first_sub, with_quantity

    """A lower-case `t` and `z` (RFC 3339 allows both) in a subscription's stamp: the history
    places it, and today's MRR is the sandbox's."""
    run_ok(sync_all())
    sub = first_sub(admin, active_recurring)
    stamp = world_now(admin).strftime("%Y-%m-%dt%H:%M:%S.5z")
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 2)},
               updated_at=stamp)
    run_ok(sync_all())
    rows = query(postgres_warehouse, "SELECT day, currency_code, mrr FROM analytics_models.mrr_daily "
                                     "WHERE day = (SELECT max(day) FROM analytics_models.mrr_daily)")
    assert_close({r["currency_code"]: float(r["mrr"]) for r in rows}, truth_mrr(admin))


def test_a_lower_case_stamp_read_by_a_listing_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    """The same stamp read by the first sync's listing, its event late: dlt cannot type it (the
    raw updated_at is null), and the subscription's listed state starts at its created_at: the
    build goes on."""
    from analytics_dagster_tests.test_models import sync_all
    from analytics_dagster_tests.test_models_adversary import active_recurring, world_now
    from analytics_dagster_tests.test_models_adversary_2 import failed_checks, first_sub, warned, with_quantity

    sub = first_sub(admin, active_recurring)
    stamp = world_now(admin).strftime("%Y-%m-%dt%H:%M:%S.5z")
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 2)},
               updated_at=stamp, hold_event=True)
    result = sync_all()
    assert result.success, failed_checks(result)
    warned(result)


def test_mrr_movements_through_rounds_of_changes_on_postgres(postgres_warehouse: str, admin: Admin) -> None:
    """test_mrr_movements.py's rounds on PostgreSQL (from a backfill there): the movements add
    up on every day, each classified as named, the months and the figures as the sandbox bills."""
    from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all
    from analytics_dagster_tests.test_mrr_movements import assert_movements_through_rounds

    # the backfill first, as the DuckDB test's starts from one (a first sync after the world's
    # clock moved on would find no event in the API's 90 days, and no events table to build on)
    assert_models_built_and_tested(sync_all(), postgres_warehouse)
    assert_movements_through_rounds(postgres_warehouse, admin)
