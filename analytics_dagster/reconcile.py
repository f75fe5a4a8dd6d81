"""The models held against Paddle's own figures (`/metrics/*`, synced into `analytics.metrics_*`).

A finance team trusts the number in Paddle's dashboard; these checks say, at every build of the
models, whether the warehouse agrees with it, day by day over the last `reconcile_days` days
both cover (a setting, 7), in the account's balance currency (Paddle's `currency_code`):

- `mrr_matches_paddle` (on `mrr_daily`): the model's MRR against Paddle's. One billing currency
  in the balance currency: directly. Others: each converted at the rate its own recent
  completed transactions were paid out at (`details.payout_totals` against `details.totals`,
  the newest `RATE_TRANSACTIONS` of it), the rates listed in the metadata. A day `mrr_daily`
  flags in a currency (changes older than the event stream that no transaction dates may move
  it by more than the dbt var `mrr_tolerance`) is compared and shown, but a difference there
  is the flag's, not a warning: set `reconcile_days` to the history's length to hold the whole
  history to Paddle's.
- `active_subscribers_match_paddle` (on `mrr_daily`): the subscriptions active at the end of each
  day (`subscription_history`) against Paddle's active subscribers.
- `revenue_matches_paddle` (on `revenue_monthly`): revenue and refunds by day from the mart's
  inputs, where their definitions meet (docs/models.md, "Reconciliation with Paddle"):
  completed transactions' subtotal less discount by the day they were billed, approved refunds'
  subtotal by the day they were made.

Each warns (it blocks nothing) when a day differs by more than `reconcile_tolerance` (a
setting, 0.5%) of Paddle's figure, naming the days; its metadata lists every day's two numbers,
the difference and the rates, and has the newest day's as numbers (plotted over time).
Nothing to compare (no metrics synced: the key lacks `metrics.read`, or they were never read)
passes, saying so.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import dlt
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, multi_asset_check

from analytics_dagster.assets import DESTINATION_POOL
from analytics_dagster.models import MODELS_SCHEMA, model_key
from analytics_dagster.source.pipeline import DATASET_NAME, SOURCE_NAME, locked_pipeline

DEFAULT_RECONCILE_DAYS = 7
DEFAULT_RECONCILE_TOLERANCE = 0.005
RATE_TRANSACTIONS = 50  # a currency's newest completed transactions its payout rate is taken from
MRR_CHECK, ACTIVE_CHECK, REVENUE_CHECK = "mrr_matches_paddle", "active_subscribers_match_paddle", "revenue_matches_paddle"
Query = Callable[..., list[tuple[Any, ...]]]


def reconcile_settings() -> tuple[int, float]:
    """`sources.analytics.reconcile_days` and `reconcile_tolerance`, read now (the dlt way)."""
    days = dlt.config.get(f"sources.{SOURCE_NAME}.reconcile_days", int)
    tolerance = dlt.config.get(f"sources.{SOURCE_NAME}.reconcile_tolerance", float)
    days = DEFAULT_RECONCILE_DAYS if days is None else int(days)
    tolerance = DEFAULT_RECONCILE_TOLERANCE if tolerance is None else float(tolerance)
    if days < 1 or not 0 <= tolerance < 1:
        raise ValueError(f"sources.analytics.reconcile_days must be 1 or more and reconcile_tolerance from 0 to 1, "
                         f"not {days} and {tolerance}")
    return days, tolerance


@dataclass
class Comparison:
    """Per day, ours against Paddle's; the rates used; what could not be converted."""

    label: str
    rows: list[tuple[dt.date, float, float, str]] = field(default_factory=list)  # (day, ours, Paddle's, what)
    rates: dict[str, tuple[float, int]] = field(default_factory=dict)  # currency: (rate, transactions)
    unconverted: set[str] = field(default_factory=set)
    # days whose MRR the history may have wrong by more than its tolerance (mrr_daily.flagged: a
    # change older than the event stream that no transaction dates, docs/models.md): shown, not
    # warned of
    flagged: set[dt.date] = field(default_factory=set)

    def result(self, key: Any, check: str, tolerance: float, currency: str) -> AssetCheckResult:
        differ = sorted({d for d, ours, paddle, _ in self.rows if abs(ours - paddle) > tolerance * max(abs(paddle), 1)})
        beyond = [d for d in differ if d not in self.flagged]
        table = "\n".join(["| day | what | ours | Paddle's | difference | % |", "|---|---|---:|---:|---:|---:|"] + [
            f"| {d} | {what}{' (flagged)' if d in self.flagged else ''} | {ours:,.0f} | {paddle:,.0f} | "
            f"{ours - paddle:,.0f} | {_pct(ours, paddle):+.3f} |" for d, ours, paddle, what in self.rows])
        metadata: dict[str, Any] = {
            "days_compared": len(self.rows),
            "days_beyond_tolerance": ", ".join(str(d) for d in beyond) or "none",
            "tolerance_pct": tolerance * 100,
            "balance_currency": currency or "",
            "rates": ", ".join(f"{c}->{currency} {r:.6f} ({n} transactions)" for c, (r, n) in sorted(self.rates.items()))
                     or "none needed",
        }
        if self.rows:  # the newest day of the first figure compared
            day, ours, paddle, _ = max((r for r in self.rows if r[3] == self.rows[0][3]), key=lambda r: r[0])
            metadata.update({"by_day": MetadataValue.md(table), "newest_day": str(day), "ours": ours, "paddle": paddle,
                             "difference": ours - paddle, "difference_pct": _pct(ours, paddle)})
        if self.unconverted:
            metadata["unconverted"] = ", ".join(sorted(self.unconverted))
        if self.flagged:
            metadata["days_flagged"] = len(self.flagged & {r[0] for r in self.rows})
            metadata["days_flagged_beyond_tolerance"] = ", ".join(str(d) for d in differ if d in self.flagged) or "none"
        passed = not beyond and not self.unconverted
        if not self.rows:
            description = f"{self.label}: nothing to compare (Paddle's metrics not synced, or no day both cover)"
        elif passed:
            description = (f"{self.label}: within {tolerance:.2%} of Paddle's on each of the last {len(self.rows)} days "
                           f"both cover (the newest {max(r[0] for r in self.rows)})")
        else:
            description = f"{self.label} differs from Paddle's by more than {tolerance:.2%} on " + (
                ", ".join(str(d) for d in beyond) or "no day") + (
                f"; no payout rate for {', '.join(sorted(self.unconverted))}" if self.unconverted else "")
        return AssetCheckResult(asset_key=key, check_name=check, passed=passed, severity=AssetCheckSeverity.WARN,
                                description=description, metadata=metadata)


