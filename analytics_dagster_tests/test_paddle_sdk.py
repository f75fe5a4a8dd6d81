"""Conformance: Paddle's official Python SDK (`paddle-python-sdk`, a test dependency) drives the
sandbox, a client nobody on this project wrote.

It reads every list the sandbox serves (the project's resources; the SDK's other lists,
such as notifications, are none of the project's), every page, with the filters
the project relies on (status, `after` with `order_by`, `updated_at` bounds, the event stream)
and those the sandbox serves for adjustments (`action`, `transaction_id`),
and parses every entity with no error and no fallback to raw data: no event `data` left as an
`UndefinedEntity`, no enum value it does not know. The sandbox serves Paddle's own paths (no `/v1`), so the only adjustment the
SDK needs is its base URL: `LoopbackEnvironment`, below, the one place that makes it.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
from paddle_billing import Client, Environment, Options
from paddle_billing.Entities.Adjustment import Adjustment as ListedAdjustment
from paddle_billing.Entities.Discounts.DiscountMode import DiscountMode
from paddle_billing.Entities.Reports import ReportStatus
from paddle_billing.Entities.Shared import Action, AdjustmentStatus, CatalogType, Status, TransactionStatus
from paddle_billing.Entities.Subscriptions import SubscriptionStatus
from paddle_billing.Notifications.Entities.Adjustment import Adjustment
from paddle_billing.Notifications.Entities.UndefinedEntity import UndefinedEntity
from paddle_billing.PaddleStrEnum import PaddleStrEnum
from paddle_billing.Resources.Addresses.Operations import ListAddresses
from paddle_billing.Resources.Adjustments.Operations import ListAdjustments
from paddle_billing.Resources.Businesses.Operations import ListBusinesses
from paddle_billing.Resources.Customers.Operations import ListCustomers
from paddle_billing.Resources.Discounts.Operations import ListDiscounts
from paddle_billing.Resources.Events.Operations import ListEvents
from paddle_billing.Resources.Prices.Operations import ListPrices
from paddle_billing.Resources.Products.Operations import ListProducts
from paddle_billing.Resources.Reports.Operations import ListReports
from paddle_billing.Resources.Shared.Operations import Comparator, DateComparison, OrderBy, Pager
from paddle_billing.Resources.Subscriptions.Operations import ListSubscriptions
from paddle_billing.Resources.Transactions.Operations import ListTransactions

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxServer, World
from analytics_dagster.source.resources import api_root

BOTH = [Status.Active, Status.Archived]  # the project lists archived entities too
TYPES = [CatalogType.Standard, CatalogType.Custom]  # ... and non-catalog prices and products


class LoopbackEnvironment:
    """The SDK's base URL, pointed at the sandbox: the one adjustment the SDK needs.

    The SDK's `Environment` names Paddle's two hosts only, and its client joins every path
    (`/customers`, ...) to `options.environment.base_url`: this stands in for it with the
    sandbox's loopback URL. The paths and everything else are the SDK's own.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url


@pytest.fixture(scope="module")
def paddle_sandbox() -> Iterator[SandboxServer]:
    """A sandbox serving Paddle's paths (no `/v1`), with a history and a round of every change."""
    world = World(customers=120, seed=23)
    world.advance(updates=120, archives=12, new_customers=6, new_transactions=25, adjustments=8,
                  precision_traps=2, seconds=3600)
    with SandboxServer(world, path_prefix="") as server:
        yield server


@pytest.fixture(scope="module")
def client(paddle_sandbox: SandboxServer) -> Client:
    return Client(paddle_sandbox.config.api_key, options=Options(LoopbackEnvironment(paddle_sandbox.url)))


