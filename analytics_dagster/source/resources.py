"""The twelve resources of the analytics API, declared once.

Everything about a resource that a reader of the API's docs would look for sits on one line:
its table, its path, its primary key, its page size and how it can be read incrementally.
The `rest_api` configuration is generated from this table (see `analytics_dagster.source`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# how a resource is listed between runs (see README, "Incremental sync"); the eight resources
# with an `event_entity` are kept from the event stream instead once listed whole
Incremental = Literal[
    "client_updated_at",  # listed whole, only rows whose updated_at moved are written
    "server_updated_at",  # filtered by the API: updated_at[GTE]=<cursor - overlap>
    "event_stream",  # the events themselves: after=<last event_id>, order_by=id[ASC]
    "replace",  # small, unpaginated, no events: read whole, the table replaced
]


@dataclass(frozen=True)
class ApiResource:
    """One resource of the API and the table it lands in.

    Attributes:
        name: the table (and asset) name.
        path: the path under the base URL; `{cus_id}` marks a child listed once per customer.
        primary_key: the column rows are merged on.
        page_size: `per_page` asked for (the API caps it: 200, transactions 30).
        archived: the API hides archived entities unless `status=active,archived` is asked.
        paginated: False for the two endpoints that return everything at once.
        data_selector: where the records are in the response.
        incremental: how the resource is listed (see `Incremental`).
        event_entity: the entity its events name (`address` in `address.updated`); None: the
            API emits no events for it.
        description: what a user sees on the asset.
    """

    name: str
    path: str
    primary_key: str
    description: str
    page_size: int = 200
    archived: bool = False
    paginated: bool = True
    data_selector: str = "data"
    incremental: Incremental = "client_updated_at"
    event_entity: str | None = None
    nullable: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> dict[str, dict[str, str]]:
        """Type hints for fields the API may send as null on every row of a page.

        dlt infers types from data and does not create a column that only ever held null, so
        without these a table could lack fields the API has (`import_meta`, `paused_at`, …).
        """
        hints = dict(self.nullable)
        if self.incremental in ("client_updated_at", "server_updated_at"):
            hints.update(custom_data="json", import_meta="json")
        return {name: {"data_type": data_type, "nullable": True} for name, data_type in hints.items()}

    @property
    def parent(self) -> str | None:
        return "customers" if "{cus_id}" in self.path else None


RESOURCES: tuple[ApiResource, ...] = (
    ApiResource(
        "customers", "/v1/customers", "id", "Customers (ctm_…), archived included.", archived=True,
        event_entity="customer",
    ),
    ApiResource(
        "customer_addresses", "/v1/customers/{cus_id}/addresses", "id",
        "Addresses (add_…) of each customer, archived included; fetched once per customer.",
        archived=True, event_entity="address",
        nullable=(("description", "text"), ("second_line", "text"), ("region", "text")),
    ),
    ApiResource(
        "businesses", "/v1/customers/{cus_id}/businesses", "id",
        "Businesses (biz_…) of each customer, archived included; fetched once per customer.",
        archived=True, event_entity="business",
    ),
    ApiResource(
        "discounts", "/v1/discounts", "id", "Discounts (dsc_…), archived included.", archived=True,
        event_entity="discount",
        nullable=(("code", "text"), ("expires_at", "text"), ("usage_limit", "bigint"),
                  ("maximum_recurring_intervals", "bigint"), ("restrict_to", "json"),
                  ("discount_group_id", "text"), ("discount_group", "json")),
    ),
    ApiResource(
        "prices", "/v1/prices", "id", "Prices (pri_…) of products, archived included.", archived=True,
        event_entity="price",
        nullable=(("billing_cycle", "json"), ("trial_period", "json"), ("name", "text")),
    ),
    ApiResource(
        "products", "/v1/products", "id", "Products (pro_…), archived included.", archived=True,
        event_entity="product",
    ),
    ApiResource(
        "events", "/v1/events", "event_id",
        "Events (evt_…): every change the API notified, each with a snapshot of the entity.",
        incremental="event_stream",
    ),
    ApiResource(
        "event_types", "/v1/event-types", "name", "The types of event the API can send.",
        paginated=False, incremental="replace",
    ),
    ApiResource(
        "reports", "/v1/reports", "id", "Reports (rep_…); rows is null while pending.",
        nullable=(("rows", "bigint"), ("expires_at", "timestamp")),
    ),
    ApiResource(
        "ip_addresses", "/v1/ips", "ipv4_cidr",
        "The API's webhook source addresses, one row per IPv4 CIDR.",
        paginated=False, data_selector="data.ipv4_cidrs", incremental="replace",
    ),
    ApiResource(
        "subscriptions", "/v1/subscriptions", "id", "Subscriptions (sub_…).", event_entity="subscription",
        nullable=(("address_id", "text"), ("business_id", "text"), ("paused_at", "timestamp"),
                  ("canceled_at", "timestamp"), ("next_billed_at", "timestamp"),
                  ("discount", "json"), ("billing_details", "json"), ("scheduled_change", "json"),
                  ("current_billing_period", "json"), ("next_transaction", "json"),
                  ("recurring_transaction_details", "json"), ("management_urls", "json")),
    ),
    ApiResource(
        "transactions", "/v1/transactions", "id", "Transactions (txn_…), with items and totals.",
        page_size=30, incremental="server_updated_at", event_entity="transaction",
        nullable=(("address_id", "text"), ("business_id", "text"), ("subscription_id", "text"),
                  ("invoice_id", "text"), ("invoice_number", "text"), ("discount_id", "text"),
                  ("billed_at", "timestamp"), ("revised_at", "timestamp"),
                  ("billing_details", "json"), ("billing_period", "json"),
                  ("payments", "json"), ("checkout", "json")),
    ),
)

RESOURCES_BY_NAME: dict[str, ApiResource] = {r.name: r for r in RESOURCES}
# the tables the event stream keeps current, by the entity their events name
EVENTED: dict[str, ApiResource] = {r.event_entity: r for r in RESOURCES if r.event_entity}


def table_of_event(event_type: object) -> str | None:
    """The table an event type's `data` belongs to (`address.updated` -> customer_addresses)."""
    api = EVENTED.get(str(event_type).split(".", 1)[0])
    return api.name if api else None


_PATHS = [(re.compile("^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(r.path)) + "/?$"), r.name) for r in RESOURCES]


def resource_of_path(path: str) -> str:
    """The resource a request path belongs to (`/v1/customers/ctm_1/addresses` ->
    customer_addresses); the path itself when it is none of them."""
    for pattern, name in _PATHS:
        if pattern.match(path):
            return name
    return path
