"""What the sandbox's data looks like: per resource, how an entity is made and how an update changes it.

The sandbox serves every resource of the registry (`analytics_dagster.source.resources`): its
path, ids, pages and events come from there. This table adds, by the same names, what only the
sandbox needs: a factory of a list's entities (how many the initial world has, and the change
an update makes), or an unpaginated resource's whole document. It is code that makes up data,
so it lives here and not on `ApiResource`: the source, which syncs the real API, carries none
of it.

Every factory draws from the world's generator only (`world.rng`), in a fixed order: a seed
makes the same world. The table's order is the order the initial world makes entities in, an
entity referring only to those made before it (discounts restrict to products; subscriptions
take a discount).

How the sandbox bills a subscription, as Paddle does (`billed_unit_amount`, `billed_monthly`):
in the subscription's `currency_code`, at the price's `unit_price_overrides` entry for that
currency and the country of the subscription's address if it has one, else at the base
`unit_price` if it is in that currency, else at the base converted (`convert`: the sandbox's
exchange rates, which move from month to month); a tax-inclusive price (`tax_mode` internal, or
account_setting on an account whose setting is internal: `ACCOUNT_TAX_MODE`) has the tax of the
address's country (`TAX_RATES`) included in that amount. A share of subscriptions is billed in
the currency of its customer's country (`World(localized=...)`), and a subscription billed at an
amount its catalogue prices do not say (a converted price, or a tax-inclusive one) has its
transactions: the first (`origin` web) when it is made, one more (`subscription_recurring`) at
each renewal (`World.advance`'s `renewals`).
"""

from __future__ import annotations

import calendar
import copy
import functools
import json
import pickle
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from importlib import resources as importlib_resources
from typing import TYPE_CHECKING, Any, Callable

from analytics_dagster.rfc3339 import format_ns, parse_ns

if TYPE_CHECKING:
    import random

    from analytics_dagster.sandbox.world import World
    from analytics_dagster.source.resources import ApiResource

Entity = dict[str, Any]
_DAY_NS = 24 * 3600 * 10**9
_FIRST = ["Alex", "Sam", "Jo", "Priya", "Chen", "Maria", "Tomás", "Aiko", "Olu", "Zoë", "Ivan"]
_LAST = ["Wilson", "García", "Kowalski", "Nakamura", "Okafor", "Müller", "Smith", "Rossi", "Lee"]
_CITIES = [
    ("New York", "NY", "US", "10021"),
    ("London", None, "GB", "EC1A 1BB"),
    ("Berlin", None, "DE", "10115"),
    ("Toronto", "ON", "CA", "M5H 2N2"),
    ("Sydney", "NSW", "AU", "2000"),
    ("Paris", None, "FR", "75001"),
    ("Amsterdam", None, "NL", "1012 JS"),
]
_CURRENCIES = ["USD", "EUR", "GBP", "AUD", "CAD"]
_SUBSCRIPTION_DISCOUNT_SHARE = 0.2  # subscriptions created with a discount
# a price's billing cycle (interval, frequency) and how often it is drawn: monthly and yearly
# mostly, and the other intervals a monthly figure (MRR) has to normalise
_BILLING_CYCLES = [(("month", 1), 40), (("year", 1), 40), (("month", 3), 10), (("week", 2), 5), (("day", 30), 5)]
# Non-catalog (`type` custom) prices and products, and custom discounts (`mode` custom): Paddle
# leaves them out of a listing that does not ask for them. A transaction or a subscription bills
# a non-catalog price now and then (a negotiated price, a one-off charge), made with it, half of
# them of a non-catalog product made with it too; some discounts are custom (made through the
# API, or by Paddle for checkout recovery).
_NON_CATALOG_SHARE = 0.1
_CUSTOM_DISCOUNT_EVERY = 4
_REPORT_DAYS = 7  # a ready report can be downloaded for this long, then it expires
_TAX_RATE = "0.08"  # the tax rate of a transaction not of a subscription: 8% of a line's amount after discount
# --- localized billing (the module's docstring)
LOCALIZED_SHARE = 0.3  # subscriptions billed in their customer's currency, by default (`World(localized=...)`)
COUNTRY_CURRENCY = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "NL": "EUR", "CA": "CAD", "AU": "AUD"}
# the tax rate of a subscription's transactions, by the country of its address (others: _TAX_RATE)
TAX_RATES = {"US": "0.08", "GB": "0.2", "DE": "0.19", "FR": "0.2", "NL": "0.21", "CA": "0.13", "AU": "0.1"}
ACCOUNT_TAX_MODE = "external"  # the sandbox account's tax setting: a price of tax_mode account_setting excludes tax
# a price's tax_mode, and how often it is drawn
_TAX_MODES = [("account_setting", 70), ("external", 20), ("internal", 10)]
_OVERRIDE_SHARE = 0.5  # prices with unit_price_overrides: one in EUR (for some of these lists), one in GBP
_OVERRIDES = [("EUR", [["DE", "FR", "NL"], ["DE", "FR"]]), ("GBP", [["GB"]])]
# units of each currency a US dollar buys, before the month's move (`convert`)
_PER_USD = {"USD": Fraction(1), "EUR": Fraction(92, 100), "GBP": Fraction(79, 100), "AUD": Fraction(152, 100),
            "CAD": Fraction(136, 100)}
_PER_MONTH = {"day": 365 / 12, "week": 52 / 12, "month": 1.0, "year": 1 / 12}  # how many of each interval a month holds
# the filter on when a report's rows were updated, by its type, as the spec names it
_REPORT_UPDATED_FILTER = {"transactions": "updated_at", "adjustments": "updated_at", "discounts": "updated_at",
                          "products_prices": "product_updated_at"}


def revise(world: World, entity: Entity, n: int) -> None:
    """The change an update makes by default: a new description and `custom_data`."""
    entity["description"] = f"Revised description {n}"
    entity["custom_data"] = {"revision": n}


def created_only(entity: Entity) -> tuple[str, ...]:
    """The verbs of the events a creation emits by default: `<entity>.created`."""
    return ("created",)


