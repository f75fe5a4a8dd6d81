"""The source's parsing, fed the real API's payloads (analytics_dagster_tests/fixtures/paddle, Apache-2.0)."""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from dlt.sources.helpers.rest_client import RESTClient
from requests import Request, Response

from analytics_dagster.rfc3339 import format_ns, parse_ns
from analytics_dagster.source import RESOURCES_BY_NAME, configured_api_root
from analytics_dagster.source.resources import api_root, resource_of_path
from analytics_dagster.source.paginator import json_once
from analytics_dagster.source.paginator import HasMorePaginator, MalformedPageError
from analytics_dagster_tests.conftest import FIXTURES


def response_of(body: bytes, url: str = "https://api.example.com/v1/transactions") -> Response:
    response = Response()
    response.status_code = 200
    response._content = body
    response.url = url
    response.headers["Content-Type"] = "application/json"
    return response


def parse_page(resource: str, body: bytes) -> tuple[list, HasMorePaginator]:
    """What the source does with one page: the JSON hook, the data selector, the paginator."""
    response = response_of(body)
    json_once(resource)(response)
    data = RESTClient(base_url="https://api.example.com").extract_response(
        response, RESOURCES_BY_NAME[resource].data_selector
    )
    paginator = HasMorePaginator(resource)
    paginator.update_state(response, data)
    return data, paginator


@pytest.mark.parametrize(
    "resource, fixture",
    [
        ("customers", "customers/list_default.json"),
        ("customer_addresses", "addresses/list_default.json"),
        ("businesses", "businesses/list_default.json"),
        ("discounts", "discounts/list_default.json"),
        ("prices", "prices/list_default.json"),
        ("products", "products/list_default.json"),
        ("events", "events/list_default.json"),
        ("reports", "reports/list_default.json"),
        ("subscriptions", "subscriptions/list_default.json"),
        ("transactions", "transactions/list_paginated_page_one.json"),
        ("transactions", "transactions/list_paginated_page_two.json"),
    ],
)
def test_real_list_pages_parse(resource: str, fixture: str) -> None:
    raw = (FIXTURES / fixture).read_bytes()
    expected = json.loads(raw)
    data, paginator = parse_page(resource, raw)
    assert data == expected["data"]
    key = RESOURCES_BY_NAME[resource].primary_key
    assert all(record[key] for record in data)
    more = expected["meta"]["pagination"]["has_more"]
    # `next` is on every real page, the last one too: only has_more decides
    assert expected["meta"]["pagination"]["next"]
    assert paginator.has_next_page is more
    for record in data:
        for field in ("created_at", "updated_at", "occurred_at"):
            if record.get(field):
                parse_ns(record[field])


def test_real_unpaginated_payloads_parse() -> None:
    ips = (FIXTURES / "ips" / "ips.json").read_bytes()
    response = response_of(ips)
    json_once("ip_addresses")(response)
    cidrs = RESTClient(base_url="https://api.example.com").extract_response(response, "data.ipv4_cidrs")
    assert cidrs == json.loads(ips)["data"]["ipv4_cidrs"]
    event_types = json.loads((FIXTURES / "event_types" / "list_default.json").read_bytes())
    assert all(e["name"] for e in event_types["data"])


@pytest.mark.parametrize(
    "body, problem",
    [
        (b'{"data": [{"id": 1}', "not valid JSON"),
        (b'{"meta": {"pagination": {"has_more": false, "next": "x"}}}', "no 'data'"),
        (b'{"data": [], "meta": {"pagination": {"next": "x"}}}', "has_more is None"),
        (b'{"data": [], "meta": {"pagination": {"has_more": true}}}', "no next URL"),
    ],
)
def test_bad_pages_name_the_resource(body: bytes, problem: str) -> None:
    with pytest.raises(MalformedPageError) as error:
        parse_page("transactions", body)
    assert "resource 'transactions'" in str(error.value) and problem in str(error.value)
    assert "https://api.example.com/v1/transactions" in str(error.value)


def test_timestamps_keep_order_at_nanoseconds() -> None:
    stamps = ["2023-08-18T12:07:36Z", "2023-08-18T12:07:36.9Z", "2023-08-18T12:07:36.900000001Z",
              "2023-08-18T12:07:37.004032433Z", "2023-08-18T14:07:37.5+02:00"]
    values = [parse_ns(s) for s in stamps]
    assert values == sorted(values) and len(set(values[:4])) == 4
    assert sorted(stamps) != stamps, "as text they would not sort"
    assert format_ns(values[3]) == "2023-08-18T12:07:37.004032433Z"
    assert parse_ns("2023-08-18T14:07:37.5+02:00") == parse_ns("2023-08-18T12:07:37.5Z")
    with pytest.raises(ValueError):
        parse_ns("2023-08-18 noon")
    assert parse_ns("2023-08-18t12:07:37z") == parse_ns("2023-08-18T12:07:37Z")  # RFC 3339 allows both cases
    # what the models' SQL rejects too (macros/warehouse.sql, is_rfc3339): a trailing newline,
    # digits of another script
    for bad in ("2023-08-18T12:07:37Z\n", "\u0662\u0660\u0662\u0663-08-18T12:07:37Z"):
        with pytest.raises(ValueError):
            parse_ns(bad)


