"""DuckDB's memory: a run keeps to a limit (its buffer pool grew with the account), and a load
that needs more than it (very wide rows) is loaded again with more, not failed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from analytics_dagster.sandbox import SandboxServer, World
from analytics_dagster.source.pipeline import _memory_in_package, make_pipeline
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_sync import sync
from analytics_dagster_tests.test_warehouse_lock import sync_with_log

WIDE_CUSTOMERS = 300
WIDE_BYTES = 200_000  # of custom_data per customer: 60 MB in all, one chunk by rows and by time


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """An account whose customers each carry 200 KB of custom_data (distinct, so that nothing
    compresses it away)."""
    world = World(customers=WIDE_CUSTOMERS, seed=3)
    for i, key in enumerate(sorted(world.ids["customers"])):
        world.mutate("customers", key, {"custom_data": {"blob": (f"{i:08d}" + os.urandom(WIDE_BYTES // 2).hex())[:WIDE_BYTES]}})
    with SandboxServer(world) as server:
        yield server


@pytest.mark.parametrize("own, expected", [(None, "244.1 MiB"), ('{"memory_limit": "1GB"}', "953.6 MiB")])
def test_a_runs_duckdb_connections_keep_to_the_memory_limit(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch, own: str | None, expected: str,
) -> None:
    """DuckDB's buffer pool grows with what a load touches, up to its limit (80% of the
    machine's memory by default): the project's 256 MB, unless the user's own global_config
    sets one."""
    if own:
        monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG", own)
    with make_pipeline().sql_client() as client:
        assert client.execute_sql("SELECT current_setting('memory_limit')") == [(expected,)]


def test_a_load_too_wide_for_a_limit_fails_under_the_users_and_is_loaded_again_with_more_under_the_projects(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 MB of custom_data in one chunk, more than a load can hold in 256 MB.

    Under a limit the user set, it stands: the run fails naming DuckDB's memory, whichever of
    DuckDB's errors the load ended with (when a commit runs out of memory, DuckDB invalidates
    the database and the error dlt raises last names no memory: what the package recorded of
    each try does). Once the user lifts it, the project's own 256 MB runs out the same way, and
    the load is loaded again, from the package it left, with 1 GB: the run succeeds, says so,
    and is exact; and so is the next. (One test: each of these loads moves the 60 MB.)"""
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG", '{"memory_limit": "256MB"}')
    result = sync(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.step_failure_data.error.to_string()
    assert "the load ran out of DuckDB's memory, under the memory_limit that destination.duckdb" in error
    assert "MiB used)" in error.split("step by step): ", 1)[1]  # DuckDB's own line: what it used of the limit
    assert _memory_in_package(make_pipeline()), "the pending package records the tries that ran out of memory"

    monkeypatch.delenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG")
    result, log = sync_with_log(monkeypatch)
    assert result.success
    assert "the load ran out of DuckDB's memory; loading it again with memory_limit 1GB" in log
    assert_warehouse_equals_api(warehouse, admin)
    admin.post("advance", updates=100, new_customers=5)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)