@dataclass(frozen=True)
class Factory:
    """How the sandbox makes the entities of one list, and changes them.

    Attributes:
        new: one new entity at `ts`, as `new(world, ts, owner)` (`owner`: the id of the entity
            it is made with, a customer for a child; else None). The world stores it and emits
            its events. `world.common(name, ts)` makes `id` (with the registry's `id_prefix`),
            `status`, `created_at` and `updated_at`: every entity has its primary key and
            `updated_at`, and a `status` if its resource `hides_archived`.
        count: how many the initial world makes, `count(rng, n)`: `n` is the world's customers
            for a list made on its own, the owner's place (0: the first) for one `made_with`.
        made_with: in the initial world, each new entity of this resource brings `count` of
            these (prices with products; addresses, businesses, subscriptions, transactions and
            reports with customers). A child (path `/customers/{cus_id}/...`) also comes with
            every customer `advance` creates.
        change: what an update changes, `change(world, entity, n)`, `n` a number from 1 to
            10**6 drawn for it; `updated_at` and the event are the world's.
        created: the verbs of the events a creation emits (a completed transaction: `created`,
            then `completed`).
        changeable: which of its entities an update can change (an adjustment: only while it is
            pending approval); `advance` picks among those.
        lapse: what time changes by itself, with no event (a discount expiring, a report's
            download expiring): `lapse(world, entity)` is called as the clock moves (at the
            end of the initial world, then at every `advance`) and returns whether it changed
            the entity; `lapse_stamps`: the world then stamps its `updated_at` too (Paddle's
            own example of an expired report keeps the `updated_at` of when it was ready).
        history: makes the resource's share of the initial world itself, once the rest of it is
            made (so that adding it leaves every other resource's data as it was: its draws come
            last, the clock does not move): `history(world, count)`, with `count` as `count`
            says for the world's customers, sets `world.clock_ns` to instants of the past and
            calls `world.create` and `world.update` there. `new` may then return None: nothing
            to make (no transaction to adjust).
    """

    new: Callable[[World, str, str | None], Entity | None]
    count: Callable[[random.Random, int], int]
    made_with: str | None = None
    change: Callable[[World, Entity, int], None] = revise
    created: Callable[[Entity], tuple[str, ...]] = created_only
    changeable: Callable[[Entity], bool] | None = None
    history: Callable[[World, int], None] | None = None
    lapse: Callable[[World, Entity], bool] | None = None
    lapse_stamps: bool = True


@dataclass(frozen=True)
class Document:
    """An unpaginated resource: its whole `data`, as the API answers it, made once by `make(world)`.

    The rows the source keeps are under the registry's `data_selector`; a row that is a bare
    value (a CIDR) is its primary key.
    """

    make: Callable[[World], Any]


# ---------------------------------------------------------------------- templates and fields
@functools.cache
def _pickled(name: str) -> bytes:
    text = (importlib_resources.files(__package__) / "templates" / f"{name}.json").read_text()
    return pickle.dumps(json.loads(text))


def template(name: str) -> Any:
    """A fresh copy of a real payload (`templates/<name>.json`): unpickling a copy is several
    times faster than parsing the JSON again."""
    return pickle.loads(_pickled(name))


def _custom_data(world: World) -> dict[str, Any] | None:
    roll = world.rng.random()
    if roll < 0.4:
        return None
    if roll < 0.8:
        return {"customer_reference_id": f"ref{world.rng.randint(1000, 99999)}"}
    return {"features": {"crm": world.rng.random() < 0.5, "seats": world.rng.randint(1, 50)}}


# ---------------------------------------------------------------------- customers and children
def new_customer(world: World, ts: str, owner: str | None) -> Entity:
    first, last = world.rng.choice(_FIRST), world.rng.choice(_LAST)
    entity = world.common("customers", ts)
    entity.update(
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower()}{world.rng.randint(1, 9999)}@example.com",
        marketing_consent=world.rng.random() < 0.3,
        locale=world.rng.choice(["en", "de", "fr", "ja"]),
        custom_data=_custom_data(world),
        import_meta=None,
    )
    return entity


def rename_customer(world: World, entity: Entity, n: int) -> None:
    entity["name"] = f"{world.rng.choice(_FIRST)} {world.rng.choice(_LAST)}"


def new_address(world: World, ts: str, customer_id: str | None) -> Entity:
    city, region, country, postal = world.rng.choice(_CITIES)
    entity = world.common("customer_addresses", ts)
    entity.update(
        customer_id=customer_id,
        description=world.rng.choice(["Head Office", "Billing", "Warehouse", None]),
        first_line=f"{world.rng.randint(1, 9999)} Jefferson Plaza",
        second_line=world.rng.choice([None, "41st Floor", "Suite 100"]),
        city=city,
        postal_code=postal,
        region=region,
        country_code=country,
        custom_data=_custom_data(world),
        import_meta=None,
    )
    return entity


def move_address(world: World, entity: Entity, n: int) -> None:
    entity["first_line"] = f"{n} Market Street"


def new_business(world: World, ts: str, customer_id: str | None) -> Entity:
    first, last = world.rng.choice(_FIRST), world.rng.choice(_LAST)
    entity = world.common("businesses", ts)
    entity.update(
        customer_id=customer_id,
        name=f"{last} {world.rng.choice(['Inc.', 'GmbH', 'Ltd', 'SARL'])}",
        company_number=str(world.rng.randint(10**11, 10**12 - 1)),
        tax_identifier=str(world.rng.randint(10**8, 10**9 - 1)),
        contacts=[{"name": f"{first} {last}", "email": f"{first.lower()}@example.com"}],
        custom_data=_custom_data(world),
        import_meta=None,
    )
    return entity


def renumber_business(world: World, entity: Entity, n: int) -> None:
    entity["company_number"] = str(n)


# ---------------------------------------------------------------------- the catalog
def new_product(world: World, ts: str, owner: str | None) -> Entity:
    entity = world.common("products", ts)
    n = len(world.ids["products"]) + 1
    entity.update(
        name=f"ChatApp Plan {n}",
        tax_category="standard",
        description="Spend more time engaging with students with ChatApp Education.",
        type="standard",
        image_url=f"https://example.com/images/product-{n}.png",
        custom_data=_custom_data(world),
        import_meta=None,
    )
    return entity


