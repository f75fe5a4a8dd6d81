"""Conformance to Paddle's published OpenAPI spec: the sandbox answers as the spec says, and a sync
asks only what the spec defines.

The spec is Paddle's own (`fixtures/paddle/openapi.yaml`, see `SOURCES.md` there), read by
openapi-core, a maintained validator nobody on this project wrote (a test dependency):

- The sandbox's answers: every list the project syncs (the registry's paths), asked over HTTP for
  several pages and for every value the spec allows of each filter the project uses (`status`,
  `type`, `mode`, `order_by`, `per_page`, `after`, transactions' `updated_at`), each request and
  its response (status, the headers the spec defines, body) validated against the operation;
  every event of the stream validated as the webhook the spec defines for its type; the errors
  against the spec's error response. Each page is also checked to do what it was asked (the
  filter, the order, the page size): a filter accepted and ignored is no conformance.
- The sync's requests: a real sync of the sandbox, in events mode and in listing mode, each run
  twice; every request it sent (the sandbox's request log) is held to the spec's parameters of
  its operation: names, enum values, comma-separated arrays, integers in range, RFC 3339 dates.

The spec leaves most objects open (no `additionalProperties`), so a field it does not define
would pass unseen: `close` closes each object it declares properties of
(`unevaluatedProperties: false`, where a schema is used, so that compositions keep working), and
Paddle's own examples in the spec pass so closed (a test checks it). Where the sandbox knowingly
differs from the spec, `PREFIX` and `KNOWN` say so, with the reason; any other difference fails,
and so does an entry of `KNOWN` that no response shows any more.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.request.exceptions import SecurityValidationError
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World
from analytics_dagster.sandbox.app import DEFAULT_PATH_PREFIX
from analytics_dagster.source.resources import RESOURCES, ApiResource, table_of_event
from analytics_dagster.source.sync import sync as engine_sync
from analytics_dagster_tests.conftest import FIXTURES, Admin

SPEC = FIXTURES / "openapi.yaml"
# the spec's live server: the sandbox's requests are validated as if they had gone there
PADDLE = "https://api.paddle.com"
# The sandbox serves Paddle's paths under /v1, the seed API's root (`resources.api_root`); the
# spec has them at its servers' root: a request's path is validated without it.
PREFIX = DEFAULT_PATH_PREFIX
_SCHEMA_REF = "#/components/schemas/"
# The registry's paths the spec does not have (an operation Paddle added after it), each with its
# reason: the spec's tests leave them out (test_metrics.py holds them to what docs/api.md says
# of them), and the sync's requests to them are not checked.
NOT_IN_THE_SPEC: dict[str, str] = {
    api.path: "Paddle added the seven /metrics/* operations on 2026-03-12, after the spec the project checks "
              "against (docs/api.md, \"Metrics\": what the sync relies on of them)"
    for api in RESOURCES if api.listing == "days"}


@dataclass(frozen=True)
class Known:
    """A field the sandbox sends that the spec does not define, and why it does.

    Attributes:
        resource: the registry's resource whose entities carry it.
        field: where in an entity, dotted (`*`: each item of a list).
        places: where it is sent: `list` (the resource's own list), `events` (its events' `data`).
        reason: why the sandbox sends it all the same.
    """

    resource: str
    field: str
    places: tuple[str, ...]
    reason: str


# Each is taken out of the body before the validator reads it, and must be found there: an entry
# that no response shows any more fails the test of its operation.
_NEWER = "Paddle sends it now; the spec (2025-05-27) predates it"
KNOWN: tuple[Known, ...] = (
    Known("discounts", "discount_group_id", ("list", "events"),
          f"{_NEWER} (discount groups; in fixtures/paddle/discounts/list_default.json)"),
    Known("discounts", "discount_group", ("list", "events"), f"{_NEWER}, as discount_group_id"),
    Known("subscriptions", "discount.type", ("list", "events"),
          f"{_NEWER}: recurring or one-off; Paddle's Python SDK requires it (SubscriptionDiscount.type)"),
    Known("transactions", "details.totals.grand_total_tax", ("list", "events"),
          f"{_NEWER} (in fixtures/paddle/transactions/list_paginated_page_one.json)"),
    Known("transactions", "details.adjusted_totals.grand_total_tax", ("list", "events"),
          f"{_NEWER}, as details.totals.grand_total_tax"),
    Known("transactions", "details.adjusted_totals.retained_fee", ("list", "events"),
          f"{_NEWER} (in fixtures/paddle/transactions/list_paginated_page_one.json)"),
    Known("transactions", "payments.*.method_details.south_korea_local_card", ("list", "events"),
          f"{_NEWER}: null unless paid so (in fixtures/paddle/transactions/list_paginated_page_one.json)"),
    Known("transactions", "details.payout_totals.exchange_rate", ("list", "events"),
          f"{_NEWER}: the rate the payout converted at; Paddle's Python SDK requires it (TransactionPayoutTotals)"),
    Known("transactions", "details.payout_totals.fee_rate", ("list", "events"),
          f"{_NEWER}, as details.payout_totals.exchange_rate"),
    Known("transactions", "details.payout_totals.grand_total_tax", ("list", "events"),
          f"{_NEWER}, as details.totals.grand_total_tax"),
    Known("adjustments", "totals.retained_fee", ("list", "events"),
          f"{_NEWER} (in fixtures/paddle/adjustments/list_default.json)"),
    Known("adjustments", "payout_totals.retained_fee", ("list", "events"), f"{_NEWER}, as totals.retained_fee"),
)


# ---------------------------------------------------------------------- the spec
def _schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every schema a `schema` key holds under `node` (Paddle's examples left out: data, not schemas)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("examples", "example") or key.startswith("x-"):
                continue
            if key == "schema":
                yield value
            else:
                yield from _schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas(value)


def _declares_properties(schema: Any, definitions: dict[str, Any]) -> bool:
    """Whether `schema` (through references and allOf) lists properties and leaves the rest open."""
    while isinstance(schema, dict) and set(schema) == {"$ref"} and schema["$ref"].startswith(_SCHEMA_REF):
        schema = definitions[schema["$ref"][len(_SCHEMA_REF):]]
    if not isinstance(schema, dict) or "additionalProperties" in schema or "unevaluatedProperties" in schema:
        return False  # it says itself what else it takes
    if "$ref" in schema and _declares_properties({"$ref": schema["$ref"]}, definitions):
        return True
    return "properties" in schema or any(_declares_properties(p, definitions) for p in schema.get("allOf") or [])


def _close(schema: Any, definitions: dict[str, Any], *, part: bool) -> None:
    """Close `schema` and what it holds; `part`: it is a part of a composition whose other parts
    may add properties (an allOf's, or a oneOf's of a schema with properties of its own): the
    schema holding the composition closes it, since a closed part would refuse its siblings'."""
    if not isinstance(schema, dict):
        return
    if not part and _declares_properties(schema, definitions):
        schema["unevaluatedProperties"] = False
    for value in (schema.get("properties") or {}).values():
        _close(value, definitions, part=False)
    for key in ("items", "additionalProperties", "not"):
        _close(schema.get(key), definitions, part=False)
    for key in ("allOf", "oneOf", "anyOf"):
        for value in schema.get(key) or []:
            _close(value, definitions, part=key == "allOf" or "properties" in schema)


