"""The sandbox's subscriptions that live their lives (`World(lifecycles=True)`): renewals with
their transactions, pauses, resumes, cancellations and quantity changes over more than the
stream keeps, and the MRR of every past day that history makes (its own truth, which
test_history.py compares the models with)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import requests

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxServer, World
from analytics_dagster.sandbox.factories import billed_monthly
from analytics_dagster.sandbox.world import EVENT_RETENTION_DAYS

_DAY_NS = 24 * 3600 * 10**9
AMOUNT_FIELDS = ("status", "currency_code", "address_id")


def _mrr_fields(sub: dict) -> tuple:
    """What a subscription's MRR depends on: its status, currency, address and billed items."""
    return tuple(sub[f] for f in AMOUNT_FIELDS) + tuple(
        sorted((i["price"]["id"], i["quantity"], i.get("status")) for i in sub["items"]))


def test_subscriptions_live_their_lives_over_more_than_the_stream_keeps() -> None:
    world = World(customers=40, seed=7, lifecycles=True)
    subs = world.entities["subscriptions"]
    by_sub: dict[str, list[dict]] = defaultdict(list)
    billed = [t for t in world.entities["transactions"].values() if t.get("subscription_id")]
    for txn in sorted(billed, key=lambda t: parse_ns(t["billed_at"])):
        by_sub[txn["subscription_id"]].append(txn)
    origins = {t["origin"] for ts in by_sub.values() for t in ts}
    assert origins == {"web", "subscription_recurring", "subscription_update"}
    statuses = {s["status"] for s in subs.values()}
    assert {"active", "canceled"} <= statuses
    cutoff = world.retention_cutoff_ns()
    older = 0
    for key, sub in subs.items():
        log = world.subscription_states[key]
        assert log[0][0] == parse_ns(sub["created_at"]) and log[-1][1]["updated_at"] == sub["updated_at"]
        billed = [t for t in by_sub[key] if t["origin"] != "subscription_update"]
        # the billed periods follow each other: a renewal's starts where the one before ended
        # (or later, after a pause), and bills the items of its period
        for before, after in zip(billed, billed[1:]):
            assert parse_ns(after["billing_period"]["starts_at"]) >= parse_ns(before["billing_period"]["ends_at"])
        for txn in billed:
            assert txn["billing_period"]["starts_at"] == txn["billed_at"]
            state = [s for at, s in log if at <= parse_ns(txn["billed_at"])][-1]
            assert sorted((i["price"]["id"], i["quantity"]) for i in txn["items"]) == sorted(
                (i["price"]["id"], i["quantity"]) for i in state["items"]), key
        for update in (t for t in by_sub[key] if t["origin"] == "subscription_update"):
            assert all(line["proration"] for line in update["details"]["line_items"])
        # each renewal moves the billing period and changes nothing MRR depends on
        for (_, before), (_, after) in zip(log, log[1:]):
            if after["current_billing_period"] and before["current_billing_period"] and \
                    after["current_billing_period"]["starts_at"] == before["current_billing_period"]["ends_at"]:
                assert _mrr_fields(after) == _mrr_fields(before), key
        older += any(at < cutoff for at, _ in log[1:])
    assert older > 5, "changes older than the stream keeps"
    # a year and more: the oldest subscription is older than a year, and older than the stream
    first = min(parse_ns(s["created_at"]) for s in subs.values())
    assert world.clock_ns - first > 365 * _DAY_NS > EVENT_RETENTION_DAYS * _DAY_NS
    # the stream lists the renewals of the window, each a subscription.updated
    listed = [e for e in world.truth("events") if e["event_type"].startswith("subscription.")]
    assert listed and all(parse_ns(e["occurred_at"]) >= cutoff for e in listed)


def test_the_mrr_of_every_day_is_what_the_history_billed_then() -> None:
    world = World(customers=40, seed=7, lifecycles=True)
    history = world.mrr_history()
    days = sorted(history)
    countries = {a["id"]: a["country_code"] for a in world.truth("customer_addresses")}
    # today: the subscriptions as the API lists them now
    now: dict[str, float] = defaultdict(float)
    for sub in world.truth("subscriptions"):
        if sub["status"] == "active":
            for item in sub["items"]:
                now[sub["currency_code"]] += billed_monthly(sub, item, countries[sub["address_id"]])
    assert history[days[-1]] == pytest.approx(dict(now))
    # the past moves: subscriptions start, stop and change
    assert len({tuple(sorted(history[d].items())) for d in days}) > 30
    assert history[days[0]] and set(history[days[0]]) <= set(now) | {"AUD", "GBP", "EUR", "USD", "CAD"}
    # rounds later: the clock moves, due subscriptions renew (with their transactions), and
    # what changed since is in the history too
    before = len(world.entities["transactions"])
    touched = world.advance(seconds=40 * 24 * 3600, updates=5)
    assert touched["subscriptions"] and len(world.entities["transactions"]) > before
    assert all(parse_ns(s["next_billed_at"]) > world.clock_ns for s in world.entities["subscriptions"].values()
               if s["status"] == "active" and s["next_billed_at"])
    assert world.mrr_history()[days[0]] == history[days[0]]


def test_the_admin_interface_serves_the_history_of_a_world_with_lifecycles_only() -> None:
    with SandboxServer(World(customers=10, seed=3, lifecycles=True)) as server:
        answer = requests.get(f"{server.url}/_admin/mrr_history", timeout=10)
        assert answer.status_code == 200 and answer.json() == server.world.mrr_history()
    with SandboxServer(World(customers=10, seed=3)) as server:
        answer = requests.get(f"{server.url}/_admin/mrr_history", timeout=10)
        assert answer.status_code == 409 and "lifecycles" in answer.json()["error"]["detail"]


def test_a_trial_checked_out_bills_its_trial_period_nothing() -> None:
    """`World(lifecycles=True, trial_checkouts=True)`: each trial has its checkout's transaction
    (origin web, at its creation) of its trial period, each line charged nothing, then its
    first period's (`subscription_recurring`) at the trial's end; without the option, none."""
    world = World(customers=40, seed=7, lifecycles=True, trial_checkouts=True)
    trials = {key for key, states in world.subscription_states.items() if states[0][1]["status"] == "trialing"}
    assert trials
    checkouts = {t["subscription_id"]: t for t in world.entities["transactions"].values()
                 if t.get("subscription_id") in trials and t["origin"] == "web"}
    assert set(checkouts) == trials
    for key, txn in checkouts.items():
        sub = world.entities["subscriptions"][key]
        assert txn["billing_period"]["starts_at"] == txn["billed_at"] == sub["created_at"]
        # (to its next_billed_at, a stamp of fewer digits maybe: a second's slack)
        assert abs(parse_ns(txn["billing_period"]["ends_at"]) - parse_ns(sub["created_at"]) - 14 * _DAY_NS) < 10**9
        assert txn["details"]["totals"]["total"] == "0" and txn["items"]
        assert all(line["totals"]["subtotal"] == "0" for line in txn["details"]["line_items"])
        assert txn["details"]["payout_totals"]["total"] == "0" and all(p["amount"] == "0" for p in txn["payments"])
    plain = World(customers=40, seed=7, lifecycles=True)
    assert not [t for t in plain.entities["transactions"].values() if t.get("subscription_id") in trials
                and t["origin"] == "web" and t["details"]["totals"]["total"] == "0"]
