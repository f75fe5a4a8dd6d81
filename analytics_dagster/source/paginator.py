"""Cursor pagination as the API does it: follow `meta.pagination.next`, stop on `has_more`."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    """Follows the absolute `meta.pagination.next` URL while `meta.pagination.has_more` is true,
    through each part of the listing in turn.

    The API returns `next` on every page, the last one too, so `has_more` is the only stop
    condition (dlt's `JSONLinkPaginator` stops only when `next` is missing).
    A resource whose default listing leaves entities out is listed in parts
    (`ApiResource.parts`: prices with `type=standard`, then `type=custom`): when a part has no
    more pages, the next part starts from its first page, the same query with that part's
    parameters and no cursor.
    Paginators are stateful: build one per resource, never share one.
    """

    def __init__(
        self,
        resource: str,
        start_params: Optional[Callable[[], tuple[int, dict[str, str]]]] = None,
        progress: Optional[Progress] = None,
        on_page: Optional[Callable[[list[Any], bool, int], bool]] = None,
        clock: Optional[Callable[[Response], None]] = None,
        parts: Sequence[dict[str, str]] = ({},),
    ) -> None:
        """
        Args:
            resource: named in errors.
            start_params: called before the first request: the part it lists (an index of
                `parts`) and query parameters added to it (how an incremental run, or a resumed
                backfill, tells the API where to start).
            progress: counts every page read (shared by all copies of this paginator).
            on_page: told each page's records, whether more follow (in this part or a later
                one) and the part the listing goes on in; returns False to stop here (a chunk
                of a backfill is full).
            clock: told each page's response, before `on_page` (the API's clock, `Date`).
            parts: the query parameters of each part of the listing, in order.
        """
        super().__init__()
        self.resource = resource
        self.start_params = start_params
        self.progress = progress
        self.on_page = on_page
        self.clock = clock
        self.parts = list(parts)
        self.part = 0

    def init_request(self, request: Request) -> None:
        self.part, params = self.start_params() if self.start_params is not None else (0, {})
        request.params = {**(request.params or {}), **self.parts[self.part], **params}

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
            self.progress.page(self.resource, len(body["data"]), pagination.get("estimated_total"), self.part)
        if self.clock is not None:
            self.clock(response)
        next_url = pagination.get("next")
        if has_more and not next_url:
            raise MalformedPageError(self.resource, response.url, "has_more is true but there is no next URL")
        if not has_more and self.part + 1 < len(self.parts):  # this part is listed: the next one's first page
            next_url = self._first_page_of(self.part + 1, response.url)
            self.part += 1
            has_more = True
        go_on = self.on_page(body["data"], has_more, self.part) if self.on_page is not None else True
        self._next_reference = next_url if has_more and go_on else None

    def _first_page_of(self, part: int, url: str) -> str:
        """The URL of `part`'s first page: `url`'s query (per_page, order, a change window)
        without the cursor, with that part's parameters instead of the last one's."""
        scheme, netloc, path, query, _ = urlsplit(url)
        dropped = {"after", *self.parts[self.part], *self.parts[part]}
        params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in dropped]
        return urlunsplit((scheme, netloc, path, urlencode(params + list(self.parts[part].items())), ""))

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
