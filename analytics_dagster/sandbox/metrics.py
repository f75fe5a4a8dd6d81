"""The sandbox's `/metrics/*`: Paddle's own daily figures, computed from the sandbox's world.

The account has one primary balance currency (`World(balance_currency=...)`, USD by default).
Every amount is in its minor units, other currencies converted at fixed rates (`rate`: the
factories' base rates against the US dollar, without their month-to-month move), the rates its
completed transactions are paid out at too: each carries `details.payout_totals`, its totals in
the balance currency (`payout_totals`).

- `monthly-recurring-revenue`: at the end of each day, over the subscriptions `active` in their
  state then (the world keeps every state: `World.subscription_states`), what their recurring,
  billed items bill a month (`factories.billed_monthly`: tax excluded, before discount),
  converted; `monthly-recurring-revenue-change`: that day's less the day before's.
- `active-subscribers`: the subscriptions active at the end of each day.
- `revenue`: completed transactions by the day they were billed (else created): their payout
  subtotal less discount, and how many; `refunds`: approved refunds by the day they were made,
  their subtotal converted; `chargebacks`: chargebacks made that day, counted.
- `checkout-conversion`: transactions of the checkout (`origin` web) created that day, and how
  many of them completed.

Days after the world's today are not served (a series ends today, its value as of now).
"""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.sandbox.factories import _PER_USD, billed_monthly
from analytics_dagster.source import DEFAULT_METRICS_HISTORY_DAYS

if TYPE_CHECKING:
    from analytics_dagster.sandbox.world import World

DAY_NS = 24 * 3600 * 10**9
HISTORY_DAYS = DEFAULT_METRICS_HISTORY_DAYS  # the days a first sync reads
BALANCE_CURRENCY = "USD"
_PAYOUT_FIELDS = ("subtotal", "tax", "discount", "total", "credit", "credit_to_balance", "balance", "grand_total",
                  "fee", "earnings")


def rate(currency: str, balance: str) -> Fraction:
    """Units of `balance` one unit of `currency` pays out as (fixed)."""
    return _PER_USD[balance] / _PER_USD[currency]


def convert(amount: int, currency: str, balance: str) -> int:
    return int(amount * rate(currency, balance) + Fraction(1, 2))


def payout_totals(txn: dict[str, Any], balance: str) -> dict[str, str] | None:
    """A transaction's `details.payout_totals`: its totals in the balance currency once it is
    completed (null before, as Paddle's are)."""
    totals = (txn.get("details") or {}).get("totals") or {}
    if txn.get("status") != "completed" or not totals.get("currency_code"):
        return None
    currency = totals["currency_code"]
    out = {k: str(convert(int(totals.get(k) or 0), currency, balance)) for k in _PAYOUT_FIELDS}
    # (as Paddle sends them now: the rate, its fee's share, the tax of the grand total; Paddle's
    # Python SDK requires the three)
    return {**out, "currency_code": balance, "exchange_rate": f"{float(rate(currency, balance)):.8f}".rstrip("0").rstrip("."),
            "fee_rate": "0.05", "grand_total_tax": str(convert(int(totals.get("tax") or 0), currency, balance))}


def _day(stamp: str | None) -> str:
    return (stamp or "")[:10]


