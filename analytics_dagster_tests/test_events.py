"""Events mode: tables kept current by the event stream, requests counted by the sandbox."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster.source.resources import EVENTED
from analytics_dagster_tests.conftest import (
    EVERY_RUN,
    TABLES,
    Admin,
    assert_table_equals_truth,
    assert_events_cover_api,
    assert_warehouse_equals_api,
    warehouse_rows,
)
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import check_results, sync

# the tables kept by the event stream (discounts are listed every run: `unnotified`)
EVENT_TABLES = sorted(api.name for api in EVENTED.values() if not api.unnotified)
WITHOUT_EVENTS = [t for t in TABLES if t != "events"]
DAY = 24 * 3600


def metadata(result: Any) -> dict[str, dict[str, Any]]:
    """Per table: the materialization metadata, as plain values."""
    return {
        m.asset_key.path[-1]: {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("analytics_api")
    }


def synced(admin: Admin, tables: list[str] | None = None, **kwargs: Any) -> tuple[Any, dict[str, int]]:
    """One run, its result and the sandbox's count of its requests by resource."""
    admin.post("stats/reset")
    result = sync(tables, **kwargs)
    return result, admin.get("stats")["by_resource"]


def events_after_cursor(admin: Admin, cursor: str) -> int:
    return sum(1 for e in admin.truth("events") if e["event_id"] > cursor)


def fetches_after_cursor(admin: Admin, cursor: str) -> dict[str, int]:
    """The requests a run makes, beside the stream's, for what the events after `cursor` leave
    out: the subscriptions they changed, fetched by id, 100 a request (`feed.with_omitted`)."""
    changed = {e["data"]["id"] for e in admin.truth("events")
               if e["event_id"] > cursor and e["event_type"].startswith("subscription.")}
    return {"subscriptions": math.ceil(len(changed) / 100)} if changed else {}


def test_rounds_of_changes_are_exact_from_the_events_alone(warehouse: Path, admin: Admin) -> None:
    first, _ = synced(admin)
    assert all(metadata(first)[t]["sync_mode"] == "listing" for t in EVENT_TABLES)
    customer = admin.truth("customers")[0]["id"]
    rounds = [
        dict(updates=15, archives=4),  # updates and archives (an archive is an update event)
        dict(new_customers=3, new_transactions=5),  # new customers with addresses and businesses
        dict(cidrs_swapped=1, new_event_types=1, adjustments=2, updates=3),  # adjustments; no-event changes
    ]
    cursor = metadata(first)["events"]["event_cursor"]
    for number, changes in enumerate(rounds):
        touched = admin.post("advance", **changes)
        # two updates of one entity in the same round: the second one wins
        admin.post("mutate", resource="customers", key=customer, set={"name": f"First {number}"})
        admin.post("mutate", resource="customers", key=customer, set={"name": f"Second {number}"})
        new_events, fetches = events_after_cursor(admin, cursor), fetches_after_cursor(admin, cursor)
        result, requests = synced(admin)
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        assert_warehouse_equals_api(warehouse, admin)
        meta = metadata(result)
        assert {t: meta[t]["sync_mode"] for t in EVENT_TABLES} == {t: "events" for t in EVENT_TABLES}
        # no listing of an evented table, no per-customer request: the stream and the
        # tables without events
        pages = math.ceil(new_events / 200)
        assert requests == {"events": pages, **EVERY_RUN, **fetches}, (number, requests)
        assert meta["customers"]["api_requests"] == pages
        assert meta["customers"]["api_requests_in_run"] == pages + sum(EVERY_RUN.values()) + sum(fetches.values())
        for table in set(touched) & set(EVENT_TABLES):
            assert meta[table]["rows_written"] >= 1, (number, table)
        assert warehouse_rows(warehouse, "customers")[customer]["name"] == f"Second {number}"
        cursor = meta["events"]["event_cursor"]
        assert all(meta[t]["event_cursor"] == cursor for t in EVENT_TABLES)
    adjustments = [e for e in admin.truth("events")
                   if e["event_type"] == "adjustment.created" and e["event_id"] in touched["events"]]
    assert len(adjustments) == 2 and set(e["event_id"] for e in adjustments) <= set(warehouse_rows(warehouse, "events"))
    assert {e["data"]["id"] for e in adjustments} == set(touched["adjustments"]) <= set(warehouse_rows(warehouse, "adjustments"))


