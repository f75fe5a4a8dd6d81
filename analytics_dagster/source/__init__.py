"""The analytics API as a dlt `rest_api` source: pure dlt, no Dagster.

Settings are read the dlt way from section `sources.analytics` (`.dlt/config.toml`,
`.dlt/secrets.toml` or env vars such as `SOURCES__ANALYTICS__BASE_URL` and
`SOURCES__ANALYTICS__API_KEY`), and only when `analytics_source()` is called, never at import.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import dlt
from dlt.common.jsonpath import compile_path
from dlt.extract.resource import DltResource
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth
from dlt.sources.rest_api import rest_api_resources
from requests import Response

from analytics_dagster.source.incremental import DEFAULT_LOOKBACK_SECONDS, change_filter, start_params
from analytics_dagster.source.pacing import paced_session
from analytics_dagster.source.paginator import HasMorePaginator, page_json
from analytics_dagster.source.progress import Progress
from analytics_dagster.source.resources import RESOURCES, RESOURCES_BY_NAME, ApiResource

__all__ = [
    "CUSTOMER_LISTING",
    "RESOURCES",
    "RESOURCES_BY_NAME",
    "ApiResource",
    "Progress",
    "analytics_source",
]

SOURCE_NAME = "analytics"
DEFAULT_REQUESTS_PER_MINUTE = 240  # the API's rate limit per client
# The customers listing feeds both the `customers` table and the two child resources. It is a
# resource of its own, never loaded, so whatever `customers` filters (incremental sync) does not
# hide customers from the children, and a child-only run never moves `customers`' state.
CUSTOMER_LISTING = "customer_listing"


@dlt.source(name=SOURCE_NAME, section=SOURCE_NAME, max_table_nesting=0)
def analytics_source(
    base_url: str = dlt.config.value,
    api_key: str = dlt.secrets.value,
    page_size: Optional[int] = None,
    page_sizes: Optional[dict[str, int]] = None,
    parallel_children: bool = True,
    full_refresh: bool = False,
    lookback_seconds: int = DEFAULT_LOOKBACK_SECONDS,
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    progress: Optional[Progress] = None,
) -> list[DltResource]:
    """All twelve resources of the analytics API, synced incrementally.

    Args:
        base_url: the API root, such as `https://api.example.com` (paths start with `/v1`).
        api_key: the Bearer token.
        page_size: `per_page` for every paginated resource, instead of each one's own.
        page_sizes: `per_page` by resource name, over `page_size` (e.g. `{"customers": 20}`).
        parallel_children: fetch the per-customer child resources concurrently.
        full_refresh: forget the incremental state: read everything, write everything.
        lookback_seconds: how far behind the newest `updated_at` seen a run looks again
            (see `analytics_dagster.source.incremental`).
        requests_per_minute: the request budget of a run, shared by every resource and worker
            (the API's limit is 240); 0: unpaced.
        progress: where pages and rows read are counted and reported (not a setting).
    """
    # A new call builds new resources and paginators: both are stateful and must not be
    # shared between runs (shared/NOTES.md #4, #6).
    unknown = set(page_sizes or {}) - set(RESOURCES_BY_NAME)
    if unknown:
        raise ValueError(f"sources.analytics.page_sizes names no resource: {sorted(unknown)}")
    config: dict[str, Any] = {
        "client": {
            "base_url": base_url.rstrip("/"),
            "auth": BearerTokenAuth(token=api_key),
            "session": paced_session(requests_per_minute),
        },
        "resource_defaults": {"write_disposition": "merge"},
        "resources": [
            _endpoint_config(
                resource, (page_sizes or {}).get(resource.name, page_size), parallel_children,
                full_refresh, lookback_seconds, progress,
            )
            for resource in RESOURCES
        ],
    }
    resources = {r.name: r for r in rest_api_resources(config)}
    listing = resources.pop(CUSTOMER_LISTING)
    customers = RESOURCES_BY_NAME["customers"]
    resources["customers"] = dlt.transformer(
        _pass_pages,
        name="customers",
        data_from=listing,
        primary_key=customers.primary_key,
        columns=customers.columns,
        write_disposition="merge",
    )
    for api in RESOURCES:  # only changed rows go on to be normalized and written
        resources[api.name].add_filter(
            change_filter(api, full_refresh=full_refresh, lookback_seconds=lookback_seconds)
        )
    return [listing] + [resources[r.name] for r in RESOURCES]


def _pass_pages(page: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    yield page


def _endpoint_config(
    resource: ApiResource,
    page_size: Optional[int],
    parallel: bool,
    full_refresh: bool,
    lookback_seconds: int,
    progress: Optional[Progress],
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    endpoint: dict[str, Any] = {
        "path": resource.path,
        # compiled once: given as a string, dlt's client parses the JSONPath again for every page
        "data_selector": compile_path(resource.data_selector),
        "params": params,
        "response_actions": [_json_once(resource.name)],
    }
    if resource.paginated:
        params["per_page"] = page_size or resource.page_size
        endpoint["paginator"] = HasMorePaginator(
            resource.name,
            start_params(resource, full_refresh=full_refresh, lookback_seconds=lookback_seconds),
            progress,
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
    return config


def _cidr_row(cidr: str) -> dict[str, str]:
    return {"ipv4_cidr": cidr}


def _json_once(resource: str) -> Any:
    """A response hook: parse a successful page once, with a clear error when it is not JSON.

    dlt's client and the paginator both call `response.json()`; the parsed body is cached.
    """

    def hook(response: Response, *args: Any, **kwargs: Any) -> None:
        if 200 <= response.status_code < 300:
            body = page_json(resource, response)
            response.json = lambda **_: body  # type: ignore[method-assign]

    return hook
