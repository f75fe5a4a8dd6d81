"""Progress of a sync, per resource: requests, pages, rows and elapsed time, reported now and then."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from analytics_dagster.source.resources import resource_of_path

Report = Callable[[str], None]
Observe = Callable[[dict[str, dict[str, Any]]], None]


class Progress:
    """Counts pages and rows per resource across every worker thread and reports a line per
    resource at most every `every` seconds, and once more at the end (`summary`).

    `observe`, when given, is called at most every `every` seconds from the extract's main
    thread (`row`, a step of every table) with how far each listing that says its length has
    got: `status` of each, by resource.

    Shared, never copied: dlt deep-copies a child resource's paginator for each parent row, and
    every copy must count into this one object.
    """

    def __init__(self, report: Optional[Report] = None, every: float = 10.0,
                 observe: Optional[Observe] = None) -> None:
        self.report = report
        self.every = every
        self.observe = observe
        self.started = time.monotonic()
        self._observed = self.started
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._last: dict[str, float] = {}
        self.requests: Counter[str] = Counter()  # every attempt, retries included, by resource
        self.totals: dict[str, int] = {}  # the API's estimated_total of a listing (its parts' so far, added)
        self._part_totals: dict[str, dict[int, int]] = {}
        self.committed: dict[str, int] = {}  # rows of a backfill committed by earlier runs

    def __deepcopy__(self, memo: dict) -> "Progress":
        return self

    def request(self, url: str) -> None:
        """Count one HTTP request (called by the transport for every attempt)."""
        resource = resource_of_path(urlsplit(url).path)
        with self._lock:
            self.requests[resource] += 1

    def page(self, resource: str, rows: int, estimated_total: Any = None, part: int = 0) -> None:
        """Count a page of `resource` (of the part `part` of its listing, `ApiResource.parts`):
        each part says its own `estimated_total`, and the listing's is theirs added up, of the
        parts it has reached."""
        now = time.monotonic()
        with self._lock:
            counts = self._counts.setdefault(resource, [0, 0])
            counts[0] += 1
            counts[1] += rows
            if isinstance(estimated_total, int) and 0 <= estimated_total < 100001:  # capped or -1: no use
                parts = self._part_totals.setdefault(resource, {})
                parts[part] = estimated_total
                self.totals[resource] = sum(parts.values())
            due = now - self._last.get(resource, self.started) >= self.every
            if due:
                self._last[resource] = now
            line = self._line(resource, now) if due else None
        if line and self.report:
            self.report(line)

    def row(self, item: Any) -> Any:
        """A step of every table, on the extract's main thread: observe, when due."""
        if self.observe is not None and time.monotonic() - self._observed >= self.every:
            now = time.monotonic()
            with self._lock:
                self._observed = now
                statuses = {r: status for r in self.totals if (status := self.status(r, now))}
            if statuses:
                self.observe(statuses)
        return item

    def status(self, resource: str, now: float) -> dict[str, Any]:
        """How far a listing that says how long it is has got: rows listed (by earlier runs
        too) of its `estimated_total`, how fast, how long to go; {} before its first rows."""
        _, rows = self._counts.get(resource, (0, 0))
        total = self.totals.get(resource)
        if not (total and rows):
            return {}
        rate = rows / max(now - self.started, 1e-9)
        done = self.committed.get(resource, 0) + rows
        return {"listed": done, "estimated_total": total, "rows_per_second": round(rate, 1),
                "eta_seconds": round(max(total - done, 0) / rate)}

    def _line(self, resource: str, now: float) -> str:
        pages, rows = self._counts[resource]
        line = f"{resource}: {pages} pages, {rows} rows read, {now - self.started:.1f}s"
        status = self.status(resource, now)
        if status:  # a listing that says how long it is: how far, how fast, how long to go
            line += (f" ({status['listed']} of ~{status['estimated_total']} listed, {status['rows_per_second']:.0f}"
                     f" rows/s, ETA {status['eta_seconds']}s)")
        return line

    def summary(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [self._line(resource, now) for resource in sorted(self._counts)]