def fallbacks(value: Any, where: str = "") -> list[str]:
    """Where the SDK fell back to raw data: an `UndefinedEntity` (a `data` it could not parse)
    or an enum value it does not know (named `Undefined`)."""
    if isinstance(value, UndefinedEntity):
        return [f"{where}: not parsed ({sorted(value.to_dict())[:8]}...)"]
    if isinstance(value, PaddleStrEnum):
        return [f"{where}: unknown value {value.value!r}"] if value.name == PaddleStrEnum._unknown_name else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [p for f in dataclasses.fields(value) for p in fallbacks(getattr(value, f.name), f"{where}.{f.name}")]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in fallbacks(item, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [p for k, item in value.items() for p in fallbacks(item, f"{where}.{k}")]
    return []


def parsed(entities: list[Any], kind: str) -> list[Any]:
    problems = [p for e in entities for p in fallbacks(e, f"{kind} {getattr(e, 'id', getattr(e, 'event_id', ''))}")]
    assert not problems, problems[:10]
    return entities


def ids(entities: list[Any]) -> list[str]:
    return [getattr(e, "id", None) or e.event_id for e in entities]


def test_the_project_environments_are_the_sdk_s() -> None:
    """`environment = live | sandbox` names the hosts Paddle's own client uses."""
    assert api_root("live") == Environment.PRODUCTION.base_url
    assert api_root("sandbox") == Environment.SANDBOX.base_url


def test_every_list_every_page_every_entity_parses(
    client: Client, paddle_sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    world = paddle_sandbox.world
    pager = Pager(per_page=7)  # many pages; the SDK's pager asks for id[asc]
    lists = {
        "customers": client.customers.list(ListCustomers(pager=pager, statuses=BOTH)),
        # one mode a request (the SDK's `mode` is one value); both, in id order
        "discounts": sorted(
            (d for mode in (DiscountMode.Standard, DiscountMode.Custom) for d in client.discounts.list(ListDiscounts(pager=pager, statuses=BOTH,
                                                                                     mode=mode))),
            key=lambda d: d.id),
        # the SDK sends several types in one request (`type=standard,custom`), which the sandbox takes too
        "prices": client.prices.list(ListPrices(pager=pager, statuses=BOTH, types=TYPES)),
        "products": client.products.list(ListProducts(pager=pager, statuses=BOTH, types=TYPES)),
        "subscriptions": client.subscriptions.list(ListSubscriptions(pager=pager)),
        "transactions": client.transactions.list(ListTransactions(pager=Pager(per_page=30))),
        # every status: a default listing leaves failed and expired reports out
        "reports": client.reports.list(ListReports(pager=Pager(per_page=2), statuses=[ReportStatus.Pending, ReportStatus.Ready, ReportStatus.Failed, ReportStatus.Expired])),
        "adjustments": client.adjustments.list(ListAdjustments(pager=pager)),
        "events": client.events.list(ListEvents(pager=Pager(per_page=200))),
    }
    for name, collection in lists.items():
        entities = parsed(list(collection), name)
        truth = world.truth(name)
        if name == "discounts":  # the SDK's list filter names active and archived only: expired and used it cannot ask
            truth = [d for d in truth if d["status"] in ("active", "archived")]
        assert ids(entities) == [e["event_id" if name == "events" else "id"] for e in truth], name
    addresses, businesses = [], []
    for customer in world.ids["customers"]:
        addresses += parsed(list(client.addresses.list(customer, ListAddresses(statuses=BOTH))), "address")
        businesses += parsed(list(client.businesses.list(customer, ListBusinesses(statuses=BOTH))), "business")
    assert sorted(ids(addresses)) == [a["id"] for a in world.truth("customer_addresses")]
    assert sorted(ids(businesses)) == [b["id"] for b in world.truth("businesses")]
    event_types = parsed(list(client.event_types.list()), "event type")
    assert [t.name.value for t in event_types] == [t["name"] for t in world.truth("event_types")]
    assert client.ip_addresses.get_ip_addresses().ipv4_cidrs == world.ip_cidrs
    assert capsys.readouterr().out == "", "the SDK reports what it could not parse on stdout"


def test_the_shapes_the_spec_has_parse_as_their_types(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    """Subscriptions always with an address, some with a discount; transactions with payments;
    adjustments listed, and in their events, whole."""
    subscriptions = parsed(list(client.subscriptions.list(ListSubscriptions(pager=Pager(per_page=200)))), "subscription")
    assert all(isinstance(s.address_id, str) and s.address_id.startswith("add_") for s in subscriptions)
    discounted = [s for s in subscriptions if s.discount is not None]
    assert discounted and len(discounted) < len(subscriptions)
    assert all(d.discount.id.startswith("dsc_") and d.discount.starts_at for d in discounted)
    transactions = parsed(list(client.transactions.list(ListTransactions(pager=Pager(per_page=30)))), "transaction")
    payments = [p for t in transactions for p in t.payments]
    assert {p.status.value for p in payments} == {"captured", "error"}
    assert all(p.captured_at for p in payments if p.status.value == "captured")
    assert all(p.error_code for p in payments if p.status.value == "error")
    events = parsed(list(client.events.list(ListEvents(pager=Pager(per_page=200)))), "event")
    evented = [e.data for e in events if e.event_type.value.startswith("adjustment.")]
    assert len(evented) >= 8 and all(isinstance(a, Adjustment) for a in evented)
    listed = parsed(list(client.adjustments.list(ListAdjustments(pager=Pager(per_page=50)))), "adjustment")
    assert all(isinstance(a, ListedAdjustment) for a in listed)
    assert {a.id for a in listed} >= {a.id for a in evented}
    assert {"refund", "credit"} <= {a.action.value for a in listed} <= {"refund", "credit", "chargeback"}
    lines = {t.id: {item.id for item in t.details.lineItems} for t in transactions}  # (the SDK's name)
    for adjustment in listed:
        assert {item.item_id for item in adjustment.items} <= lines[adjustment.transaction_id], adjustment.id
    assert capsys.readouterr().out == ""


def test_the_filters_the_project_relies_on_agree_with_the_data(
    client: Client, paddle_sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    world = paddle_sandbox.world

    def truth(resource: str, keep: Any = lambda e: True) -> list[str]:
        return [e["id"] for e in world.truth(resource) if keep(e)]

    # status: archived hidden unless asked; any status asked for
    assert ids(client.customers.list(ListCustomers(pager=Pager(per_page=50)))) == truth(
        "customers", lambda c: c["status"] == "active")
    asked = [SubscriptionStatus.PastDue, SubscriptionStatus.Paused]
    assert ids(client.subscriptions.list(ListSubscriptions(pager=Pager(per_page=9), statuses=asked))) == truth(
        "subscriptions", lambda s: s["status"] in ("past_due", "paused"))
    assert ids(client.transactions.list(ListTransactions(statuses=[TransactionStatus.Completed]))) == truth(
        "transactions", lambda t: t["status"] == "completed")[::-1]  # no pager: the default, id[DESC]
    assert ids(client.reports.list(ListReports(statuses=[ReportStatus.Ready]))) == truth(
        "reports", lambda r: r["status"] == "ready")[::-1]
    asked_adjustments = [AdjustmentStatus.Approved, AdjustmentStatus.Rejected]
    assert ids(client.adjustments.list(ListAdjustments(pager=Pager(per_page=4), statuses=asked_adjustments))) == truth(
        "adjustments", lambda a: a["status"] in ("approved", "rejected"))
    assert ids(client.adjustments.list(ListAdjustments(pager=Pager(per_page=4), action=Action.Refund))) == truth(
        "adjustments", lambda a: a["action"] == "refund")
    adjusted = sorted({a["transaction_id"] for a in world.truth("adjustments")})[:2]
    assert ids(client.adjustments.list(ListAdjustments(transaction_ids=adjusted))) == truth(
        "adjustments", lambda a: a["transaction_id"] in adjusted)[::-1]

    # after, with order_by in either direction (the SDK sends it in lower case)
    customers = truth("customers")
    middle = customers[len(customers) // 2]
    later = client.customers.list(ListCustomers(pager=Pager(after=middle, per_page=11), statuses=BOTH))
    assert ids(later) == customers[len(customers) // 2 + 1:]
    earlier = client.customers.list(
        ListCustomers(pager=Pager(after=middle, order_by=OrderBy.id_descending(), per_page=11), statuses=BOTH))
    assert ids(earlier) == customers[: len(customers) // 2][::-1]
    by_update = client.products.list(ListProducts(pager=Pager(order_by=OrderBy("updated_at", "desc"), per_page=3),
                                                  statuses=BOTH, types=TYPES))
    stamps = [parse_ns(p["updated_at"]) for p in world.truth("products")]
    assert [parse_ns(p.updated_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")) for p in by_update] == sorted(
        s // 1000 * 1000 for s in stamps)[::-1]

    # transactions' updated_at bounds, as the SDK formats them (microseconds)
    txns = world.truth("transactions")
    pivot = datetime.fromtimestamp(parse_ns(txns[len(txns) // 2]["updated_at"]) // 1000 / 1e6, timezone.utc)
    for comparator in (Comparator.GT, Comparator.GTE, Comparator.LT, Comparator.LTE):
        bound = DateComparison(pivot, comparator)
        at = parse_ns(bound.formatted())
        keep = {"GT": lambda ns: ns > at, "GTE": lambda ns: ns >= at,
                "LT": lambda ns: ns < at, "LTE": lambda ns: ns <= at}[comparator.value]
        got = client.transactions.list(ListTransactions(pager=Pager(per_page=30), updated_at=bound))
        assert ids(parsed(list(got), "transaction")) == [t["id"] for t in txns if keep(parse_ns(t["updated_at"]))]

    # the event stream: after an event, oldest first, every page, as the project reads it
    events = world.truth("events")
    start = events[len(events) // 3]["event_id"]
    stream = parsed(list(client.events.list(ListEvents(pager=Pager(after=start, per_page=25)))), "event")
    assert ids(stream) == [e["event_id"] for e in events if e["event_id"] > start]
    assert [e.data.id for e in stream] == [e["data"]["id"] for e in events if e["event_id"] > start]
    assert capsys.readouterr().out == ""
