"""Pacing: keep every request of a run, from every worker thread, under the API's rate limit.

The API allows 240 requests per minute per client and blocks a client for 60 s after one
request too many, so a sync must never cross the limit rather than retry after crossing it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from dlt.sources.helpers.requests import Client
from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter

from analytics_dagster.source.permissions import RefusingAdapter

# a little under the limit: client and server clocks see each request at slightly different
# moments, and the API counts whole minutes
_HEADROOM = 0.97


class Pacer:
    """Spaces request starts evenly: at most `per_minute` in any minute, shared by all threads."""

    def __init__(self, per_minute: int) -> None:
        self.interval = 60.0 / (per_minute * _HEADROOM)
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class PacedAdapter(HTTPAdapter, RefusingAdapter):
    """A transport that waits for the pacer (if any) before every attempt, retries included,
    and tells `on_request` of each; the requests of a table the key may not read
    (`permissions.refuse`) it answers itself, unsent."""

    def __init__(self, pacer: Optional[Pacer], on_request: Optional[Callable[[str], None]] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pacer = pacer
        self.on_request = on_request
        self.refused: set[str] = set()

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        refused = self.refusal(request)
        if refused is not None:
            return refused
        if self.pacer is not None:
            self.pacer.wait()
        if self.on_request is not None:
            self.on_request(request.url or "")
        return super().send(request, *args, **kwargs)


def paced_session(requests_per_minute: int, max_connections: int = 50,
                  on_request: Optional[Callable[[str], None]] = None) -> Session:
    """A dlt HTTP session (with the configured retries) paced to `requests_per_minute`.

    One session serves every resource of a run, so one budget covers them all; 0: unpaced.
    `on_request` is told the URL of every attempt (the run's request count).
    """
    session = Client(raise_for_status=False, max_connections=max_connections).session
    pacer = Pacer(requests_per_minute) if requests_per_minute > 0 else None
    adapter = PacedAdapter(pacer, on_request, pool_maxsize=max_connections)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
