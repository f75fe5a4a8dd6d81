"""Adjustments, the resource of its own: listed by the first sync, then kept by their events
(`adjustment.created`, `adjustment.updated`), each row that of a real transaction's items."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analytics_dagster.source.sync import sync as engine_sync
from analytics_dagster_tests.conftest import Admin, assert_events_cover_api, assert_table_equals_truth, warehouse_rows
from analytics_dagster_tests.test_sandbox import assert_adjustments_are_of_their_transactions

TABLES = ["adjustments", "transactions", "events"]


def sync(tables: list[str]) -> Any:
    """A run of `tables` by the sync engine (no Dagster): its first plan."""
    return engine_sync(tables).plans[0]


def as_api(row: dict[str, Any]) -> dict[str, Any]:
    """A warehouse row read back as the API's values: JSON columns parsed, timestamps RFC 3339."""
    nested = ("items", "totals", "payout_totals", "tax_rates_used", "details")
    return {k: json.loads(v) if k in nested and isinstance(v, str)
            else v.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(v, datetime)
            else v for k, v in row.items()}


@pytest.mark.world(seed=8)  # a world whose new refunds leave some pending for the updates to review
def test_adjustments_are_listed_once_then_kept_by_their_events(warehouse: Path, admin: Admin) -> None:
    assert sync(TABLES).mode("adjustments") == "listing", "its backfill"
    assert_table_equals_truth(warehouse, "adjustments", admin.truth("adjustments"))
    assert len(admin.truth("adjustments")) == 5, "the initial world's: max(2, 40 / 8)"

    # between two runs: refunds made, one of them approved, and updates reviewing others
    made = admin.post("advance", adjustments=6)["adjustments"]
    current = {a["id"]: a for a in admin.truth("adjustments")}
    refund = next(k for k in made if current[k]["action"] == "refund" and current[k]["status"] == "pending_approval")
    approved = admin.post("mutate", resource="adjustments", key=refund, set={"status": "approved"})
    reviewed = admin.post("advance", updates=300)
    assert reviewed["adjustments"], "updates review pending refunds too"
    events = [e for e in admin.truth("events") if e["event_type"].startswith("adjustment.")]
    assert [e["event_type"] for e in events if e["data"]["id"] == refund] == ["adjustment.created", "adjustment.updated"]

    assert sync(TABLES).mode("adjustments") == "events", "then kept by its events"
    truth = admin.truth("adjustments")
    assert_table_equals_truth(warehouse, "adjustments", truth)
    assert_events_cover_api(warehouse, admin)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM analytics.adjustments WHERE id = ?", [refund]).fetchone()
    assert rows == (1,), "landed once"
    row = warehouse_rows(warehouse, "adjustments")[refund]
    assert row["status"] == "approved" and row["updated_at"] is not None
    assert row["updated_at"].isoformat().startswith(approved["updated_at"][:19])
    for key in reviewed["adjustments"]:
        assert warehouse_rows(warehouse, "adjustments")[key]["status"] in ("approved", "rejected")

    # every row is of a transaction of the warehouse, its items that transaction's line items,
    # its totals adding up: read back from the warehouse itself
    adjustments = [as_api(r) for r in warehouse_rows(warehouse, "adjustments").values()]
    transactions = {k: as_api(r) for k, r in warehouse_rows(warehouse, "transactions").items()}
    assert len(adjustments) == len(truth) == 5 + 6
    assert {a["transaction_id"] for a in adjustments} <= set(transactions)
    assert_adjustments_are_of_their_transactions(adjustments, list(transactions.values()))
