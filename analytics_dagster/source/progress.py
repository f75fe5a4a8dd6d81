"""Progress of a sync, per resource: requests, pages, rows and elapsed time, reported now and then."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from analytics_dagster.source.resources import resource_of_path

Report = Callable[[str], None]


class Progress:
    """Counts pages and rows per resource across every worker thread and reports a line per
    resource at most every `every` seconds, and once more at the end (`summary`).

    Shared, never copied: dlt deep-copies a child resource's paginator for each parent row, and
    every copy must count into this one object.
    """

    def __init__(self, report: Optional[Report] = None, every: float = 10.0) -> None:
        self.report = report
        self.every = every
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._last: dict[str, float] = {}
        self.requests: Counter[str] = Counter()  # every attempt, retries included, by resource
        self.plan: Any = None  # the run's SyncPlan, once the source has planned it

    def __deepcopy__(self, memo: dict) -> "Progress":
        return self

    def request(self, url: str) -> None:
        """Count one HTTP request (called by the transport for every attempt)."""
        resource = resource_of_path(urlsplit(url).path)
        with self._lock:
            self.requests[resource] += 1

    def page(self, resource: str, rows: int) -> None:
        now = time.monotonic()
        with self._lock:
            counts = self._counts.setdefault(resource, [0, 0])
            counts[0] += 1
            counts[1] += rows
            due = now - self._last.get(resource, self.started) >= self.every
            if due:
                self._last[resource] = now
            line = self._line(resource, now) if due else None
        if line and self.report:
            self.report(line)

    def _line(self, resource: str, now: float) -> str:
        pages, rows = self._counts[resource]
        return f"{resource}: {pages} pages, {rows} rows read, {now - self.started:.1f}s"

    def summary(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [self._line(resource, now) for resource in sorted(self._counts)]