def utc_date(ns: int) -> dt.date:
    """The UTC date of an instant (ns since the epoch): the world's today, a point's day."""
    return dt.datetime.fromtimestamp(ns // 10**9, tz=dt.timezone.utc).date()


def series(world: World, operation: str, start: dt.date, end: dt.date) -> dict[str, Any]:
    """The `data` of `GET /metrics/<operation>` for the days `start` (inclusive) to `end`
    (exclusive), those after today left out; None for an operation there is none of."""
    today = utc_date(world.clock_ns)
    days = [start + dt.timedelta(days=k) for k in range(max(0, (min(end, today + dt.timedelta(days=1)) - start).days))]
    compute = _OPERATIONS[operation]
    points = compute(world, days) if days else []
    data: dict[str, Any] = {}
    if operation not in ("active-subscribers", "chargebacks", "checkout-conversion"):
        data["currency_code"] = world.balance_currency
    data["timeseries"] = [{"timestamp": f"{day.isoformat()}T00:00:00Z", **point} for day, point in zip(days, points)]
    return data


def _by_state(world: World, days: list[dt.date], value: Callable[[dict[str, Any]], float]) -> list[float]:
    """Per day, `value` summed over every subscription's state at the end of that day."""
    start_ns = int(dt.datetime.combine(days[0], dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 10**9
    delta = [0.0] * (len(days) + 1)
    for states in world.subscription_states.values():
        ordered = sorted(states, key=lambda s: s[0])
        for i, (at, state) in enumerate(ordered):
            v = value(state)
            if not v:
                continue
            # day k ends at start + (k + 1) days - 1 ns: the state holds then if at <= end < until
            first = max(0, -(-(at - start_ns + 1) // DAY_NS) - 1)
            last = len(days) - 1
            if i + 1 < len(ordered):
                last = min(last, (ordered[i + 1][0] - start_ns) // DAY_NS - 1)
            if first <= last:
                delta[first] += v
                delta[last + 1] -= v
    out, running = [], 0.0
    for k in range(len(days)):
        running += delta[k]
        out.append(running)
    return out


def _mrr_of(world: World) -> Callable[[dict[str, Any]], float]:
    addresses = world.entities["customer_addresses"]

    def mrr(sub: dict[str, Any]) -> float:
        if sub.get("status") != "active":
            return 0.0
        country = (addresses.get(sub.get("address_id")) or {}).get("country_code")
        monthly = sum(billed_monthly(sub, item, country) for item in sub.get("items") or []
                      if item.get("recurring") and item.get("status", "active") == "active")
        return float(monthly * rate(sub["currency_code"], world.balance_currency))

    return mrr


def _mrr(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    return [{"amount": str(round(v))} for v in _by_state(world, days, _mrr_of(world))]


def _mrr_change(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    before = [days[0] - dt.timedelta(days=1)] + days
    values = [round(v) for v in _by_state(world, before, _mrr_of(world))]
    return [{"amount": str(values[k + 1] - values[k])} for k in range(len(days))]


def _active(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    counts = _by_state(world, days, lambda sub: 1.0 if sub.get("status") == "active" else 0.0)
    return [{"count": round(v)} for v in counts]


def _per_day(days: list[dt.date], rows: list[tuple[str, dict[str, int]]], fields: tuple[str, ...]) -> list[dict[str, int]]:
    by_day = {day.isoformat(): dict.fromkeys(fields, 0) for day in days}
    for day, values in rows:
        if day in by_day:
            for k, v in values.items():
                by_day[day][k] += v
    return [by_day[day.isoformat()] for day in days]


def _revenue(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    rows = []
    for txn in world.entities["transactions"].values():
        payout = (txn.get("details") or {}).get("payout_totals")
        if txn.get("status") == "completed" and payout:
            amount = int(payout["subtotal"]) - int(payout["discount"])
            rows.append((_day(txn.get("billed_at") or txn["created_at"]), {"amount": amount, "count": 1}))
    return [{"amount": str(v["amount"]), "count": v["count"]} for v in _per_day(days, rows, ("amount", "count"))]


def _adjustments(world: World, action: str) -> list[dict[str, Any]]:
    return [a for a in world.entities["adjustments"].values() if a.get("action") == action and a.get("status") == "approved"]


def _refunds(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    rows = [(_day(a["created_at"]), {"amount": convert(int(a["totals"]["subtotal"]), a["currency_code"], world.balance_currency)})
            for a in _adjustments(world, "refund")]
    return [{"amount": str(v["amount"])} for v in _per_day(days, rows, ("amount",))]


def _chargebacks(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    rows = [(_day(a["created_at"]), {"count": 1}) for a in _adjustments(world, "chargeback")]
    return _per_day(days, rows, ("count",))


def _conversion(world: World, days: list[dt.date]) -> list[dict[str, Any]]:
    rows = [(_day(t["created_at"]), {"count": 1, "completed_count": int(t.get("status") == "completed")})
            for t in world.entities["transactions"].values() if t.get("origin") == "web"]
    return [{**v, "rate": f"{v['completed_count'] / v['count']:.6f}" if v["count"] else "0.000000"}
            for v in _per_day(days, rows, ("count", "completed_count"))]


_OPERATIONS: dict[str, Callable[[World, list[dt.date]], list[dict[str, Any]]]] = {
    "monthly-recurring-revenue": _mrr,
    "monthly-recurring-revenue-change": _mrr_change,
    "active-subscribers": _active,
    "revenue": _revenue,
    "refunds": _refunds,
    "chargebacks": _chargebacks,
    "checkout-conversion": _conversion,
}


def skewed(points: list[dict[str, Any]], factors: dict[str, float]) -> list[dict[str, Any]]:
    """The points of the days `factors` names, each amount and count times its factor (the
    sandbox's switch `metrics_skew`: a day Paddle revised, or one that disagrees with the warehouse)."""
    out = []
    for point in points:
        factor = factors.get(point["timestamp"][:10])
        if factor is not None:
            point = dict(point)
            for k in ("amount", "count", "completed_count"):
                if k in point:
                    value = round(int(point[k]) * factor)
                    point[k] = str(value) if isinstance(point[k], str) else value
        out.append(point)
    return out


def edited(points: list[dict[str, Any]], edits: dict[str, Any]) -> list[dict[str, Any]]:
    """The points with the days `edits` names served otherwise (the sandbox's switch
    `metrics_points`, to serve what the contract does not promise against): None drops the day's
    point, a dict replaces the fields of it it has, a list serves it once per dict (a day twice)."""
    out: list[dict[str, Any]] = []
    for point in points:
        day = point["timestamp"][:10]
        if day not in edits:
            out.append(point)
            continue
        edit = edits[day]
        for change in [] if edit is None else edit if isinstance(edit, list) else [edit]:
            out.append({**point, **{k: v for k, v in change.items() if k in point}})  # (a count-only metric keeps no amount)
    return out


def response_data(world: World, operation: str, start: dt.date, end: dt.date,
                  skew: dict[str, float] | None = None, edits: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole `data` of a response: the series (`skew`ed, `edits` applied), its bounds and
    `updated_at` (the world's clock: when the figures were computed)."""
    data = series(world, operation, start, end)
    data["timeseries"] = edited(skewed(data["timeseries"], skew or {}), edits or {})
    return {**data, "starts_at": f"{start}T00:00:00Z", "ends_at": f"{end}T00:00:00Z", "interval": "day",
            "updated_at": format_ns(world.clock_ns, 3)}


def rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's `data` as the rows a sync keeps: a day each (its timestamp's UTC date), its
    values, the series' `currency_code` if it has one, the response's `updated_at`."""
    return [{"day": utc_date(parse_ns(p["timestamp"])).isoformat(), **{k: v for k, v in p.items() if k != "timestamp"},
             **({"currency_code": data["currency_code"]} if "currency_code" in data else {}),
             "updated_at": data["updated_at"]} for p in data["timeseries"]]


def history(world: World, operation: str) -> list[dict[str, Any]]:
    """The rows a first sync keeps: `HISTORY_DAYS` days to the world's today."""
    today = utc_date(world.clock_ns)
    return rows(response_data(world, operation, today - dt.timedelta(days=HISTORY_DAYS - 1), today + dt.timedelta(days=1)))


def parse_day(value: str | None) -> dt.date:
    """An RFC 3339 full-date (`2025-09-01`), or a date-time whose date is taken; ValueError else."""
    if not value:
        raise ValueError("is required (an RFC 3339 date, e.g. 2025-09-01)")
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value)
        parse_ns(value)
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        raise ValueError(f"must be an RFC 3339 date (e.g. 2025-09-01), not {value!r}") from None