def _pct(ours: float, paddle: float) -> float:
    return (ours - paddle) / abs(paddle) * 100 if paddle else (0.0 if not ours else 100.0)


SPECS = [
    AssetCheckSpec(MRR_CHECK, asset=model_key("mrr_daily"), blocking=False, description=(
        "mrr_daily's MRR equals Paddle's (/metrics/monthly-recurring-revenue) within the tolerance on each of the "
        "last days both cover, in the balance currency, other currencies at their recent payout rate. Warns, naming the days.")),
    AssetCheckSpec(ACTIVE_CHECK, asset=model_key("mrr_daily"), blocking=False, description=(
        "The subscriptions active at the end of each day (subscription_history) equal Paddle's active "
        "subscribers (/metrics/active-subscribers) within the tolerance. Warns, naming the days.")),
    AssetCheckSpec(REVENUE_CHECK, asset=model_key("revenue_monthly"), blocking=False, description=(
        "Revenue (completed transactions) and refunds (approved) by day, from revenue_monthly's inputs, equal "
        "Paddle's (/metrics/revenue, /metrics/refunds) within the tolerance. Warns, naming the days.")),
]


@multi_asset_check(specs=SPECS, can_subset=True, name="paddle_reconciliation", pool=DESTINATION_POOL)
def paddle_reconciliation(context: AssetCheckExecutionContext) -> Iterator[AssetCheckResult]:
    """The models against Paddle's metrics, read from the warehouse (after the sync, which loads
    the metrics with the raw tables, and the models' build)."""
    selected = {key.name for key in context.selected_asset_check_keys}
    days, tolerance = reconcile_settings()
    with locked_pipeline(report=context.log.warning) as pipeline, pipeline.sql_client() as client:
        def query(sql: str, *args: Any) -> list[tuple[Any, ...]]:
            return list(client.execute_sql(sql, *args) or [])

        for spec in SPECS:
            if spec.name in selected:
                comparison, currency = COMPARE[spec.name](query, days)
                yield comparison.result(spec.asset_key, spec.name, tolerance, currency)


