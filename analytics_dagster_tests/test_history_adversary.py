"""Adversary of issue #31 (MRR history right from the first sync): changes Paddle allows, older
than the stream keeps, that `subscription_history` must either infer right or flag. Each test
builds the case on a `World(lifecycles=True)` sandbox over HTTP, syncs once, and compares every
day's `mrr_daily` with the sandbox's own MRR of that day (`test_history.compare_every_day`):
- two changes in one period, the first billed (`subscription_update`) and the second not: the
  billed change's transaction does not account for what was billed next, so the state from it
  on is uncertain (flagged); the other way round (the unbilled one first) leaves no trace the
  sandbox's transactions keep: the period's days before a billed change assume no unbilled
  change came first (`assumes`), with no bound (`flagged_unless_defaults`: docs/models.md,
  "Before the first known state: what is inferred");
- a subscription no transaction names (as one whose transactions are not synced yet) whose
  first known state is a change: its first known state extended back to its creation is flagged;
- a pause and resume within one period: no transaction says it, nothing flags it, and only
  Paddle's own daily MRR (`mrr_matches_paddle` over `reconcile_days`) catches it, naming the days;
- an account where nothing happened for 90 days builds."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_history import assert_off_unless_defaults, compare_every_day, days_off
from analytics_dagster_tests.test_models import assert_models_built_and_tested, query, sync_all

_DAY = 24 * 3600


def _advance_days(admin: Admin, days: int) -> None:
    """The world's clock moves `days` days, to a second before each midnight (UTC) in turn: a
    subscription whose period ends that day renews that day (`advance` renews late, stamped when
    it runs, while the renewal's transaction bills from the period's start: a renewal run a day
    late would put a converted price's new rate on another day in the truth than in what was
    billed, an artifact of the sandbox's clock, not what this file tests). A second, not a
    tenth: the clock is read from a stamp, whose digits may be cut (up to 0.1 s short)."""
    clock = parse_ns(admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"],
                                set={})["updated_at"]) / 1e9
    for _ in range(days):
        target = (int(clock // _DAY) + 1) * _DAY - 1.0  # 23:59:59 of the clock's day, else the next's
        if target - clock < 1:
            target += _DAY
        admin.post("advance", seconds=target - clock)
        clock = target


def _monthly_weight(sub: dict[str, Any]) -> float:
    """Roughly what the subscription bills a month (to pick one whose change shows in the total)."""
    return sum(float((i["price"].get("unit_price") or {}).get("amount") or 0) * i["quantity"] for i in sub["items"])


def _active_monthly(admin: Admin, room_days: float) -> list[dict[str, Any]]:
    """The active, monthly subscriptions whose current period has `room_days` left at least (from
    the world's clock: its newest event), the most MRR first."""
    clock = max(parse_ns(e["occurred_at"]) for e in admin.truth("events"))
    candidates = [s for s in admin.truth("subscriptions")
                  if s["status"] == "active" and (s.get("billing_cycle") or {}).get("interval") == "month"
                  and s.get("next_billed_at") and parse_ns(s["next_billed_at"]) - clock > room_days * _DAY * 1e9]
    assert candidates, "the world has an active monthly subscription mid-period"
    return sorted(candidates, key=_monthly_weight, reverse=True)


def _set_quantity(admin: Admin, sub_id: str, quantity: int, *, billed: bool) -> None:
    """The first item's quantity changed now: billed at once (a `subscription_update` transaction
    of what is left of the period, Paddle's `prorated_immediately`) or not (`do_not_bill`)."""
    sub = next(s for s in admin.truth("subscriptions") if s["id"] == sub_id)
    items = copy.deepcopy(sub["items"])
    items[0]["quantity"] = quantity
    admin.post("mutate", resource="subscriptions", key=sub_id, set={"items": items},
               **({"bill": "subscription_update"} if billed else {}))


def _states(db: Path, sub_id: str) -> list[dict[str, Any]]:
    return query(db, "SELECT state_id, valid_from, valid_to, inferred_from, transaction_id, uncertain, assumes FROM "
                     f"analytics_models.subscription_history WHERE subscription_id = '{sub_id}' ORDER BY valid_from")


def _two_changes(admin: Admin, billed_first: bool) -> tuple[dict[str, Any], int]:
    """The richest active monthly subscription's first item: 3 more now, 9 more 5 days later,
    one of the two changes billed; then 100 days on, both changes' events out of the stream.
    Answers the subscription and how many day-currencies were off before the model flagged them."""
    sub = _active_monthly(admin, room_days=15)[0]
    quantity = sub["items"][0]["quantity"]
    _set_quantity(admin, sub["id"], quantity + 3, billed=billed_first)
    _advance_days(admin, 5)
    _set_quantity(admin, sub["id"], quantity + 9, billed=not billed_first)
    _advance_days(admin, 100)
    assert not [e for e in admin.truth("events") if e["data"].get("id") == sub["id"]
                and parse_ns(e["occurred_at"]) < parse_ns(sub["next_billed_at"])], "the changes' events aged out"
    return sub, quantity


@pytest.mark.world(lifecycles=True)
def test_a_billed_change_then_an_unbilled_one_in_one_period_is_flagged(warehouse: Path, admin: Admin) -> None:
    """A quantity change billed at once (its `subscription_update` lists the items it leaves),
    then, 5 days later in the same period, another that bills nothing: the next period's
    transaction bills what neither the period nor the billed change says. The state from the
    billed change to the next period is uncertain (its days flagged: before this, the days
    between the two changes were off by 8% of their currency, unflagged); the state before the
    billed change, and the periods after, are not. The state before assumes no unbilled change
    came first: nothing checks what the billed change found
    (`test_an_unbilled_change_then_a_billed_one_in_one_period`)."""
    sub, _ = _two_changes(admin, billed_first=True)
    assert_models_built_and_tested(sync_all(), warehouse)
    compare_every_day(warehouse, admin)
    change = max((t for t in admin.truth("transactions")
                  if t.get("subscription_id") == sub["id"] and t["origin"] == "subscription_update"),
                 key=lambda t: parse_ns(t["billed_at"]))  # (its life may have had others)
    period_start = parse_ns(sub["current_billing_period"]["starts_at"]) / 1e9
    states = [s for s in _states(warehouse, sub["id"]) if s["valid_to"] is None or s["valid_to"].timestamp() > period_start]
    uncertain = [s for s in states if s["uncertain"]]
    assert [s["transaction_id"] for s in uncertain] == [change["id"]], "of the period and after, the billed change's only"
    assert uncertain[0]["valid_to"].timestamp() == pytest.approx(parse_ns(sub["next_billed_at"]) / 1e9, abs=1e-3), \
        "to the next period"
    (before,) = [s for s in states if s["assumes"]]
    assert before["assumes"] == "no_unbilled_change_before" and before["valid_to"].timestamp() == pytest.approx(
        parse_ns(change["billing_period"]["starts_at"]) / 1e9, abs=1e-3), "the period's state up to the change"


@pytest.mark.world(lifecycles=True)
def test_an_unbilled_change_then_a_billed_one_in_one_period(warehouse: Path, admin: Admin) -> None:
    """The other order: a change that bills nothing, then 5 days later one billed at once. The
    period's transaction and the billed change's both agree with what was billed next; only the
    days between the two changes are off (49% of their currency), and nothing flagged them. The
    billed change's transaction lists the items it leaves, not those it found (Paddle's credit
    lines would say them; the sandbox's transactions have none): the period's state up to it
    assumes no unbilled change came first, with no state to bound it (`changed_to_state_id`
    null), its days `flagged_unless_defaults` (not `flagged`: the transactions show no change)."""
    sub, _ = _two_changes(admin, billed_first=False)
    assert_models_built_and_tested(sync_all(), warehouse)
    assert_off_unless_defaults(warehouse, admin, sub["id"], "no_unbilled_change_before")
    change = max((t for t in admin.truth("transactions")
                  if t.get("subscription_id") == sub["id"] and t["origin"] == "subscription_update"),
                 key=lambda t: parse_ns(t["billed_at"]))
    changed_at = parse_ns(change["billing_period"]["starts_at"]) / 1e9
    (before,) = [s for s in _states(warehouse, sub["id"])
                 if s["valid_to"] is not None and s["valid_to"].timestamp() == pytest.approx(changed_at, abs=1e-3)]
    assert not before["uncertain"] and before["assumes"] == "no_unbilled_change_before", before
    assert before["inferred_from"] == "transaction", before


def _base_priced(sub: dict[str, Any]) -> bool:
    """Each item billed at an amount its price states (its base in the subscription's currency, or
    an override of it, tax excluded): what the model knows with no transaction of the subscription."""
    return all((i["price"].get("unit_price") or {}).get("currency_code") == sub["currency_code"]
               and i["price"].get("tax_mode") != "internal" for i in sub["items"])


@pytest.mark.world(lifecycles=True)
def test_a_first_known_state_that_is_a_change_is_flagged_back_to_the_creation(warehouse: Path, admin: Admin) -> None:
    """Two subscriptions that no transaction names (as though their transactions were not synced
    yet: each of theirs is changed to name none), changed more than 90 days ago: one's quantity
    (its first known state is a later renewal's `subscription.updated`), the other canceled (no
    event since: its first known state is its listed row, `updated_at` its cancellation). What
    each was before its first known state is unknown: extended back to the creation, those
    states are uncertain, counted or not (the canceled one counts no MRR, yet was active), and
    flag their days; a subscription whose first known state is its creation flags nothing."""
    changed, canceled = [s for s in _active_monthly(admin, room_days=0) if _base_priced(s)][:2]
    _set_quantity(admin, changed["id"], changed["items"][0]["quantity"] + 5, billed=False)
    admin.post("mutate", resource="subscriptions", key=canceled["id"],
               set={"status": "canceled", "current_billing_period": None, "next_billed_at": None})
    _advance_days(admin, 100)
    for txn in admin.truth("transactions"):
        if txn.get("subscription_id") in (changed["id"], canceled["id"]):
            admin.post("mutate", resource="transactions", key=txn["id"], set={"subscription_id": None})
    assert_models_built_and_tested(sync_all(), warehouse)
    counts = compare_every_day(warehouse, admin)
    assert counts["flagged_off"] > 0, "the days before the changes were off, and are flagged"
    for sub, first_known in ((changed, "subscription.updated"), (canceled, "listed")):
        inferred, known = _states(warehouse, sub["id"])[:2]
        assert inferred["uncertain"] and inferred["state_id"] == f"inferred/{sub['id']}", sub["id"]
        assert inferred["valid_from"].timestamp() == pytest.approx(parse_ns(sub["created_at"]) / 1e9, abs=1e-3)
        assert query(warehouse, "SELECT changed_by FROM analytics_models.subscription_history WHERE "
                                f"state_id = '{known['state_id']}'")[0]["changed_by"] == first_known
    # no other state is flagged so: every other subscription's first known state is its creation,
    # or it has transactions before it
    flagged = query(warehouse, "SELECT DISTINCT subscription_id FROM analytics_models.subscription_history "
                               "WHERE inferred_from = 'first_state' AND uncertain")
    assert {r["subscription_id"] for r in flagged} == {changed["id"], canceled["id"]}


@pytest.mark.world(lifecycles=True)
def test_a_pause_and_resume_within_one_period_is_caught_by_paddles_mrr_only(
        warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paddle pauses at once and resumes with `on_resume: continue_existing_billing_period`: the
    subscription is paused for 10 days inside a period it was billed for, and resumed with no new
    transaction. Once its events leave the stream, nothing the API serves says it was paused:
    the same items are billed before and after, and no model can flag those days. They are
    counted as active, off (unflagged), and Paddle's own daily MRR, held against the whole
    history a first sync reads (`reconcile_days` 365), names exactly those days."""
    sub = _active_monthly(admin, room_days=15)[0]
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
    paused = {(dt.date.fromisoformat(today) + dt.timedelta(days=n)).isoformat() for n in range(10)}
    monkeypatch.setenv("SOURCES__ANALYTICS__RECONCILE_DAYS", "365")
    result = sync_all()
    named = ", ".join(sorted(paused))
    assert_models_built_and_tested(result, warehouse, may_warn={"mrr_matches_paddle": named,
                                                                "active_subscribers_match_paddle": named})
    _, off = days_off(warehouse, admin)
    assert {day for day, currency, _, _ in off} == paused and {c for _, c, _, _ in off} == {sub["currency_code"]}
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "mrr_matches_paddle"]
    assert not check.passed and check.metadata["days_beyond_tolerance"].value == named, check.description


def test_a_first_sync_of_an_account_with_no_event_in_90_days_builds(warehouse: Path, admin: Admin) -> None:
    """An account where nothing happened for 90 days (`/v1/events` lists nothing): its first sync
    makes no `analytics.events` table. The models (subscription_history reads the events) must
    still build (test_postgres.py: on PostgreSQL too)."""
    assert_a_first_sync_with_no_event_builds(warehouse, admin)


def assert_a_first_sync_with_no_event_builds(db: Path | str, admin: Admin) -> None:
    admin.post("advance", seconds=100 * _DAY)
    assert admin.truth("events") == [], "every event is past the retention"
    assert_models_built_and_tested(sync_all(), db)
