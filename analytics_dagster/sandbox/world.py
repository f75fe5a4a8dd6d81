"""The sandbox's data: a deterministic, mutable replica of the API's entities, and how it changes.

Everything is derived from ``seed`` and the sequence of calls made on the world, never from the
wall clock, so a test that builds a world and advances it the same way sees the same data.

The world serves the resources of the registry (``analytics_dagster.source.resources``: ids,
keys, which are children of customers, which are archived, which have events) and makes their
entities with the factories of ``analytics_dagster.sandbox.factories``. Both are arguments, so
a test can serve a registry with a resource more.

Scale: for ``customers = N`` the initial world holds (on average)

========================  =========================================
customers                 N
customer_addresses        0 to 3 per customer (1.6 N: one at least with a subscription)
businesses                0 to 2 per customer (1 N)
subscriptions             0.5 N, each with an address, 20% with a discount; ``localized`` of them
                          (30%) billed in their customer's currency
transactions              0 to 4 per customer (2 N); paid or completed ones with a payment; and
                          the first of each subscription billed at an amount its prices do not
                          state (converted, or tax-inclusive: ``factories``, "what a
                          subscription is billed")
events                    one per create and update of the resources with events, of the
                          last 90 days only (older ones are past the API's retention)
products                  max(3, N / 20); prices: 2 per product
discounts                 max(2, N / 20)
reports                   max(1, N / 100)
adjustments               max(2, N / 8), of completed or billed transactions (made once the rest
                          of the world is, which they leave as it was); refunds mostly reviewed
event_types, ips          fixed lists from the real API's payloads
========================  =========================================

About 10% of the entities that have an ``active``/``archived`` status start archived, and 30%
were updated after their creation.

The event stream follows the contract: every create or update (archives included) of an
entity of a resource with an ``event_entity`` emits an event ``<entity>.<verb>`` whose ``data``
is the entity's snapshot right after the change, and ``/v1/events`` lists only the events of
the last ``EVENT_RETENTION_DAYS`` days of the world clock. The world clock is the API's
``now``: it moves only when the world is advanced, and the server sends it as the ``Date``
header.
"""

from __future__ import annotations

import bisect
import copy
import functools
import json
import random
import uuid
from typing import Any, Callable, Iterable

from analytics_dagster.rfc3339 import CROCKFORD as _CROCKFORD, format_ns, id_floor, parse_ns
from analytics_dagster.sandbox import lifecycles as _lifecycles
from analytics_dagster.sandbox.factories import (FACTORIES, LOCALIZED_SHARE, Document, Factory, check,
                                                 new_active_subscription, new_subscription_transaction,
                                                 redeem_discount, renew_subscription)
from analytics_dagster.sandbox import metrics
from analytics_dagster.source.resources import RESOURCES, ApiResource

_START_NS = 1_672_531_200 * 10**9  # 2023-01-01T00:00:00Z
_HISTORY_NS = 2 * 365 * 24 * 3600 * 10**9  # the initial world spans two years
EVENT_RETENTION_DAYS = 90  # /v1/events lists the events of the last 90 days only
_DAY_NS = 24 * 3600 * 10**9
EVENTS = "events"  # the event stream: made by the world itself, of the other resources' changes
_ADVANCE_STEP_NS = 50_000_000  # the most the clock moves between two changes of an `advance`


class _Round:
    """The changes of one `advance`: the stamps they take, and the keys they touched."""

    def __init__(self, world: World, shared_stamp: str | None) -> None:
        self.world = world
        self.shared_stamp = shared_stamp
        self.touched: dict[str, list[str]] = {}

    def stamp(self) -> str:
        """The next change's `updated_at`: cut to its digits, as the API's are, so within one
        second an entity's later change can read earlier than the one before."""
        if self.shared_stamp is not None:
            return self.shared_stamp
        self.world._tick(_ADVANCE_STEP_NS)
        return self.world.stamp(truncate=True)

    def note(self, resource: str, *keys: str | None) -> None:
        self.touched.setdefault(resource, []).extend(k for k in keys if k)


