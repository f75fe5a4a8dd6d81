"""Adversary of issue #31, second round (adv31b): behaviours the API allows, older than the
stream keeps, that make a first sync's `mrr_daily` differ from the sandbox's own MRR of a day
(`/_admin/mrr_history`) on a day-currency it does not flag. Each test builds its case on a
`World(lifecycles=True)` sandbox over HTTP, syncs once and compares every day
(`test_history.compare_every_day`); each fails while the model gets its case wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_history import compare_every_day
from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all

_DAY_NS = 24 * 3600 * 10**9


def _checked_out_long_ago(admin: Admin) -> list[tuple[dict[str, Any], dict[str, Any], float]]:
    """Monthly subscriptions billed first by their checkout's transaction (origin `web`), whose
    first period ended before the stream's oldest event: (the subscription, that transaction,
    the share of its currency's MRR it is on its first day, by the transaction's subtotal), the
    largest share first."""
    events = admin.truth("events")
    oldest = min(parse_ns(e["occurred_at"]) for e in events)
    history = admin.get("mrr_history")
    found = []
    subs = {s["id"]: s for s in admin.truth("subscriptions")}
    for txn in admin.truth("transactions"):
        sub = subs.get(txn.get("subscription_id") or "")
        if sub is None or txn["origin"] != "web" or (sub.get("billing_cycle") or {}).get("interval") != "month" \
                or parse_ns(txn["billing_period"]["ends_at"]) >= oldest:
            continue
        day = txn["billing_period"]["starts_at"][:10]
        total = history.get(day, {}).get(sub["currency_code"], 0.0)
        amount = float(txn["details"]["totals"]["subtotal"])
        if total:
            found.append((sub, txn, amount / total))
    assert found, "the world has a subscription checked out before the stream"
    return sorted(found, key=lambda f: f[2], reverse=True)


@pytest.mark.world(lifecycles=True)
def test_an_imported_subscription_counts_from_its_import(warehouse: Path, admin: Admin) -> None:
    """Paddle imports subscriptions (`subscription.imported`, `import_meta` set: migrated from
    Paddle Classic or another biller): an imported subscription is active from its creation with
    no checkout transaction, its first transaction the first renewal Paddle bills
    (`subscription_recurring`, at the `next_billed_at` it was imported with). Made here of a
    subscription checked out before the stream: its checkout's transaction names no subscription
    (an imported one has none), and it says it was imported. The sandbox's truth counts it
    active from its creation; the model takes the days from its creation to its first
    transaction's period as a trial's (`no_transaction`, no MRR), not uncertain: off by the
    subscription's whole MRR for its first period, unflagged."""
    sub, checkout, share = _checked_out_long_ago(admin)[0]
    assert share > 0.02, f"the subscription is {share:.1%} of its currency's first day: its days show"
    admin.post("mutate", resource="transactions", key=checkout["id"], set={"subscription_id": None})
    admin.post("mutate", resource="subscriptions", key=sub["id"],
               set={"import_meta": {"imported_from": "paddle_classic", "external_id": "1234567"}})
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)