@pytest.mark.usefixtures("backfilled")
def test_a_no_change_run_makes_one_request_for_events_plus_the_tables_without_events(
    warehouse: Path, admin: Admin
) -> None:
    result, requests = synced(admin)
    assert requests == {"events": 1, **EVERY_RUN}
    meta = metadata(result)
    assert all(meta[t]["rows_written"] == 0 for t in EVENT_TABLES + ["events", "reports"])
    assert meta["event_types"]["sync_mode"] == "replace"
    assert meta["ip_addresses"]["rows_written"] == len(admin.truth("ip_addresses"))  # read whole
    assert meta["customers"]["event_cursor_occurred_at"] and meta["customers"]["current_as_of"]


def test_k_changes_cost_k_over_200_pages(warehouse: Path, admin: Admin) -> None:
    result = sync()
    cursor = metadata(result)["events"]["event_cursor"]
    admin.post("advance", updates=450)
    new_events, fetches = events_after_cursor(admin, cursor), fetches_after_cursor(admin, cursor)
    assert new_events > 400  # (updates of reports emit no event)
    result, requests = synced(admin, EVENT_TABLES)
    assert requests == {"events": math.ceil(new_events / 200), **fetches}
    assert_warehouse_equals_api(warehouse, admin, EVENT_TABLES)


@pytest.mark.usefixtures("backfilled")
def test_a_child_alone_then_customers_is_exact_and_lists_nothing(warehouse: Path, admin: Admin) -> None:
    admin.post("advance", updates=20, new_customers=3)
    result, requests = synced(admin, ["customer_addresses"])
    assert requests == {"events": 1}, "no customers listing, no per-customer request"
    assert_table_equals_truth(warehouse, "customer_addresses", admin.truth("customer_addresses"))
    admin.post("advance", updates=5, new_customers=1)
    result, requests = synced(admin, ["customers", "businesses"])
    assert requests == {"events": 1}
    # each table's own cursor: businesses and customers still got the first round's changes
    assert_warehouse_equals_api(warehouse, admin, ["customers", "businesses"])
    assert sync(["customer_addresses"]).success
    assert_warehouse_equals_api(warehouse, admin, ["customers", "customer_addresses", "businesses"])


def test_changes_made_while_the_backfill_lists_are_replayed(
    warehouse: Path, admin: Admin, sandbox: SandboxServer
) -> None:
    # 10 requests in, the backfill is listing the customers' children: the world changes
    admin.post("advance", after_requests=10, updates=25, archives=4, new_customers=2, new_transactions=3)
    first, requests = synced(admin)
    assert requests["customer_addresses"] >= len(sandbox.world.ids["customers"]) - 2
    result, requests = synced(admin)
    assert "customer_addresses" not in requests and "customers" not in requests
    meta = metadata(result)
    assert meta["customers"]["sync_mode"] == "events"
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_cursor_past_the_retention_window_lists_the_table_again(warehouse: Path, admin: Admin) -> None:
    # changes, and then 88 days with no sync: within the API's 90 days, but past the margin
    admin.post("advance", updates=10, new_customers=2)
    admin.post("advance", seconds=88 * DAY)
    result, requests = synced(admin)
    meta = metadata(result)
    assert all(meta[t]["sync_mode"] == "listing" for t in EVENT_TABLES), meta["customers"]
    assert "retention" in meta["customers"]["sync_reason"]
    assert requests["customer_addresses"] == len(admin.truth("customers"))
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)
    # the next run is back on the events
    admin.post("advance", updates=5)
    result, requests = synced(admin)
    assert all(metadata(result)[t]["sync_mode"] == "events" for t in EVENT_TABLES)
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_changes_whose_events_left_the_api_are_not_lost(warehouse: Path, admin: Admin) -> None:
    """Past the retention, the events of a change are gone: only a listing can still see it."""
    admin.post("advance", updates=10, archives=2, new_customers=2, new_transactions=2)
    admin.post("advance", seconds=91 * DAY)
    assert not admin.truth("events"), "every change is older than the retention now"
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    # the events table keeps the history it read; the API no longer lists it
    assert len(warehouse_rows(warehouse, "events")) > 0


