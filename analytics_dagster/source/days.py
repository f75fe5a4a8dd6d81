"""Paddle's metrics (`GET /metrics/*`): daily timeseries read by dates, not listed by id.

Each operation takes `from` (inclusive) and `to` (exclusive) dates, both required, and answers
one series, a point a day (`{"data": {"currency_code"?, "timeseries": [...], "updated_at"}}`).
A first run reads `metrics_history_days` days up to today in one request per metric (the API
states no longest range); a later run reads from the last day it loaded less
`metrics_reread_days` (Paddle may revise recent days) to today, merged on `day`. "Today" is the
API's (its `Date` header): a run that read nothing before asks it with an empty series
(`from` = `to`), one request more.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterator, Sequence

import dlt

from analytics_dagster.source.events import api_now_ns
from analytics_dagster.rfc3339 import NS_PER_SECOND, parse_ns
from analytics_dagster.source.plan import SyncPlan
from analytics_dagster.source.resources import RESOURCES_BY_NAME

LAST_DAY = "last_day"  # the newest day a table's series loaded, in its dlt state


def utc_date(ns: int) -> dt.date:
    """The UTC date of an instant (ns since the epoch)."""
    return dt.datetime.fromtimestamp(ns // NS_PER_SECOND, tz=dt.timezone.utc).date()


def plan_days(plan: SyncPlan, settings: Any, run_state: dict[str, Any], tables: Sequence[str], *,
              full_refresh: bool) -> None:
    """The dates each metric of `tables` is read for in this run (`plan.days`), and why
    (`plan.reasons`)."""
    if not tables:
        return
    if plan.api_now_ns is None:  # no request made yet: the API's today, from an empty series
        assert plan.client is not None, "the plan keeps the client it was made with"
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()
        plan.api_now_ns = api_now_ns(plan.client.get(RESOURCES_BY_NAME[tables[0]].path, params={"from": today, "to": today}))
    today = utc_date(plan.api_now_ns)
    for table in tables:
        last = (run_state.get(table) or {}).get(LAST_DAY)
        if last and not full_refresh:
            start = min(dt.date.fromisoformat(last), today) - dt.timedelta(days=settings.metrics_reread_days)
            why = f"from the last day loaded ({last}) less {settings.metrics_reread_days} days"
        else:
            start = today - dt.timedelta(days=settings.metrics_history_days - 1)
            why = f"a history of {settings.metrics_history_days} days" + (" (full refresh)" if last else "")
        plan.days[table] = {"from": start.isoformat(), "to": (today + dt.timedelta(days=1)).isoformat()}
        plan.reasons[table] = f"days {start} to {today}: {why}"


def day_rows(table: str, asked: dict[str, str] | None = None) -> Callable[[Any], Iterator[dict[str, Any]]]:
    """A step of `table`'s resource: the series of a response's `data` as rows, one per day
    (`day`, the point's values, the series' `currency_code` if it has one and `updated_at`);
    the newest day kept in the table's state (where the next run's dates start).

    A point's day is its timestamp's UTC date (an RFC 3339 stamp with an offset may read
    another). The API promises one point a day: a day twice, or a day missing between the
    series' first point and the last day asked (`asked`'s `to`, exclusive, up to the API's today),
    fails the run naming the metric and the days, rather than keep the first of two figures or a
    figure the API no longer serves."""

    def rows(data: Any) -> Iterator[dict[str, Any]]:
        if not isinstance(data, dict) or not isinstance(data.get("timeseries"), list):
            raise ValueError(f"resource '{table}': the response's data has no timeseries list: {str(data)[:200]}")
        state = dlt.current.resource_state(table)
        out: dict[dt.date, dict[str, Any]] = {}
        twice: set[dt.date] = set()
        for point in data["timeseries"]:
            stamp = point.get("timestamp") if isinstance(point, dict) else None
            try:
                day = utc_date(parse_ns(str(stamp)))
            except ValueError:
                raise ValueError(f"resource '{table}': a point of the series has no RFC 3339 timestamp: {point!r}") from None
            if day in out:
                twice.add(day)
            row = {"day": day, **{k: v for k, v in point.items() if k != "timestamp"}}
            if "currency_code" in data:
                row["currency_code"] = data["currency_code"]
            row["updated_at"] = data.get("updated_at")
            out[day] = row
        if twice:
            raise ValueError(f"resource '{table}': the API served {', '.join(sorted(map(str, twice)))} twice, with one "
                             "point a day promised: nothing of the series was loaded")
        if out and asked and asked.get("to"):
            last = dt.date.fromisoformat(asked["to"]) - dt.timedelta(days=1)
            expected = {min(out) + dt.timedelta(days=k) for k in range((max(last, max(out)) - min(out)).days + 1)}
            missing = sorted(d for d in expected - set(out) if d <= max(out) or d < last)
            if missing:
                raise ValueError(f"resource '{table}': the API served no point for {', '.join(map(str, missing))} "
                                 "(one a day promised): nothing of the series was loaded")
        for day in sorted(out):
            if day.isoformat() > (state.get(LAST_DAY) or ""):
                state[LAST_DAY] = day.isoformat()
            yield out[day]

    return rows


def _number(value: Any, *, whole: bool) -> int | float:
    """A figure as a number to plot: an amount (a string of minor units, of any length) exactly,
    as an int; a rate as a float."""
    text = str(value).strip()
    if whole and text.lstrip("-").isdigit():
        return int(text)
    number = float(text)
    return int(number) if whole and number.is_integer() else number


def newest_points(pipeline: Any, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per metric table, its newest day and that day's values as numbers (`newest_<field>`: the
    asset's page plots a number of its materializations over time). A table not loaded yet: none."""
    points: dict[str, dict[str, Any]] = {}
    if not tables:
        return points
    with pipeline.sql_client() as client:
        for table in tables:
            try:
                with client.execute_query(f"SELECT * FROM {client.make_qualified_table_name(table)} "
                                          "ORDER BY day DESC LIMIT 1") as cursor:
                    names = [d[0] for d in cursor.description]
                    row = cursor.fetchone()
            except Exception:  # (no table yet: the key may not read it, or nothing was loaded)
                continue
            if row is None:
                continue
            values = dict(zip(names, row))
            point: dict[str, Any] = {"newest_day": str(values["day"])}
            for name in ("amount", "count", "completed_count", "rate"):
                if values.get(name) is not None:
                    point[f"newest_{name}"] = _number(values[name], whole=name != "rate")
            points[table] = point
    return points
