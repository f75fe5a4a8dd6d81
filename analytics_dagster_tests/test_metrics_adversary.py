"""Adversary of Paddle's metrics sync (#29): series the contract allows, or does not promise
against, that the warehouse must still hold exactly as the API serves them (or refuse, naming
the metric). The sandbox serves them with its switch `metrics_points` (docs/sandbox.md)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from analytics_dagster_tests.conftest import METRICS, Admin, assert_table_equals_truth, warehouse_rows
from analytics_dagster_tests.test_metrics import HISTORY, REREAD, READ_CHECK, api_today, metadata, served
from analytics_dagster_tests.test_sync import check_results, sync

MRR = "metrics_monthly_recurring_revenue"


def test_a_point_stamped_with_an_offset_lands_on_its_utc_day(warehouse: Path, admin: Admin) -> None:
    # RFC 3339 allows any offset: today's point stamped at the same instant, today 00:00 UTC, as
    # 19:00 the day before at -05:00. It is today's figure; the day before keeps its own.
    today = api_today(admin)
    yesterday = today - dt.timedelta(days=1)
    truth = served(admin, MRR, today - dt.timedelta(days=HISTORY - 1), today + dt.timedelta(days=1))
    assert truth[yesterday.isoformat()]["amount"] != "4242"
    admin.post("config", metrics_points={today.isoformat(): {"timestamp": f"{yesterday}T19:00:00-05:00", "amount": "4242"}})
    assert sync(METRICS).success
    rows = warehouse_rows(warehouse, MRR)
    assert rows.get(yesterday.isoformat(), {}).get("amount") == truth[yesterday.isoformat()]["amount"], (
        "the day before took today's figure", rows.get(yesterday.isoformat()), truth[yesterday.isoformat()])
    assert rows.get(today.isoformat(), {}).get("amount") == "4242", ("today's figure", rows.get(today.isoformat()))


def test_an_amount_beyond_a_float_is_kept_and_reported_exactly(warehouse: Path, admin: Admin) -> None:
    # amounts are strings of minor units: no bound. 2^53 + 1 is the first integer a float cannot hold.
    today = api_today(admin)
    huge = str(2**53 + 1)
    admin.post("config", metrics_points={today.isoformat(): {"amount": huge}})
    result = sync(METRICS)
    assert result.success
    assert warehouse_rows(warehouse, MRR)[today.isoformat()]["amount"] == huge
    seen = metadata(result)[MRR]
    # the asset's page plots `newest_amount`: it must be the amount Paddle serves, not its float
    assert seen["newest_amount"] == int(huge), (seen["newest_amount"], huge)


def test_a_day_served_twice_is_refused_naming_the_metric_and_the_day(warehouse: Path, admin: Admin) -> None:
    # the contract: one datapoint a day. Two, differing, for one day: which one is Paddle's? The
    # project's rule: bad input is a clear error naming the resource and what was wrong, not a
    # row picked silently.
    today = api_today(admin)
    day = (today - dt.timedelta(days=2)).isoformat()
    admin.post("config", metrics_points={day: [{}, {"amount": "1", "count": 1}]})
    result = sync(METRICS, raise_on_error=False)
    assert not result.success, f"a day served twice was loaded silently: kept {warehouse_rows(warehouse, MRR)[day]}"
    errors = " ".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert "metrics_" in errors and day in errors, errors[:2000]


def test_a_day_the_api_no_longer_serves_inside_the_window_is_not_kept(warehouse: Path, admin: Admin) -> None:
    # a re-read of the window answers without a day it served before (outside the contract's
    # "one datapoint a day"): the warehouse must not keep, as current, a figure the API no longer
    # serves for a day it re-read. Either the row goes, or the run refuses naming the metric and day.
    today = api_today(admin)
    assert sync(METRICS).success
    gone = (today - dt.timedelta(days=3)).isoformat()
    admin.post("config", metrics_points={gone: None})
    window = served(admin, MRR, today - dt.timedelta(days=REREAD), today + dt.timedelta(days=1))
    assert gone not in window and len(window) == REREAD
    result = sync(METRICS, raise_on_error=False)
    if result.success:
        rows = warehouse_rows(warehouse, MRR)
        assert gone not in rows, f"{gone} re-read, not served, still in the warehouse as current: {rows[gone]}"
    else:
        errors = " ".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
        assert "metrics_" in errors and gone in errors, errors[:2000]


def test_a_key_that_loses_then_regains_metrics_read_keeps_the_whole_history(warehouse: Path, admin: Admin) -> None:
    today = api_today(admin)
    assert sync(METRICS).success
    first = {t: served(admin, t, today - dt.timedelta(days=HISTORY - 1), today + dt.timedelta(days=1)) for t in METRICS}
    admin.post("config", denied_permissions=["metrics.read"])
    admin.post("advance", seconds=10 * 86400, updates=5, new_transactions=3, renewals=2)
    result = sync(METRICS)
    assert result.success and not any(c.passed for c in check_results(result, READ_CHECK).values())
    for table in METRICS:  # skipped: what was loaded stays
        assert_table_equals_truth(warehouse, table, list(first[table].values()))
    admin.post("config", denied_permissions=[])
    later = api_today(admin)
    assert later == today + dt.timedelta(days=10)
    assert sync(METRICS).success
    for table in METRICS:
        again = served(admin, table, today - dt.timedelta(days=REREAD), later + dt.timedelta(days=1))
        expected = {d: r for d, r in first[table].items() if d < (today - dt.timedelta(days=REREAD)).isoformat()} | again
        assert_table_equals_truth(warehouse, table, list(expected.values()))

