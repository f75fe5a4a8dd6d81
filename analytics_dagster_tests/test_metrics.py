"""Paddle's metrics (`/metrics/*`): synced by dates into a table each, a row per day, re-read
over a window, skipped (never fatal) for a key without `metrics.read`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import requests
from dagster import AssetCheckSeverity

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import METRICS, TABLES, Admin, assert_table_equals_truth, assert_warehouse_equals_api, warehouse_rows
from analytics_dagster_tests.test_models import sync_all
from analytics_dagster_tests.test_sync import check_results, sync

READ_CHECK = "api_key_may_read"
HISTORY, REREAD = 365, 7  # the settings' defaults


def api_today(admin: Admin) -> dt.date:
    """The sandbox's today (its world clock)."""
    response = requests.get(admin.url.removesuffix("/_admin") + "/v1/event-types", timeout=30,
                            headers={"Authorization": "Bearer sandbox_api_key"})
    return dt.datetime.fromtimestamp(parse_ns(_rfc(response.headers["Date"])) // 10**9, tz=dt.timezone.utc).date()


def _rfc(http_date: str) -> str:
    import email.utils

    return email.utils.parsedate_to_datetime(http_date).strftime("%Y-%m-%dT%H:%M:%SZ")


def served(admin: Admin, table: str, start: dt.date, end: dt.date) -> dict[str, dict[str, Any]]:
    """The rows of `table` a sync keeps of the days `start` to `end` (exclusive), by day."""
    return {r["day"]: r for r in admin.get(f"truth/{table}?from={start}&to={end}")}


def metadata(result: Any) -> dict[str, dict[str, Any]]:
    return {m.asset_key.path[-1]: {k: getattr(v, "value", v) for k, v in m.metadata.items()}
            for m in result.asset_materializations_for_node("analytics_api")}


def test_metrics_first_run_a_day_later_and_a_revision_inside_the_window(warehouse: Path, admin: Admin) -> None:
    # the first run: a history of 365 days, one request per metric (and one for the API's today:
    # the run reads no event stream)
    today = api_today(admin)
    admin.post("stats/reset")
    result = sync(METRICS)
    assert result.success
    first = {t: served(admin, t, today - dt.timedelta(days=HISTORY - 1), today + dt.timedelta(days=1)) for t in METRICS}
    for table in METRICS:
        assert len(first[table]) == HISTORY
        assert_table_equals_truth(warehouse, table, list(first[table].values()))
    asked = admin.get("stats")["by_resource"]
    assert set(asked) == set(METRICS) and sum(asked.values()) == len(METRICS) + 1, asked
    assert any(int(r["amount"]) for r in first["metrics_monthly_recurring_revenue"].values()), "an MRR of zeros"
    checks = check_results(result)
    assert set(checks) == set(METRICS) and all(c.passed for c in checks.values())
    seen = metadata(result)
    assert seen["metrics_revenue"]["sync_mode"] == "days"
    assert seen["metrics_revenue"]["api_requests"] == 1 and seen["metrics_revenue"]["dagster/row_count"] == HISTORY
    # the newest day's figures, as numbers (plotted on the asset's page)
    assert seen["metrics_monthly_recurring_revenue"]["newest_day"] == today.isoformat()
    assert seen["metrics_monthly_recurring_revenue"]["newest_amount"] == int(first["metrics_monthly_recurring_revenue"][today.isoformat()]["amount"])
    assert isinstance(seen["metrics_checkout_conversion"]["newest_rate"], float)

    # a day later: the days from the last one loaded less the window are read again
    admin.post("advance", seconds=86400, updates=10, new_transactions=3, renewals=2)
    later = api_today(admin)
    assert later == today + dt.timedelta(days=1)
    result = sync(METRICS)
    assert result.success
    start = today - dt.timedelta(days=REREAD)
    again = {t: served(admin, t, start, later + dt.timedelta(days=1)) for t in METRICS}
    for table in METRICS:
        expected = {d: r for d, r in first[table].items() if d < start.isoformat()} | again[table]
        assert_table_equals_truth(warehouse, table, list(expected.values()))
    assert metadata(result)["metrics_revenue"]["rows_written"] == REREAD + 2

    # Paddle revises a day inside the window (and one before it, which no run reads again)
    inside, outside = (later - dt.timedelta(days=3)).isoformat(), (later - dt.timedelta(days=30)).isoformat()
    admin.post("config", metrics_skew={inside: 1.5, outside: 2.0})
    result = sync(METRICS)
    assert result.success
    start = later - dt.timedelta(days=REREAD)
    revised = {t: served(admin, t, start, later + dt.timedelta(days=1)) for t in METRICS}
    mrr = warehouse_rows(warehouse, "metrics_monthly_recurring_revenue")
    assert mrr[inside]["amount"] == revised["metrics_monthly_recurring_revenue"][inside]["amount"]
    assert int(again["metrics_monthly_recurring_revenue"][inside]["amount"]) > 0  # (so the revision shows)
    assert revised["metrics_monthly_recurring_revenue"][inside]["amount"] != again["metrics_monthly_recurring_revenue"][inside]["amount"]
    assert mrr[outside]["amount"] == first["metrics_monthly_recurring_revenue"][outside]["amount"]
    for table in METRICS:
        expected = ({d: r for d, r in first[table].items() if d < today.isoformat()} | again[table]) | revised[table]
        assert_table_equals_truth(warehouse, table, [r for d, r in expected.items() if d != outside] + [
            {k: v for k, v in first[table][outside].items() if k != "updated_at"}])


def test_a_key_without_metrics_read_syncs_every_other_table_and_warns(warehouse: Path, admin: Admin) -> None:
    admin.post("config", denied_permissions=["metrics.read"])
    result = sync(TABLES + METRICS)
    assert result.success
    assert_warehouse_equals_api(warehouse, admin)
    checks = check_results(result, READ_CHECK)
    for table in METRICS:
        assert not checks[table].passed and checks[table].severity == AssetCheckSeverity.WARN
        assert "metrics.read" in checks[table].description
    assert all(c.passed for t, c in checks.items() if t not in METRICS)
    seen = metadata(result)
    for table in METRICS:
        assert seen[table]["sync_mode"] == "skipped" and "Grant metrics.read" in seen[table]["not_synced"]
        assert seen[table]["dagster/row_count"] == 0
    # granted, the next run reads them
    admin.post("config", denied_permissions=[])
    result = sync(TABLES + METRICS)
    assert result.success and all(c.passed for c in check_results(result, READ_CHECK).values())
    today = api_today(admin)
    for table in METRICS:
        truth = served(admin, table, today - dt.timedelta(days=HISTORY - 1), today + dt.timedelta(days=1))
        assert_table_equals_truth(warehouse, table, list(truth.values()))


def reconciliation(result: Any) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.check_name.endswith("_paddle")}


