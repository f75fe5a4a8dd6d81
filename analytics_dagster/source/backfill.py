"""A listing in chunks (a backfill): where it resumes, and its progress recorded with each page."""

from __future__ import annotations

from typing import Any, Iterable

import dlt

from analytics_dagster.source.plan import SyncPlan
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster.source.state import end_backfill, forget_listed, record_backfill


def listing_start(plan: SyncPlan, tables: Iterable[str]) -> tuple[int, dict[str, str]]:
    """Where a listing that serves `tables` starts: the part of the listing
    (`ApiResource.parts`) and the `after` of the least far of their backfills."""
    backfills = [plan.backfills[t] for t in tables if t in plan.backfills]
    if not backfills:
        return 0, {}
    part, after = min((b.get("part", 0), b["after"] or "") for b in backfills)
    return part, {"after": after} if after else {}


def record_page(plan: SyncPlan, tables: Iterable[str], data: list[dict[str, Any]], key: str, has_more: bool,
                part: int = 0) -> bool:
    """Record a page of a backfill's listing in the state of each of `tables` it serves
    (committed with the page's rows, in the same load); False: the chunk is full (its rows,
    or its time, `chunk_seconds`), stop: a chunk ends on a page, on time or on rows alike.
    `part`: the part of the listing it goes on in (`ApiResource.parts`); a new part starts
    from its first page.

    When the listing is done, each table's cursor becomes the stream's position at the
    backfill's start, and the next run replays the changes made since from the events.
    """
    served = [t for t in tables if t in plan.backfills and t not in plan.forbidden]
    if not served:
        return True  # not a backfill: no chunks
    if any(not isinstance(row, dict) or not row.get(key) for row in data):
        raise ValueError(f"resource '{served[0]}': a record has no primary key '{key}' (the backfill stops here)")
    going = plan.chunk_rows <= 0
    for table in served:
        backfill = plan.backfills[table]
        state = plan.live_states[table] = dlt.current.resource_state(table)
        if backfill.get("part", 0) != part:  # the page ended a part: the next one starts from its first page
            backfill.update(part=part, after=None)
        elif data:
            backfill["after"] = max(backfill["after"] or "", data[-1][key])
        backfill["rows"] += len(data)
        backfill["run_rows"] = backfill.get("run_rows", 0) + len(data)
        if backfill["position"]:  # writes every row: listing mode's memory of them is obsolete
            forget_listed(state)
        if backfill.get("began_ns") is None and plan.api_now_ns is not None:
            backfill["began_ns"] = plan.api_now_ns  # the API's clock as the listing began
        if not has_more:
            end_backfill(state, backfill, RESOURCES_BY_NAME[table].parts)
            continue
        record_backfill(state, backfill)
        going = going or backfill["run_rows"] < plan.chunk_rows
    # a listing with children (customers) runs ahead of them: the children owed for what it
    # listed count against the chunk's request budget (its time, paced) before they are asked
    owed = (len(served) - 1) * max(plan.backfills[t].get("run_rows", 0) for t in served)
    if owed and 0 < plan.chunk_requests <= owed:
        return False
    return going and not plan.chunk_time_is_up()