def test_listing_mode_is_still_exact(warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    assert sync().success
    admin.post("advance", updates=12, archives=3, new_customers=2, new_transactions=4)
    result, requests = synced(admin)
    assert_warehouse_equals_api(warehouse, admin)
    meta = metadata(result)
    assert all(meta[t]["sync_mode"] == "listing" for t in EVENT_TABLES)
    assert meta["customers"]["sync_reason"] == "incremental = listing"
    assert requests["customer_addresses"] == len(admin.truth("customers"))
    assert requests["events"] == 1
    # back to events: the tables were never given a cursor, so they are listed once more, then fed
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "events")
    assert sync().success
    admin.post("advance", updates=6)
    result, requests = synced(admin)
    assert "customer_addresses" not in requests
    assert_warehouse_equals_api(warehouse, admin)


def test_a_bad_incremental_setting_is_named(warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "evnts")
    result = sync(["products"], raise_on_error=False)
    assert not result.success
    assert "sources.analytics.incremental is 'evnts'" in step_error(result)


@pytest.mark.usefixtures("backfilled")
def test_an_event_read_twice_after_a_failed_run_is_applied_once(warehouse: Path, admin: Admin) -> None:
    admin.post("advance", updates=15, new_customers=2)
    # the run reads the events, then reports keep failing: nothing of it is committed
    admin.post("inject", resource="reports", kind="status", status=500, count=4)
    assert not sync(raise_on_error=False).success
    result, requests = synced(admin)
    assert result.success and requests["events"] == 1
    assert_warehouse_equals_api(warehouse, admin)


def test_same_instant_changes_follow_the_order_of_events(warehouse: Path, admin: Admin) -> None:
    assert sync(["products"]).success
    product = admin.truth("products")[0]["id"]
    stamp = admin.post("mutate", resource="products", key=product, set={"description": "one"})["updated_at"]
    admin.post("mutate", resource="products", key=product, set={"description": "two"}, updated_at=stamp)
    admin.post("advance", updates=6, same_instant=True)
    assert sync(["products"]).success
    assert warehouse_rows(warehouse, "products")[product]["description"] == "two"
    assert_table_equals_truth(warehouse, "products", admin.truth("products"))


@pytest.mark.usefixtures("backfilled")
def test_one_run_can_be_forced_to_list_by_its_run_config(warehouse: Path, admin: Admin) -> None:
    listing = {"ops": {"analytics_api": {"config": {"incremental": "listing"}}}}
    result, requests = synced(admin, ["customers", "customer_addresses"], run_config=listing)
    meta = metadata(result)
    assert meta["customers"]["sync_mode"] == meta["customer_addresses"]["sync_mode"] == "listing"
    assert requests["customer_addresses"] == len(admin.truth("customers"))
    result, requests = synced(admin, ["customers", "customer_addresses"])  # the setting again: events
    assert requests == {"events": 1}


@pytest.mark.usefixtures("backfilled")
def test_the_read_starts_where_the_tables_that_take_events_need_it(warehouse: Path, admin: Admin) -> None:
    # day 2: a thousand changes (five pages of events), synced an hour later (out of the
    # late-event window) by every table but prices
    admin.post("advance", seconds=2 * DAY, updates=1000)
    admin.post("advance", seconds=3600)
    assert sync([t for t in TABLES if t != "prices"]).success
    # day 88: prices' cursor is past the retention minus the margin, the others' are not
    admin.post("advance", seconds=86 * DAY, updates=3)
    result, requests = synced(admin)
    meta = metadata(result)
    assert meta["prices"]["sync_mode"] == "listing" and meta["customers"]["sync_mode"] == "events"
    # not the five pages after prices' cursor, which no table that takes events needs: the
    # first request (made before the plan knew prices is listed), the read from the others',
    # and the catch-up read after prices' listing
    assert requests["events"] == 3, requests
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)
