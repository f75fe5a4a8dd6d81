"""Every resource of the analytics API, declared once.

Everything about a resource that a reader of the API's docs would look for sits on one line:
its table, its path, its primary key, its page size and how it can be read incrementally.
The `rest_api` configuration is generated from this table (see `analytics_dagster.source`).

Paths are Paddle's (`/customers`, `/events`, ...), under the API's root (`api_root`): the seed
API serves them under `/v1`, Paddle's own API (`environment` `live` or `sandbox`) at its root.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Literal, Optional

# how a resource is listed between runs (docs/design.md, "Listing mode, and how a listing stays
# incremental"); the resources with an `event_entity` are kept from the event stream instead once listed whole
Listing = Literal[
    "client_updated_at",  # listed whole, only rows whose updated_at moved are written
    "server_updated_at",  # filtered by the API: updated_at[GTE]=<cursor - overlap>
    "event_stream",  # the events themselves: after=<last event_id>, order_by=id[ASC]
    "replace",  # small, no events (no updated_at, or entities that can be deleted): read whole, the table replaced
    "days",  # a daily timeseries (`/metrics/*`): `from`/`to` dates, from the last loaded day less a re-read window
]


DEFAULT_BASE_URL = "http://127.0.0.1:8765"  # the local sandbox (`make sandbox`)
DEFAULT_PATH_PREFIX = "/v1"  # where the seed API's paths start
# Paddle's own API, by `environment`: the `servers` of its OpenAPI spec, whose paths have no prefix
ENVIRONMENTS: dict[str, str] = {"live": "https://api.paddle.com", "sandbox": "https://sandbox-api.paddle.com"}


def api_root(environment: Optional[str] = None, base_url: Optional[str] = None,
             path_prefix: Optional[str] = None) -> str:
    """The URL every resource's path goes after: the base URL, then the path prefix.

    `environment` (`live` or `sandbox`) is Paddle's own API: its base URL, and no prefix. Unset,
    the seed API: `/v1`, at `DEFAULT_BASE_URL` (the local sandbox). An explicit `base_url` or
    `path_prefix` wins over what the environment implies (`path_prefix=""`: none).
    """
    if environment:
        if environment.lower() not in ENVIRONMENTS:
            raise ValueError(f"sources.analytics.environment must be one of {sorted(ENVIRONMENTS)} "
                             f"(or unset, for the seed API under /v1), not {environment!r}")
        implied_url, implied_prefix = ENVIRONMENTS[environment.lower()], ""
    else:
        implied_url, implied_prefix = DEFAULT_BASE_URL, DEFAULT_PATH_PREFIX
    prefix = (implied_prefix if path_prefix is None else path_prefix).strip().strip("/")
    return (base_url or implied_url).rstrip("/") + (f"/{prefix}" if prefix else "")


@dataclass(frozen=True)
class ListFilter:
    """A query parameter of a list whose default leaves part of the resource out.

    Attributes:
        name: the parameter (`status`, `type`, `mode`).
        values: every value it takes: together they are the whole resource.
        default: the values the API applies when the parameter is not sent.
        several: the API takes a comma-separated list in one request (`status=active,archived`,
            an array in the spec); False: one value a request (`type`, `mode`: a string in the
            spec), so the whole resource takes one listing per value.
    """

    name: str
    values: tuple[str, ...]
    default: tuple[str, ...]
    several: bool = True

    def asked(self, query: Optional[str]) -> frozenset[str]:
        """The values a request's parameter (None: not sent) selects, as the API reads it."""
        if not query:
            return frozenset(self.default)
        return frozenset(v.strip() for v in query.split(",") if v.strip())


# `status`: entities with a status of active or archived are listed active only unless asked
ACTIVE_OR_ARCHIVED = ListFilter("status", ("active", "archived"), default=("active",))
# Paddle's `type` of prices and products, `mode` of discounts: non-catalog (`custom`) entities,
# made for one transaction or subscription (or by Paddle, a checkout recovery discount), are left
# out of a listing that does not ask for them, and the parameter takes one value a request
CATALOG_TYPE = ListFilter("type", ("standard", "custom"), default=("standard",), several=False)
DISCOUNT_MODE = ListFilter("mode", ("standard", "custom"), default=("standard",), several=False)
# Paddle's discounts: `active` unless asked; `expired` (its `expires_at` passed) and `used` (its
# `usage_limit` reached) are statuses Paddle sets by itself, described on the discount's status
# though the list parameter's enum names only active and archived: the docs say the parameter is
# how to get archived or expired discounts, so every status a discount can hold is asked
DISCOUNT_STATUS = ListFilter("status", ("active", "archived", "expired", "used"), default=("active",))
# Paddle's reports: `pending` and `ready` unless asked; a report that failed or expired would
# otherwise stay `ready` in the warehouse for good. The spec's enum has these four (the docs'
# prose also names `deleted`, which the spec does not accept: asked, it could fail the listing)
REPORT_STATUS = ListFilter("status", ("pending", "ready", "failed", "expired"), default=("pending", "ready"))