def new_price(world: World, ts: str, product_id: str | None) -> Entity:
    entity = world.common("prices", ts)
    (interval, frequency), = world.rng.choices([c for c, _ in _BILLING_CYCLES], [w for _, w in _BILLING_CYCLES])
    name = {"month": "Monthly", "year": "Annual", "week": "Weekly", "day": "Daily"}[interval]
    if frequency > 1:
        name = f"Every {frequency} {interval}s"
    entity.update(
        product_id=product_id,
        description=f"{name} (per seat)",
        type="standard",
        name=name,
        billing_cycle={"interval": interval, "frequency": frequency},
        trial_period=None if world.rng.random() < 0.7 else {"interval": "day", "frequency": 14},
        tax_mode="account_setting",
        unit_price={
            "amount": str(world.rng.randint(5, 500) * 100),
            "currency_code": world.rng.choice(_CURRENCIES),
        },
        unit_price_overrides=[],
        quantity={"minimum": 1, "maximum": world.rng.choice([1, 100, 999])},
        custom_data=_custom_data(world),
        import_meta=None,
    )
    (entity["tax_mode"],) = world.rng.choices([m for m, _ in _TAX_MODES], [w for _, w in _TAX_MODES])
    if world.rng.random() < _OVERRIDE_SHARE:
        entity["unit_price_overrides"] = [_override(world, entity["unit_price"], currency, countries)
                                          for currency, countries in _OVERRIDES]
    return entity


def _override(world: World, base: dict[str, str], currency: str, countries: list[list[str]]) -> dict[str, Any]:
    """A unit price override in `currency` for one of `countries`' lists: a price set by hand, as
    a seller rounds it (`…99`), not a conversion of the base (up to 15% either side of one)."""
    near = int(base["amount"]) * _PER_USD[currency] / _PER_USD[base["currency_code"]]
    amount = max(1, round(near * Fraction(world.rng.randint(85, 115), 100) / 100)) * 100 - 1
    return {"country_codes": list(world.rng.choice(countries)),
            "unit_price": {"amount": str(amount), "currency_code": currency}}


def new_custom_product(world: World, ts: str, owner: str | None) -> Entity:
    """A non-catalog product, made for one transaction or subscription."""
    entity = new_product(world, ts, owner)
    entity.update(type="custom", name=f"Custom package {len(world.ids['products']) + 1}")
    return entity


def new_custom_price(world: World, ts: str, product_id: str | None, currency: str) -> Entity:
    """A non-catalog price of `product_id` in `currency` (a negotiated price), made for one
    transaction or subscription."""
    entity = new_price(world, ts, product_id)
    entity.update(type="custom", description=f"Negotiated {entity['description']}")
    entity["unit_price"]["currency_code"] = currency
    return entity


def catalog(world: World, resource: str) -> list[str]:
    """The ids of `resource`'s catalog entities (`type` standard): what a new transaction,
    subscription or discount picks among (a non-catalog one is made for its one use)."""
    return [k for k in world.ids[resource] if world.entities[resource][k].get("type", "standard") == "standard"]


def new_discount(world: World, ts: str, owner: str | None) -> Entity:
    entity = template("discount")
    entity.update(world.common("discounts", ts))
    products = catalog(world, "products")
    custom = len(world.ids["discounts"]) % _CUSTOM_DISCOUNT_EVERY == 1  # the 2nd, then one in every 4
    entity.update(
        description=f"Checkout recovery {len(world.ids['discounts']) + 1}" if custom
        else f"Discount {len(world.ids['discounts']) + 1}",
        mode="custom" if custom else "standard",
        code=None if world.rng.random() < 0.3 else f"CODE{world.rng.randint(1000, 9999)}",
        amount=str(world.rng.randint(1, 50)),
        times_used=world.rng.randint(0, 100),
        # RFC 3339, as the spec types it (the SDK fixture this template is from has a space);
        # one in three two months after it was made (they expire in the world's two years)
        expires_at=None if world.rng.random() < 0.5 else world.stamp(
            parse_ns(ts) + (60 if len(world.ids["discounts"]) % 3 == 2 else 3 * 365) * _DAY_NS),
        restrict_to=world.rng.sample(products, k=min(2, len(products))),
        discount_group_id=None,
        discount_group=None,
        custom_data=_custom_data(world),
        import_meta=None,
    )
    if world.rng.random() < 0.2:
        group = {"id": world.new_id("dsg"), "status": "active", "created_at": ts, "updated_at": ts}
        group.update(name=f"Campaign {world.rng.randint(1, 99)}", import_meta=None)
        entity.update(discount_group_id=group["id"], discount_group=group)
    return entity


def new_report(world: World, ts: str, owner: str | None) -> Entity:
    entity = world.common("reports", ts, status="pending")
    entity.update(
        type=world.rng.choice(list(_REPORT_UPDATED_FILTER)),
        rows=None,
        expires_at=None,
    )
    # each type of report names its filters as the spec does (`product_updated_at`, ...)
    entity["filters"] = [{"name": _REPORT_UPDATED_FILTER[entity["type"]], "operator": "lt", "value": ts[:10]}]
    done = world.rng.random()
    if done < 0.7:
        finish_report(world, entity, world.rng.randint(1, 5000), ts, failed=done < 0.07)
    return entity


def finish_report(world: World, entity: Entity, n: int, ts: str | None = None, *, failed: bool | None = None) -> None:
    """A pending report done: ready (its `rows`, downloadable for `_REPORT_DAYS`), or, one in
    ten, failed; a ready report then expires by itself (`expire`)."""
    if failed if failed is not None else n % 10 == 0:
        entity.update(status="failed")
        return
    made = parse_ns(ts or world.stamp())
    entity.update(status="ready", rows=n, expires_at=world.stamp(made + _REPORT_DAYS * _DAY_NS))


def expire(world: World, entity: Entity, *, status: str) -> bool:
    """An entity of `status` past its `expires_at` expires, set by Paddle with no event: a ready
    report (no longer accessible), an active discount (no longer redeemable)."""
    if entity["status"] == status and entity.get("expires_at") and parse_ns(entity["expires_at"]) <= world.clock_ns:
        entity["status"] = "expired"
        return True
    return False


