"""The sync engine: one run of given tables, load by load (chunks of a backfill, of the stream).

Plain dlt, no Dagster: the asset (`analytics_dagster.assets`) gives it the tables and a
function that runs one load (dagster-dlt's, which also yields the assets' metadata), and
turns what it returns into materializations. Anything else (a script, a notebook) can give it
`pipeline.run`.

A run is a sequence of loads, each with its own plan and its own committed state:

1. The first load plans from the state the destination committed (`pipeline.resource_states`),
   lists what must be listed and reads the stream.
2. While a backfill has more to list, or the read of the stream stopped after a chunk, the
   next load goes on with those tables only, planned from the state the last load committed.
3. When backfills end, the tables they listed (and `events`) take, in one last load, the
   events of the changes made while they were listed: the run ends with every table current.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import dlt
from dlt.extract.source import DltSource
from requests import Session

from analytics_dagster.source import analytics_source, paced_session, plan_run, source_settings
from analytics_dagster.source.pipeline import load_with_more_memory, resource_states
from analytics_dagster.source.plan import SyncPlan
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster.source.state import TableState, backfill, event_cursor


@dataclass
class Load:
    """One load of a run: the tables it carried, its plan, and what the load function returned."""

    tables: list[str]
    plan: SyncPlan
    results: list[Any]


@dataclass
class SyncRun:
    """A run of `tables` through `pipeline`, load by load (`loads`); what it did so far.

    Attributes:
        full_refresh: forget the incremental state (the first load lists every table whole).
        incremental: `events` or `listing` for this run only (empty: the setting).
        progress: where requests, pages and rows are counted (and lines reported).
        report, warn: where the run's lines go (its plan per load, chunks, findings).
        plans: each load's plan, in order. written: rows written per table. loads: loads per
            table. states: the tables' states as the last load committed them. forbidden: the
            tables the key may not read (403 `forbidden`), skipped, each with what to grant
            (`permissions`).
    """

    pipeline: dlt.Pipeline
    tables: list[str]
    full_refresh: bool = False
    incremental: str = ""
    progress: Progress = field(default_factory=Progress)
    report: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    plans: list[SyncPlan] = field(default_factory=list)
    written: Counter[str] = field(default_factory=Counter)
    loads: Counter[str] = field(default_factory=Counter)
    states: dict[str, TableState] = field(default_factory=dict)
    forbidden: dict[str, str] = field(default_factory=dict)
    _session: Optional[Session] = None

    def run(self, load: Callable[[DltSource], Iterable[Any]]) -> Iterator[Load]:
        """Run the loads, each through `load` (given the source of its tables), yielding each
        when it has committed. Call under the pipeline's lock (`pipeline.locked_pipeline`)."""
        chunk, finished, caught_up = self.tables, set(), False
        self.states = resource_states(self.pipeline)  # what the destination committed
        while chunk:
            plan, results = self._load(chunk, load)
            yield Load(tables=chunk, plan=plan, results=results)
            # (the state this load committed: a later chunk's plan reads it, not the destination)
            self.states = resource_states(self.pipeline, from_destination=False)
            # (a table the key may not read is not tried again in this run)
            backfilling = [t for t in chunk if backfill(self.states.get(t, {})) and t in plan.backfills
                           and t not in self.forbidden]
            # (not a table listed every run: the next run lists it again, events or none)
            finished |= {t for t, b in plan.backfills.items() if b["position"] and not RESOURCES_BY_NAME[t].unnotified
                         } - set(backfilling) - set(self.forbidden)
            reading = sorted(plan.feeds) if plan.feed_more else []  # the read of the stream goes on
            if backfilling or reading:
                self.report(f"chunk {len(self.plans)} committed; " + "; ".join(
                    [self._backfill_line(t) for t in backfilling] + [self._cursor_line(t) for t in reading]))
                chunk = sorted(set(backfilling) | set(reading))
            elif finished and not caught_up:  # the changes made while they were listed
                chunk, caught_up = sorted((finished | ({"events"} & set(self.tables))) - set(self.forbidden)), True
            else:
                chunk = []
        self.report("read: " + "; ".join(self.progress.summary()))

    def _load(self, chunk: list[str], load: Callable[[DltSource], Iterable[Any]]) -> tuple[SyncPlan, list[Any]]:
        """Plan and run one load of `chunk`; report what it could not apply."""
        settings = source_settings(**({"incremental": self.incremental} if self.incremental else {}))
        if self._session is None:  # one for every load of the run: one budget, its pace kept across loads
            self._session = paced_session(settings.requests_per_minute, on_request=self.progress.request)
        session = self._session
        full_refresh = self.full_refresh and not self.plans
        # planning: from the state the last load committed (the run's first request)
        plan = plan_run(settings, session, self.states, chunk, full_refresh=full_refresh, progress=self.progress)
        self.plans.append(plan)
        source = analytics_source(settings, plan, session, full_refresh=full_refresh, progress=self.progress)
        self.report(f"plan {len(self.plans)}: " + "; ".join(plan_line(plan, t) for t in chunk))
        loaded = [t for t in chunk if t not in plan.forbidden]  # (the plan found the stream forbidden)
        results: list[Any] = []
        try:
            if loaded:
                # (the source as it is when it selects just those: `self.tables` may be fewer than
                # the registry's, and a resource not planned for has no dates, say)
                whole = set(loaded) == set(source.selected_resources)
                results = list(load(source if whole else source.with_resources(*loaded)))
        except Exception as error:
            # (a chunk of very wide rows: loaded again, from its package, with more memory)
            if load_with_more_memory(self.pipeline, error, self.warn) is None:
                raise
            results = []  # (the load function's results were lost with its error)
        for table, grant in plan.forbidden.items():
            if table not in self.forbidden:
                self.forbidden[table] = grant
                self.warn(grant)
        for problem in plan.problems:  # applied none of it; every other change went in
            self.warn(f"resource '{problem['table']}': event {problem['event_id']} "
                      f"({problem['event_type']}) was not applied: {problem['problem']}")
        for table, gap in plan.gaps.items():
            self.warn(f"resource '{table}': the events from {gap['from']} to {gap['to']} passed "
                      "the API's retention before this run read them: they are missing")
        counts = self.pipeline.last_trace.last_normalize_info.row_counts if loaded else {}
        self.written.update({t: n for t, n in counts.items() if t in self.tables})
        self.loads.update(chunk)
        return plan, results

    def requests_for(self, table: str) -> int:
        """The requests this run made for `table`: its own listing's, and the event stream's it read."""
        own = self.progress.requests.get(table, 0) if table != "events" else 0
        return own + (self.progress.requests.get("events", 0) if table in self.plans[0].feeds else 0)

    def _backfill_line(self, table: str) -> str:
        progress = backfill(self.states[table]) or {}
        return f"{table} {progress.get('rows')} rows, after {progress.get('after')}"

    def _cursor_line(self, table: str) -> str:
        return f"{table} events to {(event_cursor(self.states[table]) or {}).get('event_id')}"


def plan_line(plan: SyncPlan, table: str) -> str:
    """How `plan` syncs `table`, in a few words (the run's log)."""
    mode = plan.mode(table)
    if table in plan.feeds:
        return f"{table}: events after {plan.feeds[table] or 'the oldest kept'}"
    return f"{table}: {mode}" + (f" ({plan.reasons[table]})" if table in plan.reasons else "")


def sync(tables: Optional[list[str]] = None, **settings: Any) -> SyncRun:
    """A whole run outside Dagster: `tables` (default: all) through `pipeline.run`, under the
    pipeline's lock; `settings`: `SyncRun`'s (full_refresh, incremental, report, warn)."""
    from analytics_dagster.source.pipeline import loader_file_format, locked_pipeline
    from analytics_dagster.source.resources import RESOURCES

    with locked_pipeline() as pipeline:
        run = SyncRun(pipeline, sorted(tables or [r.name for r in RESOURCES]), **settings)
        for _ in run.run(lambda source: [pipeline.run(source, loader_file_format=loader_file_format(pipeline))]):
            pass
    return run
