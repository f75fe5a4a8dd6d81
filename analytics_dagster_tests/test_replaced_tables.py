"""The tables every run writes whole (event_types, ip_addresses): a load that fails part-way
leaves their previous rows, never an empty or half-written table."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster.source.pipeline import make_pipeline
from analytics_dagster_tests.conftest import REPLACED, Admin, assert_warehouse_equals_api, warehouse_rows
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import sync


def replaced_rows(db: Path | str) -> dict[str, dict]:
    return {table: warehouse_rows(db, table) for table in sorted(REPLACED)}


def a_huge_event_type(admin: Admin, sandbox: SandboxServer) -> str:
    """The API's next answer lists a new event type whose description is 10 MB, and swaps a CIDR."""
    name = admin.post("advance", new_event_types=1, cidrs_swapped=1)["event_types"][0]
    sandbox.world.event_types[-1]["description"] = "x" * 10_000_000
    return name


def test_the_replace_strategy_is_insert_from_staging(warehouse: Path) -> None:
    client = make_pipeline().destination_client()
    assert client.config.replace_strategy == "insert-from-staging"


@pytest.mark.usefixtures("backfilled")
def test_a_load_that_fails_leaves_the_replaced_tables_as_they_were(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real failure of the load itself: DuckDB runs out of the memory it is given
    (`memory_limit`, a setting of the README) loading the event type of 10 MB, after the
    load began. dlt loads the rows into the staging dataset and swaps them in by one transaction,
    so the failure leaves the tables as the last good run wrote them; dlt's default,
    truncate-and-insert, emptied them at the start of the load (the control below)."""
    before = replaced_rows(warehouse)
    assert all(before.values())
    name = a_huge_event_type(admin, sandbox)
    monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG", '{"memory_limit": "16MB"}')
    monkeypatch.setenv("LOAD__RAISE_ON_MAX_RETRIES", "1")  # dlt retries a job it takes for transient 5 times
    # one job at a time: loaded beside the event type of 10 MB, a small table's job ran out of
    # the same DuckDB's memory first (seen in CI: the error named ip_addresses)
    monkeypatch.setenv("LOAD__WORKERS", "1")

    result = sync(sorted(REPLACED), raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "Out of Memory" in error and "event_types" in error, error[-3000:]
    after = replaced_rows(warehouse)
    assert after["event_types"] == before["event_types"], "the previous rows, the very same (same _dlt_load_id)"
    # each table is swapped in by a transaction of its own: ip_addresses, whose load went
    # through, is either as it was or the API's whole new list, never empty or a mix
    ips = set(after["ip_addresses"])
    assert after["ip_addresses"] == before["ip_addresses"] or ips == {r["ipv4_cidr"] for r in admin.truth("ip_addresses")}

    # control: the same failure under dlt's default strategy leaves event_types empty
    monkeypatch.setenv("DESTINATION__REPLACE_STRATEGY", "truncate-and-insert")
    assert not sync(sorted(REPLACED), raise_on_error=False).success
    assert warehouse_rows(warehouse, "event_types") == {}

    monkeypatch.delenv("DESTINATION__REPLACE_STRATEGY")
    monkeypatch.delenv("DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG")
    assert sync().success, "with its memory back, the next run loads it"
    assert len(warehouse_rows(warehouse, "event_types")[name]["description"]) == 10_000_000
    assert_warehouse_equals_api(warehouse, admin)
