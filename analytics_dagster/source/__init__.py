"""The analytics API as a dlt source: its settings, a run's plan, and the resources laid out by it.

A load is built in three steps (the engine, `source.sync`, takes them for every load):
`source_settings()` reads the settings, `plan_run` plans from the committed state (the run's
first request), and `analytics_source(settings, plan, session)` lays out the resources.

Settings are read the dlt way from section `sources.analytics` (`.dlt/config.toml`,
`.dlt/secrets.toml` or env vars such as `SOURCES__ANALYTICS__BASE_URL` and
`SOURCES__ANALYTICS__API_KEY`), and only when `source_settings()` is called, never at import.
Where the API is (`environment`, `base_url`, `path_prefix`) is resolved by `configured_api_root`,
for a run and for the events sensor alike.

How a run is laid out depends on its plan (`analytics_dagster.source.plan`): a table kept by
events is a transformer of the one read of the event stream; a table listed in this run is a
`rest_api` listing, incremental as `analytics_dagster.source.incremental` says.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import dlt
import dlt.sources.rest_api as rest_api_module
from dlt.common.configuration import known_sections, resolve_configuration, with_config
from dlt.common.configuration.specs import RuntimeConfiguration
from dlt.common.jsonpath import compile_path
from dlt.extract.resource import DltResource
from dlt.extract.utils import wrap_parallel_iterator
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.rest_api import rest_api_resources
from requests import Session

from analytics_dagster.source.events import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_MARGIN_DAYS,
    DEFAULT_VISIBILITY_LAG_SECONDS,
    EVENTS_PAGE_SIZE,
    api_now_ns,
    event_client,
)
from analytics_dagster.source.backfill import listing_start, record_page
from analytics_dagster.source.days import day_rows, plan_days
from analytics_dagster.source.feed import events_from_feed, feed_items, table_from_events
from analytics_dagster.source.plan import SyncPlan, plan_sync
from analytics_dagster.source.incremental import DEFAULT_LOOKBACK_SECONDS, change_filter, start_params
from analytics_dagster.source.pacing import paced_session
from analytics_dagster.source.paginator import HasMorePaginator, json_once
from analytics_dagster.source.permissions import skip_when_forbidden
from analytics_dagster.source.pipeline import SOURCE_NAME
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES, RESOURCES_BY_NAME, ApiResource, api_root

__all__ = [
    "SourceSettings",
    "described_source",
    "paced_session",
    "plan_run",
    "source_settings",
    "CUSTOMER_LISTING",
    "EVENT_FEED",
    "RESOURCES",
    "RESOURCES_BY_NAME",
    "ApiResource",
    "Progress",
    "SyncPlan",
    "analytics_source",
    "configured_api_root",
]

DEFAULT_REQUESTS_PER_MINUTE = 240  # the API's rate limit per IP address (docs/api.md)
# A backfill (and a read of the event stream) commits after this much extraction: paced at 240
# requests a minute, a chunk is about 240 requests, the most a killed or failed backfill loses
# (customers: at least a page, 200 customers' children); unpaced, a small or mid-sized account
# is one load (each load costs about 0.8 s whatever its size)
DEFAULT_BACKFILL_CHUNK_SECONDS = 60.0
# ... or after this many rows of a list (customers, with their children), or events, whichever
# comes first: with DuckDB's memory limit (`pipeline.DEFAULT_DUCKDB_MEMORY_LIMIT`) it only bounds the
# rows a load holds when requests are fast (measured against time: docs/benchmark.md, "Chunks by time")
DEFAULT_BACKFILL_CHUNK_ROWS = 20000
# Paddle's metrics (`/metrics/*`, `listing` "days"): the days a first run reads, and how many
# days before the last one loaded every later run reads again (Paddle may revise recent days)
DEFAULT_METRICS_HISTORY_DAYS = 365
DEFAULT_METRICS_REREAD_DAYS = 7
# The customers listing feeds both the `customers` table and the two child resources. It is a
# resource of its own, never loaded, so whatever `customers` filters (incremental sync) does not
# hide customers from the children, and a child-only run never moves `customers`' state.
CUSTOMER_LISTING = "customer_listing"
# The run's one read of the event stream, never loaded: the `events` table and every table kept
# by events are transformers of it.
EVENT_FEED = "event_feed"


def configured_api_root(base_url: Optional[str] = None) -> str:
    """The API's root URL from the settings, read now: `sources.analytics.environment` (`live`,
    `sandbox`: Paddle's own API, paths with no prefix; unset: the seed API, paths under `/v1`),
    `sources.analytics.base_url` (`base_url` given wins) and `sources.analytics.path_prefix`,
    each of which wins over what the environment implies (see `resources.api_root`).

    Read by their full keys only: a source argument would also take a bare `ENVIRONMENT`
    variable, which many deployments set for a purpose of their own.
    """

    def setting(name: str) -> Optional[str]:
        value = dlt.config.get(f"sources.{SOURCE_NAME}.{name}", str)
        return None if value is None else str(value)

    return api_root(environment=setting("environment"), base_url=base_url or setting("base_url"),
                    path_prefix=setting("path_prefix"))


@dataclass(frozen=True)
class SourceSettings:
    """The source's settings, resolved from `sources.analytics` when a run starts (`source_settings`).

    Attributes:
        api_root: the URL every resource's path goes after (`configured_api_root`).
        api_key: the Bearer token.
        page_sizes: `per_page` by resource (each resource's own unless a setting says otherwise).
        parallel_children: fetch the per-customer child resources concurrently.
        lookback_seconds: how far behind the newest `updated_at` seen a listing looks again
            (see `analytics_dagster.source.incremental`).
        requests_per_minute: the request budget of a run, shared by every resource and worker
            (the API's limit is 240); 0: unpaced.
        incremental: `events`: a table listed once is then kept by the event stream;
            `listing`: every run lists every table (see `analytics_dagster.source.plan`).
        event_retention_days: how long the API keeps events (90).
        event_retention_margin_days: a table whose event cursor is older than the retention
            minus this margin is listed again.
        event_visibility_lag_seconds: how late an event may become visible after events with
            later ids were listed: each read of the stream starts this far behind the last
            one, and applies what it had not seen (see `analytics_dagster.source.feed`).
        backfill_chunk_rows: a listing (in events mode, a backfill) commits after this many
            rows (the customers listing: after this many customers and their children), and
            the next run, or the next chunk of this one, resumes after it. The read of the
            event stream commits after this many events likewise. 0: no row limit.
        backfill_chunk_seconds: ... or after this many seconds of the chunk's extraction,
            whichever comes first (at the next page). 0: no time limit.
        metrics_history_days: the days of Paddle's metrics (`/metrics/*`) a first run reads,
            today included (one request per metric).
        metrics_reread_days: a later run reads the metrics from the last day loaded less
            this many days (Paddle may revise recent days) to today.
    """

    api_root: str
    api_key: str
    page_sizes: dict[str, int] = field(default_factory=lambda: {r.name: r.page_size for r in RESOURCES})
    parallel_children: bool = True
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE
    incremental: str = "events"
    event_retention_days: int = DEFAULT_RETENTION_DAYS
    event_retention_margin_days: int = DEFAULT_RETENTION_MARGIN_DAYS
    event_visibility_lag_seconds: int = DEFAULT_VISIBILITY_LAG_SECONDS
    backfill_chunk_rows: int = DEFAULT_BACKFILL_CHUNK_ROWS
    backfill_chunk_seconds: float = DEFAULT_BACKFILL_CHUNK_SECONDS
    metrics_history_days: int = DEFAULT_METRICS_HISTORY_DAYS
    metrics_reread_days: int = DEFAULT_METRICS_REREAD_DAYS


@with_config(sections=(known_sections.SOURCES, SOURCE_NAME))
def source_settings(
    base_url: Optional[str] = None,
    api_key: str = dlt.secrets.value,
    page_size: Optional[int] = None,
    page_sizes: Optional[dict[str, int]] = None,
    parallel_children: bool = True,
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS,
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    incremental: str = "events",
    event_retention_days: int = DEFAULT_RETENTION_DAYS,
    event_retention_margin_days: int = DEFAULT_RETENTION_MARGIN_DAYS,
    event_visibility_lag_seconds: int = DEFAULT_VISIBILITY_LAG_SECONDS,
    backfill_chunk_rows: int = DEFAULT_BACKFILL_CHUNK_ROWS,
    backfill_chunk_seconds: float = DEFAULT_BACKFILL_CHUNK_SECONDS,
    metrics_history_days: int = DEFAULT_METRICS_HISTORY_DAYS,
    metrics_reread_days: int = DEFAULT_METRICS_REREAD_DAYS,
) -> SourceSettings:
    """The settings, read the dlt way now (never at import); an argument given wins over them.

    `base_url`: the API's base URL (default: the environment's, else the local sandbox's);
    `page_size`: `per_page` for every paginated resource, instead of each one's own;
    `page_sizes`: by resource name, over `page_size` (e.g. `{"customers": 20}`). The others are
    `SourceSettings`'.
    """
    unknown = set(page_sizes or {}) - set(RESOURCES_BY_NAME)
    if unknown:
        raise ValueError(f"sources.analytics.page_sizes names no resource: {sorted(unknown)}")
    if metrics_history_days < 1 or metrics_reread_days < 0:
        raise ValueError(f"sources.analytics.metrics_history_days must be 1 or more and metrics_reread_days 0 or "
                         f"more, not {metrics_history_days} and {metrics_reread_days}")
    return SourceSettings(
        api_root=configured_api_root(base_url), api_key=api_key,
        page_sizes={r.name: (page_sizes or {}).get(r.name, page_size) or r.page_size for r in RESOURCES},
        parallel_children=parallel_children, lookback_seconds=lookback_seconds,
        requests_per_minute=requests_per_minute, incremental=incremental,
        event_retention_days=event_retention_days, event_retention_margin_days=event_retention_margin_days,
        event_visibility_lag_seconds=event_visibility_lag_seconds, backfill_chunk_rows=backfill_chunk_rows,
        backfill_chunk_seconds=backfill_chunk_seconds, metrics_history_days=metrics_history_days,
        metrics_reread_days=metrics_reread_days,
    )


def plan_run(settings: SourceSettings, session: Session, run_state: dict[str, Any], tables: Sequence[str], *,
             full_refresh: bool = False, progress: Optional[Progress] = None) -> SyncPlan:
    """Plan a run of `tables` from the state the last load committed (`run_state`): how each
    is synced, where its listing or its read of the stream starts. Makes the run's first
    request (to the event stream, when one of `tables` takes events)."""
    plan = plan_sync(
        event_client(settings.api_root, settings.api_key, session, progress), run_state, tables,
        incremental=settings.incremental, full_refresh=full_refresh, retention_days=settings.event_retention_days,
        retention_margin_days=settings.event_retention_margin_days,
        visibility_lag_seconds=settings.event_visibility_lag_seconds,
        page_size=min(settings.page_sizes["events"], EVENTS_PAGE_SIZE),
        chunk_rows=settings.backfill_chunk_rows, chunk_seconds=settings.backfill_chunk_seconds,
    )
    if settings.requests_per_minute > 0 and settings.backfill_chunk_seconds > 0:  # paced: the chunk's time in requests
        plan.chunk_requests = max(1, int(settings.requests_per_minute * settings.backfill_chunk_seconds / 60))
    plan_days(plan, settings, run_state, [t for t in tables if RESOURCES_BY_NAME[t].listing == "days"],
              full_refresh=full_refresh)
    if progress is not None:
        for table, backfill in plan.backfills.items():  # by earlier runs (this run's rows it counts)
            progress.committed.setdefault(table, backfill["rows"])
    return plan


def described_source() -> Any:
    """The source only described, for the asset definitions: its resources' names and hints.
    It reads no setting and makes no request (every table with events laid out as a listing);
    it cannot run."""
    settings = SourceSettings(api_root=api_root(base_url="http://configured.at.run.time"), api_key="unset")
    return analytics_source(settings, SyncPlan(incremental="events", feeds={"events": None}), Session())


@dlt.source(name=SOURCE_NAME, section=SOURCE_NAME, max_table_nesting=0)
def analytics_source(
    settings: SourceSettings,
    plan: SyncPlan,
    session: Session,
    full_refresh: bool = False,
    progress: Optional[Progress] = None,
) -> list[DltResource]:
    """Every resource of the analytics API, laid out as `plan` says: a table kept by events is
    a transformer of the one read of the event stream, a listed table a `rest_api` listing.

    Args:
        settings: `source_settings()`. plan: `plan_run`'s (build a new source, and plan, for
        every load: resources, paginators and the plan are stateful; dagster-dlt mutates a
        source's schema in place, dagster-io/dagster#34052). session: every request's (paced:
        `pacing.paced_session`). full_refresh: forget the incremental state: list everything,
        write everything. progress: where requests, pages and rows are counted.
    """
    fed = set(plan.feeds) | {"events"}  # the events table always is: it is the stream itself
    listed = [r for r in RESOURCES if r.name not in fed]
    config: dict[str, Any] = {
        "client": {"base_url": settings.api_root, "auth": BearerTokenAuth(token=settings.api_key), "session": session},
        "resource_defaults": {"write_disposition": "merge"},
        "resources": [
            _endpoint_config(resource, settings, full_refresh, progress, plan, session)
            for resource in [RESOURCES_BY_NAME["customers"]] + [r for r in listed if r.name != "customers"]
        ],
    }
    resources = {r.name: r for r in _listings(config)}
    if settings.parallel_children:
        for resource in resources.values():
            if not resource.is_transformer:
                _in_worker_threads(resource)
    listing = resources.pop(CUSTOMER_LISTING)
    feed = dlt.resource(_feed(plan), name=EVENT_FEED, selected=False, parallelized=settings.parallel_children)
    for api in RESOURCES:
        resources[api.name] = _table_resource(api, resources, plan, settings, full_refresh, listing, feed)
        if progress is not None:
            resources[api.name].add_map(progress.row)
    return [listing, feed] + [resources[r.name] for r in RESOURCES]


# the runtime configuration the REST clients of one `_listings` call share (None: outside one)
_RUNTIME: ContextVar[Optional[RuntimeConfiguration]] = ContextVar("analytics_runtime", default=None)


class _RESTClientOfListings(RESTClient):
    """dlt's REST client, taking the runtime configuration `_listings` resolved when none is given."""

    def __init__(self, *args: Any, config: Optional[RuntimeConfiguration] = None, **kwargs: Any) -> None:
        super().__init__(*args, config=config or _RUNTIME.get(), **kwargs)


# (`rest_api_resources` makes its clients by this name; outside `_listings` the class is dlt's,
# resolving its configuration as before)
rest_api_module.RESTClient = _RESTClientOfListings


def _listings(config: dict[str, Any]) -> list[DltResource]:
    """`rest_api_resources(config)`, its REST clients sharing one runtime configuration.

    dlt's `RESTClient` resolves a `RuntimeConfiguration` from dlt's settings when it is made (it
    reads two of its fields, how an error's body is shown), and `rest_api` makes one per resource
    and gives it none: 19 resolutions each time a source is built (for every load), about half of
    the build's CPU (50 of 110 ms, measured), 4.5% of the test suite's in a profile of the whole
    suite. Resolved once here, for the clients of this build: the settings are read as before,
    at each build. (A context variable: builds in other threads resolve their own.)"""
    token = _RUNTIME.set(resolve_configuration(RuntimeConfiguration()))
    try:
        return list(rest_api_resources(config))
    finally:
        _RUNTIME.reset(token)


def _feed(plan: SyncPlan) -> Any:
    def event_feed() -> Iterator[Any]:
        yield from feed_items(plan)

    return event_feed


def _table_resource(api: ApiResource, resources: dict[str, DltResource], plan: SyncPlan, settings: SourceSettings,
                    full_refresh: bool, listing: DltResource, feed: DltResource) -> DltResource:
    """The resource that loads `api`'s table: a transformer of the feed (a table kept by
    events), of the customers listing (`customers`), or its own listing, filtered to what
    changed in `listing` mode (a backfill of events mode writes every row)."""
    fed = api.name in plan.feeds or api.name == "events"
    if fed:
        step = events_from_feed(plan) if api.name == "events" else table_from_events(api, plan)
        return _table(step, api, feed)
    resource = _table(_pass_pages, api, listing) if api.name == "customers" else resources[api.name]
    if api.listing == "days":  # a response is one series: a row per day, merged on it
        return resource.add_yield_map(day_rows(api.name, plan.days.get(api.name)))
    step = change_filter(api, full_refresh=full_refresh, lookback_seconds=settings.lookback_seconds,
                         since=plan.since_ns(api.name), began=lambda: plan.api_now_ns)
    # (a backfill of events mode writes every row, but for a table filtered on content: it is
    # listed every run, and its filter's marks are what the next run compares with)
    if step is not None and (api.unnotified or not plan.backfills.get(api.name, {}).get("position")):
        resource.add_filter(step)
    return resource


def _in_worker_threads(resource: DltResource) -> None:
    """Pages `resource` in dlt's worker threads, one page at a time, so that while one of its
    requests waits out a retry's backoff, the other resources and the children go on using the
    request budget (on the extract's main thread, that wait stalled every resource).

    `"parallelized": True` does this for a `rest_api` child, but dlt (1.31) drops it for a
    top-level resource: the incremental wrapper dlt puts around `paginate_resource` wraps the
    function before it was parallelized.
    """
    bound = resource._pipe.gen  # the listing, bound to its arguments: called, it returns its pages

    def pages() -> Iterator[Any]:
        return wrap_parallel_iterator(bound())

    resource._pipe.replace_gen(pages)


def _table(step: Any, api: ApiResource, parent: DltResource) -> DltResource:
    return dlt.transformer(
        step, name=api.name, data_from=parent, primary_key=api.primary_key, columns=api.columns,
        write_disposition="merge",
    )


def _pass_pages(page: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    yield page


def _endpoint_config(
    resource: ApiResource,
    settings: SourceSettings,
    full_refresh: bool,
    progress: Optional[Progress],
    plan: SyncPlan,
    session: Session,
) -> dict[str, Any]:
    """The `rest_api` configuration of `resource`'s listing. A `forbidden` answer (the key
    lacks the permission) skips the table for the run (`permissions`)."""
    page_size, parallel, lookback_seconds = (settings.page_sizes[resource.name], settings.parallel_children,
                                             settings.lookback_seconds)
    params: dict[str, Any] = {}
    endpoint: dict[str, Any] = {
        "path": resource.path,
        # compiled once: given as a string, dlt's client parses the JSONPath again for every page
        "data_selector": compile_path(resource.data_selector),
        "params": params,
        "response_actions": [
            skip_when_forbidden(plan.skip, resource.name, session,
                                loads=[t for t in _served(resource) if t not in plan.feeds]),
            json_once(resource.name),
        ],
    }
    if resource.listing == "days":  # the plan's dates (`days.plan_days`)
        params.update(plan.days.get(resource.name, {}))  # (none: the source only described, or not selected)
    if resource.paginated:
        # in id order, so that a backfill can resume after the last id it committed
        params.update(per_page=page_size, order_by="id[ASC]")
        endpoint["paginator"] = HasMorePaginator(
            resource.name, _listing_start(plan, resource, full_refresh, lookback_seconds), progress,
            on_page=None if resource.parent else _listing_page(plan, resource), clock=_clock(plan),
            parts=resource.parts,  # every value of each filter whose default hides entities
        )
    else:
        endpoint["paginator"] = "single_page"
    config: dict[str, Any] = {
        "name": resource.name,
        "primary_key": resource.primary_key,
        "columns": resource.columns,
        "endpoint": endpoint,
    }
    if resource.name == "customers":
        config.update(name=CUSTOMER_LISTING, selected=False, primary_key=None, columns=None)
    if resource.parent:
        params["cus_id"] = {"type": "resolve", "resource": CUSTOMER_LISTING, "field": "id"}
        config["parallelized"] = parallel
    if resource.name == "ip_addresses":
        config["processing_steps"] = [{"map": _cidr_row}]
    if resource.listing == "replace":  # read whole: what left the API leaves the table
        config["write_disposition"] = "replace"
    return config


def _served(resource: ApiResource) -> list[str]:
    """The tables a listing serves: the customers listing serves its children too."""
    return [r.name for r in RESOURCES if r.name == resource.name or r.parent == resource.name]


def _listing_start(plan: SyncPlan, resource: ApiResource, full_refresh: bool, lookback_seconds: int) -> Any:
    """The query parameters of a listing's first request: where its backfill resumes, or the
    incremental window of a `listing`-mode run."""
    since = start_params(resource, full_refresh=full_refresh, lookback_seconds=lookback_seconds,
                         since=plan.since_ns(resource.name))

    def start() -> tuple[int, dict[str, str]]:
        plan.start_clock()  # the chunk's extraction begins (if nothing began it before)
        window = since() if since and plan.incremental == "listing" else {}
        if resource.parent:  # a child's listing is whole: its customer's
            return 0, window
        part, after = listing_start(plan, _served(resource))
        return part, {**window, **after}

    return start


def _listing_page(plan: SyncPlan, resource: ApiResource) -> Any:
    def on_page(data: list[Any], has_more: bool, part: int) -> bool:
        return record_page(plan, _served(resource), data, resource.primary_key, has_more, part)

    return on_page


def _clock(plan: SyncPlan) -> Any:
    """Keeps the API's clock of a run that made no request to plan (no event stream selected)
    from its first listing's response: where the next listing's change window starts. A plain
    function, not a bound method: dlt deep-copies a child's paginator, and must not copy the plan."""

    def clock(response: Any) -> None:
        if plan.api_now_ns is None:
            plan.api_now_ns = api_now_ns(response)

    return clock


def _cidr_row(cidr: str) -> dict[str, str]:
    return {"ipv4_cidr": cidr}
