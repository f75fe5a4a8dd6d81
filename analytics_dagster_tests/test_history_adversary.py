"""Adversary of issue #31 (MRR history right from the first sync): changes Paddle allows, older
than the stream keeps, that `subscription_history` must either infer right or flag. Each test
builds the case on a `World(lifecycles=True)` sandbox over HTTP, syncs once, and compares every
day's `mrr_daily` with the sandbox's own MRR of that day (`test_history.compare_every_day`)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_history import compare_every_day
from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all

_DAY = 24 * 3600


def _advance_days(admin: Admin, days: int) -> None:
    """The world's clock moves `days` days, to just before each midnight (UTC) in turn: a
    subscription whose period ends that day renews that day (`advance` renews late, stamped when
    it runs, while the renewal's transaction bills from the period's start: a renewal run a day
    late would put a converted price's new rate on another day in the truth than in what was
    billed, an artifact of the sandbox's clock, not what this file tests)."""
    clock = parse_ns(admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"],
                                set={})["updated_at"]) / 1e9
    for _ in range(days):
        target = (int(clock // _DAY) + 1) * _DAY - 0.1  # 23:59:59.9 of the clock's day, else the next's
        if target - clock < 1:
            target += _DAY
        admin.post("advance", seconds=target - clock)
        clock = target


def _monthly_weight(sub: dict[str, Any]) -> float:
    """Roughly what the subscription bills a month (to pick one whose change shows in the total)."""
    return sum(float((i["price"].get("unit_price") or {}).get("amount") or 0) * i["quantity"] for i in sub["items"])


def _roomy_active_monthly(admin: Admin, room_days: float) -> dict[str, Any]:
    """The active, monthly subscription with the most MRR among those whose current period has
    `room_days` left at least (from the world's clock: its newest event)."""
    clock = max(parse_ns(e["occurred_at"]) for e in admin.truth("events"))
    candidates = [s for s in admin.truth("subscriptions")
                  if s["status"] == "active" and (s.get("billing_cycle") or {}).get("interval") == "month"
                  and s.get("next_billed_at") and parse_ns(s["next_billed_at"]) - clock > room_days * _DAY * 1e9]
    assert candidates, "the world has an active monthly subscription mid-period"
    return max(candidates, key=_monthly_weight)


@pytest.mark.world(lifecycles=True)
def test_pause_and_resume_within_one_period_before_the_window(warehouse: Any, admin: Admin) -> None:
    """Paddle pauses at once and resumes with `on_resume: continue_existing_billing_period`: the
    subscription is paused for days inside a period it was billed for, and resumed with no new
    transaction. Once its events leave the stream, nothing the API serves says it was paused:
    the same items are billed before and after. Those days must then be flagged (or right)."""
    sub = _roomy_active_monthly(admin, room_days=15)
    today = max(admin.get("mrr_history"))
    before = admin.get("mrr_history")[today][sub["currency_code"]]
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"status": "paused"})
    during = admin.get("mrr_history")[today].get(sub["currency_code"], 0.0)
    assert (before - during) / before > 0.01, "the pause shows in the day's MRR"
    _advance_days(admin, 10)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"status": "active", "paused_at": None})
    _advance_days(admin, 100)  # the pause's events leave the stream; renewals go on
    assert not [e for e in admin.truth("events") if e["event_type"].startswith("subscription.")
                and e["data"]["id"] == sub["id"] and e["data"]["status"] == "paused"], "aged out"
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)


def _set_quantity(admin: Admin, sub_id: str, quantity: int, *, billed: bool) -> None:
    """The first item's quantity changed now: billed at once (a `subscription_update` transaction
    of what is left of the period, Paddle's `prorated_immediately`) or not (`do_not_bill`)."""
    sub = next(s for s in admin.truth("subscriptions") if s["id"] == sub_id)
    items = copy.deepcopy(sub["items"])
    items[0]["quantity"] = quantity
    admin.post("mutate", resource="subscriptions", key=sub_id, set={"items": items},
               **({"bill": "subscription_update"} if billed else {}))


@pytest.mark.world(lifecycles=True)
def test_two_quantity_changes_in_one_period_one_billed_before_the_window(warehouse: Any, admin: Admin) -> None:
    """Two changes within one period, both older than the stream: one subscription's quantity
    changes billed (a `subscription_update`), then 5 days later not billed; another's the other
    way round. The billed change's transaction dates one change; the other one, unbilled, has
    no transaction: the days between the two must be flagged (or right), not given the
    quantity billed next as if it held from the billed change (or the period's first quantity
    as if it held until the billed change)."""
    sub = _roomy_active_monthly(admin, room_days=15)
    other = max((s for s in admin.truth("subscriptions") if s["status"] == "active" and s["id"] != sub["id"]
                 and s["currency_code"] != sub["currency_code"]
                 and (s.get("billing_cycle") or {}).get("interval") == "month"
                 and parse_ns(s["next_billed_at"]) > parse_ns(sub["next_billed_at"]) - 10 * _DAY * 1e9),
                key=_monthly_weight)
    first, second = sub["items"][0]["quantity"], other["items"][0]["quantity"]
    _set_quantity(admin, sub["id"], first + 3, billed=True)
    _set_quantity(admin, other["id"], second + 3, billed=False)
    _advance_days(admin, 5)
    _set_quantity(admin, sub["id"], first + 9, billed=False)
    _set_quantity(admin, other["id"], second + 9, billed=True)
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)


@pytest.mark.parametrize("destination", ["duckdb", "postgres"])
def test_a_first_sync_of_an_account_with_no_event_in_90_days_builds(
        warehouse: Any, admin: Admin, destination: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An account where nothing happened for 90 days (`/v1/events` lists nothing): its first sync
    makes no `analytics.events` table. The models (subscription_history reads the events) must
    still build, on DuckDB and on PostgreSQL (test_postgres.py's server: skipped without one)."""
    db: Any = warehouse
    if destination == "postgres":
        if not os.environ.get("ANALYTICS_TEST_POSTGRES"):
            pytest.skip("no PostgreSQL server: set ANALYTICS_TEST_POSTGRES (see .ci/postgres)")
        from analytics_dagster_tests import test_postgres
        db = next(database := test_postgres.database.__wrapped__())  # type: ignore[attr-defined]
        monkeypatch.setenv("DESTINATION_TYPE", "postgres")
        monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", db)
    try:
        admin.post("advance", seconds=100 * _DAY)
        assert admin.truth("events") == [], "every event is past the retention"
        assert_models_built_and_tested(sync_all(), db)
    finally:
        if destination == "postgres":
            next(database, None)  # (the fixture drops its database)
