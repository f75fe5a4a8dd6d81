"""The sandbox's data: a deterministic, mutable replica of the API's entities.

Everything is derived from ``seed`` and the sequence of calls made on the world, never from the
wall clock, so a test that builds a world and advances it the same way sees the same data.

Scale: for ``customers = N`` the initial world holds (on average)

========================  =========================================
customers                 N
customer_addresses        0 to 3 per customer (1.6 N: one at least with a subscription)
businesses                0 to 2 per customer (1 N)
subscriptions             0.5 N, each with an address, 20% with a discount
transactions              0 to 4 per customer (2 N); paid or completed ones with a payment
events                    one per create and update of the resources with events, of the
                          last 90 days only (older ones are past the API's retention)
products                  max(3, N / 20); prices: 2 per product
discounts                 max(2, N / 20)
reports                   max(1, N / 100)
event_types, ips          fixed lists from the real API's payloads
========================  =========================================

About 10% of the entities that have an ``active``/``archived`` status start archived, and 30%
were updated after their creation.

The event stream follows the contract: every create or update (archives included) of an
entity of a resource with an ``event_entity`` (the source's registry) emits an
event ``<entity>.<verb>`` whose ``data`` is the entity's snapshot right after the change, and
``/v1/events`` lists only the events of the last ``EVENT_RETENTION_DAYS`` days of the world
clock. The world clock is the API's ``now``: it moves only when the world is advanced, and the
server sends it as the ``Date`` header.
"""

from __future__ import annotations

import bisect
import json
import pickle
import random
import uuid
from dataclasses import dataclass
from importlib import resources as importlib_resources
from typing import Any, Iterable

from analytics_dagster.rfc3339 import CROCKFORD as _CROCKFORD, format_ns, id_floor, parse_ns

_START_NS = 1_672_531_200 * 10**9  # 2023-01-01T00:00:00Z
_HISTORY_NS = 2 * 365 * 24 * 3600 * 10**9  # the initial world spans two years
EVENT_RETENTION_DAYS = 90  # /v1/events lists the events of the last 90 days only
_DAY_NS = 24 * 3600 * 10**9


def _template(name: str) -> str:
    return (importlib_resources.files(__package__) / "templates" / f"{name}.json").read_text()


@dataclass(frozen=True)
class Resource:
    """One list resource of the API as the sandbox serves it."""

    name: str
    prefix: str
    primary_key: str = "id"
    default_active_only: bool = False  # hides archived entities unless `status` asks for them
    max_per_page: int = 200
    child: bool = False  # listed per customer


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in [
        Resource("customers", "ctm", default_active_only=True),
        Resource("customer_addresses", "add", default_active_only=True, child=True),
        Resource("businesses", "biz", default_active_only=True, child=True),
        Resource("discounts", "dsc", default_active_only=True),
        Resource("prices", "pri", default_active_only=True),
        Resource("products", "pro", default_active_only=True),
        Resource("events", "evt", primary_key="event_id"),
        Resource("reports", "rep"),
        Resource("subscriptions", "sub"),
        Resource("transactions", "txn", max_per_page=30),
    ]
}
# what `advance(updates=...)` may touch, and the entity named in its events (None: no events)
_EVENT_ENTITY = {
    "customers": "customer",
    "customer_addresses": "address",
    "businesses": "business",
    "discounts": "discount",
    "prices": "price",
    "products": "product",
    "subscriptions": "subscription",
    "transactions": "transaction",
    "reports": None,
}
_ARCHIVABLE = [name for name, r in RESOURCES.items() if r.default_active_only]

_FIRST = ["Alex", "Sam", "Jo", "Priya", "Chen", "Maria", "Tomás", "Aiko", "Olu", "Zoë", "Ivan"]
_LAST = ["Wilson", "García", "Kowalski", "Nakamura", "Okafor", "Müller", "Smith", "Rossi", "Lee"]
_CITIES = [
    ("New York", "NY", "US", "10021"),
    ("London", None, "GB", "EC1A 1BB"),
    ("Berlin", None, "DE", "10115"),
    ("Toronto", "ON", "CA", "M5H 2N2"),
    ("Sydney", "NSW", "AU", "2000"),
    ("Paris", None, "FR", "75001"),
]
_CURRENCIES = ["USD", "EUR", "GBP", "AUD", "CAD"]
_SUBSCRIPTION_DISCOUNT_SHARE = 0.2  # subscriptions created with a discount
# the filter on when a report's rows were updated, by its type, as the spec names it
_REPORT_UPDATED_FILTER = {"transactions": "updated_at", "adjustments": "updated_at", "discounts": "updated_at",
                          "products_prices": "product_updated_at"}