class World:
    """All entities of the sandbox API, with indexes that make a page cost O(page size).

    Args:
        customers: how many customers the initial world has; everything else scales with it.
        seed: makes the world, and every later `advance`, reproducible.
        localized: the share of subscriptions billed in the currency of their customer's
            country (Paddle's localized checkout: an override of the price for that country, or
            the base price converted), the others in their first price's currency.
        lifecycles: subscriptions live their lives over the initial history: renewed each
            period with their transactions, paused, resumed, canceled, their quantities changed
            (`sandbox/lifecycles.py`); the world then knows the MRR of every past day
            (`mrr_history`). Off by default, which leaves every other world as it was.
        trial_checkouts: (with lifecycles) a trial is checked out as Paddle's checkout makes
            it, by a transaction (origin `web`) of its trial period that charges nothing
            (`lifecycles.bill_trial`). Off by default: a trial's first transaction is then the
            one that bills its first period.
        resources: the registry served (default: the project's).
        factories: what makes each resource's data, by name (default: `factories.FACTORIES`).
        balance_currency: the account's primary balance currency: what `/metrics/*` and the
            completed transactions' `details.payout_totals` are in (`sandbox.metrics`).
    """

    def __init__(self, customers: int = 100, seed: int = 0, *, localized: float = LOCALIZED_SHARE,
                 lifecycles: bool = False, trial_checkouts: bool = False,
                 resources: tuple[ApiResource, ...] = RESOURCES,
                 factories: dict[str, Factory | Document] = FACTORIES,
                 balance_currency: str = metrics.BALANCE_CURRENCY) -> None:
        check(resources, factories)
        self.balance_currency = balance_currency
        # every state each subscription has been in, (from ns, snapshot), for `/metrics/*`:
        # the initial history's (their status then, the rest as made) and every change's since
        self.subscription_states: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.resources: dict[str, ApiResource] = {r.name: r for r in resources}
        self.factories = factories
        self.seed = seed
        self.localized = localized
        self.lifecycles = lifecycles
        self.trial_checkouts = trial_checkouts
        self.rng = random.Random(seed)
        self.clock_ns = _START_NS
        self._last_id_ms = 0
        lists = [r for r in resources if r.paginated]
        self.entities: dict[str, dict[str, dict[str, Any]]] = {r.name: {} for r in lists}
        self.ids: dict[str, list[str]] = {r.name: [] for r in lists}  # sorted: ids are time-ordered
        self.by_customer: dict[str, dict[str, list[str]]] = {r.name: {} for r in lists if r.parent}
        # (updated_at, key), sorted, of the lists the API filters on `updated_at[...]`
        self.by_updated: dict[str, list[tuple[int, str]]] = {
            r.name: [] for r in lists if r.listing == "server_updated_at"}
        # what `advance` updates: the lists with events, then the others (reports), each in the
        # registry's order; this order fixes what a seed makes
        made = [r for r in lists if isinstance(factories.get(r.name), Factory)]
        self.updatable = [r.name for r in made if r.event_entity] + [r.name for r in made if not r.event_entity]
        self.archivable = [r.name for r in lists if r.hides_archived]
        # what is made with each new entity of a resource, in the factories' order
        self._made_with = {name: [n for n, f in factories.items() if getattr(f, "made_with", None) == name]
                           for name in factories}
        self._blobs: dict[str, bytes] = {}
        # events whose change happened (their id is taken) but that `/v1/events` does not list
        # yet: a write that commits late (`hold_event`, `release_events`)
        self.held: set[str] = set()
        # the unpaginated resources' whole `data`
        self.documents: dict[str, Any] = {
            r.name: factories[r.name].make(self) for r in resources if not r.paginated and r.listing != "days"}
        # events of the initial history, made once the history is written (see `_emit`)
        self._history: list[tuple[int, str, str, str, dict[str, Any]]] | None = []
        self._generate(customers)
        self._write_history_events()
        self._generate_later(customers)
        if lifecycles:
            _lifecycles.live(self)
        self._lapse()

    @property
    def event_types(self) -> list[dict[str, Any]]:
        """`/v1/event-types`' list (`advance`'s `new_event_types` adds to it)."""
        return self.documents["event_types"]

    @property
    def ip_cidrs(self) -> list[str]:
        """`/v1/ips`' CIDRs (`advance`'s `cidrs_swapped` replaces some)."""
        return self.documents["ip_addresses"]["ipv4_cidrs"]

    # ------------------------------------------------------------------ identities and time
    def new_id(self, prefix: str, at_ns: int | None = None) -> str:
        """A new id of the world clock's millisecond, or of `at_ns`'s (never before the last id)."""
        ms = max(self._last_id_ms + 1, (self.clock_ns if at_ns is None else at_ns) // 1_000_000)
        self._last_id_ms = ms
        # 10 characters of milliseconds, then 16 random ones: a ULID, lower-cased
        value = (ms << 80) | self.rng.getrandbits(80)
        return prefix + "_" + "".join(_CROCKFORD[(value >> s) & 31] for s in range(125, -5, -5))

    def stamp(self, ns: int | None = None, *, truncate: bool = False) -> str:
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

    def uuid(self) -> str:
        """A version-4 UUID from the world's generator (reproducible)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _tick(self, max_ns: int) -> None:
        self.clock_ns += self.rng.randint(1_000_000, max(1_000_001, max_ns))

    def common(self, resource: str, ts: str, *, status: str = "active") -> dict[str, Any]:
        """The fields every entity starts with: a new id (the registry's `id_prefix`), `status`,
        `created_at` and `updated_at`."""
        prefix = self.resources[resource].id_prefix
        assert prefix, f"{resource}: the registry gives it no id_prefix"
        return {"id": self.new_id(prefix), "status": status, "created_at": ts, "updated_at": ts}

    # ------------------------------------------------------------------ storage
    def _store(self, resource: str, entity: dict[str, Any]) -> dict[str, Any]:
        api = self.resources[resource]
        key = entity[api.primary_key]
        self.entities[resource][key] = entity
        self._pay_out(resource, entity)
        ids = self.ids[resource]
        if not ids or ids[-1] < key:
            ids.append(key)
        else:  # never happens for generated ids, but keep the index sorted regardless
            bisect.insort(ids, key)
        if api.parent:
            self.by_customer[resource].setdefault(entity["customer_id"], []).append(key)
        if resource in self.by_updated:
            bisect.insort(self.by_updated[resource], (parse_ns(entity["updated_at"]), key))
        return entity

    def _touch(self, resource: str, entity: dict[str, Any], updated_at: str) -> None:
        """Record that `entity` changed: new `updated_at`, cached JSON dropped, indexes moved."""
        key = entity[self.resources[resource].primary_key]
        index = self.by_updated.get(resource)
        if index is not None:
            del index[bisect.bisect_left(index, (parse_ns(entity["updated_at"]), key))]
            bisect.insort(index, (parse_ns(updated_at), key))
        entity["updated_at"] = updated_at
        self._pay_out(resource, entity)
        self._blobs.pop(key, None)

    def _pay_out(self, resource: str, entity: dict[str, Any]) -> None:
        """A completed transaction's `details.payout_totals`: its totals in the balance currency."""
        if resource == "transactions" and isinstance(entity.get("details"), dict):
            payout = metrics.payout_totals(entity, self.balance_currency)
            if entity["details"].get("payout_totals") != payout:  # a new dict: events keep the old one
                entity["details"] = {**entity["details"], "payout_totals": payout}

    def blob(self, resource: str, key: str) -> bytes:
        """The entity's JSON, cached until it changes."""
        data = self._blobs.get(key)
        if data is None:
            data = json.dumps(self.entities[resource][key], separators=(",", ":")).encode()
            self._blobs[key] = data
        return data

    def children(self, resource: str, customer_id: str) -> list[str]:
        """The keys of a customer's children of `resource` (a list under `/customers/{cus_id}/`)."""
        return self.by_customer[resource].get(customer_id, [])

    # ------------------------------------------------------------------ making entities
    def create(self, resource: str, ts: str, owner: str | None = None,
               new: Callable[[World, str, str | None], dict[str, Any] | None] | None = None,
               ) -> tuple[dict[str, Any], list[str]]:
        """A new entity of `resource` at `ts` from its factory (or `new`, made as the factory's
        `new` makes one: a non-catalog price a transaction bills), stored, and the ids of the
        events its creation emitted (none while the initial history is written), those of the
        entities made with it included (a non-catalog price and product, a subscription's
        transaction). A factory that may make nothing (`Factory.history`'s) leaves the entity None."""
        factory = self.factories[resource]
        assert isinstance(factory, Factory)
        listed = len(self.ids[EVENTS])
        made = (new or factory.new)(self, ts, owner)
        if made is None:
            assert factory.history is not None, f"{resource}: its factory made nothing"
            return made, []  # type: ignore[return-value]
        entity = self._store(resource, made)
        nested = self.ids[EVENTS][listed:] if self._history is None else []
        events = [self._emit(resource, verb, entity) for verb in factory.created(entity)]
        return entity, nested + [e for e in events if e]

    def _make(self, resource: str, step: int, owner: str | None, place: int, children_only: bool) -> list[str]:
        """An entity now, the clock on by up to `step`, then what is made with it: event ids."""
        entity, events = self.create(resource, self.stamp(), owner)
        self._tick(step)
        key = entity[self.resources[resource].primary_key]
        return events + self._make_with(resource, key, place, step, children_only)

    def _make_with(self, resource: str, key: str, place: int, step: int, children_only: bool) -> list[str]:
        """What comes with a new entity of `resource` (the factories `made_with` it; with
        `children_only`, its children alone): their events' ids."""
        events: list[str] = []
        for name in self._made_with[resource]:
            if children_only and self.resources[name].parent != resource:
                continue
            factory = self.factories[name]
            assert isinstance(factory, Factory)
            for i in range(factory.count(self.rng, place)):
                events += self._make(name, step, key, i, children_only)
        return events

    def _generate(self, customers: int) -> None:
        """The initial world: the lists made on their own, in the factories' order, each entity
        with what is made with it, the clock walking through two years; then some updated."""
        step = max(2_000_000, _HISTORY_NS // (max(1, customers) * 10))  # (an empty account: as one customer's)
        for name, factory in self.factories.items():
            if isinstance(factory, Factory) and factory.made_with is None and factory.history is None:
                for place in range(factory.count(self.rng, customers)):
                    self._make(name, step, None, place, children_only=False)
        self._age_history()

    def _generate_later(self, customers: int) -> None:
        """The share of the initial world the factories with a `history` make themselves, once the
        rest is made and its events written, in a history of their own: ids of their instants,
        events of the retention window; the clock back where it was. It draws from a generator
        of its own (from the seed), so the world's generator, and its last id, are where they
        were too: what every later `advance` draws is the same as without them."""
        later = [f for f in self.factories.values() if isinstance(f, Factory) and f.history]
        if not later:
            return
        now, last_id_ms, rng = self.clock_ns, self._last_id_ms, self.rng
        self._history, self._last_id_ms, self.rng = [], 0, random.Random(f"{self.seed}/history")
        for factory in later:
            assert factory.history is not None
            factory.history(self, factory.count(self.rng, customers))
        self.clock_ns = now
        self._write_history_events()
        self.rng, self._last_id_ms = rng, max(last_id_ms, self._last_id_ms)

    def update(self, resource: str, key: str, updated_at: str) -> str | None:
        """A change to one entity (its factory's `change`), stamped `updated_at`, with its event
        (its id; None: no events for it, or the initial history's, written later)."""
        entity = self.entities[resource][key]
        self._change(resource, entity)
        self._touch(resource, entity, updated_at)
        return self._emit(resource, "updated", entity)

    def _age_history(self) -> None:
        """Give some entities a later `updated_at`, and archive some, inside the past."""
        now = self.clock_ns
        for resource in self.updatable:
            for key in self.ids[resource]:
                roll = self.rng.random()
                if roll >= 0.3:
                    continue
                entity = self.entities[resource][key]
                created = parse_ns(entity["created_at"])
                when = created + int(self.rng.random() * (now - created))
                if resource in self.archivable and roll < 0.1:
                    entity["status"] = "archived"
                self._touch(resource, entity, self.stamp(when))
                self._emit(resource, "updated", entity)

    # ------------------------------------------------------------------ the event stream
    def _new_event(
        self, event_type: str, snapshot: dict[str, Any], ts: str, at_ns: int | None = None
    ) -> dict[str, Any]:
        # what the API's events of the entity leave out (`ApiResource.event_omits`) they lack
        omitted = next((r.event_omits for r in self.resources.values() if r.event_entity == event_type.split(".")[0]), ())
        entity = {
            "event_id": self.new_id(self._event_prefix, at_ns),
            "event_type": event_type,
            "occurred_at": ts,
            # a snapshot: later top-level changes do not reach it
            "data": {k: v for k, v in snapshot.items() if k not in omitted},
        }
        return self._store(EVENTS, entity)

    @property
    def _event_prefix(self) -> str:
        return self.resources[EVENTS].id_prefix or "evt"

    def _emit(self, resource: str, verb: str, entity: dict[str, Any]) -> str | None:
        """The event of a create or update of `entity`, right after it (None: no events for it).

        While the initial history is written, the event is only noted, with the entity's status
        and `updated_at` of that moment (all that history changes later): `_write_history_events`
        makes those of the retention window, in time order, once the world's `now` is known.
        """
        name = self.resources[resource].event_entity
        if name is None:
            return None
        ts = entity["updated_at"]
        if self._history is not None:
            key = entity[self.resources[resource].primary_key]
            then = {field: entity[field] for field in ("status", "updated_at") if field in entity}
            self._history.append((parse_ns(ts), resource, key, f"{name}.{verb}", then))
            return None
        # it occurred now, whatever `updated_at` a test gave the entity
        occurred = ts if parse_ns(ts) >= self.clock_ns else self.stamp()
        if resource == "subscriptions":
            self._keep_state(entity, parse_ns(occurred))
        return self._new_event(f"{name}.{verb}", entity, occurred)["event_id"]

    def _keep_state(self, subscription: dict[str, Any], at_ns: int) -> None:
        self.subscription_states.setdefault(subscription["id"], []).append((at_ns, copy.deepcopy(subscription)))

    def _write_history_events(self) -> None:
        assert self._history is not None
        cutoff = self.retention_cutoff_ns()
        self._last_id_ms = 0  # history ids are of their own instants, before the clock's
        for at_ns, resource, key, event_type, then in sorted(self._history, key=lambda e: e[0]):
            if resource == "subscriptions":  # every state, those past the retention too
                self._keep_state(dict(self.entities[resource][key], **then), at_ns)
            if at_ns >= cutoff:
                self._new_event(event_type, dict(self.entities[resource][key], **then), then["updated_at"], at_ns)
        self._last_id_ms = max(self._last_id_ms, self.clock_ns // 1_000_000)
        self._history = None

    def retention_cutoff_ns(self) -> int:
        """Events that occurred before this instant are past the API's retention: never listed."""
        return self.clock_ns - EVENT_RETENTION_DAYS * _DAY_NS

    # ------------------------------------------------------------------ queries
    def page(
        self,
        resource: str,
        *,
        per_page: int,
        after: str | None = None,
        ascending: bool = False,
        customer_id: str | None = None,
        updated_bounds: tuple[int | None, bool, int | None, bool] | None = None,
        order_by_updated: bool = False,
        where: dict[str, frozenset[str]] | None = None,
    ) -> tuple[list[str], bool]:
        """One page of keys in id order (or `updated_at` order), and whether more follow.

        Args:
            customer_id: the customer whose children are listed (a child resource).
            updated_bounds: (lower_ns, lower_inclusive, upper_ns, upper_inclusive) on
                `updated_at`, for a list the API filters so (`server_updated_at`).
            where: the values a field must have, by field (the registry's `filters`).
        """
        if customer_id is not None:
            keys: list[str] = self.children(resource, customer_id)
        elif updated_bounds is not None:
            keys = self._updated_between(resource, *updated_bounds)
        elif resource == EVENTS:
            keys = self.retained_event_ids()
        else:
            keys = self.ids[resource]
        table = self.entities[resource]
        if order_by_updated:  # products, a few hundred: sorting per request is fine
            keys = sorted(keys, key=lambda k: (parse_ns(table[k]["updated_at"]), k))
        found: list[str] = []
        for key in _from(keys, after, ascending, by_position=order_by_updated):
            if where and any(table[key].get(name) not in values for name, values in where.items()):
                continue
            if len(found) == per_page:
                return found, True
            found.append(key)
        return found, False

    def count(self, resource: str, where: dict[str, frozenset[str]]) -> int:
        """How many entities of `resource` have one of the values `where` gives for each field."""
        table = self.entities[resource]
        if all(set(f.values) <= where.get(f.name, set(f.values)) for f in self.resources[resource].list_filters):
            return len(self.ids[resource])  # every value of each asked: the whole resource
        return sum(all(table[k].get(name) in values for name, values in where.items()) for k in self.ids[resource])

    def _updated_between(
        self, resource: str, lower: int | None, lower_incl: bool, upper: int | None, upper_incl: bool
    ) -> list[str]:
        index = self.by_updated[resource]
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
        ids = self.ids[EVENTS]
        start = bisect.bisect_left(ids, id_floor(self._event_prefix, self.retention_cutoff_ns() + 999_999))
        listed = ids[start:] if start else ids
        return [i for i in listed if i not in self.held] if self.held else listed

    def truth(self, resource: str) -> list[dict[str, Any]]:
        """Every entity of `resource`, archived included, as the API lists it now (events: the
        retention window only; an unpaginated resource: its rows, as the source keeps them; a
        metric: the rows a first sync keeps, `metrics.history`)."""
        if resource in self.documents:
            api = self.resources[resource]
            rows = self.documents[resource]
            for step in api.data_selector.split(".")[1:]:  # the document is `data` already
                rows = rows[step]
            return [dict(row) if isinstance(row, dict) else {api.primary_key: row} for row in rows]
        if self.resources[resource].listing == "days":  # a metric: the days a first sync reads
            return metrics.history(self, self.resources[resource].path.rsplit("/", 1)[-1])
        keys = self.retained_event_ids() if resource == EVENTS else self.ids[resource]
        return [self.entities[resource][key] for key in keys]

    def counts(self) -> dict[str, int]:
        counts = {name: len(ids) for name, ids in self.ids.items()}
        counts[EVENTS] = len(self.retained_event_ids())
        counts.update({name: len(self.truth(name)) for name in self.documents})
        return counts

    def mrr_history(self) -> dict[str, dict[str, float]]:
        """The MRR of every day by currency, from the world's whole history
        (`lifecycles.mrr_history`: a world made with `lifecycles=True` only)."""
        return _lifecycles.mrr_history(self)

    # ------------------------------------------------------------------ change over time
    def advance(
        self,
        *,
        updates: int = 0,
        archives: int = 0,
        new_customers: int = 0,
        new_transactions: int = 0,
        new_subscriptions: int = 0,
        renewals: int = 0,
        adjustments: int = 0,
        cidrs_swapped: int = 0,
        new_event_types: int = 0,
        seconds: float = 60.0,
        same_instant: bool = False,
        precision_traps: int = 0,
        checkouts: int = 0,
    ) -> dict[str, list[str]]:
        """Move the world forward: update, archive and create entities, emitting events.

        Args:
            updates: entities (of any updatable resource) given a change and a new `updated_at`.
            archives: active entities archived (their `status` and `updated_at` change).
            new_customers: customers created, each with its children (0 to 3 addresses and 0
                to 2 businesses).
            new_transactions: transactions created for existing customers.
            new_subscriptions: active subscriptions created for existing customers, as a
                checkout makes them (`subscription.created`; an address first for a customer
                with none, and the checkout's transaction when the prices do not state what it
                bills), each with its events: a customer starting another subscription, or one
                coming back after its last was canceled (Paddle never reactivates a canceled one).
            renewals: active subscriptions renewed: the next billing period starts now (a
                `subscription.updated` event), billed by a transaction of origin
                subscription_recurring at the amounts of now (a converted price at this
                month's rate).
            adjustments: adjustments (refunds, credits, chargebacks) of transactions that can be
                adjusted, each with its `adjustment.created` event (fewer if none can be).
            cidrs_swapped: webhook source CIDRs replaced by new ones (no event).
            new_event_types: event types added to `/v1/event-types` (no event).
            seconds: how far the world clock moves first (events older than the retention
                window then leave `/v1/events`).
            same_instant: give every change of this call the very same `updated_at` string.
            precision_traps: entities changed twice within one second, the first stamped
                `…SS.9xxxxxZ` (6 digits), the second 10 ms later `…SS.9Z` (1 digit): the later
                change reads earlier (each has its event, in the order of the changes).
            checkouts: checkouts that redeem an active discount: its `times_used` grows, with
                no event and no new `updated_at` (at its `usage_limit` it becomes `used`,
                stamped, with no event either).

        As the clock moves, what time changes by itself (`Factory.lapse`: discounts and
        reports expiring) changes, stamped, with no event.

        Returns:
            The keys touched, per resource.
        """
        self.clock_ns += int(seconds * 1e9)
        round_ = _Round(self, self.stamp() if same_instant else None)
        for resource, key in self._lapse():
            round_.note(resource, key)
        if self.lifecycles:
            self._renew_due(round_)
        for _ in range(checkouts):
            self._checkout(round_)
        # each resource as likely as the entities an update can change (`Factory.changeable`)
        weights = [len(self._changeable(r)) for r in self.updatable]
        updatable = [r for r, weight in zip(self.updatable, weights) if weight]
        weights = [weight for weight in weights if weight]
        for _ in range(updates):
            self._update(round_, self.rng.choices(updatable, weights)[0])
        for _ in range(precision_traps):
            self._precision_trap(round_, self.rng.choices(updatable, weights)[0])
        for _ in range(archives):
            self._archive(round_, self.rng.choice(self.archivable))
        for _ in range(new_customers):
            self._new_customer(round_)
        for _ in range(new_transactions):
            customer = self.rng.choice(self.ids["customers"])
            txn, events = self.create("transactions", round_.stamp(), customer)
            round_.note("transactions", txn["id"])
            round_.note(EVENTS, *events)
        for _ in range(new_subscriptions):
            self._new_subscription(round_)
        for _ in range(renewals):
            self._renew(round_)
        for _ in range(adjustments):
            adjustment, events = self.create("adjustments", round_.stamp())
            if adjustment is not None:
                round_.note("adjustments", adjustment["id"])
                round_.note(EVENTS, *events)
        for _ in range(cidrs_swapped):
            self._swap_cidr(round_)
        for _ in range(new_event_types):
            self._new_event_type(round_)
        return round_.touched

    def _lapse(self) -> list[tuple[str, str]]:
        """Apply what time changed by itself (`Factory.lapse`), with no event (stamped now if
        the factory says so)."""
        changed = []
        for name, factory in self.factories.items():
            if isinstance(factory, Factory) and factory.lapse is not None:
                for key in self.ids[name]:
                    entity = self.entities[name][key]
                    if factory.lapse(self, entity):
                        if factory.lapse_stamps:
                            self._touch(name, entity, self.stamp())
                        else:
                            self._blobs.pop(key, None)  # (its cached JSON)
                        changed.append((name, key))
        return changed

    def _pick_active(self, resource: str) -> str | None:
        """One active entity of `resource`, drawn; None: none is active."""
        active = [k for k in self.ids[resource] if self.entities[resource][k]["status"] == "active"]
        return self.rng.choice(active) if active else None

    def _checkout(self, round_: _Round) -> None:
        """A checkout redeeming one active discount: silent (`factories.redeem_discount`)."""
        key = self._pick_active("discounts")
        if key is None:
            return
        entity = self.entities["discounts"][key]
        if redeem_discount(self, entity):
            self._touch("discounts", entity, round_.stamp())
        else:
            self._blobs.pop(key, None)  # (its cached JSON)
        round_.note("discounts", key)

    def _changeable(self, resource: str) -> list[str]:
        """The keys of the entities of `resource` an update can change (`Factory.changeable`)."""
        factory = self.factories[resource]
        keys = self.ids[resource]
        if isinstance(factory, Factory) and factory.changeable is not None:
            keys = [k for k in keys if factory.changeable(self.entities[resource][k])]
        if self.lifecycles and resource == "transactions":
            # a subscription's transactions change with it only (one past due: the subscription is)
            keys = [k for k in keys if not self.entities[resource][k].get("subscription_id")]
        return keys

    def _pick(self, resource: str) -> str | None:
        """One entity of `resource` an update can change, or None (changed since it was weighed)."""
        keys = self._changeable(resource)
        return self.rng.choice(keys) if keys else None

    def _update(self, round_: _Round, resource: str) -> None:
        """A change to one entity of `resource`, with its event (none if none can change)."""
        key = self._pick(resource)
        if key is None:
            return
        entity = self.entities[resource][key]
        self._change(resource, entity)
        self._touch(resource, entity, round_.stamp())
        round_.note(resource, key)
        round_.note(EVENTS, self._emit(resource, "updated", entity))

    def _precision_trap(self, round_: _Round, resource: str) -> None:
        """Two changes to one entity within one second, the later one reading earlier."""
        key = self._pick(resource)
        if key is None:
            return
        entity = self.entities[resource][key]
        self.clock_ns = (self.clock_ns // 10**9 + 1) * 10**9 + 900_000_000 + self.rng.randint(1, 89) * 10**6
        for digits in (6, 1):
            self._change(resource, entity)
            self._touch(resource, entity, format_ns(self.clock_ns, digits))
            round_.note(resource, key)
            round_.note(EVENTS, self._emit(resource, "updated", entity))
            self.clock_ns += 10_000_000

    def _archive(self, round_: _Round, resource: str) -> None:
        """One active entity of `resource` archived: an update, with its event."""
        key = self._pick_active(resource)
        if key is None:
            return
        entity = self.entities[resource][key]
        entity["status"] = "archived"
        self._touch(resource, entity, round_.stamp())
        round_.note(resource, key)
        round_.note(EVENTS, self._emit(resource, "updated", entity))  # an archive is an update

    def _new_customer(self, round_: _Round) -> None:
        """A customer, with its children (the lists under `/customers/{cus_id}/`) and their events."""
        customer, events = self.create("customers", round_.stamp())
        round_.note("customers", customer["id"])
        round_.note(EVENTS, *events)
        children = [name for name in self._made_with["customers"] if self.resources[name].parent == "customers"]
        before = {name: len(self.ids[name]) for name in children}
        place = len(self.ids["customers"]) - 1
        events = self._make_with("customers", customer["id"], place, _ADVANCE_STEP_NS, children_only=True)
        round_.note(EVENTS, *events)
        for name, count in before.items():
            round_.note(name, *self.ids[name][count:])

    def _new_subscription(self, round_: _Round) -> None:
        """An existing customer's new active subscription, with what is made with it, and their events."""
        customer = self.rng.choice(self.ids["customers"])
        before = {name: len(ids) for name, ids in self.ids.items() if name != EVENTS}
        _, events = self.create("subscriptions", round_.stamp(), customer, new=new_active_subscription)
        round_.note(EVENTS, *events)
        for name, count in before.items():
            round_.note(name, *self.ids[name][count:])

    def _renew(self, round_: _Round) -> None:
        """One active subscription renewed: its next billing period, and the transaction that bills it."""
        key = self._pick_active("subscriptions")
        if key is None:
            return
        subscription = self.entities["subscriptions"][key]
        ts = round_.stamp()
        renew_subscription(self, subscription, ts)
        self._touch("subscriptions", subscription, ts)
        self._renewed(round_, subscription, ts)

    def _renew_due(self, round_: _Round) -> None:
        """A world with lifecycles renews each active subscription whose period ended as the
        clock moved: each period it missed, the next starting where the last ended (stamped
        now, as a renewal run late), with its `subscription.updated` and its transaction."""
        for key in self.ids["subscriptions"]:
            subscription = self.entities["subscriptions"][key]
            while (subscription["status"] == "active" and subscription.get("next_billed_at")
                   and parse_ns(subscription["next_billed_at"]) <= self.clock_ns):
                _lifecycles.renew(self, subscription, round_.stamp())
                self._renewed(round_, subscription, subscription["current_billing_period"]["starts_at"])

    def _renewed(self, round_: _Round, subscription: dict[str, Any], billed_at: str) -> None:
        """A subscription just renewed: its `subscription.updated`, and the transaction billing
        its new period (`subscription_recurring`, at `billed_at`) with that one's events."""
        round_.note("subscriptions", subscription["id"])
        round_.note(EVENTS, self._emit("subscriptions", "updated", subscription))
        txn, events = self.create("transactions", billed_at, subscription["customer_id"], new=functools.partial(
            new_subscription_transaction, subscription=subscription, origin="subscription_recurring"))
        round_.note("transactions", txn["id"])
        round_.note(EVENTS, *events)

    def _swap_cidr(self, round_: _Round) -> None:
        gone = self.ip_cidrs.pop(self.rng.randrange(len(self.ip_cidrs)))
        new = f"34.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}/32"
        self.ip_cidrs.append(new)
        round_.note("ip_addresses", gone, new)

    def _new_event_type(self, round_: _Round) -> None:
        name = f"feature_{len(self.event_types)}.created"
        self.event_types.append({"name": name, "description": "A feature was created.",
                                 "group": "Feature", "available_versions": [1]})
        round_.note("event_types", name)

    def add_event(self, event_type: str, data: Any, *, drop: Iterable[str] = (),
                  event_id: Any = None) -> dict[str, Any]:
        """An event with any `data` at all, as a faulty or newer API might send it.

        Args:
            drop: fields the event lacks altogether (`data`, `event_id`).
            event_id: what its `event_id` says instead of a string id (a number, say). It is
                still listed in the place of the id it was given.
        """
        self._tick(_ADVANCE_STEP_NS)
        ts = self.stamp()
        entity = self._store(EVENTS, {"event_id": self.new_id(self._event_prefix), "event_type": event_type,
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
        hold_event: bool = False, bill: str | None = None,
    ) -> dict[str, str | None]:
        """Set fields of one entity (a new field, a changed type, a huge value) and touch it.

        Args:
            updated_at: the new `updated_at` as given (default: the world clock, 1 s on).
            hold_event: the change is made (listings show it) and its event's id taken now, but
                `/v1/events` lists the event only once released (`release_events`): a write
                that commits after events with later ids were listed.
            bill: a subscription's change billed at once, by a transaction of this origin
                (`lifecycles.bill`): `subscription_update` (Paddle's `prorated_immediately`: what
                is left of the current period, its lines prorated) or `subscription_recurring`
                (the whole current period, as a resume that starts a new one bills it); without
                it a change bills nothing.
        """
        entity = self.entities[resource][key]
        entity.update(values)
        if updated_at is None:
            self.clock_ns += 10**9
            updated_at = self.stamp()
        self._touch(resource, entity, updated_at)
        event_id = self._emit(resource, "updated", entity)
        if hold_event and event_id:
            self.held.add(event_id)
        if bill is not None:
            if resource != "subscriptions" or bill not in ("subscription_update", "subscription_recurring"):
                raise ValueError("bill: only a subscription's change bills (subscription_update or "
                                 f"subscription_recurring), not {resource}/{bill}")
            _lifecycles.bill(self, entity, entity["updated_at"], bill)
        return {"updated_at": entity["updated_at"], "event_id": event_id}

    def _change(self, resource: str, entity: dict[str, Any]) -> None:
        """A visible change to one field, as a user of the real API would make it: the
        factory's (`Factory.change`), given a number drawn for it."""
        n = self.rng.randint(1, 10**6)
        factory = self.factories[resource]
        assert isinstance(factory, Factory)
        factory.change(self, entity, n)


def _from(keys: list[str], after: str | None, ascending: bool, *, by_position: bool) -> Iterable[str]:
    """`keys` (sorted) from just after `after`, either way; `by_position`: `keys` are not in id
    order (sorted by `updated_at`), so `after` is found by its place among them."""
    if by_position:
        position = {k: i for i, k in enumerate(keys)}
        if ascending:
            start = position[after] + 1 if after in position else 0
        else:
            start = position.get(after, len(keys)) - 1 if after else len(keys) - 1
    elif ascending:
        start = bisect.bisect_right(keys, after) if after else 0
    else:
        start = bisect.bisect_left(keys, after) - 1 if after else len(keys) - 1
    return (keys[i] for i in range(start, len(keys))) if ascending else (keys[i] for i in range(start, -1, -1))
