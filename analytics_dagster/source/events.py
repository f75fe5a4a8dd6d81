"""Reading the API's event stream outside a pipeline run (for the events sensor)."""

from __future__ import annotations

from typing import Any, Optional

from dlt.common.jsonpath import compile_path
from dlt.sources.helpers.rest_client import RESTClient
from dlt.sources.helpers.rest_client.auth import BearerTokenAuth

from analytics_dagster.source.paginator import HasMorePaginator

EVENTS_PATH = "/v1/events"


def _client(base_url: str, api_key: str) -> RESTClient:
    return RESTClient(
        base_url=base_url.rstrip("/"),
        auth=BearerTokenAuth(token=api_key),
        paginator=HasMorePaginator("events"),
        data_selector=compile_path("data"),  # as in the source: a string is parsed again per page
    )


def latest_event_id(base_url: str, api_key: str) -> Optional[str]:
    """The newest event's id, or None when the API has no events."""
    response = _client(base_url, api_key).get(EVENTS_PATH, params={"per_page": 1})
    response.raise_for_status()
    data = response.json().get("data") or []
    return data[0]["event_id"] if data else None


def events_after(
    base_url: str, api_key: str, after: Optional[str], max_pages: int = 10
) -> list[dict[str, Any]]:
    """Events newer than `after`, oldest first (at most `max_pages` pages of 200)."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": 200}
    if after:
        params["after"] = after
    events: list[dict[str, Any]] = []
    for pages, page in enumerate(_client(base_url, api_key).paginate(EVENTS_PATH, params=params), 1):
        events.extend(page)
        if pages >= max_pages:
            break
    return events
