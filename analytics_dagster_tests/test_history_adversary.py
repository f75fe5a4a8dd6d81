"""Adversary of issue #31 (MRR history right from the first sync): changes Paddle allows, older
than the stream keeps, that `subscription_history` must either infer right or flag. Each test
builds the case on a `World(lifecycles=True)` sandbox over HTTP, syncs once, and compares every
day's `mrr_daily` with the sandbox's own MRR of that day (`test_history.compare_every_day`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_history import compare_every_day
from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all

_DAY = 24 * 3600


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
    admin.post("advance", seconds=10 * _DAY)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"status": "active", "paused_at": None})
    admin.post("advance", seconds=100 * _DAY)  # the pause's events leave the stream; renewals go on
    assert not [e for e in admin.truth("events") if e["event_type"].startswith("subscription.")
                and e["data"]["id"] == sub["id"] and e["data"]["status"] == "paused"], "aged out"
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)