@dataclass(frozen=True)
class ApiResource:
    """One resource of the API and the table it lands in.

    Attributes:
        name: the table (and asset) name.
        path: the path under the API's root (`api_root`); `{cus_id}` marks a child listed once
            per customer.
        primary_key: the column rows are merged on.
        page_size: `per_page` asked for (the API caps it: 200, transactions 30, adjustments 50).
        hides_archived: the API hides archived entities unless `status=active,archived` is
            asked (the source asks): shorthand for the list filter `ACTIVE_OR_ARCHIVED`, unless
            `hidden` has a `status` filter of its own (discounts: more statuses than two).
        hidden: the other query parameters whose default leaves entities out (`ListFilter`):
            a listing asks for every value of each (`parts`), so it lists the whole resource.
        paginated: False for an endpoint that returns everything at once (no `per_page`, no cursor).
        data_selector: where the records are in the response.
        listing: how the resource is listed between runs (see `Listing`).
        event_entity: the entity its events name (`address` in `address.updated`); None: the
            API emits no events for it.
        description: what a user sees on the asset.
        nullable: (field, dlt data type) of the fields the API may send as null on every row of
            a page: dlt makes no column of a field that only ever held null (`ENTITY_JSON`: a
            Paddle entity's `custom_data` and `import_meta`).
        id_prefix: what its ids start with (`ctm` in `ctm_01h...`); None: its rows have no
            made-up id (`event_types`, `ip_addresses`).
        max_page_size: the most rows a page of it holds: the API cuts a larger `per_page` to it.
        order_fields: the fields its list can be ordered by (`order_by=<field>[ASC|DESC]`).
        filters: the fields its list can be filtered on, besides `status` (`?transaction_id=a,b`:
            the entities whose field is one of those values). The source reads whole lists, and
            asks for `id` only to fetch what its events leave out (`event_omits`); the sandbox
            serves them.
        permission: what the API key needs to list it (the operation's `x-permissions` in
            Paddle's spec); a key without it gets 403 `forbidden` there alone, and the table is
            skipped, saying which permission to grant. None: any valid key.
        event_omits: fields its events' snapshots leave out, though the entity has them (the
            spec's event descriptions: "the complete subscription entity, except
            `management_urls`"). The sync fetches the entities an event changed, by id, for
            these (one request per page of changed entities), so the merge never nulls them.
        group: the Dagster group of its asset: `analytics` (the API's entities), `metrics`
            (Paddle's own daily figures: no lineage to the entities' tables).
        unnotified: fields that change with no event and no new `updated_at` (a discount's
            `times_used`, "changes frequently, so isn't included in payloads"; a report's
            `status` when it expires, as Paddle's own example shows): the table is listed whole
            every run, in events mode too, and a row is written when its content changed (a
            small table: a few requests).

    The local sandbox (`analytics_dagster.sandbox`) serves every resource from this table too:
    its route (`path`), its ids (`id_prefix`), its pages (`max_page_size`, `order_fields`),
    `hides_archived` and `hidden` (each filter's default), the `updated_at` filters of a `server_updated_at` resource,
    its `filters`, and the events of its `event_entity`.
    """

    name: str
    path: str
    primary_key: str
    description: str
    page_size: int = 200
    hides_archived: bool = False
    paginated: bool = True
    data_selector: str = "data"
    listing: Listing = "client_updated_at"
    event_entity: str | None = None
    nullable: tuple[tuple[str, str], ...] = ()
    id_prefix: str | None = None
    max_page_size: int = 200
    order_fields: tuple[str, ...] = ("id",)
    filters: tuple[str, ...] = ()
    hidden: tuple[ListFilter, ...] = ()
    permission: str | None = None
    event_omits: tuple[str, ...] = ()
    unnotified: tuple[str, ...] = ()
    group: str = "analytics"

    def __post_init__(self) -> None:
        if self.page_size > self.max_page_size:
            raise ValueError(f"{self.name}: page_size {self.page_size} is above the API's {self.max_page_size}")

    @property
    def columns(self) -> dict[str, dict[str, str]]:
        """dlt's column hints: the `nullable` fields, those the API may send as null on every row
        of a page. dlt infers types from data and does not create a column that only ever held
        null, so without these a table could lack fields the API has (`import_meta`, `paused_at`, …).
        """
        return {name: {"data_type": data_type, "nullable": True} for name, data_type in self.nullable}

    @property
    def list_filters(self) -> tuple[ListFilter, ...]:
        """Every query parameter whose default leaves part of the resource out (a `status`
        of `hidden` stands for `hides_archived`'s)."""
        named = {f.name for f in self.hidden}
        return ((ACTIVE_OR_ARCHIVED,) if self.hides_archived and "status" not in named else ()) + self.hidden

    @property
    def parts(self) -> tuple[dict[str, str], ...]:
        """The query parameters of each listing that together list the whole resource: the
        values of a filter that takes several at once joined in each, one listing for each
        combination of the others (prices: `type=standard`, then `type=custom`, both with
        `status=active,archived`). One part, `{}`, for a resource that hides nothing."""
        several = {f.name: ",".join(f.values) for f in self.list_filters if f.several}
        single = [f for f in self.list_filters if not f.several]
        return tuple({**several, **dict(zip([f.name for f in single], combination))}
                     for combination in itertools.product(*(f.values for f in single)))

    @property
    def parent(self) -> str | None:
        return "customers" if "{cus_id}" in self.path else None


