"""Pacing: keep every request of a run, from every worker thread, under the API's rate limit.

The API allows 240 requests per minute per client and blocks a client for 60 s after one
request too many, so a sync must never cross the limit rather than retry after crossing it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from dlt.sources.helpers.requests import Client
from requests import PreparedRequest, Response, Session
from requests.adapters import HTTPAdapter

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


class PacedAdapter(HTTPAdapter):
    """A transport that waits for the pacer before every attempt (retries included)."""

    def __init__(self, pacer: Pacer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pacer = pacer

    def send(self, request: PreparedRequest, *args: Any, **kwargs: Any) -> Response:
        self.pacer.wait()
        return super().send(request, *args, **kwargs)


def paced_session(requests_per_minute: int, max_connections: int = 50) -> Session:
    """A dlt HTTP session (with the configured retries) paced to `requests_per_minute`.

    One session serves every resource of a run, so one budget covers them all; 0: unpaced.
    """
    session = Client(raise_for_status=False, max_connections=max_connections).session
    if requests_per_minute > 0:
        adapter = PacedAdapter(Pacer(requests_per_minute), pool_maxsize=max_connections)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    return session
