"""What the API key may read: a table whose listing the key is not permitted is skipped, not fatal.

Paddle's API keys carry permissions per entity (`customer.read`, `report.read`,
`notification.read` for the event stream, ...: each operation's `x-permissions` in its spec, the
`permission` of each resource in `resources.py`). A key without one gets 403 with the error code
`forbidden` on the operations that need it, and nothing else changes. So a listing answered
`forbidden` skips its table for the run: no rows, no state moved (the next run tries again), a
warning that names the permission to grant, and the other tables go on. The key's other 403s
(`invalid_token`, `authentication_missing`, `authentication_malformed`: no valid key at all)
still fail the run at its first request.

Once a table is known forbidden in a run, its other requests (a child's, once per customer) are
answered here without reaching the API (`refuse`): a key without `address.read` costs one
request a run, not one per customer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

import orjson
from dlt.sources.helpers.rest_client.exceptions import IgnoreResponseException
from requests import PreparedRequest, Response, Session

from analytics_dagster.source.resources import RESOURCES_BY_NAME, resource_of_path

FORBIDDEN = "forbidden"  # Paddle's error code for a valid key without the permission


def error_code(response: Optional[Response]) -> Optional[str]:
    """The `error.code` of an error answer of the API (None: not one)."""
    if response is None or response.status_code < 400:
        return None
    try:
        error = orjson.loads(response.content).get("error")
    except (ValueError, AttributeError, TypeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def is_forbidden(response: Optional[Response]) -> bool:
    """A 403 for want of a permission (not for want of a valid key)."""
    return response is not None and response.status_code == 403 and error_code(response) == FORBIDDEN


def grant_line(table: str, via: Optional[str] = None) -> str:
    """What a user reads when `table` was skipped: the permission to grant, and where.
    `via`: the table whose listing reaches it (a customer's children: `customers`)."""
    api = RESOURCES_BY_NAME[via or table]
    reason = (f"its rows are listed per customer, and the key may not list customers" if via else
              f"the API answered 403 forbidden to GET {api.path}")
    return (f"resource '{table}' was not synced: the API key lacks the permission {api.permission} ({reason}). "
            f"Grant {api.permission} to the key (Paddle: Developer tools > Authentication) and the next run "
            "syncs it; the other tables were synced.")


def skip_when_forbidden(skip: Callable[[str, str], None], table: str, session: Session,
                        loads: Iterable[str]) -> Callable[..., None]:
    """A response hook of `table`'s listing: a `forbidden` answer skips the tables the listing
    loads in this run (`loads`: `table` unless the stream keeps it, and the children listed
    through it; `skip`: the plan's, told what to grant), stops the listing with no rows, and
    makes the session refuse the table's other requests for the rest of the run."""
    loads = list(loads)

    def hook(response: Response, *args: Any, **kwargs: Any) -> None:
        if is_forbidden(response):
            for loaded in loads:
                skip(loaded, grant_line(loaded) if loaded == table else grant_line(loaded, via=table))
            refuse(session, [table])
            raise IgnoreResponseException()

    return hook


def refuse(session: Session, tables: Iterable[str]) -> None:
    """From now on `session` answers the requests of `tables` itself, `forbidden`, unsent."""
    for adapter in set(session.adapters.values()):
        if isinstance(adapter, RefusingAdapter):
            adapter.refused.update(tables)


class RefusingAdapter:
    """A mixin of the session's transport: the requests of a refused table are answered 403
    `forbidden` here, as the API answered the first, without a request (nor a wait for the pace)."""

    refused: set[str]

    def refusal(self, request: PreparedRequest) -> Optional[Response]:
        if not self.refused or resource_of_path(urlsplit(request.url or "").path) not in self.refused:
            return None
        response = Response()
        response.status_code = 403
        response._content = orjson.dumps({"error": {"type": "request_error", "code": FORBIDDEN,
                                                    "detail": "refused by this run: the key lacks the permission"}})
        response.url, response.request = request.url or "", request
        response.headers["Content-Type"] = "application/json"
        return response