def close(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with every object it declares properties of closed to others, where it is used
    (a definition is closed by each use of it, since a definition can be a part of another)."""
    definitions = spec["components"]["schemas"]
    uses = [spec["paths"], spec["webhooks"], {k: v for k, v in spec["components"].items() if k != "schemas"}]
    for schema in list(_schemas(uses)):
        _close(schema, definitions, part=False)
    for schema in definitions.values():
        _close(schema, definitions, part=True)
    return spec


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    """Paddle's spec as data, closed (see `close`): read once per module, it is 1.6 MB."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ten times faster
    return close(yaml.load(SPEC.read_text(), Loader=loader))


@pytest.fixture(scope="module")
def openapi(spec: dict[str, Any]) -> OpenAPI:
    """The validator, the spec (closed) checked as an OpenAPI 3.1 document first."""
    return OpenAPI.from_dict(spec)


def operation_path(api: ApiResource) -> str:
    """The spec's path of a resource's list: the registry's, its customer named as the spec names it."""
    return api.path.replace("{cus_id}", "{customer_id}")


def parameters(spec: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    """The query parameters of GET `path`, by name, each resolved (the operation's description,
    given beside a reference, wins over the shared one's)."""
    item = spec["paths"][path]
    found = {}
    for raw in [*item.get("parameters", []), *item["get"].get("parameters", [])]:
        resolved = raw
        if "$ref" in raw:
            resolved = spec
            for step in raw["$ref"][2:].split("/"):
                resolved = resolved[step]
            resolved = {**resolved, **{k: v for k, v in raw.items() if k != "$ref"}}
        if resolved["in"] == "query":
            found[resolved["name"]] = resolved
    return found


def served_at(path: str, served: str) -> bool:
    """Whether the sandbox's `served` path (`/v1/customers/ctm_01.../addresses`) is the spec's or
    the registry's `path` (`/customers/{customer_id}/addresses`)."""
    return re.fullmatch(re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(PREFIX + path)), served) is not None


def order_fields(parameter: dict[str, Any]) -> list[str]:
    """The fields an `order_by` parameter's description allows (`Valid fields for ordering: ...`)."""
    sentence = parameter["description"].split("Valid fields for ordering:")[1]
    return re.findall(r"`([a-z_.]+)`", sentence)


# ---------------------------------------------------------------------- requests as openapi-core reads them
class SpecRequest:
    """A GET as openapi-core reads it (its `Request` protocol), at the spec's server and the
    path without the sandbox's prefix."""

    method = "get"
    host_url = PADDLE
    body = None
    content_type = "application/json"

    def __init__(self, path: str, query: list[tuple[str, str]], headers: dict[str, str]) -> None:
        assert path.startswith(PREFIX + "/"), path
        self.path = path[len(PREFIX):]
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=Headers(headers))


