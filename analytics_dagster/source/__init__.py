"""The analytics API as a dlt `rest_api` source: pure dlt, no Dagster.

Settings are read the dlt way from section `sources.analytics` (`.dlt/config.toml`,
`.dlt/secrets.toml` or env vars such as `SOURCES__ANALYTICS__BASE_URL` and
`SOURCES__ANALYTICS__API_KEY`), and only when `analytics_source()` is called, never at import.
Where the API is (`environment`, `base_url`, `path_prefix`) is resolved by `configured_api_root`,
for a run and for the events sensor alike.

How a run is laid out depends on its plan (`analytics_dagster.source.plan`): a table kept by
events is a transformer of the one read of the event stream; a table listed in this run is a
`rest_api` listing, incremental as `analytics_dagster.source.incremental` says.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import dlt
from dlt.common.jsonpath import compile_path
from dlt.extract.resource import DltResource
from dlt.extract.utils import wrap_parallel_iterator
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.rest_api import rest_api_resources

from analytics_dagster.source.events import (
    DEFAULT_RETENTION_DAYS,
    DEFAULT_RETENTION_MARGIN_DAYS,
    DEFAULT_VISIBILITY_LAG_SECONDS,
    EVENTS_PAGE_SIZE,
    api_now_ns,
    event_client,
)
from analytics_dagster.source.feed import events_from_feed, feed_items, table_from_events
from analytics_dagster.source.plan import SyncPlan, plan_sync
from analytics_dagster.source.incremental import DEFAULT_LOOKBACK_SECONDS, change_filter, start_params
from analytics_dagster.source.pacing import paced_session
from analytics_dagster.source.paginator import HasMorePaginator, json_once
from analytics_dagster.source.pipeline import SOURCE_NAME
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES, RESOURCES_BY_NAME, ApiResource, api_root

__all__ = [
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

DEFAULT_REQUESTS_PER_MINUTE = 240  # the API's rate limit per client
# A backfill (and a read of the event stream) commits after this much extraction: paced at 240
# requests a minute, a chunk is about 240 requests, the most a killed or failed backfill loses
# (customers: at least a page, 200 customers' children); unpaced, a small or mid-sized account
# is one load (each load costs about 0.8 s whatever its size)
DEFAULT_BACKFILL_CHUNK_SECONDS = 60.0
# ... or after this many rows of a list (customers, with their children), or events, whichever
# comes first: with DuckDB's memory limit (`pipeline.DEFAULT_DUCKDB_MEMORY_LIMIT`) it only bounds the
# rows a load holds when requests are fast (measured against time: docs/benchmark.md, "Chunks by time")
DEFAULT_BACKFILL_CHUNK_ROWS = 20000
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


@dlt.source(name=SOURCE_NAME, section=SOURCE_NAME, max_table_nesting=0)
def analytics_source(
    base_url: Optional[str] = None,
    api_key: str = dlt.secrets.value,
    page_size: Optional[int] = None,
    page_sizes: Optional[dict[str, int]] = None,
    parallel_children: bool = True,
    full_refresh: bool = False,
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS,
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    incremental: str = "events",
    event_retention_days: int = DEFAULT_RETENTION_DAYS,
    event_retention_margin_days: int = DEFAULT_RETENTION_MARGIN_DAYS,
    event_visibility_lag_seconds: int = DEFAULT_VISIBILITY_LAG_SECONDS,
    backfill_chunk_rows: int = DEFAULT_BACKFILL_CHUNK_ROWS,
    backfill_chunk_seconds: float = DEFAULT_BACKFILL_CHUNK_SECONDS,
    run_state: Optional[dict[str, Any]] = None,
    tables: Optional[Sequence[str]] = None,
    progress: Optional[Progress] = None,
) -> list[DltResource]:
    """Every resource of the analytics API, synced incrementally.

    Args:
        base_url: the API's base URL (default: the environment's, else the local sandbox's);
            the root every path goes after is `configured_api_root(base_url)`, with the path
            prefix (`/v1` unless `environment` or `path_prefix` says otherwise).
        api_key: the Bearer token.
        page_size: `per_page` for every paginated resource, instead of each one's own.
        page_sizes: `per_page` by resource name, over `page_size` (e.g. `{"customers": 20}`).
        parallel_children: fetch the per-customer child resources concurrently.
        full_refresh: forget the incremental state: list everything, write everything.
        lookback_seconds: how far behind the newest `updated_at` seen a listing looks again
            (see `analytics_dagster.source.incremental`).
        requests_per_minute: the request budget of a run, shared by every resource and worker
            (the API's limit is 240); 0: unpaced.
        incremental: `events` (default): a table listed once is then kept by the event stream;
            `listing`: every run lists every table (see `analytics_dagster.source.events`).
        event_retention_days: how long the API keeps events (90).
        event_retention_margin_days: a table whose event cursor is older than the retention
            minus this margin is listed again.
        event_visibility_lag_seconds: how late an event may become visible after events with
            later ids were listed: each read of the stream starts this far behind the last
            one, and applies what it had not seen (see `analytics_dagster.source.events`).
        backfill_chunk_rows: a listing (in events mode, a backfill) commits after this many
            rows (the customers listing: after this many customers and their children), and
            the next run, or the next chunk of this one, resumes after it. The read of the
            event stream commits after this many events likewise. 0: no row limit.
        backfill_chunk_seconds: ... or after this many seconds of the chunk's extraction,
            whichever comes first (at the next page). 0: no time limit.
        run_state: the pipeline's resource states of this source, read when the run starts
            (`analytics_dagster.source.pipeline.resource_states`): they plan the run, and
            planning makes the run's first request. None: the source is only described (asset
            definitions): nothing is requested, and it cannot run.
        tables: the tables this run loads (default: all); the same as `with_resources` selects.
        progress: where requests, pages and rows are counted and the plan is kept (not a setting).
    """
    # A new call builds new resources and paginators: both are stateful and must not be
    # shared between runs (dagster-dlt mutates a source's schema in place, dagster-io/dagster#34052; a
    # paginator keeps its place).
    unknown = set(page_sizes or {}) - set(RESOURCES_BY_NAME)
    if unknown:
        raise ValueError(f"sources.analytics.page_sizes names no resource: {sorted(unknown)}")
    session = paced_session(requests_per_minute, on_request=progress.request if progress else None)
    # a source only described (asset definitions) reads no setting: it makes no request
    root = configured_api_root(base_url) if run_state is not None else api_root(base_url=base_url)
    sizes = {r.name: (page_sizes or {}).get(r.name, page_size) or r.page_size for r in RESOURCES}
    if run_state is None:  # described only: every evented table laid out as a listing
        plan = SyncPlan(incremental=incremental, feeds={"events": None})
    else:
        plan = plan_sync(
            event_client(root, api_key, session, progress), run_state, tables or list(RESOURCES_BY_NAME),
            incremental=incremental, full_refresh=full_refresh, retention_days=event_retention_days,
            retention_margin_days=event_retention_margin_days,
            visibility_lag_seconds=event_visibility_lag_seconds, page_size=min(sizes["events"], EVENTS_PAGE_SIZE),
            chunk_rows=backfill_chunk_rows, chunk_seconds=backfill_chunk_seconds,
        )
    if requests_per_minute > 0 and backfill_chunk_seconds > 0:  # paced: the chunk's time in requests
        plan.chunk_requests = max(1, int(requests_per_minute * backfill_chunk_seconds / 60))
    if progress is not None:
        progress.plan = plan
        for table, backfill in plan.backfills.items():  # by earlier runs (this run's rows it counts)
            progress.committed.setdefault(table, backfill["rows"])
    fed = set(plan.feeds) | {"events"}  # the events table always is: it is the stream itself
    listed = [r for r in RESOURCES if r.name not in fed]
    config: dict[str, Any] = {
        "client": {"base_url": root, "auth": BearerTokenAuth(token=api_key), "session": session},
        "resource_defaults": {"write_disposition": "merge"},
        "resources": [
            _endpoint_config(resource, sizes[resource.name], parallel_children, full_refresh,
                             lookback_seconds, progress, plan)
            for resource in [RESOURCES_BY_NAME["customers"]] + [r for r in listed if r.name != "customers"]
        ],
    }
    resources = {r.name: r for r in rest_api_resources(config)}
    if parallel_children:
        for resource in resources.values():
            if not resource.is_transformer:
                _in_worker_threads(resource)
    listing = resources.pop(CUSTOMER_LISTING)
    def event_feed() -> Iterator[Any]:
        yield from feed_items(plan)

    feed = dlt.resource(event_feed, name=EVENT_FEED, selected=False, parallelized=parallel_children)
    for api in RESOURCES:
        if api.name in fed:
            step = events_from_feed(plan) if api.name == "events" else table_from_events(api, plan)
            resources[api.name] = _table(step, api, feed)
        elif api.name == "customers":
            resources["customers"] = _table(_pass_pages, api, listing)
        # a listing of `listing` mode writes only changed rows (chunked, with the window of its
        # first chunk); a backfill of events mode writes every row
        step = change_filter(api, full_refresh=full_refresh, lookback_seconds=lookback_seconds,
                             since=plan.since_ns(api.name), began=lambda: plan.api_now_ns)
        if step is not None and api.name not in fed and not plan.backfills.get(api.name, {}).get("position"):
            resources[api.name].add_filter(step)
    if progress is not None:
        for api in RESOURCES:
            resources[api.name].add_map(progress.row)
    return [listing, feed] + [resources[r.name] for r in RESOURCES]


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
    page_size: int,
    parallel: bool,
    full_refresh: bool,
    lookback_seconds: int,
    progress: Optional[Progress],
    plan: SyncPlan,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    endpoint: dict[str, Any] = {
        "path": resource.path,
        # compiled once: given as a string, dlt's client parses the JSONPath again for every page
        "data_selector": compile_path(resource.data_selector),
        "params": params,
        "response_actions": [json_once(resource.name)],
    }
    if resource.paginated:
        # in id order, so that a backfill can resume after the last id it committed
        params.update(per_page=page_size, order_by="id[ASC]")
        endpoint["paginator"] = HasMorePaginator(
            resource.name, _listing_start(plan, resource, full_refresh, lookback_seconds), progress,
            on_page=None if resource.parent else _listing_page(plan, resource), clock=_clock(plan),
        )
    else:
        endpoint["paginator"] = "single_page"
    if resource.archived:
        params["status"] = "active,archived"
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
    if resource.incremental == "replace":  # read whole: what left the API leaves the table
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

    def start() -> dict[str, str]:
        plan.start_clock()  # the chunk's extraction begins (if nothing began it before)
        window = since() if since and plan.incremental == "listing" else {}
        # (a child's listing is whole: its customer's)
        return window if resource.parent else {**window, **plan.listing_params(_served(resource))}

    return start


def _listing_page(plan: SyncPlan, resource: ApiResource) -> Any:
    def on_page(data: list[Any], has_more: bool) -> bool:
        return plan.listing_page(_served(resource), data, resource.primary_key, has_more)

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