def redeem_discount(world: World, entity: Entity) -> bool:
    """A checkout that uses the discount: `times_used` grows, with no event (Paddle's events
    leave it out: it changes too often); at its `usage_limit` Paddle marks it `used`. Returns
    whether its status changed."""
    entity["times_used"] = int(entity.get("times_used") or 0) + 1
    if entity["status"] == "active" and entity.get("usage_limit") and entity["times_used"] >= entity["usage_limit"]:
        entity["status"] = "used"
        return True
    return False


# ---------------------------------------------------------------------- subscriptions
def new_subscription(world: World, ts: str, customer_id: str | None) -> Entity:
    """A subscription of the customer; one with no address gets one first (with its event):
    the API types a subscription's `address_id` as a string, never null."""
    assert customer_id is not None
    addresses = world.children("customer_addresses", customer_id)
    if not addresses:
        world.create("customer_addresses", ts, customer_id)
        addresses = world.children("customer_addresses", customer_id)
    entity = template("subscription")
    # the template is a subscription fetched with `include`: these two come only then (Paddle's
    # spec has them on subscription-includes, not on a listed subscription nor in its events)
    del entity["next_transaction"], entity["recurring_transaction_details"]
    entity.update(world.common("subscriptions", ts))
    businesses = world.children("businesses", customer_id) or [None]
    currency, items = subscription_items(world, ts)
    entity.update(
        status=world.rng.choice(["active", "active", "trialing", "past_due", "paused"]),
        customer_id=customer_id,
        address_id=addresses[0],
        business_id=businesses[0],
        currency_code=currency,
        items=items,
        started_at=ts,
        first_billed_at=ts,
        discount=None,
        custom_data=_custom_data(world),
        import_meta=None,
    )
    entity["management_urls"] = management_urls(entity)
    if world.ids["discounts"] and world.rng.random() < _SUBSCRIPTION_DISCOUNT_SHARE:
        entity["discount"] = _subscription_discount(world, ts)
    country = country_of(world, entity)
    if world.rng.random() < world.localized:  # Paddle's checkout in the customer's local currency
        entity["currency_code"] = COUNTRY_CURRENCY.get(country, currency)
    cycle = next((i["price"]["billing_cycle"] for i in items if i["price"]["billing_cycle"]), None)
    entity.update(billing_cycle=cycle, current_billing_period=_period(ts, cycle),
                  next_billed_at=_period(ts, cycle)["ends_at"] if cycle else None)
    if any(not catalogue_billed(i["price"], entity["currency_code"], country) or tax_inclusive(i["price"])
           for i in items):
        # billed at an amount its catalogue prices do not say: the checkout's transaction shows it
        world.create("transactions", ts, customer_id,
                     new=functools.partial(new_subscription_transaction, subscription=entity, origin="web"))
    return entity


def new_active_subscription(world: World, ts: str, customer_id: str | None) -> Entity:
    """A subscription a checkout starts now (`World.advance`'s `new_subscriptions`): as
    `new_subscription` makes one, but active (the initial world's take any status)."""
    entity = new_subscription(world, ts, customer_id)
    entity["status"] = "active"
    entity["management_urls"] = management_urls(entity)
    return entity


def country_of(world: World, subscription: Entity) -> str | None:
    """The country of the subscription's address (what its prices are localized for)."""
    address = world.entities["customer_addresses"].get(subscription["address_id"])
    return address["country_code"] if address else None


def _period(ts: str, cycle: dict[str, Any] | None) -> dict[str, str] | None:
    """The billing period that starts at `ts` and lasts one `cycle` (calendar months and years,
    the day of the month kept where the month has it), or None for no cycle."""
    if cycle is None:
        return None
    ns = parse_ns(ts)
    start = datetime.fromtimestamp(ns // 10**9, tz=timezone.utc)
    interval, frequency = cycle["interval"], cycle["frequency"]
    if interval in ("day", "week"):
        seconds = frequency * (7 if interval == "week" else 1) * 24 * 3600
        return {"starts_at": ts, "ends_at": format_ns(ns + seconds * 10**9, 6)}
    months = start.month - 1 + frequency * (12 if interval == "year" else 1)
    year, month = start.year + months // 12, months % 12 + 1
    end = start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))
    return {"starts_at": ts, "ends_at": format_ns(int(end.timestamp()) * 10**9 + ns % 10**9, 6)}


# ---------------------------------------------------------------------- what a subscription is billed
def catalogue_billed(price: Entity, currency: str, country: str | None) -> bool:
    """Whether `price`, billed in `currency` to a customer in `country`, is billed at an amount
    it states: an override of that country in that currency, or its base in that currency (else
    Paddle converts the base)."""
    return _override_amount(price, currency, country) is not None or price["unit_price"]["currency_code"] == currency


def _override_amount(price: Entity, currency: str, country: str | None) -> int | None:
    for override in price.get("unit_price_overrides") or []:
        if country in override["country_codes"] and override["unit_price"]["currency_code"] == currency:
            return int(override["unit_price"]["amount"])
    return None


def tax_inclusive(price: Entity) -> bool:
    """Whether the price's amounts include tax: `tax_mode` internal, or account_setting on an
    account whose setting is internal."""
    mode = price.get("tax_mode") or "account_setting"
    return (ACCOUNT_TAX_MODE if mode == "account_setting" else mode) == "internal"


def tax_rate(country: str | None) -> str:
    """The tax rate the sandbox bills a subscription's customer in `country` (a decimal string,
    as a transaction line's `tax_rate`)."""
    return TAX_RATES.get(country or "", _TAX_RATE)