class SpecResponse:
    """A response as openapi-core reads it: a JSON `body` (the sandbox's, less what `KNOWN` lists)."""

    def __init__(self, status_code: int, headers: dict[str, str], body: Any) -> None:
        self.status_code = status_code
        self.headers = Headers(headers)
        self.content_type = self.headers.get("Content-Type", "")
        self.data = json.dumps(body).encode()


class SpecWebhook:
    """An event as the body of the webhook the spec defines for its type."""

    method = "post"
    content_type = "application/json"
    # a webhook's signature (a header the spec requires) is no part of an event as listed
    parameters = RequestParameters(header=Headers({"Paddle-Signature": "ts=0;h1=0"}))

    def __init__(self, event: dict[str, Any]) -> None:
        self.name = event["event_type"]
        self.body = json.dumps(event).encode()


def findings(errors: Any) -> list[str]:
    """What the validator found, a line each: the schema errors behind each error, with their
    place in the document (the first 300 characters of each message)."""
    lines = []
    for error in errors:
        cause: BaseException | None = error
        while cause is not None and not getattr(cause, "schema_errors", None):
            cause = cause.__cause__
        if cause is None:
            lines.append(f"{type(error).__name__}: {error}")
            continue
        for schema_error in cause.schema_errors:  # type: ignore[attr-defined]
            place = "/".join(str(step) for step in schema_error.absolute_path) or "(whole)"
            lines.append(f"{type(error).__name__} at {place}: {schema_error.message[:300]}")
    return lines


def summary(problems: list[str], shown: int = 40) -> str:
    """`problems` grouped as one line each of what they say, with how many there were and where
    the first was: the same field of every item of every page is one difference."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        where, found, what = problem.partition(": ")
        if not found:  # (a finding of no one request)
            where, what = "-", problem
        what = re.sub(r"/\d+(?=/| |:)", "/*", what)  # data/3/payments/0 -> data/*/payments/*
        groups.setdefault(what, []).append(where)
    lines = [f"{len(wheres)}x {what} (first: {wheres[0]})" for what, wheres in groups.items()]
    return f"{len(problems)} problems, {len(groups)} kinds:\n" + "\n".join(lines[:shown])


# ---------------------------------------------------------------------- what the sandbox knowingly sends
def _take(node: Any, steps: list[str]) -> bool:
    """Take the field at `steps` out of `node`; whether there was one."""
    if not steps or node is None:
        return False
    step, rest = steps[0], steps[1:]
    if step == "*":  # (a list, not a generator: every item loses it, not the first that has it)
        return any([_take(item, rest) for item in node]) if isinstance(node, list) else False
    if not isinstance(node, dict) or step not in node:
        return False
    if not rest:
        del node[step]
        return True
    return _take(node[step], rest)


class Differences:
    """Takes what `KNOWN` lists out of entities, noting which entries it found."""

    def __init__(self) -> None:
        self.found: set[Known] = set()
        self.read: set[tuple[str | None, str]] = set()  # (resource, place) of the entities read

    def take(self, resource: str | None, place: str, entity: Any) -> None:
        self.read.add((resource, place))
        for known in KNOWN:
            if known.resource == resource and place in known.places and _take(entity, known.field.split(".")):
                self.found.add(known)

    def unseen(self, place: str) -> list[str]:
        """The entries of `place` found nowhere, of the resources read there (the events listed
        now are those of the last 90 days: of some resources, none)."""
        return [f"KNOWN lists {k.resource} {k.field} ({place}), which no response has now" for k in KNOWN
                if place in k.places and (k.resource, place) in self.read and k not in self.found]


# ---------------------------------------------------------------------- the sandbox's answers
@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    """The tests' usual world (conftest's `sandbox`), for the whole module: only read here."""
    # (seed 8: a customer with no address and one with no business, for the children's empty lists)
    world = World(customers=40, seed=8)
    # a subscription with a discount changes now: its event shows the discount as Paddle sends it
    discounted = next(s["id"] for s in world.truth("subscriptions") if s.get("discount"))
    world.mutate("subscriptions", discounted, {})
    with SandboxServer(world, config=SandboxConfig()) as server:
        yield server


@dataclass
class Exchange:
    """One request of the sandbox's API and what came back, validated."""

    url: str
    query: list[tuple[str, str]]
    response: requests.Response
    body: Any


