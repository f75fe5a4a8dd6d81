"""MRR movements (mrr_movements, mrr_monthly) through rounds of subscription changes made in the
sandbox, one day apart: every dbt test passes (the day's movements add up to mrr_daily's change
on every day, the months chain), each changed subscription moves as the sandbox's own billing
says (`factories.billed_monthly`, not the models' rules) and is classified by name, nothing else
moves, and the newest figures are on the assets' materializations."""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.models import MONTHLY_FIGURES, MOVEMENTS, model_key
from analytics_dagster.sandbox.factories import billed_monthly, catalogue_billed, tax_inclusive
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_models import address_countries, assert_models_built_and_tested, query, sync_all
from analytics_dagster_tests.test_models_adversary import world_now

DAY = 24 * 3600
ROUNDS = 4  # one a day, the last yesterday (the day mrr_movements' metadata shows)

# a subscription's MRR as the sandbox bills it: (currency, minor units a month)
Billing = dict[str, tuple[str, float]]


def billing(admin: Admin) -> Billing:
    """Every subscription's MRR now, as the sandbox bills it: its recurring, billed items
    (`billed_monthly`) while it is active, else 0, in its currency."""
    countries = address_countries(admin)
    return {sub["id"]: (sub["currency_code"], sum(
        billed_monthly(sub, item, countries.get(sub["address_id"])) for item in sub["items"]
        if item["recurring"] and item.get("status", "active") == "active") if sub["status"] == "active" else 0.0)
        for sub in admin.truth("subscriptions")}


def moved(before: Billing, after: Billing) -> dict[str, tuple[str, float]]:
    """The subscriptions whose MRR changed between two days: their currency and by how much."""
    changes = {}
    for sub, (currency, mrr) in after.items():
        was_currency, was = before.get(sub, (currency, 0.0))
        assert was_currency == currency, sub  # no round changes a currency
        if abs(mrr - was) > 0.005:
            changes[sub] = (currency, mrr - was)
    return changes


def movements_on(db: Path | str, day: date) -> dict[str, dict[str, Any]]:
    return {r["subscription_id"]: r for r in query(db, "SELECT * FROM analytics_models.mrr_movements "
                                                      f"WHERE day = DATE '{day}'")}


def counted_item(sub: dict[str, Any]) -> int:
    """The place of the subscription's first item MRR counts (recurring, billed)."""
    return next(i for i, item in enumerate(sub["items"]) if item["recurring"] and item.get("status", "active") == "active")


def with_quantity(sub: dict[str, Any], quantity: int) -> list[dict[str, Any]]:
    items = copy.deepcopy(sub["items"])
    items[counted_item(sub)]["quantity"] = quantity
    return items


