"""A real account, faithful: what Paddle's API does that a sandbox built from example payloads did
not, each against the warehouse, key by key.

- Events leave fields out (`management_urls` of a subscription, `times_used` of a discount):
  the merge of an event's snapshot must not null them.
- Fields change with no event (`times_used` at each checkout; a discount or a report that
  expires): events mode must still see them.
- Listings hide by status (reports: failed and expired; discounts: expired and used).
- A key lacks one permission: that table alone is skipped, with a warning check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetCheckSeverity, DagsterInstance

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster_tests.conftest import TABLES, Admin, active, assert_warehouse_equals_api, warehouse_rows
from analytics_dagster_tests.test_automation import evaluate
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import check_results, sync

READ_CHECK = "api_key_may_read"
HOUR_NS = 3600 * 10**9
EXTRACT_WORKERS = 16  # the worker threads of an extract (.dlt/config.toml, [extract] workers)


def now_ns(admin: Admin) -> int:
    """The sandbox's clock: the newest `updated_at` it has stamped, near enough."""
    return max(parse_ns(e["updated_at"]) for e in admin.truth("customers"))


def change_what_events_do_not_say(admin: Admin, round_: int) -> dict[str, Any]:
    """A round of changes a real account makes: renewals (subscription events, which carry no
    `management_urls`), checkouts redeeming discounts (`times_used` grows, no event), a
    discount and a report that expire (no event), a report that fails. Returns what it did."""
    subscriptions = [s for s in admin.truth("subscriptions") if s["status"] == "active"]
    renewed = subscriptions[round_ * 3:round_ * 3 + 3]
    for sub in renewed:  # a renewal: the billing period moves, nothing else
        period = sub.get("current_billing_period") or {"starts_at": sub["updated_at"], "ends_at": sub["updated_at"]}
        admin.post("mutate", resource="subscriptions", key=sub["id"],
                   set={"current_billing_period": {"starts_at": period["ends_at"], "ends_at": period["ends_at"]}})
    clock = now_ns(admin)
    discount = active(admin, "discounts")
    admin.post("mutate", resource="discounts", key=discount["id"], set={"expires_at": format_ns(clock + HOUR_NS, 3)})
    active(admin, "discounts", mode="standard")  # (one the checkouts can redeem)
    reports = admin.truth("reports")
    failing, expiring = reports[round_ % len(reports)], reports[(round_ + 1) % len(reports)]
    admin.post("mutate", resource="reports", key=failing["id"], set={"status": "failed"})
    admin.post("mutate", resource="reports", key=expiring["id"],
               set={"status": "ready", "rows": 7, "expires_at": format_ns(clock + HOUR_NS, 3)})
    # two hours on (the discount and the report expire), checkouts and ordinary changes
    admin.post("advance", seconds=2 * 3600, checkouts=12, updates=20)
    return {"renewed": [s["id"] for s in renewed], "expired": discount["id"], "report": expiring["id"],
            "failed": failing["id"]}