class Checker:
    """Asks the sandbox, validates each request and response, and collects every problem."""

    def __init__(self, openapi: OpenAPI, server: SandboxServer, resource: str) -> None:
        self.openapi = openapi
        self.server = server
        self.resource = resource
        self.session = requests.Session()
        self.session.headers.update(server.auth_header)
        self.problems: list[str] = []
        self.differences = Differences()
        self.events_seen: set[str] = set()

    def get(self, url: str, query: list[tuple[str, str]] | None = None, expect: int = 200) -> Exchange:
        response = self.session.get(url, params=query, timeout=30)
        split = urlsplit(response.url)
        sent = parse_qsl(split.query, keep_blank_values=True)
        where = f"GET {split.path}?{split.query}"
        request = SpecRequest(split.path, sent, dict(response.request.headers))
        self.problems += [f"{where}: request: {line}" for line in findings(self.openapi.iter_request_errors(request))]
        if response.status_code != expect:
            self.problems.append(f"{where}: {response.status_code}, not {expect}: {response.text[:300]}")
        body = response.json()
        if response.status_code == 200:
            self._take_known(body)
        errors = self.openapi.iter_response_errors(
            request, SpecResponse(response.status_code, dict(response.headers), body))
        self.problems += [f"{where}: response: {line}" for line in findings(errors)]
        return Exchange(response.url, sent, response, body)

    def _take_known(self, body: dict[str, Any]) -> None:
        items = body["data"] if isinstance(body.get("data"), list) else []
        if self.resource == "events":
            for event in items:
                self.differences.take(table_of_event(event.get("event_type")), "events", event.get("data"))
                self._check_event(event)
        else:
            for item in items:
                self.differences.take(self.resource, "list", item)

    def _check_event(self, event: dict[str, Any]) -> None:
        """Each event once, as the webhook of its type (what `data` holds is the event's type's)."""
        if event["event_id"] in self.events_seen:
            return
        self.events_seen.add(event["event_id"])
        lines = findings(self.openapi.iter_webhook_request_errors(SpecWebhook(event)))
        self.problems += [f"event {event['event_id']} ({event['event_type']}): {line}" for line in lines]


@dataclass
class Ask:
    """One listing to ask: its query, how many pages to follow, what each item must satisfy
    (`keep`, named `what`), and whether the world has any it selects (`some`)."""

    query: dict[str, str]
    pages: int = 1
    keep: Callable[[dict[str, Any]], bool] | None = None
    what: str = ""
    some: bool = False


def asks(spec: dict[str, Any], path: str, api: ApiResource, entities: list[dict[str, Any]]) -> list[Ask]:
    """The listings that ask every value the spec allows of each filter the project uses, of
    `entities` (the resource's, or one customer's children), in id order."""
    found = _asks(spec, path, api, [e[api.primary_key] for e in entities],
                  sorted(e["updated_at"] for e in entities if "updated_at" in e))
    for ask in found:
        if ask.keep is not None:  # (the other filters at the default the project knows of them)
            defaults = [f for f in api.list_filters if f.name not in ask.query]
            ask.some = any(ask.keep(e) and all(e.get(f.name) in f.default for f in defaults) for e in entities)
    return found