def convert(amount: int, currency: str, to: str, at: str) -> int:
    """`amount` (minor units of `currency`) in `to` at the sandbox's exchange rate of the month
    of `at`: a fixed rate against the US dollar moved by up to 1.25% either way, month by month.
    Rounded half up to a minor unit."""
    when = datetime.fromtimestamp(parse_ns(at) // 10**9, tz=timezone.utc)
    drift = 1 + Fraction((when.year * 12 + when.month) * 7 % 11 - 5, 400)
    exact = amount * _PER_USD[to] / _PER_USD[currency] * drift
    return int(exact + Fraction(1, 2))


def included_tax(amount: int, rate: str) -> int:
    """The tax `amount` includes at `rate` (a decimal string of at most 6 places):
    amount x rate / (1 + rate), rounded half up to a minor unit."""
    scaled = Fraction(rate) * 10**6
    assert scaled.denominator == 1, f"a tax rate of more than 6 decimal places: {rate}"
    return int(amount * scaled / (10**6 + scaled) + Fraction(1, 2))


def billed_unit_amount(price: Entity, currency: str, country: str | None, at: str) -> int:
    """What the sandbox bills for a unit of `price` in `currency` to a customer in `country`, in
    a billing period starting at `at`, tax included if the price includes it: the override of
    that country in that currency, else the base in that currency, else the base converted."""
    override = _override_amount(price, currency, country)
    if override is not None:
        return override
    base = price["unit_price"]
    if base["currency_code"] == currency:
        return int(base["amount"])
    return convert(int(base["amount"]), base["currency_code"], currency, at)


def billed_unit_excluding_tax(price: Entity, currency: str, country: str | None, at: str) -> int:
    """`billed_unit_amount`, its tax taken out if the price includes it."""
    amount = billed_unit_amount(price, currency, country, at)
    return amount - included_tax(amount, tax_rate(country)) if tax_inclusive(price) else amount


def billed_monthly(subscription: Entity, item: Entity, country: str | None) -> float:
    """What the sandbox bills a month for one item of `subscription` (as the API lists it; its
    address in `country`), tax excluded, before any discount, in minor units of the
    subscription's currency: the unit amount of its current billing period
    (`billed_unit_excluding_tax`) x quantity, normalised to a month by the price's billing cycle
    (days x 365/12, weeks x 52/12, months x 1, years x 1/12, each over the cycle's frequency)."""
    price = item["price"]
    period = subscription.get("current_billing_period") or {}
    at = period.get("starts_at") or subscription["started_at"]
    unit = billed_unit_excluding_tax(price, subscription["currency_code"], country, at)
    cycle = price["billing_cycle"]
    return unit * item["quantity"] * _PER_MONTH[cycle["interval"]] / cycle["frequency"]


def renew_subscription(world: World, subscription: Entity, ts: str) -> None:
    """Paddle renews the subscription at `ts`: its next billing period starts (its transaction is
    the world's to make: `new_subscription_transaction`, origin subscription_recurring)."""
    period = _period(ts, subscription.get("billing_cycle"))
    subscription["current_billing_period"] = period
    subscription["next_billed_at"] = period["ends_at"] if period else None


def new_subscription_transaction(world: World, ts: str, customer_id: str | None, *, subscription: Entity,
                                 origin: str) -> Entity:
    """The transaction of a subscription's billing period (its current one), completed at `ts`:
    each billed item (status active) at `billed_unit_amount` in the subscription's currency, the
    tax rate of its address's country, 10% off every line while the subscription has a discount
    (a one-off one: on its first transaction only)."""
    country = country_of(world, subscription)
    txn = template("transaction")
    txn.update(world.common("transactions", ts))
    discount = subscription.get("discount")
    discounted = bool(discount) and (origin == "web" or (
        discount["type"] == "recurring" and (discount["ends_at"] is None or parse_ns(discount["ends_at"]) > parse_ns(ts))))
    txn.update(
        status="completed",
        customer_id=subscription["customer_id"],
        address_id=subscription["address_id"],
        business_id=subscription.get("business_id"),
        origin=origin,
        collection_mode="automatic",
        subscription_id=subscription["id"],
        billing_details=None,
        billing_period=copy.deepcopy(subscription["current_billing_period"]),
        discount_id=discount["id"] if discounted else None,
        billed_at=ts,
        invoice_number=f"{world.rng.randint(100, 999)}-{world.rng.randint(10000, 99999)}",
        custom_data=None,
    )
    period = subscription["current_billing_period"] or {"starts_at": ts}
    currency, rate = subscription["currency_code"], tax_rate(country)
    lines = [(item["price"], item["quantity"],
              billed_unit_amount(item["price"], currency, country, period["starts_at"]), discounted)
             for item in subscription["items"] if item.get("status", "active") == "active"]
    _bill_lines(world, txn, currency, rate, lines)
    txn["payments"] = _payments_after(world, txn, "completed", ts)
    return txn


def _chosen_prices(world: World, ts: str, most: int) -> list[Entity]:
    """1 to `most` distinct prices of the catalog, all in the first one's currency (as the API
    bills a subscription or a transaction in one currency); now and then the first is instead a
    non-catalog price made now for this one use (`_NON_CATALOG_SHARE`), of the catalog price's
    product or of a non-catalog product made with it."""
    prices = world.entities["prices"]
    listed = catalog(world, "prices")
    first = prices[world.rng.choice(listed)]
    currency = first["unit_price"]["currency_code"]
    others = [k for k in listed if k != first["id"] and prices[k]["unit_price"]["currency_code"] == currency]
    picked = world.rng.sample(others, k=min(len(others), world.rng.randint(0, most - 1)))
    if world.rng.random() < _NON_CATALOG_SHARE:
        product_id = first["product_id"]
        if world.rng.random() < 0.5:
            product_id = world.create("products", ts, None, new=new_custom_product)[0]["id"]
        first, _ = world.create("prices", ts, product_id, new=functools.partial(new_custom_price, currency=currency))
    return [first, *(prices[k] for k in picked)]


def _quantity(world: World, price: Entity) -> int:
    return world.rng.randint(price["quantity"]["minimum"], min(20, price["quantity"]["maximum"]))


def _product_of(world: World, price: Entity) -> Entity:
    product = world.entities["products"][price["product_id"]]
    return {k: copy.deepcopy(product[k]) for k in
            ("id", "name", "description", "tax_category", "image_url", "status", "created_at", "updated_at")}


def subscription_items(world: World, ts: str) -> tuple[str, list[Entity]]:
    """A new subscription's currency and items: 1 to 3 of the world's prices, each item with a
    snapshot of its price and product, as the API embeds them."""
    items = []
    for price in _chosen_prices(world, ts, 3):
        items.append({
            "status": "active", "quantity": _quantity(world, price), "recurring": price["billing_cycle"] is not None,
            "created_at": ts, "updated_at": ts, "previously_billed_at": ts, "next_billed_at": None,
            "trial_dates": None, "price": copy.deepcopy(price), "product": _product_of(world, price),
        })
    return items[0]["price"]["unit_price"]["currency_code"], items


def _subscription_discount(world: World, ts: str) -> dict[str, Any]:
    """`type` as Paddle's current payloads carry it (its SDK requires it): a discount that recurs,
    forever (no end) or for some billing periods, or one for the first only."""
    kind = "one-off" if world.rng.random() < 0.3 else "recurring"
    periods = 1 if kind == "one-off" else world.rng.choice([0, 3, 6, 12])
    ends = world.stamp(parse_ns(ts) + periods * 30 * _DAY_NS) if periods else None
    return {"id": world.rng.choice(world.ids["discounts"]), "type": kind, "starts_at": ts, "ends_at": ends}


def restatus_subscription(world: World, entity: Entity, n: int) -> None:
    entity["status"] = world.rng.choice(["active", "past_due", "paused", "canceled"])
    entity["management_urls"] = management_urls(entity)


def management_urls(subscription: Entity) -> dict[str, str | None]:
    """The customer's links to change the subscription (Paddle's are temporary, and left out of
    its events): none to update a payment method once it is canceled."""
    base = f"https://buyer-portal.paddle.com/subscriptions/{subscription['id']}"
    return {"update_payment_method": None if subscription["status"] == "canceled" else f"{base}/update-payment-method",
            "cancel": f"{base}/cancel"}


# ---------------------------------------------------------------------- transactions
def new_transaction(world: World, ts: str, customer_id: str | None) -> Entity:
    assert customer_id is not None
    entity = template("transaction")
    entity.update(world.common("transactions", ts))
    addresses = world.children("customer_addresses", customer_id) or [None]
    entity.update(
        status=world.rng.choice(["draft", "ready", "billed", "paid", "completed"]),
        customer_id=customer_id,
        address_id=addresses[0],
        invoice_number=f"{world.rng.randint(100, 999)}-{world.rng.randint(10000, 99999)}",
        custom_data=_custom_data(world),
    )
    _bill(world, entity, _chosen_prices(world, ts, 3))
    entity["payments"] = _payments_after(world, entity, entity["status"], ts)
    return entity


def _bill(world: World, txn: Entity, prices: list[Entity]) -> None:
    """The transaction's items, line items and totals for `prices` in their currency, each line
    of a random quantity, 10% off some lines (`_bill_lines`)."""
    currency = prices[0]["unit_price"]["currency_code"]
    lines = []
    for price in prices:
        lines.append((price, _quantity(world, price), int(price["unit_price"]["amount"]), world.rng.random() < 0.3))
    _bill_lines(world, txn, currency, _TAX_RATE, lines)


def _bill_lines(world: World, txn: Entity, currency: str, rate: str,
                lines_: list[tuple[Entity, int, int, bool]]) -> None:
    """The transaction's items, line items and totals for its lines (price, quantity, unit amount
    in `currency`, whether 10% off), at the tax rate `rate`, as the API computes them: per line,
    subtotal = unit amount excluding tax x quantity (a tax-inclusive price's unit amount less the
    tax it includes: `included_tax`), discount 10% of it or none, tax on what is left (a
    tax-inclusive price: the tax included in what is left of its amount), total = subtotal -
    discount + tax; `unit_totals` a unit's share (its subtotal the unit amount excluding tax);
    the transaction's totals are the lines' sums, the fee 5% of the total, earnings the total
    less tax and fee."""
    items, lines = [], []
    for price, quantity, unit, discounted in lines_:
        inclusive = tax_inclusive(price)
        subtotal = (unit - included_tax(unit, rate) if inclusive else unit) * quantity
        discount = subtotal // 10 if discounted else 0
        if inclusive:  # what is charged is the amount (less the discount's share of it): the tax is in it
            charged = unit * quantity
            tax = charged - (charged // 10 if discounted else 0) - (subtotal - discount)
        else:
            tax = int((subtotal - discount) * Fraction(rate))
        totals = {"subtotal": str(subtotal), "tax": str(tax), "discount": str(discount),
                  "total": str(subtotal - discount + tax)}
        items.append({"price": copy.deepcopy(price), "quantity": quantity})
        lines.append({
            "id": world.new_id("txnitm"), "price_id": price["id"], "quantity": quantity, "totals": totals,
            "product": _product_of(world, price), "tax_rate": rate,
            "unit_totals": {k: str(int(v) // quantity) for k, v in totals.items()},
        })
    sums = {k: sum(int(line["totals"][k]) for line in lines) for k in ("subtotal", "tax", "discount", "total")}
    fee = sums["total"] * 5 // 100
    totals = {
        "subtotal": str(sums["subtotal"]), "tax": str(sums["tax"]), "discount": str(sums["discount"]),
        "total": str(sums["total"]), "grand_total": str(sums["total"]), "fee": str(fee), "credit": "0",
        "credit_to_balance": "0", "balance": str(sums["total"]), "earnings": str(sums["total"] - sums["tax"] - fee),
        "currency_code": currency, "grand_total_tax": str(sums["tax"]),
    }
    txn["currency_code"] = currency
    txn["items"] = items
    details = txn["details"]
    details["totals"] = totals
    details["adjusted_totals"] = {k: totals.get(k, v) for k, v in details["adjusted_totals"].items()}
    details["tax_rates_used"] = [{"tax_rate": rate, "totals": {k: str(v) for k, v in sums.items()}}]
    details["line_items"] = lines


def transaction_created(entity: Entity) -> tuple[str, ...]:
    """One action, two events for a completed transaction."""
    return ("created", "completed") if entity["status"] == "completed" else ("created",)


def restatus_transaction(world: World, entity: Entity, n: int) -> None:
    entity["status"] = world.rng.choice(["billed", "paid", "completed", "past_due"])
    entity["payments"] = _payments_after(world, entity, entity["status"], world.stamp())


def _payments_after(world: World, txn: Entity, status: str, ts: str) -> list[dict[str, Any]]:
    """The transaction's payment attempts once it has `status`: a new list (event snapshots
    keep the one they were taken with). Paid or completed: a captured payment (after a
    failed attempt, now and then); past due: one more failed attempt."""
    payments = list(txn.get("payments") or [])
    captured = any(p["status"] == "captured" for p in payments)
    if status in ("paid", "completed") and not captured:
        if world.rng.random() < 0.15:
            payments.append(_payment_attempt(world, txn, ts, captured=False))
        payments.append(_payment_attempt(world, txn, ts, captured=True))
    elif status == "past_due":
        payments.append(_payment_attempt(world, txn, ts, captured=False))
    return payments


def _payment_attempt(world: World, txn: Entity, ts: str, *, captured: bool) -> dict[str, Any]:
    rng = world.rng
    payment = template("transaction_payment")
    at = parse_ns(ts)
    payment.update(
        payment_attempt_id=world.uuid(),
        payment_method_id=world.new_id("paymtd", at),
        stored_payment_method_id=world.uuid(),
        amount=txn["details"]["totals"]["total"],
        status="captured" if captured else "error",
        error_code=None if captured else rng.choice(["declined", "expired_card", "not_enough_balance"]),
        created_at=ts,
        captured_at=world.stamp(at + rng.randint(1, 5) * 10**9) if captured else None,
    )
    payment["method_details"]["card"].update(
        type=rng.choice(["visa", "mastercard", "american_express"]),
        last4=f"{rng.randint(0, 9999):04d}",
        expiry_month=rng.randint(1, 12),
        expiry_year=int(ts[:4]) + rng.randint(1, 5),
    )
    return payment


# ---------------------------------------------------------------------- adjustments
_HOUR_NS = 3600 * 10**9
_FEE_PERCENT = 5  # Paddle's fee on what an adjustment gives back, as its examples have it (5 of 100)
_REASONS = {"refund": ["error", "customer request", "duplicate charge", "not as described"],
            "credit": ["goodwill", "service outage", "billing dispute"],
            "chargeback": ["fraudulent", "product not received", "unrecognized charge"]}


def adjustable(txn: Entity) -> bool:
    """A transaction an adjustment can be made of: completed (a refund, or a chargeback) or
    billed (a credit: a manually collected transaction), with line items."""
    return txn["status"] in ("completed", "billed") and bool(txn["details"]["line_items"])


def _adjustable_by_status(world: World) -> tuple[list[str], list[str]]:
    """The transactions that can be adjusted: the completed ones, and the billed ones."""
    transactions = world.entities["transactions"]
    adjustable_ = [k for k in world.ids["transactions"] if adjustable(transactions[k])]
    return ([k for k in adjustable_ if transactions[k]["status"] == "completed"],
            [k for k in adjustable_ if transactions[k]["status"] == "billed"])


def _adjusted(world: World, txn_id: str) -> tuple[dict[str, int], bool]:
    """What the transaction's adjustments took from each of its line items so far (rejected ones
    took nothing), and whether a refund of it is pending approval (Paddle then refuses another)."""
    taken: dict[str, int] = {}
    pending = False
    for adjustment in world.entities["adjustments"].values():
        if adjustment["transaction_id"] != txn_id or adjustment["status"] == "rejected":
            continue
        pending = pending or adjustment["status"] == "pending_approval"
        for item in adjustment["items"]:
            taken[item["item_id"]] = taken.get(item["item_id"], 0) + int(item["totals"]["total"])
    return taken, pending


def _split(amount: int, tax_rate: str) -> dict[str, str]:
    """An amount with tax included, as Paddle splits it: subtotal + tax = total (minor units)."""
    tax = round(amount * float(tax_rate) / (1 + float(tax_rate)))
    return {"subtotal": str(amount - tax), "tax": str(tax), "total": str(amount)}


def _sum(totals: list[dict[str, str]]) -> dict[str, str]:
    return {k: str(sum(int(t[k]) for t in totals)) for k in ("subtotal", "tax", "total")}


def new_adjustment(world: World, ts: str, txn_id: str | None) -> Entity | None:
    """A refund, credit or chargeback of items of a transaction (`txn_id`, else one picked among
    those it can be made of), as Paddle lists it: its items name the transaction's line items
    (`details.line_items[].id`) and take no more than is left of them, and its totals add up
    (subtotal + tax = total, in minor units). A refund waits for approval, a credit or a
    chargeback is approved at once. None: no transaction can be adjusted (none completed or
    billed, each with a refund pending or nothing left)."""
    transactions = world.entities["transactions"]
    if txn_id:
        candidates = [txn_id]
    else:  # a refund (of a completed transaction) four times in five, else a credit (of a billed one)
        completed, billed = _adjustable_by_status(world)
        candidates = billed or completed if world.rng.random() < 0.2 else completed or billed
    while candidates:
        txn = transactions[candidates.pop(world.rng.randrange(len(candidates)))]
        taken, pending = _adjusted(world, txn["id"])
        lines = [(line, int(line["totals"]["total"]) - taken.get(line["id"], 0))
                 for line in txn["details"]["line_items"]]
        lines = [(line, left) for line, left in lines if left > 0]
        if not pending and lines:
            break
    else:
        return None
    if txn["status"] == "billed":
        action = "credit"
    else:
        action = "chargeback" if world.rng.random() < 0.1 else "refund"
    whole = action == "chargeback" or world.rng.random() < 0.3  # everything left of every item
    if not whole:
        lines = world.rng.sample(lines, k=world.rng.randint(1, min(2, len(lines))))
    adjustment = template("adjustment")
    adjustment.update(world.common("adjustments", ts, status="approved" if action != "refund" else "pending_approval"))
    items = []
    rates: dict[str, list[dict[str, str]]] = {}  # the items' totals by the tax rate of their line
    for line, left in sorted(lines, key=lambda pair: pair[0]["id"]):
        amount = left if whole or left == 1 or world.rng.random() < 0.3 else world.rng.randint(1, left - 1)
        items.append({"id": world.new_id("adjitm"), "item_id": line["id"],
                      "type": "full" if amount == int(line["totals"]["total"]) else "partial",
                      "amount": str(amount), "proration": None, "totals": _split(amount, line["tax_rate"])})
        rates.setdefault(line["tax_rate"], []).append(items[-1]["totals"])
    currency = txn["currency_code"]
    totals = _sum([item["totals"] for item in items])
    fee = int(totals["total"]) * _FEE_PERCENT // 100
    money = {**totals, "fee": str(fee), "earnings": str(int(totals["subtotal"]) - fee),
             "currency_code": currency, "retained_fee": "0"}
    full = len(items) == len(txn["details"]["line_items"]) and all(i["type"] == "full" for i in items)
    adjustment.update(
        action=action,
        type="full" if full else "partial",
        transaction_id=txn["id"],
        subscription_id=txn.get("subscription_id"),
        customer_id=txn["customer_id"],
        reason=world.rng.choice(_REASONS[action]),
        credit_applied_to_balance=True if action == "credit" else None,
        currency_code=currency,
        items=items,
        totals=money,
        payout_totals=dict(money, chargeback_fee={"amount": "1500", "original": None})
        if action == "chargeback" else dict(money),
        tax_rates_used=[{"tax_rate": rate, "totals": _sum(parts)} for rate, parts in rates.items()],
    )
    return adjustment


def pending_approval(adjustment: Entity) -> bool:
    return adjustment["status"] == "pending_approval"


def review_adjustment(world: World, adjustment: Entity, n: int) -> None:
    """Paddle reviews a refund pending approval: approved, now and then rejected. (An
    adjustment out of review keeps its status: only its `updated_at` moves.)"""
    if adjustment["status"] == "pending_approval":
        adjustment["status"] = "rejected" if world.rng.random() < 0.15 else "approved"


def adjustments_history(world: World, count: int) -> None:
    """The initial world's adjustments: `count` transactions that can be adjusted (at most; a
    fifth of them billed ones, credited, the others completed ones, refunded or charged back)
    each adjusted once, an hour to 30 days after it was made (and before now), a refund
    reviewed an hour to 3 days later, if that is past too."""
    now = world.clock_ns
    transactions = world.entities["transactions"]
    completed, billed = _adjustable_by_status(world)
    credits = min(count // 5, len(billed))
    picked = world.rng.sample(completed, k=min(count - credits, len(completed))) + world.rng.sample(billed, k=credits)
    moments = []
    for key in picked:
        made = parse_ns(transactions[key]["created_at"])
        at = made + world.rng.randint(_HOUR_NS, 30 * _DAY_NS)
        if at >= now:  # a transaction of the last 30 days: adjusted some time since
            at = made + 1 + int(world.rng.random() * max(0, now - made - 1))
        moments.append((at, key))
    for at, key in sorted(moments):
        world.clock_ns = at
        adjustment, _ = world.create("adjustments", world.stamp(), key)
        review = at + world.rng.randint(_HOUR_NS, 3 * _DAY_NS)
        if adjustment is not None and pending_approval(adjustment) and review < now:
            world.clock_ns = review
            world.update("adjustments", adjustment["id"], world.stamp())
    world.clock_ns = now


# ---------------------------------------------------------------------- documents
def event_types(world: World) -> list[dict[str, Any]]:
    return template("event_types")


def ip_addresses(world: World) -> dict[str, list[str]]:
    return {"ipv4_cidrs": template("ips")["ipv4_cidrs"] + ["34.232.58.13/32", "34.195.105.136/32"]}


# ---------------------------------------------------------------------- the table
FACTORIES: dict[str, Factory | Document] = {
    "products": Factory(new_product, lambda rng, customers: max(3, customers // 20)),
    "prices": Factory(new_price, lambda rng, product: 2, made_with="products"),
    "discounts": Factory(new_discount, lambda rng, customers: max(2, customers // 20), lapse=functools.partial(expire, status="active")),
    "customers": Factory(new_customer, lambda rng, customers: customers, change=rename_customer),
    "customer_addresses": Factory(new_address, lambda rng, customer: rng.randint(0, 3), made_with="customers",
                                  change=move_address),
    "businesses": Factory(new_business, lambda rng, customer: rng.randint(0, 2), made_with="customers",
                          change=renumber_business),
    "subscriptions": Factory(new_subscription, lambda rng, customer: int(rng.random() < 0.5),
                             made_with="customers", change=restatus_subscription),
    "transactions": Factory(new_transaction, lambda rng, customer: rng.randint(0, 4), made_with="customers",
                            change=restatus_transaction, created=transaction_created),
    # one report with the first customer, then with every twentieth
    "reports": Factory(new_report, lambda rng, customer: int(customer % 20 == 0), made_with="customers",
                       change=finish_report, changeable=lambda report: report["status"] == "pending",
                       lapse=functools.partial(expire, status="ready"), lapse_stamps=False),
    # about one adjustment for every 16 transactions, made once the rest of the world is
    "adjustments": Factory(new_adjustment, lambda rng, customers: max(2, customers // 8), change=review_adjustment,
                           changeable=pending_approval, history=adjustments_history),
    "event_types": Document(event_types),
    "ip_addresses": Document(ip_addresses),
}


def check(resources: tuple[ApiResource, ...], factories: dict[str, Factory | Document]) -> None:
    """Every resource of the registry has what the sandbox needs to serve it, and nothing else
    is made: raises ValueError saying what is missing (the event stream is made by the world)."""
    by_name = {r.name: r for r in resources}
    problems = [f"{name}: a factory of no resource of the registry" for name in factories if name not in by_name]
    made: list[str] = []
    for api in resources:
        factory = factories.get(api.name)
        if api.listing in ("event_stream", "days"):  # the stream, the metrics: made by the world
            problems += [f"{api.name}: the world makes it, it takes no factory"] if factory else []
        elif not api.paginated:
            problems += [] if isinstance(factory, Document) else [f"{api.name}: unpaginated, needs a Document"]
        elif not isinstance(factory, Factory):
            problems.append(f"{api.name}: a list needs a Factory (analytics_dagster/sandbox/factories.py)")
        elif not api.id_prefix:
            problems.append(f"{api.name}: the registry gives it no id_prefix")
    for name, factory in factories.items():
        if isinstance(factory, Factory) and factory.made_with and factory.made_with not in made:
            problems.append(f"{name}: made with {factory.made_with}, which is not made before it")
        made.append(name)
    if problems:
        raise ValueError("the sandbox cannot serve this registry: " + "; ".join(problems))
