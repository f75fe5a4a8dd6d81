"""The checklist of docs/design.md ("Adding a resource"), followed: a made-up resource, added
by one registry entry and one factory, is served, paged and evented by the sandbox over HTTP
and synced into DuckDB, as every resource of the registry is served.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

import analytics_dagster.source as source
from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import FACTORIES, Factory, SandboxServer, World
from analytics_dagster.source import resources
from analytics_dagster.source.sync import sync as engine_sync
from analytics_dagster.source.resources import ENTITY_JSON, RESOURCES, ApiResource
from analytics_dagster_tests import conftest
from analytics_dagster_tests.conftest import Admin, assert_events_cover_api, assert_table_equals_truth
from analytics_dagster_tests.test_sandbox import get, walk

# 1. the registry entry (in resources.py, it would be one more line of RESOURCES)
GIFT_CARDS = ApiResource(
    "gift_cards", "/gift-cards", "id", "Gift cards (gft_…), archived included.", hides_archived=True,
    event_entity="gift_card", id_prefix="gft", page_size=50, max_page_size=50,
    nullable=ENTITY_JSON + (("redeemed_at", "timestamp"),),
)


# 2. its factory (in sandbox/factories.py, it would be one more entry of FACTORIES)
def new_gift_card(world: World, ts: str, owner: Optional[str]) -> dict[str, Any]:
    card = world.common("gift_cards", ts)
    card.update(code=f"GIFT-{world.rng.randint(10**5, 10**6 - 1)}", redeemed_at=None,
                balance={"amount": str(world.rng.randint(5, 500) * 100), "currency_code": "USD"},
                custom_data=None, import_meta=None)
    return card


def spend(world: World, card: dict[str, Any], n: int) -> None:
    card["balance"] = {**card["balance"], "amount": str(n)}  # a new value: events keep the old one


REGISTRY = RESOURCES + (GIFT_CARDS,)
WITH_GIFT_CARDS = {**FACTORIES, "gift_cards": Factory(new_gift_card, lambda rng, customers: 2 * customers,
                                                      change=spend)}


# 3. the test: the sandbox serves it as the registry says, and the source syncs it
def assert_served(server: SandboxServer, api: ApiResource) -> None:
    """`api` is served by the sandbox as its registry entry says, over HTTP."""
    world, path = server.world, server.path_prefix + api.path
    if api.listing == "days":
        assert_series_served(server, api)
        return
    if not api.paginated:
        body = get(server, path).json()
        assert body["data"] == world.documents[api.name] and "pagination" not in body["meta"], api.name
        assert all(row[api.primary_key] for row in world.truth(api.name)), api.name
        return
    if api.parent:  # the customer with the most children of this kind
        owner = max(world.ids[api.parent], key=lambda key: len(world.children(api.name, key)))
        path, keys = path.replace("{cus_id}", owner), world.children(api.name, owner)
        assert get(server, path.replace(owner, "ctm_nobody")).status_code == 404
    else:
        keys = [e[api.primary_key] for e in world.truth(api.name)]
    listed, per_page = [], max(1, len(keys) // 3)
    for part in api.parts:  # the whole resource: every part of its listing
        entities, metas = walk(server, path, per_page=per_page, order_by="id[ASC]", **part)
        listed += [e[api.primary_key] for e in entities]
        assert len(metas) == max(1, -(-len(entities) // per_page)), f"{api.name} {part}: a page for every third"
    assert sorted(listed) == sorted(keys), api.name
    both = api.parts[0]
    assert all(re.match(rf"^{api.id_prefix}_[a-z0-9]{{26}}$", k) for k in keys), api.name
    cap = get(server, path, per_page=api.max_page_size + 50, **both).json()["meta"]["pagination"]
    assert cap["per_page"] == api.max_page_size, api.name
    for field in api.order_fields:
        assert get(server, path, order_by=f"{field}[DESC]").status_code == 200, (api.name, field)
    assert get(server, path, order_by="currency[ASC]").status_code == 400, api.name
    for hiding in api.list_filters:  # a listing that does not ask shows the default's alone
        shown, _ = walk(server, path)
        assert {e[hiding.name] for e in shown} <= set(hiding.default), (api.name, hiding.name)
    if api.listing != "event_stream":
        assert_evented(server, api, keys[0])


def assert_series_served(server: SandboxServer, api: ApiResource) -> None:
    """A daily series (`/metrics/*`): a point a day from `from` (inclusive) to `to` (exclusive)
    up to the API's today, both dates required (else a 400 naming the field), in the shape of
    Paddle's payloads; the same date twice: an empty series. No events."""
    today = datetime.fromtimestamp(server.world.clock_ns // 10**9, tz=timezone.utc).date()
    start, end = today - timedelta(days=9), today + timedelta(days=3)
    body = get(server, path := server.path_prefix + api.path, **{"from": str(start), "to": str(end)}).json()
    data = body["data"]
    assert [p["timestamp"] for p in data["timeseries"]] == [f"{start + timedelta(days=k)}T00:00:00Z" for k in range(10)]
    assert (data["starts_at"], data["ends_at"], data["interval"]) == (f"{start}T00:00:00Z", f"{end}T00:00:00Z", "day")
    assert parse_ns(data["updated_at"]) and body["meta"]["request_id"]
    assert ("currency_code" in data) == any(name == "amount" for name, _ in api.nullable), api.name
    for missing, query in (("from", {"to": str(end)}), ("to", {"from": str(start)}), ("to", {"from": str(end), "to": str(start)}),
                           ("from", {"from": "yesterday", "to": str(end)})):
        response = get(server, path, **query)
        assert response.status_code == 400 and response.json()["error"]["errors"][0]["field"] == missing, (api.name, query)
    assert get(server, path, **{"from": str(start), "to": str(start)}).json()["data"]["timeseries"] == []
    assert api.event_entity is None and api.permission == "metrics.read" and api.primary_key == "day"


def assert_evented(server: SandboxServer, api: ApiResource, key: str) -> None:
    """Its events name its `event_entity` and carry its snapshots; a change of `key` emits one
    (a resource without an `event_entity`: none)."""
    admin, prefix = Admin(server.url), server.path_prefix
    events, _ = walk(server, f"{prefix}/events", order_by="id[ASC]", per_page=200)
    own = [e for e in events if e["event_type"].split(".")[0] == api.event_entity]
    assert all(e["data"][api.primary_key] in server.world.entities[api.name] for e in own), api.name
    changed = admin.post("mutate", resource=api.name, key=key, set={"custom_data": {"checked": True}})
    newer, _ = walk(server, f"{prefix}/events", order_by="id[ASC]", after=events[-1]["event_id"])
    if api.event_entity is None:
        assert not own and changed["event_id"] is None and not newer, api.name
        return
    assert [e["event_id"] for e in newer] == [changed["event_id"]], api.name
    assert newer[0]["event_type"] == f"{api.event_entity}.updated", api.name
    entity = server.world.entities[api.name][key]  # as listed, but for what its events leave out
    assert newer[0]["data"] == {k: v for k, v in entity.items() if k not in api.event_omits}, api.name


@pytest.mark.parametrize("api", RESOURCES, ids=lambda api: api.name)
def test_every_resource_of_the_registry_is_served_as_it_says(api: ApiResource) -> None:
    with SandboxServer(World(customers=40, seed=7)) as server:
        assert_served(server, api)


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    """The sandbox with the gift cards (this module's `warehouse` and `admin` use it)."""
    with SandboxServer(World(customers=40, seed=7, resources=REGISTRY, factories=WITH_GIFT_CARDS)) as server:
        yield server


def test_a_resource_added_as_the_checklist_says_is_served(sandbox: SandboxServer, admin: Admin) -> None:
    world = sandbox.world
    assert len(world.ids["gift_cards"]) == 80 and admin.get("counts")["gift_cards"] == 80
    assert get(sandbox, "/v1/gift-cards").status_code == 200
    cutoff = world.retention_cutoff_ns()
    recent = {c["id"] for c in admin.truth("gift_cards") if parse_ns(c["created_at"]) >= cutoff}
    created = {e["data"]["id"] for e in admin.truth("events") if e["event_type"] == "gift_card.created"}
    assert recent and created == recent, "every gift card of the last 90 days has its created event"
    assert_served(sandbox, GIFT_CARDS)
    card = world.ids["gift_cards"][1]
    admin.post("mutate", resource="gift_cards", key=card, set={"status": "archived"})
    assert card not in [c["id"] for c in walk(sandbox, "/v1/gift-cards")[0]], "archived: hidden unless asked"
    touched = admin.post("advance", updates=200)
    assert touched["gift_cards"], "advance updates it, as any resource with a factory"
    assert all(e["event_type"] == "gift_card.updated" for e in admin.truth("events")
               if e["event_id"] in touched["events"] and e["data"]["id"] in touched["gift_cards"])
    assert "gift_cards" not in World(customers=5).ids, "the project's own registry is left as it is"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The source reads the registry with GIFT_CARDS in it, as if its line were in resources.py:
    every name it is read by, patched for this test only (request counts by path aside)."""
    monkeypatch.setattr(resources, "RESOURCES", REGISTRY)
    monkeypatch.setattr(source, "RESOURCES", REGISTRY)
    monkeypatch.setitem(resources.RESOURCES_BY_NAME, GIFT_CARDS.name, GIFT_CARDS)
    monkeypatch.setitem(resources.EVENTED, GIFT_CARDS.event_entity, GIFT_CARDS)
    monkeypatch.setitem(conftest.PRIMARY_KEYS, GIFT_CARDS.name, GIFT_CARDS.primary_key)


def sync(tables: list[str]) -> Any:
    """A run of `tables` by the sync engine, as the asset makes it (without Dagster, whose
    definitions are built at import, from the registry as it was): the run's first plan."""
    return engine_sync(tables).plans[0]


def test_a_resource_added_as_the_checklist_says_is_synced(registry: None, warehouse: Path, admin: Admin) -> None:
    tables = ["gift_cards", "events"]
    assert sync(tables).mode("gift_cards") == "listing", "its backfill"
    assert_table_equals_truth(warehouse, "gift_cards", admin.truth("gift_cards"))
    card = admin.truth("gift_cards")[0]["id"]
    admin.post("mutate", resource="gift_cards", key=card, set={"redeemed_at": "2025-01-01T00:00:00Z"})
    touched = admin.post("advance", updates=200, archives=20)
    assert touched["gift_cards"]
    assert sync(tables).mode("gift_cards") == "events", "then kept by its events"
    assert_table_equals_truth(warehouse, "gift_cards", admin.truth("gift_cards"))
    assert_events_cover_api(warehouse, admin)


def test_a_registry_entry_without_its_factory_is_refused() -> None:
    """Step 2 cannot be forgotten: the sandbox names what is missing."""
    with pytest.raises(ValueError, match=r"gift_cards: a list needs a Factory"):
        World(customers=5, resources=REGISTRY)
    with pytest.raises(ValueError, match=r"gift_cards: a factory of no resource of the registry"):
        World(customers=5, factories=WITH_GIFT_CARDS)
    no_prefix = ApiResource("gift_cards", "/gift-cards", "id", "Gift cards.")
    with pytest.raises(ValueError, match=r"gift_cards: the registry gives it no id_prefix"):
        World(customers=5, resources=RESOURCES + (no_prefix,), factories=WITH_GIFT_CARDS)
