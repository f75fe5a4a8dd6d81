"""Adversarial tests of issue #32 ("a real account, faithful"): what a real Paddle account allows
that could make the warehouse differ from the API, fail a run, or lose data.

Each test is end to end: the sandbox on 127.0.0.1, a DuckDB file under tmp_path, the warehouse
compared with the API key by key. Three of them found bugs, fixed since: a key without
subscription.read failed every events-mode run; a report that expires keeping its `updated_at`
(as Paddle's own example shows) stayed `ready`; a customers listing forbidden while it served
only the children reported the customers as not synced.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from dagster import AssetCheckSeverity

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World
from analytics_dagster_tests.conftest import (
    TABLES,
    Admin,
    assert_table_equals_truth,
    assert_warehouse_equals_api,
    use_sandbox,
    warehouse_rows,
)
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import check_results, sync

READ_CHECK = "api_key_may_read"
HOUR_NS = 3600 * 10**9
CUSTOMER_TABLES = ["customers", "customer_addresses", "businesses"]


def now_ns(admin: Admin) -> int:
    return max(parse_ns(e["updated_at"]) for e in admin.truth("customers"))


def subscription_events_after(admin: Admin, event_id: str) -> set[str]:
    return {e["data"]["id"] for e in admin.truth("events")
            if e["event_id"] > event_id and e["event_type"].startswith("subscription.")}


# --------------------------------------------------------------------------- reports
@pytest.mark.parametrize("mode", ["events", "listing"])
def test_a_report_that_expires_keeping_its_updated_at_is_seen_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", mode)
    world = World(customers=60, seed=7)  # three reports (one per 20 customers)
    with SandboxServer(world, config=SandboxConfig()) as server:
        admin = Admin(server.url)
        db = use_sandbox(monkeypatch, server, tmp_path)
        first, second = admin.truth("reports")[:2]
        # the first becomes ready now (stamped), downloadable for 14 days as Paddle's are
        clock = now_ns(admin)
        admin.post("mutate", resource="reports", key=first["id"],
                   set={"status": "ready", "rows": 8, "expires_at": format_ns(clock + 14 * 24 * HOUR_NS, 6)})
        assert sync(["reports"]).success
        # a day later another report is ready (stamped): the change window moves past the first
        admin.post("advance", seconds=24 * 3600)
        admin.post("mutate", resource="reports", key=second["id"],
                   set={"status": "ready", "rows": 3, "expires_at": format_ns(clock + 30 * 24 * HOUR_NS, 6)})
        assert sync(["reports"]).success
        assert_warehouse_equals_api(db, admin, ["reports"])
        # the first expires: its status changes, its updated_at stays (Paddle's example)
        ready = next(r for r in admin.truth("reports") if r["id"] == first["id"])
        admin.post("mutate", resource="reports", key=first["id"], set={"status": "expired"},
                   updated_at=ready["updated_at"])
        admin.post("advance", seconds=14 * 24 * 3600)
        assert sync(["reports"]).success
        assert_warehouse_equals_api(db, admin, ["reports"])


# --------------------------------------------------------------------------- subscription.read
@pytest.mark.usefixtures("backfilled")
def test_a_key_without_subscription_read_skips_subscriptions_alone_in_events_mode(
    warehouse: Path, admin: Admin,
) -> None:
    before = warehouse_rows(warehouse, "subscriptions")
    admin.post("config", denied_permissions=["subscription.read"])
    subs = [s for s in admin.truth("subscriptions") if s["status"] == "active"][:3]
    for sub in subs:  # renewals: subscription events, with no management_urls
        admin.post("mutate", resource="subscriptions", key=sub["id"], set={"custom_data": {"renewed": True}})
    admin.post("advance", updates=15, new_customers=2, new_transactions=3)
    result = sync(raise_on_error=False)
    assert result.success, step_error(result)[:600]
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t != "subscriptions"])
    after = warehouse_rows(warehouse, "subscriptions")
    # skipped (as it was), and in no case a row whose management_urls the run nulled
    assert after == before
    check = check_results(result, READ_CHECK)["subscriptions"]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    assert "subscription.read" in check.description
    admin.post("config", denied_permissions=[])
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


# --------------------------------------------------------------------------- the fetch by id
def test_more_than_100_subscriptions_changed_in_one_run_are_fetched_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past `_FETCH_BATCH` (100 ids a request), every changed subscription keeps its
    management_urls, one request per 100; a late event (held, then released) and a change of
    the links with no event of its own among them."""
    world = World(customers=250, seed=11)
    with SandboxServer(world, config=SandboxConfig()) as server:
        admin = Admin(server.url)
        db = use_sandbox(monkeypatch, server, tmp_path)
        assert sync(["subscriptions"]).success
        subs = admin.truth("subscriptions")
        assert len(subs) > 100, len(subs)
        cursor = admin.truth("events")[-1]["event_id"]
        late = subs[0]["id"]
        for sub in subs[1:]:  # a renewal of each: an event without management_urls
            admin.post("mutate", resource="subscriptions", key=sub["id"], set={"custom_data": {"renewal": 1}})
        # the late one: its links change with its event, which becomes visible only later
        admin.post("mutate", resource="subscriptions", key=late, hold_event=True,
                   set={"management_urls": {"update_payment_method": None, "cancel": "https://x.test/c/late"}})
        changed = subscription_events_after(admin, cursor)
        assert len(changed) > 100
        admin.post("stats/reset")
        result = sync(["subscriptions"])
        assert result.success
        fetches = admin.get("stats")["by_resource"].get("subscriptions", 0)
        assert fetches == math.ceil(len(changed) / 100), fetches
        rows = warehouse_rows(db, "subscriptions")
        api = {s["id"]: s for s in admin.truth("subscriptions")}
        assert all(rows[k]["management_urls"] is not None for k in changed)
        # every one but the late one, whose event is not visible yet
        assert_table_equals_truth(db, "subscriptions", [s for s in api.values() if s["id"] != late],
                                  extra_allowed=True)
        assert rows[late]["management_urls"] != api[late]["management_urls"]
        admin.post("release")
        assert sync(["subscriptions"]).success
        assert_table_equals_truth(db, "subscriptions", list(api.values()))


