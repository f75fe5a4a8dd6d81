"""The sandbox's HTTP face: the API contract (`/v1/...`) and an admin interface (`/_admin/...`).

The API's routes are the registry's (`analytics_dagster.source.resources`, as the world holds
it): a list's pages, or an unpaginated resource's whole document. Its paths are Paddle's
(`/customers`, `/events`, ...) under a prefix: `/v1` by default, as the seed API serves them;
`path_prefix=""` serves them as Paddle itself does, at the root.

Built on Starlette (served by uvicorn): a small, well-kept ASGI toolkit whose async handlers let
added latency overlap across concurrent requests, the way a real remote API behaves.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import math
import random
import re
import time
import uuid
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import metrics
from analytics_dagster.sandbox.world import World
from analytics_dagster.source.resources import ApiResource

DEFAULT_API_KEY = "sandbox_api_key"
DEFAULT_PATH_PREFIX = "/v1"  # the seed API's; Paddle's own API serves the same paths with none
DEFAULT_PER_PAGE = 50
# (every answer's `meta.request_id` is its `Request-Id` header too: Paddle's spec requires one of
# `/transactions`)
# where Paddle's default `per_page` is not DEFAULT_PER_PAGE (its spec's per_page_adjustment_query);
# transactions' 30 is their cap, which any default is cut to
_DEFAULT_PER_PAGE = {"adjustments": 10}
# the latest requests `/_admin/requests` lists: enough for a sync of a test's world, bounded for a
# long-running `make dev`
REQUEST_LOG_SIZE = 10_000
RETRYABLE_FAULTS = (429, 500, 502, 503, 504)
# Paddle's public documentation of the errors every endpoint shares (its `documentation_url`):
# "errors/shared" is Paddle's path on developer.paddle.com, not a folder of this repository or
# of anything beside it
_DOCS = "https://developer.paddle.com/errors/shared/"


@dataclass
class SandboxConfig:
    """How the sandbox behaves, beyond its data. All of it can be changed at run time."""

    api_key: str = DEFAULT_API_KEY
    fault_rate: float = 0.0  # share of authenticated requests answered with a retryable fault
    fault_statuses: tuple[int, ...] = RETRYABLE_FAULTS
    # faults are transient: the same request fails at most this many times in a row
    fault_max_consecutive: int = 2
    fault_retry_after: int = 1  # the Retry-After (seconds) of a fault 429
    latency: float = 0.0  # seconds added to every request
    rate_limit: int = 0  # requests per minute per client; 0: unlimited
    rate_limit_block: float = 60.0  # seconds a client is blocked once past the limit
    # the limit is counted over this many seconds (rate_limit * window / 60 requests per window);
    # the real API counts a minute, tests use a short window to cross the limit quickly
    rate_limit_window: float = 60.0
    # permissions the API key lacks (`report.read`, `notification.read`, ...: the registry's
    # `permission` of each resource, Paddle's `x-permissions`): their operations answer 403
    # `forbidden`, the others as usual
    denied_permissions: tuple[str, ...] = ()
    # `/metrics/*` of these days (`YYYY-MM-DD`) with every amount and count times the factor: a
    # day Paddle revised (set after a sync read it), or one the warehouse disagrees with
    metrics_skew: dict[str, float] = field(default_factory=dict)
    # `/metrics/*` of these days served otherwise (`metrics.edited`): null, no datapoint that day;
    # an object, its fields replace the point's (`amount`, `timestamp`, ...); a list of objects,
    # the day's point served once per object, each edited so (a day served twice)
    metrics_points: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Stats:
    total: int = 0
    by_resource: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # (wall clock, resource) of the latest requests, bounded for a long-running `make dev`
    times: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=1_000_000))
    # the latest requests outside /_admin as they came (method, path, raw query) and the status
    # answered: what a client asked, for a test to hold against the API's spec
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    logged: int = 0  # requests ever logged: more than `requests` holds once it has dropped some

    def log(self, method: str, path: str, query: str, status: int) -> None:
        self.logged += 1
        self.requests.append({"method": method, "path": path, "query": query, "status": status})

    def as_dict(self, during: list[str] | None = None) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "total": self.total,
            "by_resource": dict(self.by_resource),
            "by_status": {str(k): v for k, v in self.by_status.items()},
        }
        if during:
            stats["during"] = self.during(during)
        return stats

    def during(self, resources: list[str]) -> dict[str, Any]:
        """Requests to any resource from the first request to `resources` to the last one, and
        their rate: how much of a rate limit a client used while it fetched those resources."""
        marks = [at for at, resource in self.times if resource in resources]
        if len(marks) < 2:
            return {"resources": resources, "requests": len(marks), "seconds": 0.0, "per_minute": None}
        first, last = min(marks), max(marks)
        requests = sum(1 for at, _ in self.times if first <= at <= last)
        return {"resources": resources, "requests": requests, "seconds": last - first,
                "per_minute": (requests - 1) / (last - first) * 60}  # starts per minute


def _error(status: int, code: str, detail: str, errors: list[dict[str, str]] | None = None) -> Response:
    request_id = str(uuid.uuid4())
    error: dict[str, Any] = {
        "type": "api_error" if status >= 500 else "request_error",
        "code": code,
        "detail": detail,
        "documentation_url": _DOCS + code,
    }
    if errors:
        error["errors"] = errors
    return JSONResponse({"error": error, "meta": {"request_id": request_id}}, status,
                        headers={"Request-Id": request_id})


class _BadRequest(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.response = _error(
            400, "invalid_field", "Invalid request.", [{"field": field_name, "message": message}]
        )


class _RequestLog:
    """ASGI middleware: logs every request outside `/_admin` once answered (`_Stats.log`), those
    to no route of the API too (a 404 or 405 that no endpoint of the API sees)."""

    def __init__(self, app: ASGIApp, sandbox: SandboxApp) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_admin"):
            await self.app(scope, receive, send)
            return
        status = 0  # none sent: the app failed before answering

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            query = scope["query_string"].decode("latin-1")
            self.sandbox.stats.log(scope["method"], scope["path"], query, status)


class SandboxApp:
    """The ASGI application plus the state behind it (world, config, faults, counters)."""

    def __init__(self, world: World, config: SandboxConfig | None = None,
                 path_prefix: str = DEFAULT_PATH_PREFIX) -> None:
        self.world = world
        self.config = config or SandboxConfig()
        if path_prefix and (not path_prefix.startswith("/") or path_prefix.endswith("/")):
            raise ValueError(f"path_prefix must be empty or start, and not end, with '/': {path_prefix!r}")
        self.path_prefix = path_prefix  # fixed for the app's life: its routes are built with it
        self.stats = _Stats()
        self._attempts: dict[str, int] = defaultdict(int)
        self._streak: dict[str, int] = defaultdict(int)
        self._window: dict[str, deque[float]] = defaultdict(deque)
        self._blocked_until: dict[str, float] = {}
        self._injections: list[dict[str, Any]] = []
        # (at request number, a change of the world to make then: advance or mutate, and its args)
        self._deferred: list[tuple[int, Callable[..., Any], dict[str, Any]]] = []
        self._lock = asyncio.Lock()  # the world is mutated by admin calls between requests
        # the registry's resources: a list's pages, or an unpaginated resource's whole document
        routes = [Route(path_prefix + api.path, methods=["GET"], endpoint=self._api_endpoint(
                        api.name, self._series if api.listing == "days" else self._list if api.paginated else self._whole))
                  for api in world.resources.values()]
        routes += [
            Route("/_admin/truth/{resource}", self._admin(self._truth), methods=["GET"]),
            Route("/_admin/counts", self._admin(self._counts), methods=["GET"]),
            Route("/_admin/mrr_history", self._admin(self._mrr_history), methods=["GET"]),
            Route("/_admin/advance", self._admin(self._advance), methods=["POST"]),
            Route("/_admin/mutate", self._admin(self._mutate), methods=["POST"]),
            Route("/_admin/event", self._admin(self._event), methods=["POST"]),
            Route("/_admin/release", self._admin(self._release), methods=["POST"]),
            Route("/_admin/config", self._admin(self._config), methods=["GET", "POST"]),
            Route("/_admin/inject", self._admin(self._inject), methods=["POST"]),
            Route("/_admin/stats", self._admin(self._stats), methods=["GET"]),
            Route("/_admin/stats/reset", self._admin(self._reset_stats), methods=["POST"]),
            Route("/_admin/requests", self._admin(self._requests), methods=["GET"]),
        ]
        self.asgi = Starlette(routes=routes, middleware=[Middleware(_RequestLog, sandbox=self)])
        self.asgi.add_exception_handler(404, self._not_found)

    # ------------------------------------------------------------------ the API's pipeline
    def _api_endpoint(
        self, resource: str, handler: Callable[[Request, str], Response]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            self.stats.total += 1
            self.stats.by_resource[resource] += 1
            self.stats.times.append((time.time(), resource))
            if self.config.latency > 0:
                await asyncio.sleep(self.config.latency)
            response = self._rate_limited(request) or self._unauthorized(request) or self._forbidden(resource)
            response = response or self._fault(request) or self._injected(resource, request.url.path)
            if response is None:
                async with self._lock:
                    self._run_deferred()
                    try:
                        response = handler(request, resource)
                    except _BadRequest as exc:
                        response = exc.response
            self.stats.by_status[response.status_code] += 1
            # the API's clock is the world's (a clock tests move); clients can read it here
            response.headers["Date"] = email.utils.formatdate(self.world.clock_ns / 1e9, usegmt=True)
            return response

        return endpoint

    def _run_deferred(self) -> None:
        due = [(change, args) for at, change, args in self._deferred if self.stats.total >= at]
        self._deferred = [item for item in self._deferred if self.stats.total < item[0]]
        for change, args in due:
            change(**args)

    def _rate_limited(self, request: Request) -> Response | None:
        limit = self.config.rate_limit
        if limit <= 0:
            return None
        client = request.client.host if request.client else "unknown"
        now = time.monotonic()
        blocked_until = self._blocked_until.get(client, 0.0)
        if now >= blocked_until:
            window = self._window[client]
            span = self.config.rate_limit_window
            while window and window[0] <= now - span:
                window.popleft()
            if len(window) < max(1, limit * span / 60.0):
                window.append(now)
                return None
            blocked_until = now + self.config.rate_limit_block
            self._blocked_until[client] = blocked_until
            window.clear()
        response = _error(429, "too_many_requests", "Too many requests. Try again later.")
        response.headers["Retry-After"] = str(max(1, math.ceil(blocked_until - now)))
        return response

    def _unauthorized(self, request: Request) -> Response | None:
        header = request.headers.get("authorization")
        if not header:
            return _error(403, "authentication_missing", "Authentication header missing.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(403, "authentication_malformed", "Authentication header malformed.")
        if token != self.config.api_key:
            return _error(403, "invalid_token", "Authentication token is invalid.")
        return None

    def _forbidden(self, resource: str) -> Response | None:
        """A valid key without the permission the operation needs: 403 `forbidden`."""
        if self.world.resources[resource].permission in self.config.denied_permissions:
            return _error(403, "forbidden", "You aren't permitted to perform this request.")
        return None

    def _fault(self, request: Request) -> Response | None:
        """A retryable failure, decided by (seed, request, attempt): reproducible under concurrency."""
        if self.config.fault_rate <= 0:
            return None
        key = f"{request.url.path}?{'&'.join(sorted(request.url.query.split('&')))}"
        attempt = self._attempts[key]
        self._attempts[key] += 1
        rng = random.Random(f"{self.world.seed}|{key}|{attempt}")
        if rng.random() >= self.config.fault_rate or self._streak[key] >= self.config.fault_max_consecutive:
            self._streak[key] = 0
            return None
        self._streak[key] += 1
        return self._failure(rng.choice(self.config.fault_statuses))

    def _failure(self, status: int) -> Response:
        if status == 429:
            response = _error(429, "too_many_requests", "Too many requests. Try again later.")
            response.headers["Retry-After"] = str(self.config.fault_retry_after)
            return response
        if status == 502:  # real gateways answer with a page, not JSON
            html = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            return Response(html, 502, media_type="text/html")
        if status == 504:  # and sometimes with nothing at all
            return Response(b"", 504)
        codes = {500: "internal_error", 503: "service_unavailable"}
        return _error(status, codes.get(status, "internal_error"), "Something went wrong.")

    def _injected(self, resource: str, path: str) -> Response | None:
        injection = self._take_injection(resource, status=True, path=path)
        return self._failure(int(injection["status"])) if injection else None

    def _take_injection(self, resource: str, *, status: bool, path: str = "") -> dict[str, Any] | None:
        """Use up one pending injection for `resource`: a status answer, or a bad page.

        A status injection sticks to the path that takes it first: with `count` above the
        retries, that one request keeps failing (other customers' children go on).
        """
        for injection in self._injections:
            if (injection["resource"] == resource and injection["remaining"] > 0
                    and self.stats.total >= injection["from_request"]
                    and (injection["kind"] == "status") == status
                    and injection.setdefault("path", path) == path):
                injection["remaining"] -= 1
                return injection
        return None

    # ------------------------------------------------------------------ the API's handlers
    def _list(self, request: Request, resource: str) -> Response:
        api = self.world.resources[resource]
        query = request.query_params
        default = _DEFAULT_PER_PAGE.get(resource, DEFAULT_PER_PAGE)
        per_page = _int_param(query.get("per_page"), "per_page", default)
        per_page = min(per_page, api.max_page_size)
        order_field, ascending = _order(query.get("order_by"), api)
        stream = api.listing == "event_stream"
        where = {name: frozenset(v.strip() for v in query[name].split(",") if v.strip())
                 for name in (*api.filters, *([] if stream else ["status"])) if query.get(name)}
        # what a listing that does not ask leaves out: archived entities, non-catalog ones
        hiding = {f.name: f.asked(query.get(f.name)) for f in api.list_filters}
        where.update(hiding)
        customer_id = request.path_params.get("cus_id")
        if api.parent and customer_id not in self.world.entities[api.parent]:
            return _error(404, "entity_not_found", f"Entity {customer_id} not found")
        bounds = _updated_bounds(query) if api.listing == "server_updated_at" else None
        keys, has_more = self.world.page(
            resource,
            per_page=per_page,
            after=query.get("after"),
            ascending=ascending,
            customer_id=customer_id,
            updated_bounds=bounds,
            order_by_updated=order_field == "updated_at",
            where=where,
        )
        last = keys[-1] if keys else query.get("after")
        next_url = str(request.url.include_query_params(after=last)) if last else str(request.url)
        pagination: dict[str, Any] = {"per_page": per_page, "next": next_url, "has_more": has_more}
        total = self.world.count(resource, hiding)
        if bounds is not None or set(where) - set(hiding):
            pagination["estimated_total"] = -1
        elif not stream:  # events never say; others cap what they say
            pagination["estimated_total"] = min(total, 100001)
        return self._page_response(resource, keys, pagination)

    def _page_response(self, resource: str, keys: list[str], pagination: dict[str, Any]) -> Response:
        injection = self._take_injection(resource, status=False)
        injected = injection["kind"] if injection else None
        blobs = [self.world.blob(resource, key) for key in keys]
        if injected == "missing_pk" and keys:
            entity = dict(self.world.entities[resource][keys[0]])
            entity.pop(self.world.resources[resource].primary_key, None)
            blobs[0] = json.dumps(entity).encode()
        if injected == "no_has_more":
            pagination = {k: v for k, v in pagination.items() if k != "has_more"}
        request_id = str(uuid.uuid4())
        meta = json.dumps({"request_id": request_id, "pagination": pagination}).encode()
        if injected == "no_data":
            body = b'{"meta":' + meta + b"}"
        else:
            body = b'{"data":[' + b",".join(blobs) + b'],"meta":' + meta + b"}"
        if injected == "malformed_json":
            body = body[: len(body) // 2]
        return Response(body, 200, media_type="application/json", headers={"Request-Id": request_id})

    def _whole(self, request: Request, resource: str) -> Response:
        """An unpaginated resource: its whole document (`/v1/ips` an object, `/v1/event-types` a
        list), with an `Etag` of its version (Paddle's spec requires one of `/ips`)."""
        data = self.world.documents[resource]
        version = hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()
        request_id = str(uuid.uuid4())
        return JSONResponse({"data": data, "meta": {"request_id": request_id}},
                            headers={"Request-Id": request_id, "Etag": f'W/"{version}"'})

    def _series(self, request: Request, resource: str) -> Response:
        """A metric (`/metrics/*`, `sandbox.metrics`): the days `from` (inclusive) to `to`
        (exclusive), both required RFC 3339 dates; a bad or missing one is a 400."""
        request_id = str(uuid.uuid4())
        data = self._series_data(resource, request.query_params.get("from"), request.query_params.get("to"))
        return JSONResponse({"data": data, "meta": {"request_id": request_id}}, headers={"Request-Id": request_id})

    def _series_data(self, resource: str, start: str | None, end: str | None) -> dict[str, Any]:
        bounds = []
        for name, value in (("from", start), ("to", end)):
            try:
                bounds.append(metrics.parse_day(value))
            except ValueError as exc:
                raise _BadRequest(name, f"{name} {exc}") from None
        if bounds[1] < bounds[0]:
            raise _BadRequest("to", f"to ({bounds[1]}) must not be before from ({bounds[0]})")
        operation = self.world.resources[resource].path.rsplit("/", 1)[-1]
        return metrics.response_data(self.world, operation, bounds[0], bounds[1], self.config.metrics_skew,
                                     self.config.metrics_points)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", f"Path {request.url.path} not found.")

    # ------------------------------------------------------------------ /_admin
    def _admin(
        self, handler: Callable[[Request, dict[str, Any]], Any]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            host = request.client.host if request.client else ""
            if not (host.startswith("127.") or host == "::1"):
                return _error(403, "forbidden", "The admin interface answers loopback only.")
            body: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.body()
                body = json.loads(raw) if raw.strip() else {}
            async with self._lock:
                try:
                    result = handler(request, body)
                except (KeyError, TypeError, ValueError) as exc:
                    return _error(400, "bad_request", f"{type(exc).__name__}: {exc}")
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def _truth(self, request: Request, body: dict[str, Any]) -> Any:
        resource = request.path_params["resource"]
        if resource not in self.world.resources:
            return _error(404, "not_found", f"No resource {resource}")
        # a metric: the rows a sync keeps of `?from=&to=` (none: of a first sync's days)
        if self.world.resources[resource].listing == "days" and request.query_params:
            try:
                data = self._series_data(resource, request.query_params.get("from"), request.query_params.get("to"))
            except _BadRequest as exc:
                return exc.response
            return metrics.rows(data)
        return self.world.truth(resource)

    def _counts(self, request: Request, body: dict[str, Any]) -> Any:
        return self.world.counts()

    def _mrr_history(self, request: Request, body: dict[str, Any]) -> Any:
        """The MRR of every day by currency, from the world's whole history (a world with
        lifecycles only: any other answers 409, saying so)."""
        if not self.world.lifecycles:
            return _error(409, "conflict", "mrr_history: this world was made without lifecycles "
                                           "(World(lifecycles=True), analytics-sandbox --lifecycles)")
        return self.world.mrr_history()

    def _advance(self, request: Request, body: dict[str, Any]) -> Any:
        """Advance the world now, or (with `after_requests`: N) once N more API requests came in,
        so that a test can change the world while a sync is paging."""
        return self._now_or_later(self.world.advance, body)

    def _mutate(self, request: Request, body: dict[str, Any]) -> Any:
        """Set fields of one entity (a new field, a changed type, a huge value), as the API might;
        with `after_requests`: N, once N more API requests came in."""
        args = {"resource": body.pop("resource"), "key": body.pop("key"), "values": body.pop("set", {}),
                "updated_at": body.pop("updated_at", None), "hold_event": bool(body.pop("hold_event", False)),
                "bill": body.pop("bill", None)}
        return self._now_or_later(self.world.mutate, {**body, **args})

    def _now_or_later(self, change: Callable[..., Any], body: dict[str, Any]) -> Any:
        after = body.pop("after_requests", None)
        if after is not None:
            self._deferred.append((self.stats.total + int(after), change, body))
            return {"deferred_until_request": self.stats.total + int(after)}
        return change(**body)

    def _event(self, request: Request, body: dict[str, Any]) -> Any:
        """Append one event with any `data` (`{"event_type": ..., "data": ...}`), as a faulty or
        newer API might send it: an unknown type, a `data` without `id`; `drop` lists fields it
        lacks (`["data"]`), `event_id` what its id says instead (`12345`)."""
        return self.world.add_event(body["event_type"], body.get("data"), drop=body.get("drop", ()),
                                    event_id=body.get("event_id"))

    def _release(self, request: Request, body: dict[str, Any]) -> Any:
        """Make held events visible: `{"event_ids": [...]}`, or all of them; with `after_requests`:
        N, once N more API requests came in (to release them while a sync reads)."""
        result = self._now_or_later(self.world.release_events, {"event_ids": body.get("event_ids"), **{
            k: v for k, v in body.items() if k == "after_requests"}})
        return result if "deferred_until_request" in result else {"released": result}

    def _config(self, request: Request, body: dict[str, Any]) -> Any:
        for name, value in body.items():
            if not hasattr(self.config, name):
                raise KeyError(f"unknown setting {name}")
            setattr(self.config, name, tuple(value) if isinstance(value, list) else value)
        if any(name.startswith("rate_limit") for name in body):
            # a new limit counts from now: requests and blocks under the last one are forgotten
            # (a test's unpaced control run filled the window its paced run then started in)
            self._window.clear()
            self._blocked_until.clear()
        public = asdict(self.config)
        public.pop("api_key")
        return public

    def _inject(self, request: Request, body: dict[str, Any]) -> Any:
        """Make the next `count` pages of `resource` bad: `kind` is malformed_json, no_data,
        no_has_more, missing_pk, or status (with `status`: an HTTP status to answer); with
        `after_requests`: N, only once N more API requests came in (to fail a sync part-way)."""
        kinds = {"malformed_json", "no_data", "no_has_more", "missing_pk", "status"}
        if body.get("kind") not in kinds:
            raise ValueError(f"kind must be one of {sorted(kinds)}")
        self._injections.append(
            {"resource": body["resource"], "kind": body["kind"], "status": body.get("status", 500),
             "remaining": int(body.get("count", 1)),
             "from_request": self.stats.total + int(body.get("after_requests", 0))}
        )
        return {"injections": self._injections}

    def _stats(self, request: Request, body: dict[str, Any]) -> Any:
        during = request.query_params.get("during")
        return self.stats.as_dict(during=during.split(",") if during else None)

    def _reset_stats(self, request: Request, body: dict[str, Any]) -> Any:
        self.stats = _Stats()
        return self.stats.as_dict()

    def _requests(self, request: Request, body: dict[str, Any]) -> Any:
        """The latest requests outside `/_admin` (`REQUEST_LOG_SIZE` at most), oldest first, and
        how many were logged since the last reset: more than listed if some were dropped."""
        return {"logged": self.stats.logged, "requests": list(self.stats.requests)}


# ---------------------------------------------------------------------- query parsing
def _int_param(value: str | None, name: str, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise _BadRequest(name, f"{name} must be an integer") from None
    if number < 1:
        raise _BadRequest(name, f"{name} must be at least 1")
    return number


_ORDER_BY = re.compile(r"^([a-z_]+)\[(asc|desc)\]$", re.IGNORECASE)


def _order(value: str | None, api: ApiResource) -> tuple[str, bool]:
    """The field to order by and whether ascending; by default `id[DESC]`.

    The fields are the registry's `order_fields` (`id` everywhere, products also `updated_at`);
    the direction in either case, as the real API takes it (Paddle's own SDK sends `id[asc]`).
    """
    if value is None:
        return "id", False
    match = _ORDER_BY.match(value)
    fields = api.order_fields
    if not match or match.group(1).lower() not in fields:
        allowed = " or ".join(f"{f}[ASC|DESC]" for f in fields)
        raise _BadRequest("order_by", f"order_by must be {allowed} for {api.name}")
    return match.group(1).lower(), match.group(2).lower() == "asc"


def _updated_bounds(query: Any) -> tuple[int | None, bool, int | None, bool] | None:
    """The `updated_at` bounds a query asks: `updated_at=<instant>` (updated at that very
    instant), or any of `updated_at[GT|GTE|LT|LTE]=<instant>`."""
    lower: int | None = None
    upper: int | None = None
    lower_incl = upper_incl = False
    for op in ("", "GT", "GTE", "LT", "LTE"):
        name = f"updated_at[{op}]" if op else "updated_at"
        raw = query.get(name)
        if raw is None:
            continue
        try:
            ns = parse_ns(raw)
        except ValueError:
            raise _BadRequest(name, "must be an RFC 3339 datetime") from None
        if not op:
            lower, lower_incl, upper, upper_incl = ns, True, ns, True
        elif op.startswith("G"):
            lower, lower_incl = ns, op == "GTE"
        else:
            upper, upper_incl = ns, op == "LTE"
    if lower is None and upper is None:
        return None
    return lower, lower_incl, upper, upper_incl
