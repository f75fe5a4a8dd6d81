"""The sandbox against the API contract (docs/api.md), clause by clause, over real HTTP."""

from __future__ import annotations

import email.utils
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster_tests.conftest import FIXTURES, REPO, Admin, poll

ID = re.compile(r"^[a-z]{3}_[a-z0-9]{26}$")
LISTS = {
    "customers": "/v1/customers",
    "discounts": "/v1/discounts",
    "prices": "/v1/prices",
    "products": "/v1/products",
    "events": "/v1/events",
    "reports": "/v1/reports",
    "subscriptions": "/v1/subscriptions",
    "transactions": "/v1/transactions",
    "adjustments": "/v1/adjustments",
}


def get(server: SandboxServer, path: str, auth: bool = True, **params: object) -> requests.Response:
    headers = server.auth_header if auth else {}
    return requests.get(server.url + path, params=params, headers=headers, timeout=30)


def walk(server: SandboxServer, path: str, **params: object) -> tuple[list[dict], list[dict]]:
    """Every entity of a list endpoint, by following `next` until `has_more` is false."""
    entities, metas = [], []
    response = get(server, path, **params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        entities += body["data"]
        metas.append(body["meta"])
        if not body["meta"]["pagination"]["has_more"]:
            return entities, metas
        response = requests.get(body["meta"]["pagination"]["next"], headers=server.auth_header, timeout=30)


def test_list_envelope(sandbox: SandboxServer) -> None:
    body = get(sandbox, "/v1/customers").json()
    assert set(body) == {"data", "meta"}
    assert re.match(r"^[0-9a-f-]{36}$", body["meta"]["request_id"])
    assert {"per_page", "next", "has_more", "estimated_total"} <= set(body["meta"]["pagination"])
    assert body["meta"]["pagination"]["per_page"] == 50  # the default


@pytest.mark.parametrize("path", sorted(LISTS.values()))
def test_pagination_follows_next_until_has_more_is_false(sandbox: SandboxServer, path: str) -> None:
    resource = next(name for name, p in LISTS.items() if p == path)
    keys = []
    for params in RESOURCES_BY_NAME[resource].parts:  # the whole resource: every part of its listing
        entities, metas = walk(sandbox, path, per_page=7, **params)
        keys += [e.get("id", e.get("event_id")) for e in entities]
        for meta in metas:  # `next` is absolute, keeps the query, and is there on the last page too
            next_url = urlparse(meta["pagination"]["next"])
            assert next_url.scheme == "http" and next_url.netloc == f"127.0.0.1:{sandbox.port}"
            query = parse_qs(next_url.query)
            assert query["per_page"] == ["7"]
            assert {k: query.get(k) for k in params} == {k: [v] for k, v in params.items()}
            assert "after" in query
        assert [m["pagination"]["has_more"] for m in metas][-1] is False
        assert all(m["pagination"]["has_more"] for m in metas[:-1])
    assert len(keys) == len(set(keys)), "a page repeated an entity"
    assert len(keys) == len(sandbox.world.ids[resource])


def test_per_page_caps(sandbox: SandboxServer) -> None:
    big = World(customers=300, seed=2)
    with SandboxServer(big) as server:
        body = get(server, "/v1/customers", per_page=1000).json()
        assert body["meta"]["pagination"]["per_page"] == 200 and len(body["data"]) == 200
        body = get(server, "/v1/transactions", per_page=1000).json()
        assert body["meta"]["pagination"]["per_page"] == 30 and len(body["data"]) == 30
    error = get(sandbox, "/v1/customers", per_page="many")
    assert error.status_code == 400 and error.json()["error"]["errors"][0]["field"] == "per_page"


def test_order_by_id(sandbox: SandboxServer) -> None:
    default = [e["id"] for e in get(sandbox, "/v1/customers", per_page=200).json()["data"]]
    ascending = [e["id"] for e in get(sandbox, "/v1/customers", per_page=200, order_by="id[ASC]").json()["data"]]
    assert default == sorted(default, reverse=True)
    assert ascending == sorted(default)
    # the direction in either case, as the real API takes it (Paddle's SDK sends `id[asc]`)
    for order_by, expected in [("id[asc]", ascending), ("id[desc]", default), ("ID[Desc]", default)]:
        got = [e["id"] for e in get(sandbox, "/v1/customers", per_page=200, order_by=order_by).json()["data"]]
        assert got == expected, order_by
    for order_by in ("name[ASC]", "id", "id[up]", "updated_at[DESC]"):  # products only take updated_at
        bad = get(sandbox, "/v1/customers", order_by=order_by)
        assert bad.status_code == 400 and bad.json()["error"]["errors"][0]["field"] == "order_by", order_by


def test_products_order_by_updated_at_either_way(sandbox: SandboxServer) -> None:
    truth = sandbox.world.truth("products")
    oldest_first = [p["id"] for p in sorted(truth, key=lambda p: (parse_ns(p["updated_at"]), p["id"]))]
    for order_by, expected in [("updated_at[ASC]", oldest_first), ("updated_at[desc]", oldest_first[::-1])]:
        got, _ = walk(sandbox, "/v1/products", per_page=2, status="active,archived", type="standard,custom",
                      order_by=order_by)
        assert [p["id"] for p in got] == expected, order_by


def test_unprefixed_paths_serve_the_same_api() -> None:
    """`path_prefix=""`: the paths of Paddle's own API (`/customers`), the same data and paging."""
    with SandboxServer(World(customers=30, seed=3)) as prefixed, \
            SandboxServer(World(customers=30, seed=3), path_prefix="") as bare:
        assert bare.path_prefix == "" and prefixed.path_prefix == "/v1"
        for path in ["/customers", "/transactions", "/events", "/event-types", "/ips"]:
            params = {"per_page": 7, "order_by": "id[ASC]"} if path not in ("/event-types", "/ips") else {}
            assert get(bare, path, **params).json()["data"] == get(prefixed, "/v1" + path, **params).json()["data"]
            assert get(bare, "/v1" + path).status_code == 404
            assert get(prefixed, path).status_code == 404
        customer = bare.world.ids["customers"][0]
        assert get(bare, f"/customers/{customer}/addresses", status="active,archived").status_code == 200
        entities, metas = walk(bare, "/transactions", per_page=7)
        assert len(entities) == len(bare.world.ids["transactions"])
        assert all(urlparse(m["pagination"]["next"]).path == "/transactions" for m in metas)
        assert Admin(bare.url).get("counts") == Admin(prefixed.url).get("counts"), "admin stays at /_admin"
    with pytest.raises(ValueError):
        SandboxServer(World(customers=1), path_prefix="v1/")


def test_archived_hidden_unless_asked() -> None:
    with SandboxServer(World(customers=200, seed=4)) as server:
        for resource, path in [("customers", "/v1/customers"), ("prices", "/v1/prices")]:
            statuses = [e["status"] for e in server.world.truth(resource)]
            assert "archived" in statuses, "the seed world should archive some"
            shown, _ = walk(server, path)
            assert {e["status"] for e in shown} == {"active"}
            everything, _ = walk(server, path, status="active,archived", **({"type": "standard,custom"}
                                                                             if resource == "prices" else {}))
            assert len(everything) == len(statuses)


def test_transactions_updated_at_filters(sandbox: SandboxServer) -> None:
    truth = sandbox.world.truth("transactions")
    pivot = sorted(truth, key=lambda t: parse_ns(t["updated_at"]))[len(truth) // 2]
    at = parse_ns(pivot["updated_at"])
    expect = {
        "GT": {t["id"] for t in truth if parse_ns(t["updated_at"]) > at},
        "GTE": {t["id"] for t in truth if parse_ns(t["updated_at"]) >= at},
        "LT": {t["id"] for t in truth if parse_ns(t["updated_at"]) < at},
        "LTE": {t["id"] for t in truth if parse_ns(t["updated_at"]) <= at},
    }
    for op, ids in expect.items():
        got, _ = walk(sandbox, "/v1/transactions", **{f"updated_at[{op}]": pivot["updated_at"]})
        assert {t["id"] for t in got} == ids, op
    assert pivot["id"] in expect["GTE"] and pivot["id"] not in expect["GT"]
    bad = get(sandbox, "/v1/transactions", **{"updated_at[GT]": "yesterday"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_field"


def test_events_after_ascending_returns_only_newer(sandbox: SandboxServer) -> None:
    ids = sandbox.world.ids["events"]
    middle = ids[len(ids) // 2]
    newer, _ = walk(sandbox, "/v1/events", after=middle, order_by="id[ASC]", per_page=50)
    assert [e["event_id"] for e in newer] == ids[len(ids) // 2 + 1 :]
    assert all({"event_id", "event_type", "occurred_at", "data"} <= set(e) for e in newer)


def test_ips_is_an_object_and_event_types_unpaginated(sandbox: SandboxServer) -> None:
    ips = get(sandbox, "/v1/ips").json()
    assert set(ips["data"]) == {"ipv4_cidrs"} and "pagination" not in ips["meta"]
    assert all(re.match(r"^\d+\.\d+\.\d+\.\d+/\d+$", c) for c in ips["data"]["ipv4_cidrs"])
    types = get(sandbox, "/v1/event-types").json()
    assert "pagination" not in types["meta"] and len(types["data"]) == 31
    assert set(types["data"][0]) == {"name", "description", "group", "available_versions"}


def test_authentication_errors(sandbox: SandboxServer) -> None:
    missing = get(sandbox, "/v1/customers", auth=False)
    wrong = requests.get(sandbox.url + "/v1/customers", headers={"Authorization": "Bearer nope"}, timeout=10)
    for response, code in [(missing, "authentication_missing"), (wrong, "invalid_token")]:
        assert response.status_code == 403
        body = response.json()
        assert body["error"]["code"] == code
        assert {"type", "code", "detail", "documentation_url"} <= set(body["error"])
        assert "request_id" in body["meta"]


def test_children_per_customer(sandbox: SandboxServer) -> None:
    world = sandbox.world
    address_counts, business_counts = set(), set()
    for customer_id in world.ids["customers"]:
        addresses, _ = walk(sandbox, f"/v1/customers/{customer_id}/addresses", status="active,archived")
        businesses, _ = walk(sandbox, f"/v1/customers/{customer_id}/businesses", status="active,archived")
        assert all(a["customer_id"] == customer_id and a["id"].startswith("add_") for a in addresses)
        assert all(b["customer_id"] == customer_id and b["id"].startswith("biz_") for b in businesses)
        address_counts.add(len(addresses))
        business_counts.add(len(businesses))
    assert address_counts <= {0, 1, 2, 3} and len(address_counts) > 1
    assert business_counts <= {0, 1, 2} and len(business_counts) > 1
    assert get(sandbox, "/v1/customers/ctm_nobody/addresses").status_code == 404


def test_ids_and_timestamps(sandbox: SandboxServer) -> None:
    digits = set()
    for resource in ["customers", "customer_addresses", "transactions", "events", "subscriptions"]:
        truth = sandbox.world.truth(resource)
        key = "event_id" if resource == "events" else "id"
        keys = [e[key] for e in truth]
        assert all(ID.match(k) for k in keys)
        assert keys == sorted(keys), "ids are time-ordered, so creation order is id order"
        for entity in truth:
            for field in ("created_at", "updated_at", "occurred_at"):
                if field in entity:
                    parse_ns(entity[field])
                    fraction = re.search(r"\.(\d+)Z$", entity[field])
                    digits.add(len(fraction.group(1)) if fraction else 0)
            if "created_at" in entity:
                assert parse_ns(entity["updated_at"]) >= parse_ns(entity["created_at"])
    assert digits == set(range(10)), f"fractional digits seen: {sorted(digits)}"


def test_entities_have_the_real_payload_shapes(sandbox: SandboxServer) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "paddle"
    pairs = [
        ("customers", "customers"), ("customer_addresses", "addresses"), ("businesses", "businesses"),
        ("discounts", "discounts"), ("prices", "prices"), ("products", "products"),
        ("subscriptions", "subscriptions"), ("reports", "reports"), ("transactions", "transactions"),
        ("adjustments", "adjustments"),
    ]
    for resource, folder in pairs:
        name = "list_paginated_page_one.json" if folder == "transactions" else "list_default.json"
        real = json.loads((fixtures / folder / name).read_text())["data"][0]
        ours = sandbox.world.truth(resource)[0]
        missing = set(real) - set(ours)
        assert not missing, f"{resource} lacks fields of the real API: {missing}"
        amounts = [v for k, v in ours.get("unit_price", {}).items() if k == "amount"]
        assert all(isinstance(a, str) for a in amounts), "amounts are strings"


def test_every_subscription_has_an_address_of_its_customer() -> None:
    """The spec types a subscription's `address_id` as a string: a customer with no address is
    given one with its subscription (and its `address.created` event)."""
    world = World(customers=200, seed=4)
    subscriptions = world.truth("subscriptions")
    assert subscriptions
    for subscription in subscriptions:
        address = world.entities["customer_addresses"].get(subscription["address_id"])
        assert address and address["customer_id"] == subscription["customer_id"], subscription["id"]


def test_the_spec_shapes_are_produced_for_a_share_of_entities(sandbox: SandboxServer, admin: Admin) -> None:
    """Subscription discounts, transaction payments and adjustment snapshots, as the real
    payloads have them, for a realistic share of entities (not for none, not for all)."""
    world = World(customers=300, seed=2)
    subscriptions, transactions = world.truth("subscriptions"), world.truth("transactions")
    discounted = [s for s in subscriptions if s["discount"] is not None]
    assert 0.1 < len(discounted) / len(subscriptions) < 0.3
    for subscription in discounted:
        discount = subscription["discount"]
        assert set(discount) == {"id", "type", "starts_at", "ends_at"} and discount["id"] in world.entities["discounts"]
        assert discount["type"] in ("recurring", "one-off")
        assert parse_ns(discount["starts_at"]) <= parse_ns(discount["ends_at"] or discount["starts_at"])
    templates = REPO / "analytics_dagster" / "sandbox" / "templates"  # copies of real payloads
    real_payment = json.loads((templates / "transaction_payment.json").read_text())
    paid = [t for t in transactions if t["status"] in ("paid", "completed")]
    assert paid and len(paid) < len(transactions)
    for txn in transactions:
        payments = txn["payments"]
        assert all(set(p) == set(real_payment) for p in payments), txn["id"]
        captured = [p for p in payments if p["status"] == "captured"]
        assert len(captured) == (1 if txn in paid else 0), txn["id"]
        assert all(p["captured_at"] and p["error_code"] is None and p["amount"] == txn["details"]["totals"]["total"]
                   for p in captured)
        assert all(p["error_code"] and p["captured_at"] is None for p in payments if p["status"] == "error")
    # a transaction paid later, or falling past due, gets an attempt more; every event keeps the
    # payments of its moment (a later one only adds to them)
    world.advance(updates=600)
    snapshots: dict[str, list[list[dict]]] = {}
    for event in world.truth("events"):
        if event["event_type"].startswith("transaction."):
            snapshots.setdefault(event["data"]["id"], []).append(event["data"]["payments"])
    grown = 0
    for key, seen in snapshots.items():
        for earlier, later in zip(seen, seen[1:]):
            assert later[: len(earlier)] == earlier, key
            grown += len(later) > len(earlier)
        assert seen[-1] == world.entities["transactions"][key]["payments"], key
    assert grown > 0
    # adjustments: listed, and the whole entity in the `data` of its event
    touched = admin.post("advance", adjustments=3)
    events = [e for e in admin.truth("events") if e["event_id"] in touched["events"]]
    assert [e["event_type"] for e in events] == ["adjustment.created"] * 3
    real_adjustment = json.loads((templates / "adjustment.json").read_text())
    listed = {a["id"]: a for a in admin.truth("adjustments")}
    assert sorted(e["data"]["id"] for e in events) == touched["adjustments"]
    for event in events:
        adjustment = event["data"]
        assert set(real_adjustment) <= set(adjustment) and adjustment == listed[adjustment["id"]]
        assert parse_ns(event["occurred_at"]) >= parse_ns(adjustment["created_at"])
    assert_adjustments_are_of_their_transactions(admin.truth("adjustments"), admin.truth("transactions"))


def assert_adjustments_are_of_their_transactions(adjustments: list[dict], transactions: list[dict]) -> None:
    """Each adjustment is of a completed or billed transaction of the world, in its currency and
    of its customer; its items name that transaction's line items and take no more than they
    hold (its refunds, credits and chargebacks together, rejected ones aside); and its totals
    add up: subtotal + tax = total, item by item and in all (minor units, as strings)."""
    txns = {t["id"]: t for t in transactions}
    taken: dict[tuple[str, str], int] = {}
    for adjustment in adjustments:
        txn = txns[adjustment["transaction_id"]]
        assert txn["status"] in ("completed", "billed", "paid", "past_due"), adjustment["id"]
        assert adjustment["customer_id"] == txn["customer_id"] and adjustment["currency_code"] == txn["currency_code"]
        assert parse_ns(adjustment["created_at"]) > parse_ns(txn["created_at"])
        assert adjustment["action"] in ("refund", "credit", "chargeback")
        assert adjustment["status"] in ("pending_approval", "approved", "rejected")
        lines = {line["id"]: int(line["totals"]["total"]) for line in txn["details"]["line_items"]}
        for item in adjustment["items"]:
            assert item["item_id"] in lines, (adjustment["id"], item["item_id"])
            totals = item["totals"]
            assert int(totals["subtotal"]) + int(totals["tax"]) == int(totals["total"]) == int(item["amount"]) > 0
            assert item["type"] == ("full" if int(item["amount"]) == lines[item["item_id"]] else "partial")
            if adjustment["status"] != "rejected":
                key = (txn["id"], item["item_id"])
                taken[key] = taken.get(key, 0) + int(item["amount"])
                assert taken[key] <= lines[item["item_id"]], key
        totals = adjustment["totals"]
        assert all(isinstance(v, str) for v in totals.values())
        for field in ("subtotal", "tax", "total"):
            assert int(totals[field]) == sum(int(i["totals"][field]) for i in adjustment["items"]), field
            assert int(adjustment["payout_totals"][field]) == int(totals[field])
            assert int(totals[field]) == sum(int(r["totals"][field]) for r in adjustment["tax_rates_used"])
        assert int(totals["subtotal"]) + int(totals["tax"]) == int(totals["total"])
        assert int(totals["earnings"]) == int(totals["subtotal"]) - int(totals["fee"])
        assert totals["currency_code"] == txn["currency_code"]


def test_adjustments_are_refunds_credits_and_chargebacks_of_real_transaction_items() -> None:
    """The initial world's adjustments (its history: a refund reviewed after it was made) and
    those `advance` makes, listed, each with its events; updates review pending refunds."""
    world = World(customers=300, seed=3)  # (one whose refunds include a rejected one)
    adjustments = world.truth("adjustments")
    assert len(adjustments) == 300 // 8, "max(2, N / 8) in the initial world"
    assert {a["action"] for a in adjustments} == {"refund", "credit", "chargeback"}
    assert {a["type"] for a in adjustments} == {"full", "partial"}
    assert {"approved", "rejected"} <= {a["status"] for a in adjustments}
    assert all(a["status"] == "approved" for a in adjustments if a["action"] != "refund"), "only refunds wait"
    assert_adjustments_are_of_their_transactions(adjustments, world.truth("transactions"))
    cutoff = world.retention_cutoff_ns()
    events = [e for e in world.truth("events") if e["event_type"].startswith("adjustment.")]
    recent = {a["id"] for a in adjustments if parse_ns(a["created_at"]) >= cutoff}
    assert recent and {e["data"]["id"] for e in events if e["event_type"] == "adjustment.created"} == recent
    reviewed = [e for e in events if e["event_type"] == "adjustment.updated"]
    assert reviewed and all(e["data"]["status"] in ("approved", "rejected") for e in reviewed)
    waiting = {a["id"] for a in adjustments if a["status"] == "pending_approval"}  # of the last 3 days
    made = world.advance(adjustments=12)
    assert len(made["adjustments"]) == 12
    listed = {a["id"]: a for a in world.truth("adjustments")}
    pending = {k for k, a in listed.items() if a["status"] == "pending_approval"}
    assert pending - waiting == {k for k in made["adjustments"] if listed[k]["action"] == "refund"}, \
        "refunds wait for approval"
    assert pending - waiting
    # an update picks any entity, a pending refund among them: a few rounds, whatever the seed's data
    for _ in range(10):
        updated = world.advance(updates=400)
        if updated.get("adjustments"):
            break
    assert updated["adjustments"] and set(updated["adjustments"]) <= pending, "updates review pending refunds"
    current = {a["id"]: a for a in world.truth("adjustments")}
    assert all(current[k]["status"] in ("approved", "rejected") for k in updated["adjustments"])
    latest = {e["data"]["id"]: e for e in world.truth("events") if e["event_type"].startswith("adjustment.")}
    assert all(latest[k]["data"] == current[k] and latest[k]["event_type"] == "adjustment.updated"
               for k in updated["adjustments"])
    assert_adjustments_are_of_their_transactions(world.truth("adjustments"), world.truth("transactions"))


def test_report_filters_are_named_for_their_type() -> None:
    names = {"transactions": "updated_at", "adjustments": "updated_at", "discounts": "updated_at",
             "products_prices": "product_updated_at"}
    reports = World(customers=1000, seed=4).truth("reports")  # a world with reports of every type
    assert {r["type"] for r in reports} == set(names)
    assert all(f["name"] == names[r["type"]] for r in reports for f in r["filters"])


def test_determinism_and_scale() -> None:
    a, b, c = World(customers=60, seed=11), World(customers=60, seed=11), World(customers=60, seed=12)
    assert a.truth("transactions") == b.truth("transactions")
    assert a.truth("customers") != c.truth("customers")
    a.advance(updates=5, archives=2, new_customers=3, new_transactions=4)
    b.advance(updates=5, archives=2, new_customers=3, new_transactions=4)
    assert all(a.truth(r) == b.truth(r) for r in a.entities)
    catalog = World(customers=400, seed=1)
    counts = catalog.counts()
    assert counts["customers"] == 400
    assert 1.2 * 400 < counts["customer_addresses"] < 1.8 * 400
    assert 0.8 * 400 < counts["businesses"] < 1.2 * 400
    assert 1.6 * 400 < counts["transactions"] < 2.4 * 400
    # the catalog: N/20 products, 2 prices each; the non-catalog ones made with a tenth of
    # transactions and subscriptions; the 2nd discount, then one in four, custom
    assert sum(p["type"] == "standard" for p in catalog.truth("products")) == 20
    assert sum(p["type"] == "standard" for p in catalog.truth("prices")) == 40
    custom = sum(p["type"] == "custom" for p in catalog.truth("prices"))
    assert 0.05 * (counts["transactions"] + counts["subscriptions"]) < custom < 0.15 * (
        counts["transactions"] + counts["subscriptions"])
    assert counts["discounts"] == 20 and sum(d["mode"] == "custom" for d in catalog.truth("discounts")) == 5


def test_admin_advance_changes_the_world(sandbox: SandboxServer, admin: Admin) -> None:
    before = {r: {e.get("id", e.get("event_id")): e for e in admin.truth(r)} for r in LISTS}
    touched = admin.post("advance", updates=10, archives=3, new_customers=2, new_transactions=3)
    assert len(touched["customers"]) >= 2 and len(touched["transactions"]) >= 3
    after_customers = {e["id"]: e for e in admin.truth("customers")}
    for key in touched["customers"]:
        if key in before["customers"]:
            assert parse_ns(after_customers[key]["updated_at"]) > parse_ns(before["customers"][key]["updated_at"])
    new = set(after_customers) - set(before["customers"])
    assert len(new) == 2
    assert len(admin.truth("events")) > len(before["events"])
    addresses = admin.truth("customer_addresses")
    assert all(a["customer_id"] in after_customers for a in addresses)
    same = admin.post("advance", updates=4, same_instant=True)
    stamps = {e["updated_at"] for r, keys in same.items() if r != "events"
              for e in admin.truth(r) if e.get("id") in keys}
    assert len(stamps) == 1
    # new subscriptions of existing customers, active, each with its subscription.created event
    customers = set(after_customers)
    touched = admin.post("advance", new_subscriptions=2)
    subs = {s["id"]: s for s in admin.truth("subscriptions")}
    assert len(touched["subscriptions"]) == 2
    assert all(subs[k]["status"] == "active" and subs[k]["customer_id"] in customers for k in touched["subscriptions"])
    created = {e["data"]["id"] for e in admin.truth("events") if e["event_id"] in touched["events"]
               and e["event_type"] == "subscription.created"}
    assert created == set(touched["subscriptions"])


def test_faults_are_retryable_kinds_and_reproducible() -> None:
    def statuses() -> list[tuple[int, str, str]]:
        config = SandboxConfig(fault_rate=0.5, fault_max_consecutive=100)
        with SandboxServer(World(customers=10, seed=5), config=config) as server:
            seen = []
            for i in range(60):
                r = get(server, "/v1/customers", per_page=i + 1)
                seen.append((r.status_code, r.headers.get("content-type", ""), r.headers.get("retry-after", "")))
                if r.status_code == 502:
                    assert r.text.lstrip().startswith("<html")
                if r.status_code == 504:
                    assert r.content == b""
                if r.status_code in (500, 503):
                    assert r.json()["error"]["code"] in ("internal_error", "service_unavailable")
            return seen

    first, second = statuses(), statuses()
    assert first == second, "faults are reproducible from the seed"
    codes = {s for s, _, _ in first}
    assert {200, 429, 500, 502, 503, 504} <= codes
    assert all(ra == "1" for s, _, ra in first if s == 429)


def test_faults_are_transient() -> None:
    config = SandboxConfig(fault_rate=0.9, fault_max_consecutive=2)
    with SandboxServer(World(customers=5, seed=5), config=config) as server:
        for _ in range(5):
            codes = [get(server, "/v1/products").status_code for _ in range(3)]
            assert 200 in codes, "at most two faults in a row for one request"


def test_rate_limit_blocks_then_recovers() -> None:
    config = SandboxConfig(rate_limit=5, rate_limit_block=1.0)
    with SandboxServer(World(customers=5, seed=5), config=config) as server:
        codes = [get(server, "/v1/products").status_code for _ in range(5)]
        assert codes == [200] * 5
        limited = get(server, "/v1/products")
        assert limited.status_code == 429 and limited.json()["error"]["code"] == "too_many_requests"
        # the documentation URL Paddle itself sends (its 429 payload, in the fixtures)
        paddle = json.loads((FIXTURES / "errors" / "too_many_requests_error.json").read_text())
        assert limited.json()["error"]["documentation_url"] == paddle["error"]["documentation_url"]
        assert int(limited.headers["Retry-After"]) >= 1
        assert get(server, "/v1/products").status_code == 429, "the client stays blocked"
        poll(lambda: get(server, "/v1/products").status_code == 200, timeout=10, interval=0.2)


def test_latency_is_added() -> None:
    with SandboxServer(World(customers=5, seed=5), config=SandboxConfig(latency=0.2)) as server:
        started = time.monotonic()
        assert get(server, "/v1/products").status_code == 200
        assert time.monotonic() - started >= 0.2


def test_injected_bad_pages(sandbox: SandboxServer, admin: Admin) -> None:
    admin.post("inject", resource="products", kind="no_has_more")
    assert "has_more" not in get(sandbox, "/v1/products").json()["meta"]["pagination"]
    admin.post("inject", resource="products", kind="malformed_json")
    with pytest.raises(ValueError):
        get(sandbox, "/v1/products").json()
    admin.post("inject", resource="products", kind="status", status=503, count=2)
    assert [get(sandbox, "/v1/products").status_code for _ in range(3)] == [503, 503, 200]


def test_admin_config_hides_the_key(sandbox: SandboxServer, admin: Admin) -> None:
    config = admin.post("config", latency=0.0)
    assert "api_key" not in config and sandbox.config.api_key not in json.dumps(config)


def test_cli_serves_on_a_free_port(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "analytics_dagster.sandbox.cli", "--port", "0", "--customers", "12",
         "--seed", "3", "--api-key", "cli-key"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        response = requests.get(url.group(0) + "/v1/customers", headers={"Authorization": "Bearer cli-key"}, timeout=10)
        assert response.status_code == 200 and len(response.json()["data"]) == 12 - sum(
            1 for e in World(customers=12, seed=3).truth("customers") if e["status"] == "archived"
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def all_events(server: SandboxServer, after: str | None = None) -> list[dict]:
    params = {"order_by": "id[ASC]", "per_page": 200, **({"after": after} if after else {})}
    return walk(server, "/v1/events", **params)[0]


def test_every_create_and_update_emits_an_event_with_the_snapshot(sandbox: SandboxServer, admin: Admin) -> None:
    world = sandbox.world
    cutoff = world.retention_cutoff_ns()
    events = all_events(sandbox)
    assert events and all(parse_ns(e["occurred_at"]) >= cutoff for e in events)
    created = {e["data"]["id"] for e in events if e["event_type"].endswith(".created")}
    for table in ("customers", "customer_addresses", "businesses", "subscriptions", "transactions"):
        recent = {e["id"] for e in admin.truth(table) if parse_ns(e["created_at"]) >= cutoff}
        assert recent and recent <= created, table
    newest = events[-1]["event_id"]
    touched = admin.post("advance", updates=20, archives=4, new_customers=3, new_transactions=3, adjustments=2)
    new = all_events(sandbox, after=newest)
    assert [e["event_id"] for e in new] == sorted(touched["events"])
    latest: dict[str, dict] = {}
    for event in new:  # the last event of an entity holds its current snapshot
        latest[event["data"]["id"]] = event
    prefixes = {"customers": "customer", "customer_addresses": "address", "businesses": "business",
                "discounts": "discount", "prices": "price", "products": "product",
                "subscriptions": "subscription", "transactions": "transaction"}
    for table, prefix in prefixes.items():
        for key in touched.get(table, []):
            entity = next(e for e in admin.truth(table) if e["id"] == key)
            # what Paddle's events leave out (`management_urls`, `times_used`), the snapshot lacks
            omitted = RESOURCES_BY_NAME[table].event_omits
            assert all(name in entity and name not in latest[key]["data"] for name in omitted), (table, key)
            whole = {k: v for k, v in entity.items() if k not in omitted}
            assert latest[key]["event_type"].startswith(prefix + ".") and latest[key]["data"] == whole, (table, key)
    assert sum(e["event_type"] == "adjustment.created" for e in new) == 2
    archived = [e for e in new if e["event_type"].endswith(".updated") and e["data"].get("status") == "archived"]
    assert len(archived) >= 4, "an archive is an update event"


def test_events_past_the_retention_are_not_listed_and_date_is_the_world_clock(sandbox: SandboxServer, admin: Admin) -> None:
    response = get(sandbox, "/v1/events", per_page=1)
    date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert date == sandbox.world.clock_ns // 10**9
    newest = all_events(sandbox)[-1]["event_id"]
    admin.post("advance", seconds=91 * 24 * 3600)
    assert all_events(sandbox) == [] and all_events(sandbox, after=newest) == []
    assert admin.get("counts")["events"] == 0 and admin.truth("events") == []
    later = email.utils.parsedate_to_datetime(get(sandbox, "/v1/events").headers["Date"]).timestamp()
    assert later - date >= 91 * 24 * 3600
    touched = admin.post("advance", updates=3)
    assert [e["event_id"] for e in all_events(sandbox, after=newest)] == touched["events"]


def test_a_raw_event_swapped_cidrs_and_new_event_types(sandbox: SandboxServer, admin: Admin) -> None:
    bad = admin.post("event", event_type="customer.updated", data={"name": "no id"})
    assert all_events(sandbox)[-1] == bad
    before = get(sandbox, "/v1/ips").json()["data"]["ipv4_cidrs"]
    touched = admin.post("advance", cidrs_swapped=1, new_event_types=1)
    after = get(sandbox, "/v1/ips").json()["data"]["ipv4_cidrs"]
    gone, new = touched["ip_addresses"]
    assert gone in before and gone not in after and new in after and len(after) == len(before)
    names = [t["name"] for t in get(sandbox, "/v1/event-types").json()["data"]]
    assert touched["event_types"][0] in names


def test_precision_traps_make_a_later_change_read_earlier(sandbox: SandboxServer, admin: Admin) -> None:
    before = len(admin.truth("events"))
    admin.post("advance", precision_traps=3)
    events = admin.truth("events")[before:]
    assert len(events) == 6
    for first, second in zip(events[::2], events[1::2]):
        assert first["data"]["id"] == second["data"]["id"] and first["event_id"] < second["event_id"]
        assert re.search(r"\.9\d{5}Z$", first["data"]["updated_at"]) and second["data"]["updated_at"].endswith(".9Z")
        assert parse_ns(second["data"]["updated_at"]) < parse_ns(first["data"]["updated_at"])


def test_ordinary_rounds_cut_stamps_so_a_later_change_can_read_earlier() -> None:
    world = World(customers=30, seed=5)
    first = len(world.ids["events"])
    for _ in range(20):
        world.advance(updates=40, seconds=0.2)
    newest: dict[str, int] = {}
    earlier = 0
    for key in world.ids["events"][first:]:  # in the order of the changes
        snapshot = world.entities["events"][key]["data"]
        stamp = parse_ns(snapshot["updated_at"])
        earlier += snapshot["id"] in newest and stamp < newest[snapshot["id"]]
        newest[snapshot["id"]] = stamp
    assert earlier > 0, "stamps cut to their digits: within one second a later change reads earlier"


def test_a_held_event_is_listed_only_once_released(sandbox: SandboxServer, admin: Admin) -> None:
    customer = admin.truth("customers")[0]["id"]
    held = admin.post("mutate", resource="customers", key=customer, set={"name": "held"}, hold_event=True)
    admin.post("advance", seconds=2, new_customers=2)  # later events, none of this customer's
    listed = [e["event_id"] for e in all_events(sandbox)]
    assert held["event_id"] not in listed and max(listed) > held["event_id"], "later events are listed already"
    assert {c["id"]: c for c in admin.truth("customers")}[customer]["name"] == "held", "the change itself is visible"
    assert admin.post("release", event_ids=[held["event_id"]]) == {"released": [held["event_id"]]}
    assert held["event_id"] in [e["event_id"] for e in all_events(sandbox)]


def test_malformed_events_are_listed_as_sent(sandbox: SandboxServer, admin: Admin) -> None:
    no_data = admin.post("event", event_type="customer.updated", drop=["data"])
    admin.post("event", event_type="transaction.updated", data={"id": "txn_x"}, event_id=12345)
    admin.post("event", event_type="business.updated", data={"id": "biz_x"}, drop=["event_id"])
    tail = all_events(sandbox)[-3:]
    assert tail[0]["event_id"] == no_data["event_id"] and "data" not in tail[0]
    assert tail[1]["event_id"] == 12345 and "event_id" not in tail[2]


def test_the_request_log_keeps_each_request_as_it_came(sandbox: SandboxServer, admin: Admin) -> None:
    get(sandbox, "/v1/customers", status="active,archived", per_page=3)
    get(sandbox, "/v1/transactions", auth=False, **{"updated_at[GTE]": "2024-01-01T00:00:00Z"})
    requests.post(sandbox.url + "/v1/customers", headers=sandbox.auth_header, timeout=30)
    get(sandbox, "/v1/nothing-here")
    admin.get("counts")  # the admin interface's own are no API requests
    log = admin.get("requests")
    assert log["logged"] == 4 and [(r["method"], r["path"], r["status"]) for r in log["requests"]] == [
        ("GET", "/v1/customers", 200), ("GET", "/v1/transactions", 403), ("POST", "/v1/customers", 405),
        ("GET", "/v1/nothing-here", 404)]
    assert log["requests"][0]["query"] == "status=active%2Carchived&per_page=3"  # raw, as sent
    assert log["requests"][1]["query"] == "updated_at%5BGTE%5D=2024-01-01T00%3A00%3A00Z"
    admin.post("stats/reset")
    assert admin.get("requests") == {"logged": 0, "requests": []}
