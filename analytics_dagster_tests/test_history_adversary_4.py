"""Adversary of issue #31, fourth round (adv31i), of the third round's fixes (fix31i: docs/models.md,
"Before the first known state: what is inferred"): invoices past due only after `billed_at` plus
their payment terms, dunning past the period's end (`inferred_after_payment`), an attempt
retried within the hour leaving no past-due day. Behaviours the API allows, older than the
stream keeps, each built on a `World(lifecycles=True)` sandbox over HTTP, synced once and
compared every day with the sandbox's own MRR (`test_history.compare_every_day`). Found off by
more than their flags said, each fixed (fix31j, the docstrings say how):
- an invoice whose payment terms outlast its period (net 45 on a monthly price), paid late:
  read as past due from the period's end, not from the terms' end;
- an invoice canceled (Paddle: "no longer due") with its subscription, canceled at once
  mid-period: its period read as billed by nothing;
- a renewal declined, then captured within the hour (Paddle's own example: 3 minutes), across
  midnight UTC: the day it was past due at its end read as active;
- an invoice (origin `api`) for a period that began before it (Paddle's own example): the
  subscription's history starts at the period's start, before the subscription existed;
- a currency changed unbilled before a renewal: flagged, but off by more than its bound in the
  new currency (priced at the next period's exchange rate).
And one that holds: an invoice paid within payment terms longer than its period."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_history import assert_history_starts_when_subscriptions_did, compare_every_day
from analytics_dagster_tests.test_history_adversary import _active_monthly, _advance_days
from analytics_dagster_tests.test_history_adversary_2 import _checked_out_long_ago, _renewed, declined
from analytics_dagster_tests.test_history_adversary_3 import _invoiced
from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all


_DAY_NS = 24 * 3600 * 10**9


def _clock(admin: Admin) -> int:
    """The world's clock (ns), read from a stamp."""
    return parse_ns(admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"],
                               set={})["updated_at"])


def _paid_at_once(admin: Admin, sub_id: str, renewal_id: str, captured: dict, failed: list[dict]) -> None:
    """The subscription active again now, its renewal `completed`: its payments `failed` and
    one captured now."""
    paid = admin.post("mutate", resource="subscriptions", key=sub_id, set={"status": "active"})["updated_at"]
    admin.post("mutate", resource="transactions", key=renewal_id, updated_at=paid, set={
        "status": "completed", "payments": [*failed, dict(captured, created_at=paid, captured_at=paid)]})


@pytest.mark.world(lifecycles=True)
def test_an_invoice_whose_payment_terms_outlast_its_period_paid_late(warehouse: Path, admin: Admin) -> None:
    """A monthly renewal invoiced net 45 days (`payment_terms` 45 days: Paddle allows any
    duration; net 30 on a February period is the same case), paid 5 days after its terms
    elapsed. Paddle makes the subscription `past_due` "when payment terms have elapsed": active
    for 45 days (the next period renewed, billed and paid, at day 30), past due the 5 after.
    The model splits it at `least(failed_at, ends_at)`: past due from the period's end (day
    30) until the capture, the next period's state pushed to the capture
    (`inferred_after_payment`): 15 days at the subscription's whole MRR, no flag (nothing
    assumes a default). Claims (a) and (b). So is any invoice paid late whose terms end after
    its period does: net 30 on a February period, or a change's invoice (`subscription_update`)
    billed within its terms of the period's end. Fixed (fix31j): the period's unpaid days start
    at its terms' end, past the period's, and the states they overlap (the next period, renewed
    before) stop there and resume (`/resumed`) once it was paid."""
    sub, renewal, captured = _invoiced(admin, terms_days=45)
    _advance_days(admin, 45)
    due = admin.post("mutate", resource="subscriptions", key=sub["id"], set={"status": "past_due"})["updated_at"]
    admin.post("mutate", resource="transactions", key=renewal["id"], updated_at=due, set={"status": "past_due"})
    _advance_days(admin, 5)
    _paid_at_once(admin, sub["id"], renewal["id"], captured, [])
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin, unless_defaults=True)


