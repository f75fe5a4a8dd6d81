"""Cursor pagination as the API does it: follow `meta.pagination.next`, stop on `has_more`."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import orjson
from dlt.sources.helpers.rest_client.paginators import BaseNextUrlPaginator
from requests import Request, Response

from analytics_dagster.source.progress import Progress


class MalformedPageError(ValueError):
    """A page that does not follow the API's contract; names the resource and what was wrong."""

    def __init__(self, resource: str, url: str, problem: str) -> None:
        super().__init__(f"resource '{resource}': {problem} (GET {url})")
        self.resource = resource


def page_json(resource: str, response: Response) -> Any:
    """The page's JSON, parsed once per response and remembered on it.

    orjson, not `response.json()`: requests parses with simplejson where installed (dlt installs
    it), several times slower on these pages. The API sends UTF-8 JSON only.
    """
    cached = getattr(response, "_analytics_json", None)
    if cached is None:
        try:
            cached = orjson.loads(response.content)
        except ValueError as exc:
            raise MalformedPageError(resource, response.url, f"the page is not valid JSON ({exc})") from None
        response._analytics_json = cached  # type: ignore[attr-defined]
    return cached


class HasMorePaginator(BaseNextUrlPaginator):
    """Follows the absolute `meta.pagination.next` URL while `meta.pagination.has_more` is true.

    The API returns `next` on every page, the last one too, so `has_more` is the only stop
    condition (dlt's `JSONLinkPaginator` stops only when `next` is missing).
    Paginators are stateful: build one per resource, never share one.
    """

    def __init__(
        self,
        resource: str,
        start_params: Optional[Callable[[], dict[str, str]]] = None,
        progress: Optional[Progress] = None,
        on_page: Optional[Callable[[list[Any], bool], bool]] = None,
        clock: Optional[Callable[[Response], None]] = None,
    ) -> None:
        """
        Args:
            resource: named in errors.
            start_params: called before the first request; its query parameters are added to
                it (how an incremental run tells the API where to start).
            progress: counts every page read (shared by all copies of this paginator).
            on_page: told each page's records and whether more follow; returns False to stop
                here (a chunk of a backfill is full).
            clock: told each page's response, before `on_page` (the API's clock, `Date`).
        """
        super().__init__()
        self.resource = resource
        self.start_params = start_params
        self.progress = progress
        self.on_page = on_page
        self.clock = clock

    def init_request(self, request: Request) -> None:
        if self.start_params is not None:
            request.params = {**(request.params or {}), **self.start_params()}

    def update_state(self, response: Response, data: Optional[List[Any]] = None) -> None:
        body = page_json(self.resource, response)
        if not isinstance(body, dict) or "data" not in body:
            raise MalformedPageError(self.resource, response.url, "the page has no 'data'")
        pagination = (body.get("meta") or {}).get("pagination") or {}
        has_more = pagination.get("has_more")
        if not isinstance(has_more, bool):
            raise MalformedPageError(
                self.resource, response.url, f"meta.pagination.has_more is {has_more!r}, not true or false"
            )
        if self.progress is not None:
            self.progress.page(self.resource, len(body["data"]), pagination.get("estimated_total"))
        if self.clock is not None:
            self.clock(response)
        next_url = pagination.get("next")
        if has_more and not next_url:
            raise MalformedPageError(self.resource, response.url, "has_more is true but there is no next URL")
        go_on = self.on_page(body["data"], has_more) if self.on_page is not None else True
        self._next_reference = next_url if has_more and go_on else None

    def __str__(self) -> str:
        return f"HasMorePaginator({self.resource})"


def json_once(resource: str) -> Any:
    """A response hook: parse a successful page once, with a clear error when it is not JSON.

    dlt's client and the paginator both call `response.json()`; the parsed body is cached.
    """

    def hook(response: Response, *args: Any, **kwargs: Any) -> None:
        if 200 <= response.status_code < 300:
            body = page_json(resource, response)
            response.json = lambda **_: body  # type: ignore[method-assign]

    return hook
