"""Another process holding the DuckDB file (a notebook, a BI tool, even read-only): every
connection of a run waits for it, saying who holds it, and the run fails past the bound."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from dagster import DagsterInstance

from analytics_dagster.source.pipeline import make_pipeline, table_stats
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api, poll, warehouse_rows
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import sync

# A reader in a process of its own: opens the file read-only, runs a query, says it holds the file,
# and keeps it open until the release file appears or `limit` seconds have passed.
HOLDER = """
import sys, time, pathlib, duckdb
path, held, release, limit = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), float(sys.argv[4])
con = duckdb.connect(path, read_only=True)
con.execute("SELECT count(*) FROM information_schema.tables").fetchall()
held.write_text("held")
deadline = time.monotonic() + limit
while not release.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
con.close()
"""


@contextlib.contextmanager
def holder(db: Path, tmp_path: Path, limit: float) -> Iterator[subprocess.Popen]:
    """A separate process holding `db` open read-only: yields once it holds it, for `limit` s at
    most (the release file, made on leaving, ends it sooner)."""
    held, release = tmp_path / "held", tmp_path / "release"
    held.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(held), str(release), str(limit)])
    try:
        poll(lambda: held.exists() or process.poll() is not None, timeout=30)
        assert held.exists(), f"the holder exited with {process.returncode} before holding the file"
        yield process
    finally:
        release.write_text("go")
        process.wait(timeout=30)


def sync_with_log(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> tuple[Any, str]:
    """`sync`, and the run's log (what the UI shows) as text."""
    instance = DagsterInstance.ephemeral()
    monkeypatch.setattr(DagsterInstance, "ephemeral", staticmethod(lambda *a, **k: instance))
    result = sync(**kwargs)
    return result, "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))


@pytest.mark.usefixtures("backfilled")
def test_a_reader_holding_the_warehouse_makes_the_run_wait_then_it_is_exact(
    warehouse: Path, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin.post("advance", updates=5)
    with holder(warehouse, tmp_path, limit=4) as process:
        started = time.monotonic()
        result, log = sync_with_log(monkeypatch)
        elapsed = time.monotonic() - started
        assert process.poll() is not None, "the run went on only once the reader had let go"
    assert result.success
    assert f"(PID {process.pid}): waiting for it" in log, log[-3000:]
    assert elapsed > 1.0
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_reader_that_does_not_let_go_fails_the_run_naming_it_then_the_next_run_is_exact(
    warehouse: Path, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = warehouse_rows(warehouse, "customers")
    admin.post("advance", updates=5, new_customers=1)
    monkeypatch.setenv("DESTINATION__DUCKDB__LOCK_WAIT_SECONDS", "3")
    with holder(warehouse, tmp_path, limit=120) as process:
        started = time.monotonic()
        result = sync(raise_on_error=False)
        elapsed = time.monotonic() - started
        assert process.poll() is None, "the reader still holds the file"
    assert not result.success
    error = step_error(result)
    assert f"PID {process.pid}" in error and str(warehouse) in error, error[-3000:]
    assert "read-only, query, and close the connection at once" in error, error[-3000:]
    assert 3 <= elapsed < 60
    assert warehouse_rows(warehouse, "customers") == before, "nothing of the failed run was loaded"
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


def test_the_load_and_the_checks_query_wait_for_a_held_file_too(
    warehouse: Path, admin: Admin, tmp_path: Path
) -> None:
    """Below the run's first connection (the state's restore): dlt's load step and the checks'
    `table_stats` open the file through the same credentials, and wait the same way."""
    assert sync(["products"]).success
    lines: list[str] = []
    pipeline = make_pipeline(report=lines.append)
    pipeline.extract([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], table_name="lock_probe")
    pipeline.normalize()
    with holder(warehouse, tmp_path, limit=3) as process:
        pipeline.load()
    assert any(f"(PID {process.pid}): waiting for it" in line for line in lines), lines
    assert table_stats(pipeline, ["products"], keys=False)["products"]["rows"] == len(admin.truth("products"))

    lines.clear()
    with holder(warehouse, tmp_path, limit=3) as process:
        stats = table_stats(make_pipeline(report=lines.append), ["products"])
    assert any(f"(PID {process.pid}): waiting for it" in line for line in lines), lines
    assert stats["products"]["rows"] == len(admin.truth("products")) and not stats["products"]["duplicate_keys"]



def test_a_sync_opens_the_file_once_a_step_and_configures_its_capabilities_and_clients_once(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each close of the file is a full checkpoint: a load's jobs, schema and state share one
    connection, as do the state's and the schemas' restores from the destination
    (`pipeline._on_one_connection`). A whole first sync outside Dagster (`source.sync.sync`: two
    loads here, the backfill and the events made while it listed) opens the file at most twice
    a load (seen: 4 times); before, dlt's clients opened it at each of their borrows (seen: 8).
    And the destination's settings are resolved for its capabilities once for the pipeline
    (`pipeline._capabilities_configured_once`; before: at each lookup, 26 times here). And the
    REST clients of a load's listings share one runtime configuration (`source._listings`;
    before: each of `rest_api`'s clients resolved its own, 19 a load, 33 here)."""
    import duckdb
    import dlt.sources.helpers.rest_client.client as rest_client
    from dlt.common.destination.reference import Destination

    from analytics_dagster.source.sync import sync as engine_sync

    opened: list[str] = []
    connect = duckdb.connect
    monkeypatch.setattr(duckdb, "connect", lambda *args, **kwargs: opened.append(str(args or kwargs)) or connect(*args, **kwargs))
    partial: list[str] = []
    configuration = Destination.configuration
    monkeypatch.setattr(Destination, "configuration", lambda self, initial, accept_partial=False: (
        partial.append(self.destination_name) if accept_partial else None) or configuration(self, initial, accept_partial))
    resolved: list[str] = []  # by a REST client itself (given no configuration)
    resolve = rest_client.resolve_configuration
    monkeypatch.setattr(rest_client, "resolve_configuration", lambda config, *args, **kwargs: (
        resolved.append(type(config).__name__) or resolve(config, *args, **kwargs)))
    run = engine_sync(report=lambda line: None)
    assert len(opened) <= 2 * len(run.plans), (len(run.plans), opened)
    assert partial == ["duckdb"], partial
    assert len(resolved) <= len(run.plans), (len(run.plans), resolved)
    assert_warehouse_equals_api(warehouse, admin)