@pytest.mark.world(lifecycles=True)
def test_an_invoice_paid_within_payment_terms_longer_than_its_period(warehouse: Path, admin: Admin) -> None:
    """The same invoice (net 45 days on a monthly period) paid on day 40, within its terms and
    after its period ended: never past due, active all along. The model's terms' end (day
    45) is after the capture: not paid late, not split. Claim (a) holds: a check that it stays
    so (it passes), and claim (d): the history contiguous from each creation, renewals
    changing nothing."""
    sub, renewal, captured = _invoiced(admin, terms_days=45)
    _advance_days(admin, 40)
    _paid_at_once(admin, sub["id"], renewal["id"], captured, [])
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)
    assert_history_starts_when_subscriptions_did(warehouse, admin)


@pytest.mark.world(lifecycles=True)
def test_an_invoice_canceled_with_its_subscription(warehouse: Path, admin: Admin) -> None:
    """A monthly renewal invoiced (net 14 days), its subscription canceled at once 10 days in,
    unpaid, and the invoice canceled (Paddle: `PATCH` a `billed` transaction's `status` to
    `canceled`, or the dashboard's cancel an invoice: "If an invoice, it's no longer due"; the
    spec's own transaction list holds one canceled). The subscription was active those 10
    days. Once the events are gone, the canceled transaction is not read (`billed_all` takes
    billed, paid, completed and past due ones): the period reads as billed by nothing, the 10
    days as a pause at the period before's end (`no_transaction`, no MRR) at the
    subscription's whole MRR. They assume `billing_date_kept`, so `flagged_unless_defaults`
    marks them, but not `flagged`: the account used every default of Paddle's (it paused
    nothing, and moved no billing date), so claim (a) is broken. The canceled invoice's
    `billing_period` and the listed row's cancellation say the days were billed, then ended.
    (Its price converted, those days are off by more than `assumption_mrr` too, claim (c): the
    bound is the period before's MRR, at last month's exchange rate.) Fixed (fix31j): a
    transaction billed, then canceled (Paddle's "no longer due", its `billed_at` set) billed its
    period, which the subscription had until it ended (here its cancellation, the listed row's
    `canceled_at`): active (past due from its payment terms' end or failed payment, if before),
    priced by its own lines (`subscription_billed_lines` reads it too); no default assumed, so
    no bound needed."""
    sub, renewal, _ = _invoiced(admin)
    _advance_days(admin, 10)
    canceled = admin.post("mutate", resource="subscriptions", key=sub["id"], set={
        "status": "canceled", "current_billing_period": None, "next_billed_at": None})["updated_at"]
    admin.post("mutate", resource="transactions", key=renewal["id"], updated_at=canceled, set={"status": "canceled"})
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)


@pytest.mark.world(lifecycles=True, seed=16)  # (a world with a monthly subscription renewing at 23:18)
def test_a_decline_captured_within_the_hour_across_midnight(warehouse: Path, admin: Admin) -> None:
    """A renewal whose first payment attempt is declined at its billing, late in the day
    (UTC), and captured 50 minutes later, after midnight (Paddle's own example: a decline, then
    a capture 3 minutes later; the customer retrying at once). The subscription `past_due`
    from the decline to the capture; the sandbox's truth, as `mrr_daily`, takes each day's
    state at its end: the renewal's day ends past due (no MRR). The model leaves a capture
    within the hour of the failure unsplit (`paid_late`: "leaves no past-due day"), so that day
    reads active at the subscription's whole MRR, no flag. Claims (a) and (b), one day for any
    retry within the hour that crosses midnight UTC. Fixed (fix31j): the allowance holds only
    within a day (UTC): a failure and its capture on different days are split."""
    late = [s for s in _active_monthly(admin, room_days=0)
            if 23 * 3600 + 5 * 60 <= parse_ns(s["next_billed_at"]) // 10**9 % 86400 < 23 * 3600 + 50 * 60]
    assert late, "the world has a monthly subscription that renews in the day's last hour"
    sub = late[0]
    while (clock := _clock(admin)) // _DAY_NS < parse_ns(sub["next_billed_at"]) // _DAY_NS - 1:
        _advance_days(admin, 1)  # (to the renewal's day: other renewals run on their own days)
    admin.post("advance", seconds=(parse_ns(sub["next_billed_at"]) - clock) / 1e9 + 1)
    sub = next(s for s in admin.truth("subscriptions") if s["id"] == sub["id"])
    renewal, captured, failed = declined(admin, sub)
    admin.post("advance", seconds=50 * 60)
    _paid_at_once(admin, sub["id"], renewal["id"], captured, [failed])
    assert failed["created_at"][:10] != next(t for t in admin.truth("transactions") if t["id"] == renewal["id"])[
        "payments"][-1]["captured_at"][:10], "the capture falls on the next day"
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin, unless_defaults=True)