def _exists(query: Query, schema: str, table: str) -> bool:
    return bool(query("SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
                      schema, table))


def _paddle(query: Query, table: str, column: str) -> tuple[dict[dt.date, float], str]:
    """Paddle's figure by day, and the series' currency ('' for a count): its newest day's (the
    balance currency now; days in another, before a change of it, are left out)."""
    if not _exists(query, DATASET_NAME, table):
        return {}, ""
    currency = "currency_code" if column == "amount" else "''"
    rows = query(f"SELECT day, {column}, {currency} FROM {DATASET_NAME}.{table} ORDER BY day DESC")
    balance = next((c for _, _, c in rows if c), "")
    return {_date(d): float(v or 0) for d, v, c in rows if (c or "") == balance or not c}, balance


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else dt.date.fromisoformat(str(value)[:10])


def payout_rate(query: Query, currency: str, balance: str) -> Optional[tuple[float, int]]:
    """What a unit of `currency` was paid out as in `balance`, over its newest completed
    transactions with payout totals in `balance`: their payout subtotals over their subtotals."""
    rows = query(
        f"SELECT details->'payout_totals'->>'subtotal', details->'totals'->>'subtotal' FROM {DATASET_NAME}.transactions "
        "WHERE status = 'completed' AND details->'payout_totals'->>'currency_code' = %s "
        "AND details->'totals'->>'currency_code' = %s ORDER BY coalesce(billed_at, created_at) DESC LIMIT "
        f"{RATE_TRANSACTIONS}", balance, currency)
    paid = sum(float(p) for p, t in rows if p is not None and t is not None)
    billed = sum(float(t) for p, t in rows if p is not None and t is not None)
    return (paid / billed, len(rows)) if billed else None


def _converted(query: Query, comparison: Comparison, balance: str, by_currency: dict[str, float]) -> float:
    total = 0.0
    for currency, amount in by_currency.items():
        if currency == balance:
            total += amount
            continue
        if currency not in comparison.rates:
            rate = payout_rate(query, currency, balance)
            if rate is None:
                comparison.unconverted.add(currency)
                continue
            comparison.rates[currency] = rate
        total += amount * comparison.rates[currency][0]
    return total


def _last_days(paddle: dict[dt.date, float], ours: set[dt.date], days: int) -> list[dt.date]:
    return sorted(set(paddle) & ours)[-days:]


def compare_mrr(query: Query, days: int) -> tuple[Comparison, str]:
    comparison = Comparison("MRR")
    paddle, balance = _paddle(query, "metrics_monthly_recurring_revenue", "amount")
    if not paddle or not _exists(query, MODELS_SCHEMA, "mrr_daily"):
        return comparison, balance
    ours: dict[dt.date, dict[str, float]] = {}
    for day, currency, mrr, flagged in query(
            f"SELECT day, currency_code, mrr, flagged FROM {MODELS_SCHEMA}.mrr_daily WHERE day >= %s", min(paddle)):
        ours.setdefault(_date(day), {})[currency] = float(mrr or 0)
        if flagged:
            comparison.flagged.add(_date(day))
    # (a day with no active subscription has no row in mrr_daily: its MRR is 0)
    first = min(ours) if ours else None
    covered = {d for d in paddle if first is not None and d >= first}
    for day in _last_days(paddle, covered, days):
        comparison.rows.append((day, _converted(query, comparison, balance, ours.get(day, {})), paddle[day], "MRR"))
    return comparison, balance