def _asks(spec: dict[str, Any], path: str, api: ApiResource, ids: list[str], updated: list[str]) -> list[Ask]:
    declared = parameters(spec, path)
    per_page = declared["per_page"]["schema"]
    most = str(per_page["maximum"])
    found = [Ask({}), Ask({"per_page": "1", "order_by": "id[ASC]"}, pages=3), Ask({"per_page": "2"}, pages=3),
             Ask({"per_page": str(api.page_size), "order_by": "id[ASC]"}, pages=2), Ask({"per_page": most})]
    found += [Ask({"order_by": f"id[{way}]", "per_page": "5", "after": ids[len(ids) // 2]}, pages=2)
              for way in ("ASC", "DESC") if ids]
    every_status: dict[str, str] = {}
    if "status" in declared:
        values = declared["status"]["schema"]["items"]["enum"]
        every_status = {"status": ",".join(values)}
        found += [Ask({"status": value, "per_page": most}, keep=_equals("status", value)) for value in values]
        found += [Ask({"status": ",".join(values[:n]), "per_page": most}, keep=_within("status", values[:n]))
                  for n in range(2, len(values) + 1)]
    for listed in (f for f in api.hidden if not f.several):  # what the project asks one value at a time (type, mode)
        for value in declared[listed.name]["schema"]["enum"]:
            found.append(Ask({listed.name: value, **every_status, "per_page": most}, keep=_equals(listed.name, value)))
    if api.listing == "server_updated_at" and updated:
        assert "updated_at" in declared, f"{path}: the spec has no updated_at filter"
        pivot = updated[len(updated) // 2]
        at = parse_ns(pivot)
        bounds: dict[str, Callable[[int], bool]] = {
            "updated_at": lambda ns: ns == at, "updated_at[GT]": lambda ns: ns > at,
            "updated_at[GTE]": lambda ns: ns >= at, "updated_at[LT]": lambda ns: ns < at,
            "updated_at[LTE]": lambda ns: ns <= at}
        for name, holds in bounds.items():
            found.append(Ask({name: pivot, "per_page": most}, pages=3, keep=_updated(holds), what=name))
        earlier = updated[len(updated) // 4]
        found.append(Ask({"updated_at[GTE]": earlier, "updated_at[LT]": pivot, "per_page": most}, pages=3,
                         keep=_updated(lambda ns: parse_ns(earlier) <= ns < at)))
    return found


def _equals(name: str, value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda item: item.get(name) == value


def _within(name: str, values: list[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda item: item.get(name) in values


def _updated(holds: Callable[[int], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda item: holds(parse_ns(item["updated_at"]))


def check_pages(checker: Checker, url: str, ask: Ask, key: str, declared: dict[str, dict[str, Any]]) -> int:
    """Ask `ask` and follow its `next` for `ask.pages` pages, checking each page does what was
    asked: its filter, the order, the page size (the spec's default and maximum), the `next`
    URL (the request's query, and `after` its last item); how many items it listed."""
    query = list(ask.query.items())
    per_page = declared["per_page"]["schema"]
    size = min(int(ask.query.get("per_page", per_page["default"])), per_page["maximum"])
    descending = ask.query.get("order_by", declared["order_by"]["schema"]["default"]).endswith("[DESC]")
    default_status = (declared.get("status", {}).get("schema", {}).get("items", {}).get("default")
                      if "status" not in ask.query else None)
    seen: list[str] = []
    for _ in range(ask.pages):
        exchange = checker.get(url, query)
        where = f"GET {urlsplit(exchange.url).path}?{urlsplit(exchange.url).query}"
        if exchange.response.status_code != 200:
            return len(seen)
        data, pagination = exchange.body["data"], exchange.body["meta"]["pagination"]
        keys = [item[key] for item in data]
        problems = []
        if pagination["per_page"] != size:
            problems.append(f"per_page {pagination['per_page']}, the spec says {size}")
        if len(keys) > size or (pagination["has_more"] and len(keys) < size):
            problems.append(f"{len(keys)} items on a page of {size} (has_more {pagination['has_more']})")
        ordered = (seen[-1:] or ([ask.query["after"]] if "after" in ask.query else [])) + keys
        if ordered != sorted(ordered, reverse=descending):
            problems.append(f"not in {'descending' if descending else 'ascending'} order: {ordered[:6]}...")
        if set(keys) & set(seen):
            problems.append(f"listed again: {sorted(set(keys) & set(seen))[:3]}")
        if ask.keep is not None and not all(ask.keep(item) for item in data):
            problems.append(f"items {ask.what or ask.query} does not select: "
                            f"{[item[key] for item in data if not ask.keep(item)][:3]}")
        if default_status and any(item.get("status") != default_status for item in data):
            problems.append(f"items not {default_status}, which the spec lists when status is not asked")
        follow = urlsplit(pagination["next"])
        kept = [(k, v) for k, v in parse_qsl(follow.query) if k != "after"]
        after = dict(parse_qsl(follow.query)).get("after")
        if follow.path != urlsplit(exchange.url).path or sorted(kept) != sorted(
                (k, v) for k, v in exchange.query if k != "after") or (keys and after != keys[-1]):
            problems.append(f"next is not this query after its last item: {pagination['next']}")
        checker.problems += [f"{where}: {p}" for p in problems]
        seen += keys
        if not pagination["has_more"]:
            break
        url, query = pagination["next"], []
    if ask.some and not seen:
        checker.problems.append(f"GET {url}?{ask.query}: lists none, and the world has some it selects")
    return len(seen)


SPECCED = [api for api in RESOURCES if api.path not in NOT_IN_THE_SPEC]
LISTS = [api for api in SPECCED if api.paginated]


def _in_the_spec(spec: dict[str, Any], path: str) -> None:
    assert "get" in spec["paths"].get(path, {}), \
        f"the spec has no GET {path}: if Paddle added it since, say so in NOT_IN_THE_SPEC"


def test_what_is_not_in_the_spec_is_not(spec: dict[str, Any]) -> None:
    """NOT_IN_THE_SPEC names only operations the spec lacks: once it has one, its tests run."""
    assert NOT_IN_THE_SPEC and not [p for p in NOT_IN_THE_SPEC if "get" in spec["paths"].get(p, {})]


@pytest.mark.parametrize("api", LISTS, ids=lambda api: api.name)
def test_each_list_answers_as_the_spec_says(api: ApiResource, openapi: OpenAPI, spec: dict[str, Any],
                                            server: SandboxServer) -> None:
    """Every listing `asks` makes of the list (of a child, for three customers), its pages
    followed, is valid and does what it asked; what `KNOWN` lists of it is still sent."""
    path = operation_path(api)
    _in_the_spec(spec, path)
    declared = parameters(spec, path)
    checker = Checker(openapi, server, api.name)
    truth = Admin(server.url).truth(api.name)
    urls: list[tuple[str, list[dict[str, Any]]]]
    if api.parent:  # the customer with the most of them, one with the fewest but some, one with none
        customers = [c["id"] for c in Admin(server.url).truth(api.parent)]
        by_customer = {c: sorted((e for e in truth if e["customer_id"] == c), key=lambda e: e["id"]) for c in customers}
        ranked = sorted(customers, key=lambda c: -len(by_customer[c]))
        chosen = [ranked[0], min((c for c in ranked if by_customer[c]), key=lambda c: len(by_customer[c])), ranked[-1]]
        assert not by_customer[chosen[-1]], "no customer without any: the world changed"
        urls = [(server.url + PREFIX + api.path.replace("{cus_id}", c), by_customer[c]) for c in chosen]
    else:
        urls = [(server.url + PREFIX + api.path, truth)]
    listed = 0
    for url, entities in urls:
        for ask in asks(spec, path, api, entities):
            listed += check_pages(checker, url, ask, api.primary_key, declared)
    assert listed > 0, f"{api.name}: the world lists none: nothing was validated"
    problems = checker.problems + checker.differences.unseen("events" if api.name == "events" else "list")
    assert not problems, summary(problems)


@pytest.mark.parametrize("api", [api for api in SPECCED if not api.paginated], ids=lambda api: api.name)
def test_each_whole_document_answers_as_the_spec_says(api: ApiResource, openapi: OpenAPI, spec: dict[str, Any],
                                                      server: SandboxServer) -> None:
    """An unpaginated resource's document is valid, headers included (`/ips`' `Etag`)."""
    _in_the_spec(spec, api.path)
    checker = Checker(openapi, server, api.name)
    exchange = checker.get(server.url + PREFIX + api.path)
    assert exchange.body["data"], f"{api.name}: an empty document: nothing was validated"
    assert not checker.problems, summary(checker.problems)


def test_errors_are_the_spec_s_error(openapi: OpenAPI, sandbox: SandboxServer) -> None:
    """What the sandbox answers when it refuses, faults or finds nothing is the spec's error
    (an operation's `default` response). Its 502 (a gateway's HTML page) and 504 (empty) are
    a gateway's, not the API's: the spec does not describe them."""
    checker = Checker(openapi, sandbox, "customers")
    admin = Admin(sandbox.url)
    customers = sandbox.url + PREFIX + "/customers"
    checker.session.headers.pop("Authorization")
    checker.get(customers, expect=403)
    checker.session.headers.update(sandbox.auth_header)
    checker.get(sandbox.url + PREFIX + "/customers/ctm_01h0000000000000000000000/addresses", expect=404)
    for status in (429, 500, 503):
        admin.post("inject", resource="customers", kind="status", status=status)
        checker.get(customers, expect=status)
    # (a value the spec does not allow: its request is reported, the answer must still be the error)
    checker.get(customers, [("per_page", "many")], expect=400)
    request_problems = [p for p in checker.problems if ": request: " in p]
    assert len(request_problems) == 2 and all("per_page" in p or "Security" in p for p in request_problems), \
        request_problems
    problems = [p for p in checker.problems if ": request: " not in p]
    assert not problems, summary(problems)


def test_paddle_s_own_examples_pass_the_closed_spec(openapi: OpenAPI, spec: dict[str, Any]) -> None:
    """Closing the spec refuses no payload of Paddle's own: the examples of each list the
    project syncs, and of each webhook whose events the sandbox sends."""
    examples = []
    for api in RESOURCES:
        path = operation_path(api)
        if path in NOT_IN_THE_SPEC:
            continue
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        # (with the headers the spec requires of some)
        headers = {"Content-Type": "application/json", "Etag": 'W/"1"', "Request-Id": "1"}
        request = SpecRequest(PREFIX + path.replace("{customer_id}", "ctm_01h0000000000000000000000"), [],
                              {"Authorization": "Bearer 1"})
        for name, example in content["examples"].items():
            response = SpecResponse(200, headers, example["value"])
            examples += [f"{path} {name}: {line}" for line in findings(openapi.iter_response_errors(request, response))]
    sent = {e["event_type"] for e in World(customers=40, seed=7).truth("events")}
    for event_type in sorted(sent):
        references = spec["webhooks"][event_type]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert references, f"the spec has no example of {event_type}"
        for reference in references.values():
            example = spec["components"]["examples"][reference["$ref"].rsplit("/", 1)[1]]["value"]
            examples += [f"webhook {event_type}: {line}" for line in
                         findings(openapi.iter_webhook_request_errors(SpecWebhook(example)))]
    assert not examples, summary(examples)


def test_the_closed_spec_refuses_a_field_it_does_not_define(openapi: OpenAPI, server: SandboxServer) -> None:
    """The closing works: a customer with one field more is refused (the spec alone takes it)."""
    page = requests.get(server.url + PREFIX + "/customers", headers=server.auth_header, timeout=30)
    body = page.json()
    body["data"][0]["nickname"] = "Sam"
    request = SpecRequest(PREFIX + "/customers", [], server.auth_header)
    found = findings(openapi.iter_response_errors(request, SpecResponse(200, dict(page.headers), body)))
    assert len(found) == 1 and "'nickname' was unexpected" in found[0], found


# ---------------------------------------------------------------------- the sync's requests
# The spec's date filters take an operator after their name (`updated_at[GTE]`): their
# description says so (`[LT]`, `[LTE]`, `[GT]`, `[GTE]`), the parameter is the name alone.
_OPERATOR = re.compile(r"^(?P<name>[a-z_]+)\[(?P<op>LT|LTE|GT|GTE)\]$")
_DATE_TIME = OAS31Validator({"type": "string", "format": "date-time"}, format_checker=OAS31Validator.FORMAT_CHECKER)


# Values the sync asks that a parameter's enum in the spec does not list, and why: each is taken
# out of the request before it is validated, and must be asked.
BEYOND_THE_SPEC: dict[tuple[str, str], tuple[frozenset[str], str]] = {
    ("/discounts", "status"): (frozenset({"expired", "used"}), (
        "statuses Paddle sets by itself (the spec's discount status describes both); its docs say the "
        "status filter is how to list expired discounts, though the filter's enum names only two")),
}


def _within_the_spec(operation: str, name: str, value: str) -> str:
    beyond = BEYOND_THE_SPEC.get((operation, name))
    if beyond is None:
        return value
    return ",".join(v for v in value.split(",") if v not in beyond[0])


def request_problems(openapi: OpenAPI, spec: dict[str, Any], logged: dict[str, Any]) -> list[str]:
    """What in one logged request (method, path, raw query) the spec does not define."""
    where = f"{logged['method']} {logged['path']}?{logged['query']}"
    if logged["method"] != "GET":
        return [f"{where}: the sync only reads"]
    path = logged["path"]
    operation = next((p for p in spec["paths"] if "get" in spec["paths"][p] and served_at(p, path)), None)
    if operation is None:
        return [] if any(served_at(p, path) for p in NOT_IN_THE_SPEC) else [f"{where}: no GET operation of the spec"]
    declared = parameters(spec, operation)
    query = [(name, _within_the_spec(operation, name, value))
             for name, value in parse_qsl(logged["query"], keep_blank_values=True)]
    names = [name for name, _ in query]
    problems = [f"{where}: {name} sent twice (the spec's arrays are one comma-separated value)"
                for name in sorted({n for n in names if names.count(n) > 1})]
    plain, operators = [], []
    for name, value in query:
        match = _OPERATOR.match(name)
        base = match.group("name") if match else name
        if base not in declared:
            problems.append(f"{where}: {name}: no parameter of GET {operation}")
        elif match and f"`[{match.group('op')}]`" not in declared[base].get("description", ""):
            problems.append(f"{where}: {name}: the spec's {base} takes no operator {match.group('op')}")
        else:
            (operators if match else plain).append((base, value))
        description = declared.get(base, {}).get("description", "")
        if "RFC 3339" in description and not _DATE_TIME.is_valid(value):
            problems.append(f"{where}: {name}={value}: not an RFC 3339 date-time, as the spec asks")
        if base == "per_page" and re.fullmatch(r"-?\d+", value) and int(value) < 1:  # the spec gives a maximum only
            problems.append(f"{where}: per_page={value}: a page of none")
        if base == "order_by" and not (re.fullmatch(r"([a-z_.]+)\[(ASC|DESC)\]", value)
                                       and value.split("[")[0] in order_fields(declared[base])):
            problems.append(f"{where}: order_by={value}: not a field the spec orders {operation} by, "
                            f"[ASC] or [DESC]")
    # each operator's value as the parameter's own (one request each: they share its name); no
    # credentials: the log keeps none, and the sandbox answers 200 only to the Bearer key
    for query_ in [plain] + [plain + [pair] for pair in operators]:
        request = SpecRequest(path, query_, {})
        errors = [e for e in openapi.iter_request_errors(request) if not isinstance(e, SecurityValidationError)]
        problems += [f"{where}: {line}" for line in findings(errors)]
    if logged["status"] != 200:
        problems.append(f"{where}: answered {logged['status']}")
    return problems


@pytest.mark.smoke
@pytest.mark.parametrize("incremental", ["events", "listing"])
def test_the_sync_asks_only_what_the_spec_defines(incremental: str, warehouse: Path, admin: Admin,
                                                  monkeypatch: pytest.MonkeyPatch, openapi: OpenAPI,
                                                  spec: dict[str, Any]) -> None:
    """A sync's every request, in each incremental mode (a first run that lists everything, and
    one after changes), is held to the spec's parameters of its operation."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", incremental)
    lines: list[str] = []
    engine_sync(report=lines.append, warn=lines.append)
    admin.post("advance", updates=25, archives=5, new_customers=3, new_transactions=6, adjustments=2)
    engine_sync(report=lines.append, warn=lines.append)
    log = admin.get("requests")
    assert log["logged"] == len(log["requests"]), "the sandbox's log dropped requests: its bound is too small"
    problems = [p for logged in log["requests"] for p in request_problems(openapi, spec, logged)]
    assert not problems, summary(problems)
    # (what was checked: the sync asked each list, and the filters it relies on)
    asked = {(logged["path"], name) for logged in log["requests"] for name, _ in parse_qsl(logged["query"])}
    paths = {logged["path"] for logged in log["requests"]}
    for api in RESOURCES:
        assert any(served_at(api.path, path) for path in paths), f"the sync never asked {api.path}"
    names = {name for _, name in asked}
    assert {"per_page", "order_by", "after", "status", "type", "mode"} <= names, names
    for (operation, name), (values, _) in BEYOND_THE_SPEC.items():
        sent = {v for logged in log["requests"] if served_at(operation, logged["path"])
                for n, value in parse_qsl(logged["query"]) if n == name for v in value.split(",")}
        assert values <= sent, f"BEYOND_THE_SPEC lists {operation} {name} {sorted(values)}, which the sync no longer asks"
    if incremental == "listing":
        assert (PREFIX + "/transactions", "updated_at[GTE]") in asked, "the second listing asked no window"


def test_the_registry_says_what_the_spec_says_of_permissions_omissions_and_filters(spec: dict[str, Any]) -> None:
    """What the sync relies on, judged by Paddle's spec rather than by the sandbox: the permission
    each list needs (its `x-permissions`), the fields each entity's events leave out (the events'
    descriptions: "the complete subscription entity, except `management_urls`"), and every value
    of each filter whose default hides entities (the parameter's enum; beyond it, only
    `BEYOND_THE_SPEC`'s)."""
    for api in RESOURCES:
        if operation_path(api) in NOT_IN_THE_SPEC:
            assert api.permission == "metrics.read", api.name  # (Paddle's docs of the operations)
            continue
        operation = spec["paths"][operation_path(api)]["get"]
        assert api.permission == next(iter(operation.get("x-permissions") or []), None), api.name
        declared = parameters(spec, operation_path(api))
        for listed in api.list_filters:
            schema = declared[listed.name]["schema"]
            enum = set(schema.get("items", schema).get("enum") or ())
            beyond = BEYOND_THE_SPEC.get((operation_path(api), listed.name), (frozenset(), ""))[0]
            assert enum <= set(listed.values) and set(listed.values) - enum == beyond, (api.name, listed.name)
    omitted: dict[str, set[str]] = {}
    for entity, name in re.findall(r"complete (\w+) entity, except `(\w+)`", SPEC.read_text()):
        omitted.setdefault(entity, set()).add(name)
    assert omitted, "the spec's event descriptions name no field left out: the pattern is stale"
    assert omitted == {r.event_entity: set(r.event_omits) for r in RESOURCES if r.event_omits}