@pytest.mark.world(lifecycles=True)
def test_an_invoice_for_a_period_that_began_before_it(warehouse: Path, admin: Admin) -> None:
    """Paddle's own example of a transaction made through the API (origin `api`, `collection_mode:
    manual`, net 14 days: `txn_01h8bm0f0gwa622zpcvw49hwc1` in its reference list) is created on
    2023-08-21 for the `billing_period` from 2023-08-01: an invoice for a contract's period that
    began before the invoice. Billing it creates the subscription (the spec: "creates a related
    subscription"), which did not exist before. Made here of the subscription checked out
    before the stream that is the largest share of its currency's first day: its checkout's
    transaction made such an invoice, its period starting 20 days before the subscription's
    creation (and ending where it did). The model starts a period at its `starts_at`
    (`inferred_from` transaction), not at the subscription's `created_at`: 20 days before the
    subscription existed count its whole MRR, unflagged (claim (a)); and its history does not
    start at its `created_at` (docs/models.md: "a subscription's history starts at its
    `created_at`"). Fixed (fix31j): a period starts no earlier than the subscription's creation
    (an imported one's first excepted): its first period counts from the creation."""
    sub, checkout, _ = _checked_out_long_ago(admin)[0]
    terms = {"enable_checkout": False, "payment_terms": {"interval": "day", "frequency": 14},
             "purchase_order_number": "PO-0801", "additional_information": None}
    began = format_ns(parse_ns(sub["created_at"]) - 20 * _DAY_NS, 6)
    admin.post("mutate", resource="transactions", key=checkout["id"], updated_at=checkout["updated_at"], set={
        "origin": "api", "collection_mode": "manual", "billing_details": terms,
        "billing_period": dict(checkout["billing_period"], starts_at=began)})
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin, unless_defaults=True)


@pytest.mark.world(lifecycles=True)
def test_a_currency_changed_unbilled_before_a_renewal(warehouse: Path, admin: Admin) -> None:
    """Paddle lets a subscription's currency change (`PATCH` with `currency_code`: "Include to
    change the currency that a subscription bills in"); nothing is billed until the next
    renewal, in the new currency. Made here: the richest monthly subscription (EUR, its price
    converted) changed to USD 10 days into a period. Once the event is gone, the period is
    uncertain (its next period bills another currency) and flagged, rightly; its bound in USD
    is the new state's MRR priced by the first USD line (`subscription_billed_lines`: the next
    renewal's, a month's exchange rate later), while the days it covers are priced at the
    period's own (the sandbox's truth: the unit of the current period, from its start). Off by
    more than `uncertain_mrr` on each USD day before the renewal, by about 1% of the
    subscription's MRR: claim (c). (The tolerance does not cover a bound: an exchange rate's
    month moves it either way.) Fixed (fix31j): in a currency it changed to, the bound's
    converted amounts (priced by a billed line) get a margin for the rate's move, the dbt var
    `exchange_rate_margin` (5%)."""
    sub = _renewed(admin, room_days=0)
    _advance_days(admin, 10)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"currency_code": "USD"})
    _advance_days(admin, 100)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)