# the two JSON fields every entity of Paddle's that has events carries, null on most rows
ENTITY_JSON: tuple[tuple[str, str], ...] = (("custom_data", "json"), ("import_meta", "json"))

RESOURCES: tuple[ApiResource, ...] = (
    ApiResource(
        "customers", "/customers", "id", "Customers (ctm_…), archived included.", hides_archived=True,
        event_entity="customer", id_prefix="ctm", permission="customer.read",
        nullable=ENTITY_JSON,
    ),
    ApiResource(
        "customer_addresses", "/customers/{cus_id}/addresses", "id",
        "Addresses (add_…) of each customer, archived included; fetched once per customer.",
        hides_archived=True, event_entity="address", id_prefix="add", permission="address.read",
        nullable=ENTITY_JSON + (("description", "text"), ("second_line", "text"), ("region", "text")),
    ),
    ApiResource(
        "businesses", "/customers/{cus_id}/businesses", "id",
        "Businesses (biz_…) of each customer, archived included; fetched once per customer.",
        hides_archived=True, event_entity="business", id_prefix="biz", permission="business.read",
        nullable=ENTITY_JSON,
    ),
    ApiResource(
        "discounts", "/discounts", "id",
        "Discounts (dsc_…) of every status (archived, expired, used) and custom (non-catalog) ones; listed every run.",
        hides_archived=True, hidden=(DISCOUNT_STATUS, DISCOUNT_MODE), event_entity="discount", id_prefix="dsc", permission="discount.read",
        event_omits=("times_used",), unnotified=("times_used",), filters=("id",),
        nullable=ENTITY_JSON + (("code", "text"), ("expires_at", "text"), ("usage_limit", "bigint"),
                  ("maximum_recurring_intervals", "bigint"), ("restrict_to", "json"),
                  ("discount_group_id", "text"), ("discount_group", "json")),
    ),
    ApiResource(
        "prices", "/prices", "id", "Prices (pri_…) of products, archived and custom (non-catalog) included.",
        hides_archived=True, hidden=(CATALOG_TYPE,), event_entity="price", id_prefix="pri", permission="price.read",
        nullable=ENTITY_JSON + (("billing_cycle", "json"), ("trial_period", "json"), ("name", "text")),
    ),
    ApiResource(
        "products", "/products", "id", "Products (pro_…), archived and custom (non-catalog) included.",
        hides_archived=True, hidden=(CATALOG_TYPE,), event_entity="product", id_prefix="pro", order_fields=("id", "updated_at"),
        permission="product.read",
        nullable=ENTITY_JSON,
    ),
    ApiResource(
        "events", "/events", "event_id",
        "Events (evt_…): every change the API notified, each with a snapshot of the entity.",
        listing="event_stream", id_prefix="evt", permission="notification.read",
    ),
    ApiResource(
        "event_types", "/event-types", "name", "The types of event the API can send.",
        paginated=False, listing="replace",
    ),
    ApiResource(
        "reports", "/reports", "id", "Reports (rep_…) of every status (failed and expired too); rows is null while pending.",
        id_prefix="rep", hidden=(REPORT_STATUS,), permission="report.read", unnotified=("status",),
        nullable=(("rows", "bigint"), ("expires_at", "timestamp")),
    ),
    ApiResource(
        "ip_addresses", "/ips", "ipv4_cidr",
        "The API's webhook source addresses, one row per IPv4 CIDR.",
        paginated=False, data_selector="data.ipv4_cidrs", listing="replace",
    ),
    ApiResource(
        "subscriptions", "/subscriptions", "id", "Subscriptions (sub_…).", event_entity="subscription",
        id_prefix="sub", permission="subscription.read", event_omits=("management_urls",), filters=("id",),
        nullable=ENTITY_JSON + (("address_id", "text"), ("business_id", "text"), ("paused_at", "timestamp"),
                  ("canceled_at", "timestamp"), ("next_billed_at", "timestamp"),
                  ("discount", "json"), ("billing_details", "json"), ("scheduled_change", "json"),
                  ("current_billing_period", "json"), ("next_transaction", "json"),
                  ("recurring_transaction_details", "json"), ("management_urls", "json")),
    ),
    ApiResource(
        "transactions", "/transactions", "id", "Transactions (txn_…), with items and totals.",
        page_size=30, max_page_size=30, listing="server_updated_at", event_entity="transaction",
        id_prefix="txn", permission="transaction.read",
        nullable=ENTITY_JSON + (("address_id", "text"), ("business_id", "text"), ("subscription_id", "text"),
                  ("invoice_id", "text"), ("invoice_number", "text"), ("discount_id", "text"),
                  ("billed_at", "timestamp"), ("revised_at", "timestamp"),
                  ("billing_details", "json"), ("billing_period", "json"),
                  ("payments", "json"), ("checkout", "json")),
    ),
    ApiResource(
        "adjustments", "/adjustments", "id",
        "Adjustments (adj_…): refunds, credits and chargebacks of transactions' items, with totals.",
        page_size=50, max_page_size=50, event_entity="adjustment", id_prefix="adj", permission="adjustment.read",
        filters=("id", "action", "customer_id", "subscription_id", "transaction_id"),
        nullable=(("subscription_id", "text"), ("credit_applied_to_balance", "bool"),
                  ("payout_totals", "json")),
    ),
)