# --------------------------------------------------------------------------- mid-backfill permissions
def test_permissions_revoked_and_granted_across_a_chunked_customers_backfill(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backfill of customers in chunks stops after its first chunk (a request failing past
    its retries); the key then loses address.read (the rest of the backfill skips addresses),
    then customer.read (addresses' backfill cannot resume; customers, kept by events, go on);
    granted again, every table is exact."""
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "10")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", '{"customers": 10}')
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0")
    # run 1: the first customers page (and its children) commits, the second fails past its retries
    admin.post("inject", resource="customers", kind="status", status=500, count=4, after_requests=4)
    result = sync(CUSTOMER_TABLES, raise_on_error=False)
    assert not result.success
    committed = warehouse_rows(warehouse, "customers")
    assert 0 < len(committed) < len(admin.truth("customers"))
    # run 2: without address.read
    admin.post("advance", updates=10, new_customers=2)
    admin.post("config", denied_permissions=["address.read"])
    result = sync(CUSTOMER_TABLES)
    assert result.success
    assert_warehouse_equals_api(warehouse, admin, ["customers", "businesses"])
    assert not check_results(result, READ_CHECK)["customer_addresses"].passed
    # run 3: address.read back, customer.read gone: customers are kept by the stream (no listing
    # needs customer.read for them); the addresses' backfill, a customers listing, cannot resume
    admin.post("advance", updates=10, new_customers=1)
    admin.post("config", denied_permissions=["customer.read"])
    result = sync(CUSTOMER_TABLES)
    assert result.success
    assert_warehouse_equals_api(warehouse, admin, ["customers", "businesses"])
    seen = metadata(result)
    # (customers were synced from the stream: the asset should not say they were not)
    customers_check = check_results(result, READ_CHECK)["customers"]
    skipped_customers = "not_synced" in seen["customers"] or not customers_check.passed
    # run 4: every permission
    admin.post("config", denied_permissions=[])
    admin.post("advance", updates=10)
    assert sync(CUSTOMER_TABLES).success
    assert_warehouse_equals_api(warehouse, admin, CUSTOMER_TABLES)
    assert not skipped_customers, (seen["customers"].get("not_synced"), customers_check.description)


# --------------------------------------------------------------------------- discounts
@pytest.mark.usefixtures("backfilled")
def test_times_used_changed_during_a_failed_run_is_written_by_the_next(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The content digests of the discounts (state) move with a load that commits, never with
    one that failed: checkouts, then a run failing after its discounts' listing was read, then
    a run that writes them."""
    monkeypatch.setenv("RUNTIME__REQUEST_BACKOFF_FACTOR", "0")
    admin.post("advance", checkouts=15, seconds=60)
    admin.post("inject", resource="reports", kind="status", status=500, count=4)
    assert not sync(raise_on_error=False).success
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)