def assert_movements_through_rounds(db: Path | str, admin: Admin) -> None:
    """The world moved to four days ago, synced; then a round a day (changes, then `sync_all`):
    1. A paused (churn), B's quantity up (expansion), C a new subscription of a customer (new);
    2. A resumed (reactivation), B's quantity down (contraction), D canceled (churn);
    3. D, canceled, comes back (reactivation); E renewed (a state that changes nothing MRR
       depends on) and F's quantity up and back down the same day: neither moves;
    4. (yesterday) C canceled (churn), B's quantity up (expansion).
    After each: every dbt test passes, the day's movements are exactly the subscriptions whose
    billed MRR changed, by as much, each classified as named; after the last, mrr_monthly's
    months agree with the sandbox's billing (start, each class, end, net revenue retention), and
    the materializations carry the newest day's and month's figures."""
    today = datetime.now(timezone.utc).date()
    first_day = today - timedelta(days=ROUNDS)
    # the world's clock (its history ends in 2025) to the first round's day, 10:00 UTC
    start = datetime.combine(first_day, time(10), tzinfo=timezone.utc)
    admin.post("advance", seconds=(start - world_now(admin)).total_seconds())
    assert_models_built_and_tested(sync_all(), db)
    countries = address_countries(admin)
    subs = sorted(admin.truth("subscriptions"), key=lambda s: s["id"])
    initial = billing(admin)

    def plain(sub: dict[str, Any]) -> bool:
        """Active, with MRR, billed at amounts its prices state (a renewal changes none of them)."""
        return sub["status"] == "active" and initial[sub["id"]][1] > 0 and all(
            catalogue_billed(i["price"], sub["currency_code"], countries.get(sub["address_id"]))
            and not tax_inclusive(i["price"]) for i in sub["items"])

    a, b, d, e, f = [s for s in subs if plain(s)][:5]
    b_quantity = b["items"][counted_item(b)]["quantity"]
    f_quantity = f["items"][counted_item(f)]["quantity"]
    created: list[str] = []

    def mutate(sub: dict[str, Any] | str, **values: Any) -> None:
        admin.post("mutate", resource="subscriptions", key=sub if isinstance(sub, str) else sub["id"], set=values)

    def stamp(later: timedelta = timedelta()) -> str:
        return (world_now(admin) + later).isoformat().replace("+00:00", "Z")

    def first() -> dict[str, str]:
        mutate(a, status="paused", paused_at=stamp())
        mutate(b, items=with_quantity(b, b_quantity + 3))
        for _ in range(10):  # (one of one-off prices only has no MRR, and moves nothing: another)
            (new,) = admin.post("advance", seconds=1, new_subscriptions=1)["subscriptions"]
            if billing(admin)[new][1] > 0:
                created.append(new)
                break
        return {a["id"]: "churn", b["id"]: "expansion", created[0]: "new"}

    def second() -> dict[str, str]:
        mutate(a, status="active", paused_at=None)
        mutate(b, items=with_quantity(b, b_quantity + 1))
        mutate(d, status="canceled", canceled_at=stamp())
        return {a["id"]: "reactivation", b["id"]: "contraction", d["id"]: "churn"}

    def third() -> dict[str, str]:
        # a canceled subscription comes back (the sandbox allows what Paddle does not); a renewal
        # (its next billing period, nothing MRR depends on) and a change undone within the day
        # move nothing
        mutate(d, status="active", canceled_at=None)
        mutate(e, current_billing_period={"starts_at": stamp(), "ends_at": stamp(timedelta(days=30))},
               next_billed_at=stamp(timedelta(days=30)))
        mutate(f, items=with_quantity(f, f_quantity + 5))
        mutate(f, items=with_quantity(f, f_quantity))
        return {d["id"]: "reactivation"}

    def fourth() -> dict[str, str]:
        mutate(created[0], status="canceled", canceled_at=stamp())
        mutate(b, items=with_quantity(b, b_quantity + 2))
        return {created[0]: "churn", b["id"]: "expansion"}

    snapshots: dict[date, Billing] = {first_day - timedelta(days=1): initial}
    classified: dict[date, dict[str, str]] = {}
    for number, changes in enumerate((first, second, third, fourth)):
        if number:
            admin.post("advance", seconds=DAY)
        day = world_now(admin).date()
        assert day == first_day + timedelta(days=number)
        classes = classified[day] = changes()
        assert world_now(admin).date() == day
        snapshots[day] = billing(admin)
        result = sync_all()
        assert_models_built_and_tested(result, db)  # every dbt test: movements add up on every day
        expected = moved(snapshots[day - timedelta(days=1)], snapshots[day])
        assert set(expected) == set(classes), (day, expected, classes)  # the premise: what the round moved
        rows = movements_on(db, day)
        assert set(rows) == set(expected), (day, sorted(rows), sorted(expected))
        for sub, (currency, amount) in expected.items():
            row = rows[sub]
            assert (row["currency_code"], row["movement"]) == (currency, classes[sub]), (day, row)
            assert abs(float(row["amount"]) - amount) < 0.01, (day, row, amount)
            assert abs(float(row["mrr_after"]) - snapshots[day][sub][1]) < 0.01, (day, row)
    customers = {s["id"]: s["customer_id"] for s in admin.truth("subscriptions")}
    assert_months_are_the_sandboxs(db, snapshots, classified, customers, today)
    assert_figures_on_the_materializations(db, result, snapshots, classified)


def billing_on(snapshots: dict[date, Billing], day: date) -> Billing:
    """The sandbox's billing at the end of `day`: the newest snapshot taken on or before it, or
    the first (the world changed on no day between its history, which ends in 2025, and the
    rounds)."""
    return snapshots[max((d for d in snapshots if d <= day), default=min(snapshots))]


def by_class(snapshots: dict[date, Billing], classified: dict[date, dict[str, str]],
             day: date) -> dict[tuple[str, str], float]:
    """What moved on a round's day, by currency and class, as the sandbox bills it."""
    sums: dict[tuple[str, str], float] = defaultdict(float)
    for sub, (currency, amount) in moved(billing_on(snapshots, day - timedelta(days=1)), snapshots[day]).items():
        sums[(currency, classified[day][sub])] += amount
    return sums