def compare_active(query: Query, days: int) -> tuple[Comparison, str]:
    comparison = Comparison("active subscribers")
    paddle, _ = _paddle(query, "metrics_active_subscribers", "count")
    if not paddle or not _exists(query, MODELS_SCHEMA, "subscription_history"):
        return comparison, ""
    first = query(f"SELECT min(valid_from) FROM {MODELS_SCHEMA}.subscription_history")[0][0]
    covered = {d for d in paddle if first is not None and d >= _date(first)}
    chosen = _last_days(paddle, covered, days)
    if not chosen:
        return comparison, ""
    # the subscriptions active at the end of each day (one query for all the days)
    ends = [dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) for day in chosen]
    counts = dict(query(
        "SELECT d.day_end, count(DISTINCT h.subscription_id) FROM (VALUES "
        + ", ".join(["(CAST(%s AS timestamp))"] * len(ends)) + ") AS d(day_end) "
        f"LEFT JOIN {MODELS_SCHEMA}.subscription_history AS h ON h.status = 'active' AND h.valid_from < d.day_end "
        "AND (h.valid_to IS NULL OR h.valid_to >= d.day_end) GROUP BY d.day_end", *ends))
    for day, end in zip(chosen, ends):
        comparison.rows.append((day, float(counts[end]), paddle[day], "active subscribers"))
    return comparison, ""


def compare_revenue(query: Query, days: int) -> tuple[Comparison, str]:
    """Revenue and refunds: a row of each a day."""
    comparison = Comparison("revenue and refunds")
    revenue, balance = _paddle(query, "metrics_revenue", "amount")
    refunds, _ = _paddle(query, "metrics_refunds", "amount")
    if not revenue or not _exists(query, MODELS_SCHEMA, "stg_transactions"):
        return comparison, balance
    chosen = sorted(revenue)[-days:]
    start = dt.datetime.combine(chosen[0], dt.time())
    ours_revenue: dict[dt.date, dict[str, float]] = {}
    for day, currency, amount in query(
            f"SELECT cast(coalesce(billed_at, created_at) AS date), currency_code, sum(subtotal - discount) "
            f"FROM {MODELS_SCHEMA}.stg_transactions WHERE status = 'completed' AND coalesce(billed_at, created_at) >= %s "
            "GROUP BY 1, 2", start):
        ours_revenue.setdefault(_date(day), {})[currency] = float(amount or 0)
    ours_refunds: dict[dt.date, dict[str, float]] = {}
    if _exists(query, MODELS_SCHEMA, "stg_adjustments"):
        for day, currency, amount in query(
                f"SELECT cast(created_at AS date), currency_code, sum(subtotal) FROM {MODELS_SCHEMA}.stg_adjustments "
                "WHERE action = 'refund' AND status = 'approved' AND created_at >= %s GROUP BY 1, 2", start):
            ours_refunds.setdefault(_date(day), {})[currency] = float(amount or 0)
    for day in chosen:
        comparison.rows.append((day, _converted(query, comparison, balance, ours_revenue.get(day, {})), revenue[day],
                                "revenue"))
        if day in refunds:
            comparison.rows.append((day, _converted(query, comparison, balance, ours_refunds.get(day, {})), refunds[day],
                                    "refunds"))
    return comparison, balance


COMPARE: dict[str, Callable[[Query, int], tuple[Comparison, str]]] = {
    MRR_CHECK: compare_mrr, ACTIVE_CHECK: compare_active, REVENUE_CHECK: compare_revenue}