def _metric(operation: str, description: str, values: tuple[tuple[str, str], ...]) -> ApiResource:
    """One of Paddle's seven `GET /metrics/*` operations (since 2026-03): a daily timeseries of
    the dates `from` (inclusive) to `to` (exclusive), a row per day merged on `day`, amounts in
    the smallest unit of the account's primary balance currency (docs/api.md, "Metrics")."""
    return ApiResource(
        "metrics_" + operation.replace("-", "_"), f"/metrics/{operation}", "day",
        f"Paddle's own {description}, one row per day (`day`), with the response's `updated_at`.",
        paginated=False, listing="days", permission="metrics.read", group="metrics",
        nullable=values + (("updated_at", "timestamp"),),
    )


# the amounts of a metric, strings of minor units (dlt would type a column that only held
# digits as text anyway: declared so a series of zeros is still a column)
_AMOUNT = (("amount", "text"), ("currency_code", "text"))
METRICS: tuple[ApiResource, ...] = (
    _metric("monthly-recurring-revenue", "monthly recurring revenue (MRR) at the end of each day", _AMOUNT),
    _metric("monthly-recurring-revenue-change", "net change of MRR on each day", _AMOUNT),
    _metric("active-subscribers", "count of active subscribers at the end of each day", (("count", "bigint"),)),
    _metric("revenue", "revenue of each day (completed transactions)", _AMOUNT + (("count", "bigint"),)),
    _metric("refunds", "refunds of each day", _AMOUNT),
    _metric("chargebacks", "count of chargebacks of each day", (("count", "bigint"),)),
    _metric("checkout-conversion", "checkouts of each day and how many completed",
            (("count", "bigint"), ("completed_count", "bigint"), ("rate", "text"))),
)
RESOURCES = RESOURCES + METRICS

RESOURCES_BY_NAME: dict[str, ApiResource] = {r.name: r for r in RESOURCES}
# the tables the event stream keeps current, by the entity their events name
EVENTED: dict[str, ApiResource] = {r.event_entity: r for r in RESOURCES if r.event_entity}
# The event stream and every table it keeps. In events mode one read of the stream serves them
# all, so a run of all of them costs what a run of one costs, and every run moves each table's
# `as_of`: a quiet table's cursor never ages past the retention (which would list it in full).
STREAM_TABLES: list[str] = [r.name for r in RESOURCES if r.listing == "event_stream"] + [r.name for r in EVENTED.values()]


def table_of_event(event_type: object) -> str | None:
    """The table an event type's `data` belongs to (`address.updated` -> customer_addresses)."""
    api = EVENTED.get(str(event_type).split(".", 1)[0])
    return api.name if api else None


# a path ends with a resource's, after the root's prefix if any
_PATHS = [(re.compile(re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(r.path)) + "/?$"), r.name) for r in RESOURCES]


def resource_of_path(path: str) -> str:
    """The resource a request path belongs to, under any prefix (`/v1/customers/ctm_1/addresses`
    and `/customers/ctm_1/addresses` -> customer_addresses); the path itself when it is none."""
    for pattern, name in _PATHS:
        if pattern.search(path):
            return name
    return path