def test_progress_counts_across_paginator_copies_and_reports() -> None:
    import copy

    from analytics_dagster.source.progress import Progress

    lines: list[str] = []
    progress = Progress(report=lines.append, every=0.0)
    paginator = HasMorePaginator("customer_addresses", progress=progress)
    for copies in range(3):  # dlt deep-copies a child's paginator for every parent row
        child = copy.deepcopy(paginator)
        assert child.progress is progress
        body = b'{"data": [{"id": "a"}, {"id": "b"}], "meta": {"pagination": {"has_more": false, "next": "x"}}}'
        response = response_of(body)
        json_once("customer_addresses")(response)
        child.update_state(response, [])
    assert progress.summary()[0].startswith("customer_addresses: 3 pages, 6 rows read")
    assert len(lines) == 3 and lines[-1].startswith("customer_addresses: 3 pages, 6 rows")
    quiet = Progress(report=lines.append, every=3600.0)
    quiet.page("events", 10)
    assert len(lines) == 3, "at most one line per resource per interval"


def test_a_listing_in_parts_goes_from_the_last_page_of_one_to_the_first_of_the_next() -> None:
    """prices: `type=standard`, then `type=custom`: the second part's first URL keeps the query
    (page size, order, a change window) without the cursor; each part's estimated total adds up."""
    from analytics_dagster.source.progress import Progress

    progress = Progress()
    told: list[tuple[int, bool, int]] = []
    parts = RESOURCES_BY_NAME["prices"].parts
    paginator = HasMorePaginator("prices", progress=progress, parts=parts,
                                 on_page=lambda data, more, part: told.append((len(data), more, part)) or True)
    paginator.init_request(request := Request("GET", "https://api.example.com/prices", params={"per_page": 2}))
    assert request.params == {"per_page": 2, "status": "active,archived", "type": "standard"}

    def page(url: str, ids: list[str], has_more: bool, total: int) -> None:
        body = {"data": [{"id": i} for i in ids],
                "meta": {"pagination": {"has_more": has_more, "next": f"{url}&after={ids[-1]}",
                                        "estimated_total": total}}}
        response = response_of(json.dumps(body).encode(), url)
        json_once("prices")(response)
        paginator.update_state(response, body["data"])

    first = "https://api.example.com/prices?per_page=2&status=active%2Carchived&type=standard&updated_at%5BGTE%5D=x"
    page(first, ["pri_1", "pri_2"], True, 3)
    assert paginator._next_reference == f"{first}&after=pri_2"
    page(f"{first}&after=pri_2", ["pri_3"], False, 3)  # the last page of the catalog part
    next_url = urlsplit(paginator._next_reference)
    assert dict(parse_qsl(next_url.query)) == {"per_page": "2", "status": "active,archived",
                                               "updated_at[GTE]": "x", "type": "custom"}
    assert paginator.has_next_page
    page(paginator._next_reference, ["pri_9"], False, 1)  # the last page of the last part
    assert not paginator.has_next_page
    assert told == [(2, True, 0), (1, True, 1), (1, False, 1)]
    assert progress.totals["prices"] == 4


def test_the_api_root_by_environment_base_url_and_prefix() -> None:
    assert api_root() == "http://127.0.0.1:8765/v1"  # the seed API, as the local sandbox serves it
    assert api_root("live") == "https://api.paddle.com"  # Paddle's own: no prefix
    assert api_root("sandbox") == "https://sandbox-api.paddle.com"
    assert api_root("LIVE", base_url="http://127.0.0.1:9/") == "http://127.0.0.1:9"
    assert api_root(base_url="https://api.example.com/") == "https://api.example.com/v1"
    assert api_root(base_url="https://api.example.com", path_prefix="") == "https://api.example.com"
    assert api_root("sandbox", path_prefix="v2/") == "https://sandbox-api.paddle.com/v2"
    with pytest.raises(ValueError, match="sources.analytics.environment must be one of"):
        api_root("production")


def test_the_configured_api_root_reads_the_settings_by_their_full_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENVIRONMENT", "BASE_URL", "PATH_PREFIX"):
        monkeypatch.delenv(f"SOURCES__ANALYTICS__{name}", raising=False)
    # a bare ENVIRONMENT belongs to the deployment, not to this API
    monkeypatch.setenv("ENVIRONMENT", "sandbox")
    assert configured_api_root() == "http://127.0.0.1:8765/v1"
    monkeypatch.setenv("SOURCES__ANALYTICS__ENVIRONMENT", "live")
    assert configured_api_root() == "https://api.paddle.com"
    monkeypatch.setenv("SOURCES__ANALYTICS__BASE_URL", "http://127.0.0.1:9")
    assert configured_api_root() == "http://127.0.0.1:9"
    assert configured_api_root("http://127.0.0.1:10") == "http://127.0.0.1:10"
    monkeypatch.setenv("SOURCES__ANALYTICS__PATH_PREFIX", "/v1")
    assert configured_api_root() == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("SOURCES__ANALYTICS__ENVIRONMENT", "staging")
    with pytest.raises(ValueError, match="staging"):
        configured_api_root()


def test_requests_are_counted_by_resource_under_any_prefix() -> None:
    for prefix in ("", "/v1"):
        assert resource_of_path(prefix + "/customers") == "customers"
        assert resource_of_path(prefix + "/customers/ctm_1/addresses") == "customer_addresses"
        assert resource_of_path(prefix + "/event-types") == "event_types"
        assert resource_of_path(prefix + "/events") == "events"
    assert resource_of_path("/v1/nothing") == "/v1/nothing"
