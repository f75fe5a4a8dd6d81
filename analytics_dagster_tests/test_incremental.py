"""Incremental listing against the sandbox: only changes are written, and nothing is lost.

Listing mode (`sources.analytics.incremental = listing`) throughout, except where a test says
both: in events mode a table is listed by its backfill only (see test_events.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance

from analytics_dagster.definitions import defs
from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.sandbox import SandboxServer
from analytics_dagster.source import DEFAULT_METRICS_HISTORY_DAYS as METRICS_HISTORY_DAYS
from analytics_dagster_tests.conftest import (
    EVERY_RUN,
    METRICS,
    REPLACED,
    TABLES,
    Admin,
    assert_table_equals_truth,
    assert_warehouse_equals_api,
    warehouse_rows,
)
from analytics_dagster_tests.test_sync import check_results, sync



@pytest.fixture(autouse=True)
def listing_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")


def unchanged(result: Any) -> bool:
    """The run wrote nothing but the two tables every run replaces."""
    return all(w["written"] == 0 for t, w in written(result).items() if t not in REPLACED)


def written(result: Any) -> dict[str, dict[str, int]]:
    """Per table: rows written, new and updated, from the materialization metadata."""
    out = {}
    for m in result.asset_materializations_for_node("analytics_api"):
        meta = m.metadata
        out[m.asset_key.path[-1]] = {k: meta[f"rows_{k}"].value for k in ("written", "new", "updated")}
    return out


def test_rounds_of_changes_each_synced_exactly(warehouse: Path, admin: Admin) -> None:
    first = sync()
    totals = {t: len(admin.truth(t)) for t in TABLES}
    assert {t: w["written"] for t, w in written(first).items()} == totals
    for round_ in range(3):
        touched = admin.post("advance", updates=12, archives=3, new_customers=2, new_transactions=4)
        result = sync()
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        assert_warehouse_equals_api(warehouse, admin)
        rows = written(result)
        for table, keys in touched.items():
            assert rows[table]["written"] >= len(set(keys)), (round_, table)
        changed = sum(r["written"] for t, r in rows.items() if t not in REPLACED)
        assert changed < sum(totals.values()) / 4, "wrote far too much"
        assert rows["customers"]["new"] >= 2 and rows["transactions"]["new"] >= 4


def test_no_change_rerun_writes_nothing_and_asks_one_page_of_events_and_transactions(
    warehouse: Path, admin: Admin, sandbox: SandboxServer
) -> None:
    assert sync().success
    admin.post("stats/reset")
    result = sync()
    assert result.success
    assert unchanged(result), written(result)
    requests = admin.get("stats")["by_resource"]
    assert requests["events"] == 1 and requests["transactions"] == 1, requests
    assert requests["customer_addresses"] == len(sandbox.world.ids["customers"])  # forced by the API
    checks = check_results(result)
    assert all(c.passed for c in checks.values())


@pytest.mark.parametrize("incremental", ["listing", "events"])
def test_an_empty_dlt_directory_resumes_from_the_destination(
    warehouse: Path, admin: Admin, tmp_path: Path, incremental: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", incremental)
    assert sync().success
    shutil.rmtree(tmp_path / "dlt")
    admin.post("stats/reset")
    result = sync()
    assert unchanged(result)
    requests = admin.get("stats")["by_resource"]
    assert requests["events"] == 1
    if incremental == "events":
        assert set(requests) == {"events", *EVERY_RUN}, requests
    admin.post("advance", updates=5, new_transactions=2)
    shutil.rmtree(tmp_path / "dlt")
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


def test_child_only_run_after_changes_never_loses_customers(warehouse: Path, admin: Admin) -> None:
    assert sync().success
    admin.post("advance", updates=20, new_customers=3)
    assert sync(["customer_addresses"]).success
    assert_table_equals_truth(warehouse, "customer_addresses", admin.truth("customer_addresses"))
    assert sync(["customers", "businesses"]).success
    assert_warehouse_equals_api(warehouse, admin, ["customers", "customer_addresses", "businesses"])


def test_a_row_updated_at_the_cursor_instant_is_not_missed(warehouse: Path, admin: Admin) -> None:
    assert sync(["customers", "transactions"]).success
    for table in ("customers", "transactions"):
        truth = admin.truth(table)
        newest = max(truth, key=lambda e: parse_ns(e["updated_at"]))
        other = next(e for e in truth if e["id"] != newest["id"])
        # the same instant, written with a different number of fractional digits
        same_instant = format_ns(parse_ns(newest["updated_at"]), 9)
        admin.post("mutate", resource=table, key=other["id"], set={"custom_data": {"boundary": 1}},
                   updated_at=same_instant)
        assert sync([table]).success
        assert_table_equals_truth(warehouse, table, admin.truth(table))
        assert '"boundary"' in warehouse_rows(warehouse, table)[other["id"]]["custom_data"]


def test_nanosecond_apart_updates_are_ordered(warehouse: Path, admin: Admin) -> None:
    assert sync(["products"]).success
    products = admin.truth("products")
    newest = max(parse_ns(p["updated_at"]) for p in products)
    first, second = products[0]["id"], products[1]["id"]
    admin.post("mutate", resource="products", key=first, set={"description": "one"}, updated_at=format_ns(newest + 1))
    assert sync(["products"]).success
    admin.post("mutate", resource="products", key=second, set={"description": "two"}, updated_at=format_ns(newest + 2))
    result = sync(["products"])
    assert written(result)["products"]["written"] == 1
    assert_table_equals_truth(warehouse, "products", admin.truth("products"))


def test_changes_while_paging_are_caught_by_the_next_run(warehouse: Path, admin: Admin) -> None:
    assert sync().success
    admin.post("stats/reset")
    # once the run is 15 requests in (paging the customers' children), the world changes
    admin.post("advance", after_requests=15, updates=20, archives=4, new_customers=2, new_transactions=3)
    assert sync().success
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.parametrize("incremental", ["listing", "events"])
def test_full_refresh_rewrites_everything(
    warehouse: Path, admin: Admin, incremental: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", incremental)
    assert sync().success
    # the job the weekly schedule runs, with its own run config
    result = defs.resolve_job_def("full_refresh").execute_in_process(instance=DagsterInstance.ephemeral())
    # every row of every table, and of Paddle's metrics their whole history again (365 days)
    assert {t: w["written"] for t, w in written(result).items()} == {
        **{t: len(admin.truth(t)) for t in TABLES}, **{m: METRICS_HISTORY_DAYS for m in METRICS}}
    assert_warehouse_equals_api(warehouse, admin)
    admin.post("stats/reset")
    assert unchanged(sync()), "state after a full refresh"


def test_the_state_keeps_only_keys_the_next_window_can_hold(warehouse: Path, admin: Admin) -> None:
    """`seen` is saved with every load: a first run must not put every key of a table in it."""
    from analytics_dagster.source.incremental import DEFAULT_LOOKBACK_SECONDS
    from analytics_dagster.source.pipeline import make_pipeline

    assert sync().success
    resources = make_pipeline().state["sources"]["analytics"]["resources"]
    for table in ("customers", "subscriptions", "customer_addresses"):
        state, rows = resources[table], admin.truth(table)
        window_start = state["max_ns"] - DEFAULT_LOOKBACK_SECONDS * 10**9
        in_window = {r["id"] for r in rows if parse_ns(r["updated_at"]) >= window_start}
        assert in_window <= set(state["seen"]), f"{table}: the next run would write these again"
        assert len(state["seen"]) < len(rows) / 2, f"{table}: {len(state['seen'])} keys of {len(rows)} rows"
