"""Subscriptions that live their lives over the initial history (`World(lifecycles=True)`), and
the MRR of every past day that history makes (`mrr_history`): the sandbox's own truth, from its
whole history, which the API itself no longer tells once events pass the retention.

The initial world is made over some months (most of its entities, at any size); this option
adds a year to it, in which only subscriptions change. Without this option a subscription of the initial world is made once and at most touched: its
billing period is the one it started with. With it, as on a real account, each subscription
(in creation order, all of them along one clock) has the life Paddle gives it:
- it starts `active` with its checkout's transaction (origin `web`, its first billing period),
  or `trialing` (one in five) for 14 days, then active with its first transaction
  (`subscription_recurring`);
- at the end of each billing period it renews: the next period starts where the last ended,
  with its transaction (`subscription_recurring`, the period's items) and a
  `subscription.updated` whose snapshot moves the billing period and the items'
  `previously_billed_at` / `next_billed_at`, and changes no amount; or, now and then, it is
  paused there (resumed 20 to 120 days later: a new period, billed at once, with its
  transaction) or canceled there (for good);
- within a period, now and then, one item's quantity changes (`subscription.updated`), billed
  by a transaction of origin `subscription_update` whose `billing_period` is what is left of the
  period and whose lines are prorated; one change in four is not billed (Paddle's
  `proration_billing_mode: do_not_bill`), which no transaction records: once its event is past
  the retention, nothing the API serves says when it happened.
Every change is stamped at its instant and has its event (those of the retention window are
listed, as for the rest of the initial world). Its draws come from a generator of its own, so
what the rest of the world draws is what it draws without the option.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox.factories import (_DAY_NS, _bill_lines, _period, billed_monthly, management_urls,
                                                 new_subscription_transaction)
from analytics_dagster.sandbox.metrics import utc_date

if TYPE_CHECKING:
    from analytics_dagster.sandbox.world import World

Entity = dict[str, Any]
TRIAL_SHARE = 0.2  # subscriptions that start with a trial
TRIAL_DAYS = 14
CANCEL_SHARE = 0.03  # of period ends: canceled there
PAUSE_SHARE = 0.04  # of period ends: paused there (then resumed)
QUANTITY_CHANGE_SHARE = 0.08  # of periods: one item's quantity changes within it
UNBILLED_CHANGE_SHARE = 0.25  # of quantity changes: not billed (no transaction says when)
LIFE_DAYS = 365  # how long the subscriptions live on after the rest of the initial world is made


def live(world: World) -> None:
    """Give every subscription of the initial world its life (the module's docstring), from its
    creation to a `now` a year (`LIFE_DAYS`) after the rest of the initial world was made (the
    world's clock then; whatever else the world holds does not change in that year), replacing the events the initial world made of them with those of that
    life, and each state kept in `world.subscription_states` (from the events it writes)."""
    now, last_id_ms, rng = world.clock_ns + LIFE_DAYS * _DAY_NS, world._last_id_ms, world.rng
    world.rng, world._last_id_ms, world._history = random.Random(f"{world.seed}/lifecycles"), 0, []
    _forget_events(world)
    checked_out = {t.get("subscription_id") for t in world.entities["transactions"].values() if t.get("origin") == "web"}
    queue: list[tuple[int, int, str, str]] = []  # (when, order, subscription id, what happens)
    for order, key in enumerate(world.ids["subscriptions"]):
        sub = world.entities["subscriptions"][key]
        start = parse_ns(sub["created_at"])
        world.clock_ns = start
        trial = world.rng.random() < TRIAL_SHARE and key not in checked_out  # (checked out: billed at once)
        _set(sub, status="trialing" if trial else "active", paused_at=None, canceled_at=None)
        sub["management_urls"] = management_urls(sub)
        if trial:
            _set(sub, current_billing_period=None, next_billed_at=world.stamp(start + TRIAL_DAYS * _DAY_NS))
        _record(world, sub, start, sub["created_at"], "created")
        if trial:
            if world.trial_checkouts:
                bill_trial(world, sub)
            heapq.heappush(queue, (parse_ns(sub["next_billed_at"]), order, key, "activate"))
        else:
            if key not in checked_out:  # (the initial world made those billed at an amount no price says)
                bill(world, sub, sub["created_at"], "web")
            _plan_period(world, queue, order, key, sub)
    while queue and queue[0][0] < now:
        at, order, key, what = heapq.heappop(queue)
        sub = world.entities["subscriptions"][key]
        world.clock_ns = at
        ts = world.stamp(at)
        if what == "activate" or what == "resume":
            _start_period(world, sub, ts, status="active")
            _record(world, sub, at, ts, "updated")
            bill(world, sub, ts, "subscription_recurring")
            _plan_period(world, queue, order, key, sub)
        elif what == "quantity":
            _change_quantity(world, sub, at, ts)
        elif what == "period_end":
            roll = world.rng.random()
            if roll < CANCEL_SHARE:
                _set(sub, status="canceled", canceled_at=ts, current_billing_period=None, next_billed_at=None)
                sub["management_urls"] = management_urls(sub)
                _record(world, sub, at, ts, "updated")
            elif roll < CANCEL_SHARE + PAUSE_SHARE:
                _set(sub, status="paused", paused_at=ts, current_billing_period=None, next_billed_at=None)
                _record(world, sub, at, ts, "updated")
                heapq.heappush(queue, (at + world.rng.randint(20, 120) * _DAY_NS, order, key, "resume"))
            else:  # renewed: the next period starts where this one ended
                _start_period(world, sub, sub["current_billing_period"]["ends_at"], status="active")
                _record(world, sub, at, ts, "updated")
                bill(world, sub, sub["current_billing_period"]["starts_at"], "subscription_recurring")
                _plan_period(world, queue, order, key, sub)
    world.clock_ns = now
    world._write_history_events()
    world.rng, world._last_id_ms = rng, max(last_id_ms, world._last_id_ms)


def _forget_events(world: World) -> None:
    """The initial world's events of subscriptions, and the states it kept of them
    (`World.subscription_states`): their lives below make them again."""
    world.subscription_states.clear()
    events = world.entities["events"]
    gone = {k for k, e in events.items() if str(e.get("event_type", "")).startswith("subscription.")}
    world.ids["events"] = [k for k in world.ids["events"] if k not in gone]
    for key in gone:
        del events[key]


def _set(sub: Entity, **fields: Any) -> None:
    sub.update(fields)


def _start_period(world: World, sub: Entity, ts: str, *, status: str) -> None:
    """A billing period starts at `ts`: the subscription's, and each item's billing dates (new
    item dicts: the snapshots of earlier events keep theirs)."""
    period = _period(ts, sub.get("billing_cycle"))
    _set(sub, status=status, current_billing_period=period, next_billed_at=period["ends_at"] if period else None,
         paused_at=None)
    sub["items"] = [dict(item, previously_billed_at=ts, next_billed_at=period["ends_at"] if period else None)
                    for item in sub["items"]]


def renew(world: World, sub: Entity, ts: str) -> None:
    """The subscription renews (stamped `ts`): its next period starts where the last ended."""
    _start_period(world, sub, sub["current_billing_period"]["ends_at"], status="active")
    world._touch("subscriptions", sub, ts)


def _plan_period(world: World, queue: list[tuple[int, int, str, str]], order: int, key: str, sub: Entity) -> None:
    """What happens in the subscription's current period: maybe a quantity change within it,
    then its end."""
    period = sub.get("current_billing_period")
    if not period:
        return
    start, end = parse_ns(period["starts_at"]), parse_ns(period["ends_at"])
    if world.rng.random() < QUANTITY_CHANGE_SHARE and any(i["price"]["quantity"]["maximum"] > 1 for i in sub["items"]):
        heapq.heappush(queue, (start + 1 + int(world.rng.random() * (end - start - 2)), order, key, "quantity"))
    heapq.heappush(queue, (end, order, key, "period_end"))


def _change_quantity(world: World, sub: Entity, at: int, ts: str) -> None:
    """One item's quantity changes within the period: its event, and (but one change in four)
    a prorated transaction for what is left of the period."""
    if sub["status"] != "active" or not sub.get("current_billing_period"):
        return
    changeable = [n for n, i in enumerate(sub["items"]) if i["price"]["quantity"]["maximum"] > 1]
    if not changeable:
        return
    n = world.rng.choice(changeable)
    items = [dict(i) for i in sub["items"]]
    limits, quantity = items[n]["price"]["quantity"], items[n]["quantity"]
    step = world.rng.choice([-1, 1, 2, 3]) if quantity > limits["minimum"] else world.rng.choice([1, 2, 3])
    items[n]["quantity"] = max(limits["minimum"], min(limits["maximum"], quantity + step))
    items[n]["updated_at"] = ts
    sub["items"] = items
    _record(world, sub, at, ts, "updated")
    if world.rng.random() >= UNBILLED_CHANGE_SHARE:
        bill(world, sub, ts, "subscription_update")


def bill(world: World, sub: Entity, ts: str, origin: str) -> None:
    """The transaction of `origin` for the subscription's current period (a `subscription_update`
    one: for what is left of it from `ts`, its lines prorated)."""
    txn, _ = world.create("transactions", ts, sub["customer_id"], new=functools.partial(
        new_subscription_transaction, subscription=sub, origin=origin))
    if origin == "subscription_update":
        period = {"starts_at": ts, "ends_at": sub["current_billing_period"]["ends_at"]}
        span = parse_ns(period["ends_at"]) - parse_ns(sub["current_billing_period"]["starts_at"])
        rate = f"{(parse_ns(period['ends_at']) - parse_ns(ts)) / span:.5f}"
        txn["billing_period"] = period
        for item in txn["items"]:
            item["proration"] = {"rate": rate, "billing_period": period}
        for line in txn["details"]["line_items"]:
            line["proration"] = {"rate": rate, "billing_period": period}
        world._blobs.pop(txn["id"], None)


def bill_trial(world: World, sub: Entity) -> None:
    """The checkout's transaction of a subscription that starts with a trial (origin `web`, at
    its creation): its items for the trial period (its `billing_period`), each charged nothing,
    as Paddle counts "recurring items with trials ... to have a zero charge" (its payment, and
    what is paid out of it, nothing too)."""
    world.create("transactions", sub["created_at"], sub["customer_id"],
                 new=functools.partial(_trial_checkout, subscription=sub))


def _trial_checkout(world: World, ts: str, customer_id: str | None, *, subscription: Entity) -> Entity:
    txn = new_subscription_transaction(world, ts, customer_id, subscription=subscription, origin="web")
    txn["billing_period"] = {"starts_at": ts, "ends_at": subscription["next_billed_at"]}
    _bill_lines(world, txn, subscription["currency_code"], txn["details"]["line_items"][0]["tax_rate"],
                [(item["price"], item["quantity"], 0, False) for item in subscription["items"]
                 if item.get("status", "active") == "active"])
    txn["payments"] = [dict(payment, amount="0") for payment in txn["payments"]]
    return txn


def _record(world: World, sub: Entity, at: int, ts: str, verb: str) -> None:
    """The subscription changed at `at` (stamped `ts`): its event (written with the history's)
    and its state in the log."""
    sub["updated_at"] = ts
    world._blobs.pop(sub["id"], None)
    snapshot = dict(sub)  # a shallow copy: a life replaces what it changes (items, periods), never edits them
    world._history.append((at, "subscriptions", sub["id"], f"subscription.{verb}", snapshot))


def mrr_history(world: World, until: date | None = None) -> dict[str, dict[str, float]]:
    """MRR by day (ISO date) and currency, from the first day a subscription existed to `until`
    (default: the world's today, the API's; a day past its clock has not happened there): per
    day, what the sandbox bills a month (`factories.billed_monthly`) for the recurring, billed
    items of each subscription that is `active` at the end of that day (its state then, from its
    whole history), in the subscription's currency; the country of its address as listed now. Only a world whose
    subscriptions live their lives (`World(lifecycles=True)`) knows its past."""
    if not world.lifecycles:
        raise ValueError("mrr_history: only a world made with lifecycles=True knows every past state")
    countries = {k: a["country_code"] for k, a in world.entities["customer_addresses"].items()}
    # by instant and subscription only: two states of one subscription at one instant (periods
    # an `advance` renewed late, stamped alike) keep their log order (a state is no sort key)
    # a subscription's states hold in the order it had them: one logged after another, at an
    # instant that reads earlier (a late renewal's stamp, cut to fewer digits), holds from the
    # one before's (as the stream's order says; never put before it)
    changes: list[tuple[int, str, Entity]] = sorted(
        ((at, key, state) for key, states in world.subscription_states.items()
         for at, state in zip(itertools.accumulate((at for at, _ in states), max), (state for _, state in states))),
        key=lambda change: change[:2])
    if not changes:
        return {}
    first, world_day = utc_date(changes[0][0]), utc_date(world.clock_ns)
    last = until or world_day
    current: dict[str, float] = {}  # subscription -> its MRR now, by currency below
    currency_of: dict[str, str] = {}
    result: dict[str, dict[str, float]] = {}
    position, day = 0, first
    while day <= last:
        end_ns = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() + 86400) * 10**9
        while position < len(changes) and changes[position][0] < end_ns:
            _, key, state = changes[position]
            currency_of[key] = state["currency_code"]
            current[key] = _monthly(state, countries.get(state["address_id"]))
            position += 1
        totals: dict[str, float] = defaultdict(float)
        for key, amount in current.items():
            if amount:
                totals[currency_of[key]] += amount
        result[day.isoformat()] = dict(totals)
        day += timedelta(days=1)
    return result


def _monthly(state: Entity, country: str | None) -> float:
    if state["status"] != "active":
        return 0.0
    return sum(billed_monthly(state, item, country) for item in state["items"]
               if item["recurring"] and item.get("status", "active") == "active")