@pytest.mark.usefixtures("backfilled")
@pytest.mark.parametrize("mode", ["events", "listing"])
def test_rounds_of_renewals_checkouts_and_expiries_leave_every_table_exact(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", mode)
    for round_ in range(2):
        done = change_what_events_do_not_say(admin, round_)
        result = sync()
        assert result.success
        assert_warehouse_equals_api(warehouse, admin)
        # (what the round exercised, as the warehouse now holds it)
        subscriptions = warehouse_rows(warehouse, "subscriptions")
        assert all(subscriptions[s]["management_urls"] for s in done["renewed"]), "a renewal nulled management_urls"
        assert warehouse_rows(warehouse, "discounts")[done["expired"]]["status"] == "expired"
        reports = warehouse_rows(warehouse, "reports")
        assert reports[done["report"]]["status"] == "expired" and reports[done["failed"]]["status"] == "failed"
        assert {d["times_used"] for d in admin.truth("discounts")} != {0}
        seen = metadata(result)
        # the discounts' listing every run: one request a part (two: standard and custom), a few dozen rows
        assert seen["discounts"]["api_requests"] == len(RESOURCES_BY_NAME["discounts"].parts)
        if mode == "events":
            assert seen["subscriptions"]["sync_mode"] == "events"
            assert "times_used" in seen["discounts"]["sync_reason"]


def test_a_default_listing_hides_failed_and_expired_reports_and_unusable_discounts(admin: Admin, sandbox: Any) -> None:
    """The sandbox does what Paddle's listings do: the statuses the source asks for are hidden
    unless asked (so the test above could fail)."""
    import requests

    headers = {"Authorization": f"Bearer {sandbox.config.api_key}"}
    discount = active(admin, "discounts")
    admin.post("mutate", resource="discounts", key=discount["id"], set={"expires_at": format_ns(now_ns(admin) + HOUR_NS, 3)})
    admin.post("advance", seconds=2 * 3600)  # it expires
    for table, hidden in (("reports", {"failed", "expired"}), ("discounts", {"expired", "used"})):
        statuses = {e["status"] for e in admin.truth(table)}
        path = RESOURCES_BY_NAME[table].path
        listed = requests.get(f"{sandbox.url}/v1{path}?per_page=200", headers=headers, timeout=30).json()["data"]
        assert not {e["status"] for e in listed} & hidden
        assert statuses & hidden, f"the sandbox's world has no {table} of a hidden status"


@pytest.mark.usefixtures("backfilled")
def test_a_key_without_report_read_syncs_every_other_table_and_warns(warehouse: Path, admin: Admin) -> None:
    admin.post("config", denied_permissions=["report.read"])
    before = warehouse_rows(warehouse, "reports")
    report = admin.truth("reports")[0]
    admin.post("mutate", resource="reports", key=report["id"], set={"status": "failed"})
    admin.post("advance", updates=25, new_customers=2, new_transactions=3)
    result = sync()
    assert result.success
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t != "reports"])
    assert warehouse_rows(warehouse, "reports") == before, "the reports table is left as it was"
    checks = check_results(result, READ_CHECK)
    assert not checks["reports"].passed and checks["reports"].severity == AssetCheckSeverity.WARN
    assert "report.read" in checks["reports"].description
    assert all(c.passed for t, c in checks.items() if t != "reports")
    seen = metadata(result)["reports"]
    assert seen["sync_mode"] == "skipped" and "report.read" in seen["not_synced"]
    # granted, the next run syncs it and the check passes
    admin.post("config", denied_permissions=[])
    result = sync()
    assert result.success
    assert_warehouse_equals_api(warehouse, admin)
    assert check_results(result, READ_CHECK)["reports"].passed


def test_a_key_without_address_read_costs_one_request_and_skips_addresses_alone(warehouse: Path, admin: Admin) -> None:
    """A child listed once per customer: the first forbidden answer stops the others (one
    request, or one per worker thread asking at that moment: not one per customer)."""
    admin.post("config", denied_permissions=["address.read"])
    result = sync()
    assert result.success
    # (dlt's worker threads may have asked at once before the first answer: a few, not 40)
    assert admin.get("stats")["by_resource"].get("customer_addresses") <= EXTRACT_WORKERS < len(admin.truth("customers"))
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t != "customer_addresses"])
    check = check_results(result, READ_CHECK)["customer_addresses"]
    assert not check.passed and "address.read" in check.description
    admin.post("config", denied_permissions=[])
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_key_without_notification_read_fails_events_mode_naming_it(warehouse: Path, admin: Admin,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Events mode keeps the tables from the stream: it fails at once, naming the permission
    and the alternative; listing mode syncs every table but `events`, and warns."""
    admin.post("config", denied_permissions=["notification.read"])
    admin.post("advance", updates=15, new_customers=1)
    result = sync(raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "notification.read" in error and 'incremental = "listing"' in error and "forbidden" in error
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    result = sync()
    assert result.success
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t != "events"])
    check = check_results(result, READ_CHECK)["events"]
    assert not check.passed and "notification.read" in check.description



def test_the_events_sensor_says_why_it_cannot_watch_without_notification_read(warehouse: Path, admin: Admin) -> None:
    admin.post("config", denied_permissions=["notification.read"])
    with DagsterInstance.ephemeral() as instance:
        tick = evaluate(instance, None)
    assert not tick.run_requests and "notification.read" in tick.skip_message