def assert_months_are_the_sandboxs(db: Path | str, snapshots: dict[date, Billing],
                                   classified: dict[date, dict[str, str]], customers: dict[str, str],
                                   today: date) -> None:
    """mrr_monthly's months of the rounds (and this one, to today), currency by currency: the
    MRR the sandbox billed at the start and the end, each class's movements, and net revenue
    retention (the end's MRR of the customers with MRR at the start, over the start's)."""
    months = sorted({d.replace(day=1) for d in classified} | {today.replace(day=1)})
    for month in months:
        start_day = month - timedelta(days=1)
        end_day = min((month + timedelta(days=32)).replace(day=1) - timedelta(days=1), today)
        start, end = billing_on(snapshots, start_day), billing_on(snapshots, end_day)
        rows = {r["currency_code"]: r for r in query(db, "SELECT * FROM analytics_models.mrr_monthly "
                                                         f"WHERE month = DATE '{month}'")}
        classes: dict[tuple[str, str], float] = defaultdict(float)
        for day in (d for d in classified if d.replace(day=1) == month):
            for key, amount in by_class(snapshots, classified, day).items():
                classes[key] += amount
        currencies = {c for c, mrr in [*start.values(), *end.values()] if mrr} | {c for c, _ in classes}
        assert set(rows) == currencies, (month, sorted(rows), sorted(currencies))
        for currency, row in rows.items():
            starting = sum(mrr for c, mrr in start.values() if c == currency)
            present = {customers[s] for s, (c, mrr) in start.items() if c == currency and mrr > 0}
            retained = sum(mrr for s, (c, mrr) in end.items() if c == currency and customers[s] in present)
            assert abs(row["starting_mrr"] - starting) < 0.01, (month, row, starting)
            assert abs(row["ending_mrr"] - sum(mrr for c, mrr in end.values() if c == currency)) < 0.01, (month, row)
            for movement in MOVEMENTS:
                assert abs(float(row[f"{movement}_mrr"]) - classes[(currency, movement)]) < 0.01, (month, movement, row)
            assert row["customers_at_start"] == len(present), (month, row)
            assert abs(float(row["retained_mrr"]) - retained) < 0.01, (month, row, retained)
            if starting:
                assert abs(row["net_revenue_retention"] - retained / starting) < 1e-9, (month, row)
            else:
                assert row["net_revenue_retention"] is None
    assert any(float(r["churn_mrr"]) < 0 and float(r["reactivation_mrr"]) > 0 and r["net_revenue_retention"] != 1
               for r in query(db, f"SELECT * FROM analytics_models.mrr_monthly WHERE month >= DATE '{months[0]}'"))


def assert_figures_on_the_materializations(db: Path | str, result: Any, snapshots: dict[date, Billing],
                                           classified: dict[date, dict[str, str]]) -> None:
    """The last build's materializations carry the newest figures as numbers (which Dagster's
    asset page plots over time): mrr_movements the movements of yesterday (the last round's) by
    currency and class, mrr_monthly this month's row by currency."""
    materialized = {m.asset_key: m.metadata for m in result.asset_materializations_for_node("analytics_models")}
    figures = materialized[model_key("mrr_movements")]
    day = date.fromisoformat(figures["movements_day"].value)
    now = datetime.now(timezone.utc).date()
    assert day in (now - timedelta(days=1), now - timedelta(days=2))  # (a build just before midnight)
    currencies = {r["currency_code"] for r in query(db, f"SELECT currency_code FROM analytics_models.mrr_daily "
                                                        f"WHERE day = DATE '{day}'")}
    sums = by_class(snapshots, classified, day) if day in classified else {}
    currencies |= {c for c, _ in sums}
    numbers = {k: v.value for k, v in figures.items() if k.split(" ")[0] in currencies and " " in k}
    assert set(numbers) == {f"{c} {m}" for c in currencies for m in MOVEMENTS}
    for (currency, movement), amount in sums.items():
        assert abs(numbers[f"{currency} {movement}"] - amount) < 0.01, (currency, movement, numbers)
    assert sum(1 for v in numbers.values() if v) == len([v for v in sums.values() if abs(v) > 0.005])
    assert day not in classified or sums, "the last round's movements are yesterday's"
    monthly = materialized[model_key("mrr_monthly")]
    month = date.fromisoformat(monthly["month"].value)
    rows = query(db, f"SELECT * FROM analytics_models.mrr_monthly WHERE month = DATE '{month}'")
    assert month == now.replace(day=1) or month == (now - timedelta(days=1)).replace(day=1)
    assert rows
    for row in rows:
        for name in MONTHLY_FIGURES:
            if row[name] is not None:
                assert abs(monthly[f"{row['currency_code']} {name}"].value - float(row[name])) < 1e-6, (row, name)


@pytest.mark.usefixtures("backfilled_with_models")
def test_movements_add_up_and_are_classified_through_rounds_of_changes(warehouse: Path, admin: Admin) -> None:
    assert_movements_through_rounds(warehouse, admin)