class World:
    """All entities of the sandbox API, with indexes that make a page cost O(page size).

    Args:
        customers: how many customers the initial world has; everything else scales with it.
        seed: makes the world, and every later `advance`, reproducible.
    """

    def __init__(self, customers: int = 100, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock_ns = _START_NS
        self._last_id_ms = 0
        self.entities: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in RESOURCES}
        self.ids: dict[str, list[str]] = {n: [] for n in RESOURCES}  # sorted: ids are time-ordered
        self.by_customer: dict[str, dict[str, list[str]]] = {
            n: {} for n, r in RESOURCES.items() if r.child
        }
        # transactions sorted by updated_at, for the server-side `updated_at[...]` filters
        self.txn_updated: list[tuple[int, str]] = []
        self._blobs: dict[str, bytes] = {}
        # events whose change happened (their id is taken) but that `/v1/events` does not list
        # yet: a write that commits late (`hold_event`, `release_events`)
        self.held: set[str] = set()
        self.event_types: list[dict[str, Any]] = json.loads(_template("event_types"))
        self.ip_cidrs: list[str] = json.loads(_template("ips"))["ipv4_cidrs"] + [
            "34.232.58.13/32",
            "34.195.105.136/32",
        ]
        # pickled once: unpickling a copy is several times faster than parsing JSON again
        # events of the initial history, made once the history is written (see `_emit`)
        self._history: list[tuple[int, str, str, str, str, str]] | None = []
        self._txn_template = pickle.dumps(json.loads(_template("transaction")))
        self._sub_template = pickle.dumps(json.loads(_template("subscription")))
        self._discount_template = pickle.dumps(json.loads(_template("discount")))
        self._payment_template = pickle.dumps(json.loads(_template("transaction_payment")))
        self._adjustment_template = pickle.dumps(json.loads(_template("adjustment")))
        self._generate(customers)
        self._write_history_events()

    # ------------------------------------------------------------------ identities and time
    def _new_id(self, prefix: str, at_ns: int | None = None) -> str:
        """A new id of the world clock's millisecond, or of `at_ns`'s (never before the last id)."""
        ms = max(self._last_id_ms + 1, (self.clock_ns if at_ns is None else at_ns) // 1_000_000)
        self._last_id_ms = ms
        # 10 characters of milliseconds, then 16 random ones: a ULID, lower-cased
        value = (ms << 80) | self.rng.getrandbits(80)
        return prefix + "_" + "".join(_CROCKFORD[(value >> s) & 31] for s in range(125, -5, -5))

    def _stamp(self, ns: int | None = None, *, truncate: bool = False) -> str:
        """A timestamp at `ns` (default: the world clock) with 0 to 9 fractional digits.

        The instant is rounded up to what the digits can say, so it is never before `ns`; with
        `truncate`, cut as a formatter cuts it, so that a later change can read earlier than
        the one before (`…52.928731Z`, then `…52.9Z`), as the API allows.
        """
        ns = self.clock_ns if ns is None else ns
        digits = self.rng.randint(0, 9)
        if truncate:
            return format_ns(ns, digits)
        unit = 10 ** (9 - digits)
        return format_ns(-(-ns // unit) * unit, digits)

    def _uuid(self) -> str:
        """A version-4 UUID from the world's generator (reproducible)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _tick(self, max_ns: int) -> None:
        self.clock_ns += self.rng.randint(1_000_000, max(1_000_001, max_ns))

    # ------------------------------------------------------------------ storage
    def _store(self, resource: str, entity: dict[str, Any]) -> dict[str, Any]:
        spec = RESOURCES[resource]
        key = entity[spec.primary_key]
        self.entities[resource][key] = entity
        ids = self.ids[resource]
        if not ids or ids[-1] < key:
            ids.append(key)
        else:  # never happens for generated ids, but keep the index sorted regardless
            bisect.insort(ids, key)
        if spec.child:
            self.by_customer[resource].setdefault(entity["customer_id"], []).append(key)
        if resource == "transactions":
            bisect.insort(self.txn_updated, (parse_ns(entity["updated_at"]), key))
        return entity

    def _touch(self, resource: str, entity: dict[str, Any], updated_at: str) -> None:
        """Record that `entity` changed: new `updated_at`, cached JSON dropped, indexes moved."""
        if resource == "transactions":
            old = (parse_ns(entity["updated_at"]), entity["id"])
            del self.txn_updated[bisect.bisect_left(self.txn_updated, old)]
            bisect.insort(self.txn_updated, (parse_ns(updated_at), entity["id"]))
        entity["updated_at"] = updated_at
        self._blobs.pop(entity[RESOURCES[resource].primary_key], None)

    def blob(self, resource: str, key: str) -> bytes:
        """The entity's JSON, cached until it changes."""
        data = self._blobs.get(key)
        if data is None:
            data = json.dumps(self.entities[resource][key], separators=(",", ":")).encode()
            self._blobs[key] = data
        return data

    # ------------------------------------------------------------------ entity factories
    def _common(self, prefix: str, ts: str, *, status: str = "active") -> dict[str, Any]:
        return {"id": self._new_id(prefix), "status": status, "created_at": ts, "updated_at": ts}

    def _custom_data(self) -> dict[str, Any] | None:
        roll = self.rng.random()
        if roll < 0.4:
            return None
        if roll < 0.8:
            return {"customer_reference_id": f"ref{self.rng.randint(1000, 99999)}"}
        return {"features": {"crm": self.rng.random() < 0.5, "seats": self.rng.randint(1, 50)}}

    def _new_customer(self, ts: str) -> dict[str, Any]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        entity = self._common("ctm", ts)
        entity.update(
            name=f"{first} {last}",
            email=f"{first.lower()}.{last.lower()}{self.rng.randint(1, 9999)}@example.com",
            marketing_consent=self.rng.random() < 0.3,
            locale=self.rng.choice(["en", "de", "fr", "ja"]),
            custom_data=self._custom_data(),
            import_meta=None,
        )
        return self._store("customers", entity)

    def _new_address(self, customer_id: str, ts: str) -> dict[str, Any]:
        city, region, country, postal = self.rng.choice(_CITIES)
        entity = self._common("add", ts)
        entity.update(
            customer_id=customer_id,
            description=self.rng.choice(["Head Office", "Billing", "Warehouse", None]),
            first_line=f"{self.rng.randint(1, 9999)} Jefferson Plaza",
            second_line=self.rng.choice([None, "41st Floor", "Suite 100"]),
            city=city,
            postal_code=postal,
            region=region,
            country_code=country,
            custom_data=self._custom_data(),
            import_meta=None,
        )
        return self._store("customer_addresses", entity)

    def _new_business(self, customer_id: str, ts: str) -> dict[str, Any]:
        first, last = self.rng.choice(_FIRST), self.rng.choice(_LAST)
        entity = self._common("biz", ts)
        entity.update(
            customer_id=customer_id,
            name=f"{last} {self.rng.choice(['Inc.', 'GmbH', 'Ltd', 'SARL'])}",
            company_number=str(self.rng.randint(10**11, 10**12 - 1)),
            tax_identifier=str(self.rng.randint(10**8, 10**9 - 1)),
            contacts=[{"name": f"{first} {last}", "email": f"{first.lower()}@example.com"}],
            custom_data=self._custom_data(),
            import_meta=None,
        )
        return self._store("businesses", entity)

    def _new_product(self, ts: str) -> dict[str, Any]:
        entity = self._common("pro", ts)
        n = len(self.ids["products"]) + 1
        entity.update(
            name=f"ChatApp Plan {n}",
            tax_category="standard",
            description="Spend more time engaging with students with ChatApp Education.",
            type="standard",
            image_url=f"https://example.com/images/product-{n}.png",
            custom_data=self._custom_data(),
            import_meta=None,
        )
        return self._store("products", entity)

    def _new_price(self, product_id: str, ts: str) -> dict[str, Any]:
        entity = self._common("pri", ts)
        yearly = self.rng.random() < 0.5
        entity.update(
            product_id=product_id,
            description="Annual (per seat)" if yearly else "Monthly (per seat)",
            type="standard",
            name="Annual" if yearly else "Monthly",
            billing_cycle={"interval": "year" if yearly else "month", "frequency": 1},
            trial_period=None if self.rng.random() < 0.7 else {"interval": "day", "frequency": 14},
            tax_mode="account_setting",
            unit_price={
                "amount": str(self.rng.randint(5, 500) * 100),
                "currency_code": self.rng.choice(_CURRENCIES),
            },
            unit_price_overrides=[],
            quantity={"minimum": 1, "maximum": self.rng.choice([1, 100, 999])},
            custom_data=self._custom_data(),
            import_meta=None,
        )
        return self._store("prices", entity)

    def _new_discount(self, ts: str) -> dict[str, Any]:
        entity = pickle.loads(self._discount_template)
        entity.update(self._common("dsc", ts))
        entity.update(
            description=f"Discount {len(self.ids['discounts']) + 1}",
            code=None if self.rng.random() < 0.3 else f"CODE{self.rng.randint(1000, 9999)}",
            amount=str(self.rng.randint(1, 50)),
            times_used=self.rng.randint(0, 100),
            restrict_to=self.rng.sample(self.ids["products"], k=min(2, len(self.ids["products"]))),
            discount_group_id=None,
            discount_group=None,
            custom_data=self._custom_data(),
            import_meta=None,
        )
        if self.rng.random() < 0.2:
            group = self._common("dsg", ts)
            group.update(name=f"Campaign {self.rng.randint(1, 99)}", import_meta=None)
            entity.update(discount_group_id=group["id"], discount_group=group)
        return self._store("discounts", entity)

    def _new_report(self, ts: str) -> dict[str, Any]:
        entity = self._common("rep", ts, status="pending")
        entity.update(
            type=self.rng.choice(list(_REPORT_UPDATED_FILTER)),
            rows=None,
            expires_at=None,
        )
        # each type of report names its filters as the spec does (`product_updated_at`, ...)
        entity["filters"] = [{"name": _REPORT_UPDATED_FILTER[entity["type"]], "operator": "lt", "value": ts[:10]}]
        if self.rng.random() < 0.7:
            entity.update(status="ready", rows=self.rng.randint(1, 5000))
        return self._store("reports", entity)

    def _new_subscription(self, customer_id: str, ts: str) -> dict[str, Any]:
        """A subscription of the customer; one with no address gets one first (with its event):
        the API types a subscription's `address_id` as a string, never null."""
        addresses = self.by_customer["customer_addresses"].get(customer_id)
        if not addresses:
            self._emit("customer_addresses", "created", self._new_address(customer_id, ts))
            addresses = self.by_customer["customer_addresses"][customer_id]
        entity = pickle.loads(self._sub_template)
        entity.update(self._common("sub", ts))
        businesses = self.by_customer["businesses"].get(customer_id) or [None]
        entity.update(
            status=self.rng.choice(["active", "active", "trialing", "past_due", "paused"]),
            customer_id=customer_id,
            address_id=addresses[0],
            business_id=businesses[0],
            currency_code=self.rng.choice(_CURRENCIES),
            started_at=ts,
            first_billed_at=ts,
            discount=None,
            custom_data=self._custom_data(),
            import_meta=None,
        )
        if self.ids["discounts"] and self.rng.random() < _SUBSCRIPTION_DISCOUNT_SHARE:
            # `type` as Paddle's current payloads carry it (its SDK requires it): a discount that
            # recurs, forever (no end) or for some billing periods, or one for the first only
            kind = "one-off" if self.rng.random() < 0.3 else "recurring"
            periods = 1 if kind == "one-off" else self.rng.choice([0, 3, 6, 12])
            ends = self._stamp(parse_ns(ts) + periods * 30 * _DAY_NS) if periods else None
            entity["discount"] = {"id": self.rng.choice(self.ids["discounts"]), "type": kind,
                                  "starts_at": ts, "ends_at": ends}
        return self._store("subscriptions", entity)

    def _new_transaction(self, customer_id: str, ts: str) -> dict[str, Any]:
        entity = pickle.loads(self._txn_template)
        entity.update(self._common("txn", ts))
        addresses = self.by_customer["customer_addresses"].get(customer_id) or [None]
        entity.update(
            status=self.rng.choice(["draft", "ready", "billed", "paid", "completed"]),
            customer_id=customer_id,
            address_id=addresses[0],
            currency_code=self.rng.choice(_CURRENCIES),
            invoice_number=f"{self.rng.randint(100, 999)}-{self.rng.randint(10000, 99999)}",
            custom_data=self._custom_data(),
        )
        entity["details"]["totals"]["total"] = str(self.rng.randint(100, 1_000_000))
        entity["payments"] = self._payments_after(entity, entity["status"], ts)
        return self._store("transactions", entity)

    def _payments_after(self, txn: dict[str, Any], status: str, ts: str) -> list[dict[str, Any]]:
        """The transaction's payment attempts once it has `status`: a new list (event snapshots
        keep the one they were taken with). Paid or completed: a captured payment (after a
        failed attempt, now and then); past due: one more failed attempt."""
        payments = list(txn.get("payments") or [])
        captured = any(p["status"] == "captured" for p in payments)
        if status in ("paid", "completed") and not captured:
            if self.rng.random() < 0.15:
                payments.append(self._payment_attempt(txn, ts, captured=False))
            payments.append(self._payment_attempt(txn, ts, captured=True))
        elif status == "past_due":
            payments.append(self._payment_attempt(txn, ts, captured=False))
        return payments

    def _payment_attempt(self, txn: dict[str, Any], ts: str, *, captured: bool) -> dict[str, Any]:
        payment = pickle.loads(self._payment_template)
        at = parse_ns(ts)
        payment.update(
            payment_attempt_id=self._uuid(),
            payment_method_id=self._new_id("paymtd", at),
            stored_payment_method_id=self._uuid(),
            amount=txn["details"]["totals"]["total"],
            status="captured" if captured else "error",
            error_code=None if captured else self.rng.choice(["declined", "expired_card", "not_enough_balance"]),
            created_at=ts,
            captured_at=self._stamp(at + self.rng.randint(1, 5) * 10**9) if captured else None,
        )
        payment["method_details"]["card"].update(
            type=self.rng.choice(["visa", "mastercard", "american_express"]),
            last4=f"{self.rng.randint(0, 9999):04d}",
            expiry_month=self.rng.randint(1, 12),
            expiry_year=int(ts[:4]) + self.rng.randint(1, 5),
        )
        return payment

    def _new_adjustment(self, ts: str) -> dict[str, Any] | None:
        """An adjustment (a refund or a credit) of a completed transaction, whole, as the
        `data` of its `adjustment.created` event; None when there is no transaction at all."""
        completed = [k for k in self.ids["transactions"] if self.entities["transactions"][k]["status"] == "completed"]
        candidates = completed or self.ids["transactions"]
        if not candidates:
            return None
        txn = self.entities["transactions"][self.rng.choice(candidates)]
        line = txn["details"]["line_items"][0]
        line_total = int(line["totals"]["total"])
        amount = line_total if self.rng.random() < 0.3 else self.rng.randint(1, max(1, line_total // 2))
        tax = amount * 8 // 108
        fee = amount * 5 // 100
        credit = self.rng.random() < 0.2
        currency = txn["currency_code"]
        totals = {"subtotal": str(amount - tax), "tax": str(tax), "total": str(amount)}
        adjustment = pickle.loads(self._adjustment_template)
        adjustment.update(
            id=self._new_id("adj"),
            action="credit" if credit else "refund",
            type="partial",
            transaction_id=txn["id"],
            subscription_id=txn.get("subscription_id"),
            customer_id=txn["customer_id"],
            reason=self.rng.choice(["error", "customer request", "duplicate charge"]),
            credit_applied_to_balance=False if credit else None,
            currency_code=currency,
            status="approved" if credit else "pending_approval",
            items=[{"id": self._new_id("adjitm"), "item_id": line["id"],
                    "type": "full" if amount == line_total else "partial", "amount": str(amount),
                    "proration": None, "totals": dict(totals)}],
            totals={**totals, "fee": str(fee), "earnings": str(amount - tax - fee), "currency_code": currency},
            payout_totals={**totals, "fee": str(fee), "earnings": str(amount - tax - fee), "currency_code": currency},
            tax_rates_used=[{"tax_rate": "0.08", "totals": dict(totals)}],
            created_at=ts,
            updated_at=ts,
        )
        return adjustment

    def _new_event(
        self, event_type: str, snapshot: dict[str, Any], ts: str, at_ns: int | None = None
    ) -> dict[str, Any]:
        entity = {
            "event_id": self._new_id("evt", at_ns),
            "event_type": event_type,
            "occurred_at": ts,
            "data": dict(snapshot),  # a snapshot: later top-level changes do not reach it
        }
        return self._store("events", entity)

    def _emit(self, resource: str, verb: str, entity: dict[str, Any]) -> str | None:
        """The event of a create or update of `entity`, right after it (None: no events for it).

        While the initial history is written, the event is only noted, with the entity's status
        and `updated_at` of that moment (all that history changes later): `_write_history_events`
        makes those of the retention window, in time order, once the world's `now` is known.
        """
        name = _EVENT_ENTITY.get(resource)
        if name is None:
            return None
        ts = entity["updated_at"]
        if self._history is not None:
            key = entity[RESOURCES[resource].primary_key]
            self._history.append((parse_ns(ts), resource, key, f"{name}.{verb}", entity["status"], ts))
            return None
        # it occurred now, whatever `updated_at` a test gave the entity
        occurred = ts if parse_ns(ts) >= self.clock_ns else self._stamp()
        return self._new_event(f"{name}.{verb}", entity, occurred)["event_id"]

    def _write_history_events(self) -> None:
        assert self._history is not None
        cutoff = self.retention_cutoff_ns()
        self._last_id_ms = 0  # history ids are of their own instants, before the clock's
        for at_ns, resource, key, event_type, status, ts in sorted(self._history, key=lambda e: e[0]):
            if at_ns >= cutoff:
                snapshot = dict(self.entities[resource][key], status=status, updated_at=ts)
                self._new_event(event_type, snapshot, ts, at_ns)
        self._last_id_ms = max(self._last_id_ms, self.clock_ns // 1_000_000)
        self._history = None

    def retention_cutoff_ns(self) -> int:
        """Events that occurred before this instant are past the API's retention: never listed."""
        return self.clock_ns - EVENT_RETENTION_DAYS * _DAY_NS

    # ------------------------------------------------------------------ the initial world
    def _generate(self, customers: int) -> None:
        entities_estimate = max(1, customers * 10)
        step = max(2_000_000, _HISTORY_NS // entities_estimate)
        for _ in range(max(3, customers // 20)):
            product = self._new_product(self._stamp())
            self._emit("products", "created", product)
            self._tick(step)
            for _ in range(2):
                self._emit("prices", "created", self._new_price(product["id"], self._stamp()))
                self._tick(step)
        for _ in range(max(2, customers // 20)):
            self._emit("discounts", "created", self._new_discount(self._stamp()))
            self._tick(step)
        for i in range(customers):
            customer = self._new_customer(self._stamp())
            self._emit("customers", "created", customer)
            self._tick(step)
            self._new_children(customer["id"], step)
            if self.rng.random() < 0.5:
                self._emit("subscriptions", "created", self._new_subscription(customer["id"], self._stamp()))
                self._tick(step)
            for _ in range(self.rng.randint(0, 4)):
                self._new_transaction_with_events(customer["id"], self._stamp())
                self._tick(step)
            if i % 100 == 0:
                self._new_report(self._stamp())
                self._tick(step)
        self._age_history()

    def _new_transaction_with_events(self, customer_id: str, ts: str) -> tuple[dict[str, Any], list[str]]:
        """A transaction and the ids of its events (none while the history is written)."""
        txn = self._new_transaction(customer_id, ts)
        events = [self._emit("transactions", "created", txn)]
        if txn["status"] == "completed":  # one action, two events
            events.append(self._emit("transactions", "completed", txn))
        return txn, [e for e in events if e]

    def _new_children(self, customer_id: str, step: int) -> list[str]:
        """0 to 3 addresses and 0 to 2 businesses of a customer, with their events: their event ids."""
        events = []
        for _ in range(self.rng.randint(0, 3)):
            events.append(self._emit("customer_addresses", "created", self._new_address(customer_id, self._stamp())))
            self._tick(step)
        for _ in range(self.rng.randint(0, 2)):
            events.append(self._emit("businesses", "created", self._new_business(customer_id, self._stamp())))
            self._tick(step)
        return [e for e in events if e]

    def _age_history(self) -> None:
        """Give some entities a later `updated_at`, and archive some, inside the past."""
        now = self.clock_ns
        for resource in _EVENT_ENTITY:
            for key in self.ids[resource]:
                roll = self.rng.random()
                if roll >= 0.3:
                    continue
                entity = self.entities[resource][key]
                created = parse_ns(entity["created_at"])
                when = created + int(self.rng.random() * (now - created))
                if resource in _ARCHIVABLE and roll < 0.1:
                    entity["status"] = "archived"
                self._touch(resource, entity, self._stamp(when))
                self._emit(resource, "updated", entity)

    # ------------------------------------------------------------------ queries
    def page(
        self,
        resource: str,
        *,
        per_page: int,
        after: str | None = None,
        ascending: bool = False,
        statuses: frozenset[str] | None = None,
        customer_id: str | None = None,
        updated_bounds: tuple[int | None, bool, int | None, bool] | None = None,
        order_by_updated: bool = False,
    ) -> tuple[list[str], bool]:
        """One page of keys in id order, and whether more follow.

        Args:
            updated_bounds: (lower_ns, lower_inclusive, upper_ns, upper_inclusive) on
                `updated_at`, transactions only.
        """
        if customer_id is not None:
            keys: list[str] = self.by_customer[resource].get(customer_id, [])
        elif updated_bounds is not None:
            keys = self._transactions_updated_between(*updated_bounds)
        elif resource == "events":
            keys = self.retained_event_ids()
        else:
            keys = self.ids[resource]
        table = self.entities[resource]
        if order_by_updated:  # products only, a few hundred: sorting per request is fine
            keys = sorted(keys, key=lambda k: (parse_ns(table[k]["updated_at"]), k))
            position = {k: i for i, k in enumerate(keys)}
            if ascending:
                start = position[after] + 1 if after in position else 0
                candidates: Iterable[str] = (keys[i] for i in range(start, len(keys)))
            else:
                start = position.get(after, len(keys)) - 1 if after else len(keys) - 1
                candidates = (keys[i] for i in range(start, -1, -1))
        elif ascending:
            start = bisect.bisect_right(keys, after) if after else 0
            candidates = (keys[i] for i in range(start, len(keys)))
        else:
            start = bisect.bisect_left(keys, after) - 1 if after else len(keys) - 1
            candidates = (keys[i] for i in range(start, -1, -1))
        found: list[str] = []
        for key in candidates:
            if statuses is not None and table[key].get("status") not in statuses:
                continue
            if len(found) == per_page:
                return found, True
            found.append(key)
        return found, False

    def _transactions_updated_between(
        self, lower: int | None, lower_incl: bool, upper: int | None, upper_incl: bool
    ) -> list[str]:
        index = self.txn_updated
        lo = 0
        if lower is not None:
            probe = (lower, "") if lower_incl else (lower, "\uffff")
            lo = bisect.bisect_left(index, probe)
        hi = len(index)
        if upper is not None:
            probe = (upper, "\uffff") if upper_incl else (upper, "")
            hi = bisect.bisect_left(index, probe)
        return sorted(key for _, key in index[lo:hi])

    def retained_event_ids(self) -> list[str]:
        """The ids of the events `/v1/events` lists now: those inside the retention window.

        Event ids are time-ordered (their first 10 characters are the milliseconds), so the
        window is a suffix of the sorted ids.
        """
        ids = self.ids["events"]
        start = bisect.bisect_left(ids, id_floor("evt", self.retention_cutoff_ns() + 999_999))
        listed = ids[start:] if start else ids
        return [i for i in listed if i not in self.held] if self.held else listed

    def truth(self, resource: str) -> list[dict[str, Any]]:
        """Every entity of `resource`, archived included, as the API lists it now (events: the
        retention window only)."""
        if resource == "ip_addresses":
            return [{"ipv4_cidr": cidr} for cidr in self.ip_cidrs]
        if resource == "event_types":
            return [dict(e) for e in self.event_types]
        keys = self.retained_event_ids() if resource == "events" else self.ids[resource]
        return [self.entities[resource][key] for key in keys]

    def counts(self) -> dict[str, int]:
        counts = {name: len(ids) for name, ids in self.ids.items()}
        counts["events"] = len(self.retained_event_ids())
        counts.update(event_types=len(self.event_types), ip_addresses=len(self.ip_cidrs))
        return counts

    # ------------------------------------------------------------------ change over time
    def advance(
        self,
        *,
        updates: int = 0,
        archives: int = 0,
        new_customers: int = 0,
        new_transactions: int = 0,
        adjustments: int = 0,
        cidrs_swapped: int = 0,
        new_event_types: int = 0,
        seconds: float = 60.0,
        same_instant: bool = False,
        precision_traps: int = 0,
    ) -> dict[str, list[str]]:
        """Move the world forward: update, archive and create entities, emitting events.

        Args:
            updates: entities (of any updatable resource) given a change and a new `updated_at`.
            archives: active entities archived (their `status` and `updated_at` change).
            new_customers: customers created, each with 0 to 3 addresses and 0 to 2 businesses.
            new_transactions: transactions created for existing customers.
            adjustments: `adjustment.created` events: a type of event with no table.
            cidrs_swapped: webhook source CIDRs replaced by new ones (no event).
            new_event_types: event types added to `/v1/event-types` (no event).
            seconds: how far the world clock moves first (events older than the retention
                window then leave `/v1/events`).
            same_instant: give every change of this call the very same `updated_at` string.
            precision_traps: entities changed twice within one second, the first stamped
                `…SS.9xxxxxZ` (6 digits), the second 10 ms later `…SS.9Z` (1 digit): the later
                change reads earlier (each has its event, in the order of the changes).

        Returns:
            The keys touched, per resource.
        """
        self.clock_ns += int(seconds * 1e9)
        shared_stamp = self._stamp() if same_instant else None
        touched: dict[str, list[str]] = {}

        def stamp() -> str:
            # cut to its digits, as the API's are: within one second, an entity's later change
            # can read earlier than the one before
            if shared_stamp is not None:
                return shared_stamp
            self._tick(50_000_000)
            return self._stamp(truncate=True)

        def note(resource: str, *keys: str | None) -> None:
            touched.setdefault(resource, []).extend(k for k in keys if k)

        updatable = [r for r in _EVENT_ENTITY if self.ids[r]]
        weights = [len(self.ids[r]) for r in updatable]
        for _ in range(updates):
            resource = self.rng.choices(updatable, weights)[0]
            key = self.rng.choice(self.ids[resource])
            entity = self.entities[resource][key]
            self._change(resource, entity)
            self._touch(resource, entity, stamp())
            note(resource, key)
            note("events", self._emit(resource, "updated", entity))
        for _ in range(precision_traps):
            resource = self.rng.choices(updatable, weights)[0]
            key = self.rng.choice(self.ids[resource])
            entity = self.entities[resource][key]
            self.clock_ns = (self.clock_ns // 10**9 + 1) * 10**9 + 900_000_000 + self.rng.randint(1, 89) * 10**6
            for digits in (6, 1):
                self._change(resource, entity)
                self._touch(resource, entity, format_ns(self.clock_ns, digits))
                note(resource, key)
                note("events", self._emit(resource, "updated", entity))
                self.clock_ns += 10_000_000
        for _ in range(archives):
            resource = self.rng.choice(_ARCHIVABLE)
            active = [k for k in self.ids[resource] if self.entities[resource][k]["status"] == "active"]
            if not active:
                continue
            key = self.rng.choice(active)
            entity = self.entities[resource][key]
            entity["status"] = "archived"
            self._touch(resource, entity, stamp())
            note(resource, key)
            note("events", self._emit(resource, "updated", entity))  # an archive is an update
        for _ in range(new_customers):
            customer = self._new_customer(stamp())
            note("customers", customer["id"])
            note("events", self._emit("customers", "created", customer))
            before = {r: len(self.ids[r]) for r in ("customer_addresses", "businesses")}
            note("events", *self._new_children(customer["id"], 50_000_000))
            for resource, count in before.items():
                note(resource, *self.ids[resource][count:])
        for _ in range(new_transactions):
            txn, events = self._new_transaction_with_events(self.rng.choice(self.ids["customers"]), stamp())
            note("transactions", txn["id"])
            note("events", *events)
        for _ in range(adjustments):
            ts = stamp()
            data = self._new_adjustment(ts)
            if data is not None:
                note("events", self._new_event("adjustment.created", data, ts)["event_id"])
        for _ in range(cidrs_swapped):
            gone = self.ip_cidrs.pop(self.rng.randrange(len(self.ip_cidrs)))
            new = f"34.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}/32"
            self.ip_cidrs.append(new)
            note("ip_addresses", gone, new)
        for _ in range(new_event_types):
            name = f"feature_{len(self.event_types)}.created"
            self.event_types.append({"name": name, "description": "A feature was created.",
                                     "group": "Feature", "available_versions": [1]})
            note("event_types", name)
        return touched

    def add_event(self, event_type: str, data: Any, *, drop: Iterable[str] = (),
                  event_id: Any = None) -> dict[str, Any]:
        """An event with any `data` at all, as a faulty or newer API might send it.

        Args:
            drop: fields the event lacks altogether (`data`, `event_id`).
            event_id: what its `event_id` says instead of a string id (a number, say). It is
                still listed in the place of the id it was given.
        """
        self._tick(50_000_000)
        ts = self._stamp()
        entity = self._store("events", {"event_id": self._new_id("evt"), "event_type": event_type,
                                        "occurred_at": ts, "data": data})
        listed = dict(entity)
        if event_id is not None:
            entity["event_id"] = event_id
        for name in drop:
            entity.pop(name, None)
        return listed

    def release_events(self, event_ids: Iterable[str] | None = None) -> list[str]:
        """Make held events visible (all of them by default): their writes committed."""
        released = sorted(self.held if event_ids is None else self.held & set(event_ids))
        self.held -= set(released)
        return released

    def mutate(
        self, resource: str, key: str, values: dict[str, Any], updated_at: str | None = None,
        hold_event: bool = False,
    ) -> dict[str, str | None]:
        """Set fields of one entity (a new field, a changed type, a huge value) and touch it.

        Args:
            updated_at: the new `updated_at` as given (default: the world clock, 1 s on).
            hold_event: the change is made (listings show it) and its event's id taken now, but
                `/v1/events` lists the event only once released (`release_events`): a write
                that commits after events with later ids were listed.
        """
        entity = self.entities[resource][key]
        entity.update(values)
        if updated_at is None:
            self.clock_ns += 10**9
            updated_at = self._stamp()
        self._touch(resource, entity, updated_at)
        event_id = self._emit(resource, "updated", entity)
        if hold_event and event_id:
            self.held.add(event_id)
        return {"updated_at": entity["updated_at"], "event_id": event_id}

    def _change(self, resource: str, entity: dict[str, Any]) -> None:
        """A visible change to one field, as a user of the real API would make it."""
        n = self.rng.randint(1, 10**6)
        if resource == "customers":
            entity["name"] = f"{self.rng.choice(_FIRST)} {self.rng.choice(_LAST)}"
        elif resource == "customer_addresses":
            entity["first_line"] = f"{n} Market Street"
        elif resource == "businesses":
            entity["company_number"] = str(n)
        elif resource == "subscriptions":
            entity["status"] = self.rng.choice(["active", "past_due", "paused", "canceled"])
        elif resource == "transactions":
            entity["status"] = self.rng.choice(["billed", "paid", "completed", "past_due"])
            entity["payments"] = self._payments_after(entity, entity["status"], self._stamp())
        elif resource == "reports":
            entity.update(status="ready", rows=n)
        else:
            entity["description"] = f"Revised description {n}"
            entity["custom_data"] = {"revision": n}