def assert_reconciled(result: Any) -> None:
    found = reconciliation(result)
    assert set(found) == {"mrr_matches_paddle", "active_subscribers_match_paddle", "revenue_matches_paddle"}
    for name, check in found.items():
        seen = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
        assert check.passed, (name, check.description, seen.get("by_day"), seen.get("rates"))
        assert seen["days_compared"] >= 7, (name, seen)
        assert isinstance(seen["ours"], float) and isinstance(seen["paddle"], float)


def test_reconciliation_passes_on_one_currency_and_warns_naming_a_skewed_day(warehouse: Path, admin: Admin) -> None:
    result = sync_all()
    assert result.success
    assert_reconciled(result)
    mrr = reconciliation(result)["mrr_matches_paddle"]
    assert mrr.metadata["paddle"].value > 0
    # Paddle's MRR of one day, four days back, differs: the check warns naming it, and only it
    today = api_today(admin)
    skewed = (today - dt.timedelta(days=4)).isoformat()
    admin.post("config", metrics_skew={skewed: 1.02})
    result = sync_all()
    found = reconciliation(result)
    assert not found["mrr_matches_paddle"].passed and found["mrr_matches_paddle"].severity == AssetCheckSeverity.WARN
    assert found["mrr_matches_paddle"].metadata["days_beyond_tolerance"].value == skewed
    assert skewed in found["mrr_matches_paddle"].description


@pytest.mark.world(localized=0.6, seed=19)
def test_reconciliation_passes_on_a_multi_currency_world(warehouse: Path, admin: Admin) -> None:
    result = sync_all()
    assert result.success
    assert_reconciled(result)
    rates = reconciliation(result)["mrr_matches_paddle"].metadata["rates"].value
    assert "->USD" in rates, rates  # several billing currencies, converted
