"""Exact whatever the event stream does: timestamps of varying precision, events that become
visible late, malformed events, changes made while a listing pages, events past the retention.

Each hazard is made by the sandbox on demand (its admin API), and every test compares the
warehouse with the API key by key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.rfc3339 import format_ns
from analytics_dagster.sandbox import SandboxServer
from analytics_dagster_tests.conftest import (
    TABLES,
    Admin,
    assert_events_cover_api,
    assert_table_equals_truth,
    assert_warehouse_equals_api,
    same_value,
    warehouse_rows,
)
from analytics_dagster_tests.test_events import EVENT_TABLES, metadata, synced
from analytics_dagster_tests.test_sync import check_results, sync

WITHOUT_EVENTS = [t for t in TABLES if t != "events"]
DAY = 24 * 3600


def stale_rows(db: Path, admin: Admin, tables: list[str]) -> dict[str, list[str]]:
    """Per table, the keys whose row differs from the API's entity (or is missing)."""
    stale: dict[str, list[str]] = {}
    for table in tables:
        rows = warehouse_rows(db, table)
        for entity in admin.truth(table):
            row = rows.get(entity["id"])
            if row is None or any(_differs(value, row.get(field)) for field, value in entity.items()):
                stale.setdefault(table, []).append(entity["id"])
    return stale


def _differs(expected: Any, actual: Any) -> bool:
    try:
        return not same_value(expected, actual)
    except (TypeError, ValueError):
        return True


# ---------------------------------------------------------------------- precision of updated_at
@pytest.mark.usefixtures("backfilled")
@pytest.mark.smoke
def test_a_later_update_with_fewer_digits_wins_within_one_round(warehouse: Path, admin: Admin) -> None:
    for number in range(4):
        # ordinary changes (stamps cut to 0-9 digits) and entities changed twice in one second,
        # the second change stamped `…SS.9Z`, which reads earlier than the first `…SS.9xxxxxZ`
        touched = admin.post("advance", updates=20, archives=3, new_customers=1, precision_traps=6)
        assert touched, number
        result = sync()
        assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
        assert stale_rows(warehouse, admin, EVENT_TABLES) == {}, f"round {number}"
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_later_update_with_fewer_digits_wins_across_runs(warehouse: Path, admin: Admin) -> None:
    customer = admin.truth("customers")[3]["id"]
    admin.post("mutate", resource="customers", key=customer, set={"name": "first"},
               updated_at="2031-05-01T10:20:52.928731Z")
    assert sync().success
    admin.post("mutate", resource="customers", key=customer, set={"name": "second"},
               updated_at="2031-05-01T10:20:52.9Z")  # a later change, an earlier-looking stamp
    assert sync().success
    row = warehouse_rows(warehouse, "customers")[customer]
    assert row["name"] == "second"
    assert_warehouse_equals_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_later_update_with_fewer_digits_wins_across_chunks(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = admin.truth("products")[0]["id"]
    admin.post("mutate", resource="products", key=product, set={"description": "first"},
               updated_at="2031-05-01T10:20:52.928731Z")
    admin.post("mutate", resource="products", key=product, set={"description": "second"},
               updated_at="2031-05-01T10:20:52.9Z")
    # one event a page, a chunk after every event: each snapshot is committed by a load of its own
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", json.dumps({"events": 1}))
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "1")
    result = sync(["products", "events"])
    assert result.success
    assert metadata(result)["products"]["loads"] >= 2
    assert warehouse_rows(warehouse, "products")[product]["description"] == "second"
    assert_table_equals_truth(warehouse, "products", admin.truth("products"))


# ---------------------------------------------------------------------- late events
@pytest.mark.usefixtures("backfilled")
@pytest.mark.smoke
def test_an_event_visible_after_later_ones_were_read_is_applied(warehouse: Path, admin: Admin) -> None:
    customers = [c["id"] for c in admin.truth("customers")]
    # the change is made and its event's id taken now, but the event is listed only later
    late = admin.post("mutate", resource="customers", key=customers[0], set={"name": "late"}, hold_event=True)
    # two seconds later, other changes whose events are visible at once (none of that customer)
    admin.post("advance", seconds=2, new_customers=3)
    assert sync().success
    assert late["event_id"] not in warehouse_rows(warehouse, "events")
    admin.post("release", event_ids=[late["event_id"]])
    admin.post("advance", seconds=1)
    result, requests = synced(admin)
    assert result.success
    assert warehouse_rows(warehouse, "customers")[customers[0]]["name"] == "late"
    assert late["event_id"] in warehouse_rows(warehouse, "events")
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)
    # the window read again costs no request more: the stream's one page
    assert requests["events"] == 1
    meta = metadata(result)
    assert meta["customers"]["rows_written"] == 1 and meta["events"]["rows_written"] == 1, "nothing applied twice"


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_older_than_an_applied_one_does_not_win(warehouse: Path, admin: Admin) -> None:
    customer = admin.truth("customers")[1]["id"]
    older = admin.post("mutate", resource="customers", key=customer, set={"name": "older"}, hold_event=True)
    admin.post("advance", seconds=2)
    admin.post("mutate", resource="customers", key=customer, set={"name": "newer"})  # visible at once
    assert sync().success
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "newer"
    admin.post("release", event_ids=[older["event_id"]])
    assert sync().success
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "newer", "the older snapshot lost"
    assert older["event_id"] in warehouse_rows(warehouse, "events")
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_rounds_of_changes_with_late_events_and_coarse_stamps_leave_no_stale_row(
    warehouse: Path, admin: Admin
) -> None:
    customers = [c["id"] for c in admin.truth("customers")]
    for number in range(4):
        held = [admin.post("mutate", resource="customers", key=customers[number * 2 + i],
                           set={"name": f"held {number}.{i}"}, hold_event=True)["event_id"] for i in range(2)]
        admin.post("advance", seconds=1, updates=15, archives=2, new_transactions=2, precision_traps=4)
        assert sync().success
        admin.post("release", event_ids=held)
    admin.post("advance", seconds=1)
    assert sync().success
    assert stale_rows(warehouse, admin, EVENT_TABLES) == {}
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)


# ---------------------------------------------------------------------- malformed events
BAD_EVENTS = [
    ({"event_type": "customer.updated", "drop": ["data"]}, "it has no data"),
    ({"event_type": "address.updated", "data": None}, "its data is null"),
    ({"event_type": "subscription.updated", "data": {"status": "active"}}, "its data has no id"),
    ({"event_type": "transaction.updated", "event_id": 12345, "data": {"id": "txn_x"}}, "not a string"),
    ({"event_type": "business.updated", "drop": ["event_id"], "data": {"id": "biz_x"}}, "not a string"),
]


@pytest.mark.usefixtures("backfilled")
def test_malformed_events_are_kept_reported_and_stop_nothing(warehouse: Path, admin: Admin) -> None:
    product = admin.truth("products")[0]
    bad = [admin.post("event", **body) for body, _ in BAD_EVENTS]
    bad.append(admin.post("event", event_type="product.updated",
                          data={**product, "description": "never applied", "updated_at": "yesterday"}))
    admin.post("advance", updates=12, archives=2, new_customers=2, new_transactions=2)
    result = sync(raise_on_error=False)
    assert result.success, "a malformed event never stops the sync"
    assert_warehouse_equals_api(warehouse, admin, [t for t in WITHOUT_EVENTS])
    # kept whole in `events` (under its text when its id is no string; without an id it cannot be)
    events = warehouse_rows(warehouse, "events")
    for sent in bad[:3] + bad[5:]:
        assert sent["event_id"] in events
    assert "12345" in events and json.loads(events["12345"]["data"]) == {"id": "txn_x"}
    # the run log names each event, its type and what is wrong
    log = "\n".join(str(e.message) for e in result.all_events if e.message)
    for sent, (body, problem) in zip(bad, BAD_EVENTS):
        assert body["event_type"] in log and problem in log, problem
    assert bad[-1]["event_id"] in log and "'yesterday'" in log
    # the table's check warns with the event ids; the primary-key checks pass
    warned = check_results(result, "events_applied")
    assert all(c.passed for c in check_results(result).values())
    for table, sent in [("customers", bad[0]), ("customer_addresses", bad[1]), ("subscriptions", bad[2]),
                        ("products", bad[5])]:
        check = warned[table]
        assert not check.passed and check.severity.value == "WARN", table
        assert sent["event_id"] in check.metadata["bad_event_ids"].value, table
    assert "12345" in warned["events"].metadata["bad_event_ids"].value
    assert warned["prices"].passed
    # later runs go on, exact, and keep warning while the API keeps the events
    admin.post("advance", updates=6, new_customers=1)
    result = sync()
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert not check_results(result, "events_applied")["customers"].passed
    assert meta_bad(result, "customers") == 1


def meta_bad(result: Any, table: str) -> int:
    return metadata(result)[table]["bad_events"]


# ---------------------------------------------------------------------- listing mode
def test_a_long_listing_misses_no_change_made_while_it_paged(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", json.dumps({"customers": 5}))
    assert sync(["customers"]).success
    customers = [c["id"] for c in admin.truth("customers")]  # in id order: pages of 5
    # The next listing pages for a long time (20 minutes of the API's clock): after its first
    # page, a customer of that page changes; after its second page, one of its last page does.
    admin.post("stats/reset")  # (the deferred changes count the requests from here)
    admin.post("advance", after_requests=2, seconds=700)
    admin.post("mutate", after_requests=2, resource="customers", key=customers[0], set={"name": "early change"})
    admin.post("advance", after_requests=3, seconds=700)
    admin.post("mutate", after_requests=3, resource="customers", key=customers[-1], set={"name": "late change"})
    assert sync(["customers"]).success
    assert admin.get("stats")["by_resource"] == {"customers": 8}
    rows = warehouse_rows(warehouse, "customers")
    assert rows[customers[-1]]["name"] == "late change" and rows[customers[0]]["name"] != "early change"
    # the next run's window starts where that listing began (on the API's clock), not 600 s
    # before the newest updated_at it saw: the change behind the listing is caught
    assert sync(["customers"]).success
    assert warehouse_rows(warehouse, "customers")[customers[0]]["name"] == "early change"
    assert_table_equals_truth(warehouse, "customers", admin.truth("customers"))


def test_changes_during_a_listing_of_every_table_are_caught_by_the_next_run(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    assert sync().success
    # while the next listing pages the customers' children, the world moves on twice, each
    # time past the lookback (600 s): new customers with addresses, updates of listed rows
    admin.post("advance", after_requests=8, seconds=700, updates=10, new_customers=2)
    admin.post("advance", after_requests=20, seconds=700, updates=30, new_customers=2)
    assert sync().success
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin)


def test_two_changes_with_one_stamp_are_both_seen_by_listing_mode(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    product = admin.truth("products")[0]["id"]
    admin.post("mutate", resource="products", key=product, set={"description": "one"},
               updated_at="2031-05-01T10:20:52Z")
    assert sync(["products"]).success
    # a second change in the same second, stamped with 0 digits: the very same updated_at
    admin.post("mutate", resource="products", key=product, set={"description": "two"},
               updated_at="2031-05-01T10:20:52Z")
    assert sync(["products"]).success
    assert warehouse_rows(warehouse, "products")[product]["description"] == "two"


# ---------------------------------------------------------------------- gaps
@pytest.mark.usefixtures("backfilled")
def test_events_past_the_retention_unread_are_reported(warehouse: Path, admin: Admin) -> None:
    admin.post("advance", updates=10, new_customers=1)
    admin.post("advance", seconds=95 * DAY)  # the events of those changes are gone
    admin.post("advance", updates=4)
    result = sync()
    assert result.success
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    gap = metadata(result)["events"]["events_gap"]
    assert gap != "none" and " to " in gap
    check = check_results(result, "events_applied")["events"]
    assert not check.passed and check.severity.value == "WARN" and check.metadata["gaps"].value == gap
    log = "\n".join(str(e.message) for e in result.all_events if e.message)
    assert "passed the API's retention" in log


# ---------------------------------------------------------------------- found by an adversary
@pytest.mark.usefixtures("backfilled")
@pytest.mark.parametrize("value", [12345, ["x"], {"a": 1}], ids=["number", "list", "object"])
def test_an_event_whose_data_id_is_no_string_is_reported_and_adds_no_row(
    warehouse: Path, admin: Admin, value: Any
) -> None:
    customer = admin.truth("customers")[0]
    bad = admin.post("event", event_type="customer.updated", data={**customer, "name": "phantom", "id": value})
    admin.post("advance", updates=5)
    result = sync()
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)  # no phantom row, no crash
    check = check_results(result, "events_applied")["customers"]
    assert not check.passed and bad["event_id"] in check.metadata["bad_event_ids"].value
    assert "not a string" in check.description
    assert sync().success, "later runs go on"


@pytest.mark.usefixtures("backfilled")
def test_an_event_without_an_id_is_reported_once_and_kept_once(warehouse: Path, admin: Admin) -> None:
    admin.post("event", event_type="customer.updated", data={"id": "ctm_x"}, drop=["event_id"])
    admin.post("event", event_type="transaction.updated", data={"id": "txn_x"}, event_id=12345)
    admin.post("advance", updates=3)
    first = sync()
    assert metadata(first)["customers"]["bad_events"] == 1 and metadata(first)["events"]["bad_events"] == 2
    # read again by the late-event window: not reported again, not written again
    result = sync()
    meta = metadata(result)
    assert meta["customers"]["bad_events"] == 1 and meta["events"]["bad_events"] == 2
    assert meta["events"]["rows_written"] == 0
    assert "12345" in warehouse_rows(warehouse, "events")


@pytest.mark.usefixtures("backfilled")
def test_a_listing_after_events_wrote_a_row_does_not_trust_its_old_memory_of_it(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    customer = admin.truth("customers")[2]["id"]
    second = (sandbox.world.clock_ns // 10**9 + 5) * 10**9
    whole, half = format_ns(second, 0), format_ns(second + 500_000_000, 1)  # "…:05Z", "…:05.5Z"
    listing = {"ops": {"analytics_api": {"config": {"incremental": "listing"}}}}
    admin.post("mutate", resource="customers", key=customer, set={"name": "A"}, updated_at=whole)
    assert sync(run_config=listing).success  # listing mode writes A, and remembers it
    admin.post("mutate", resource="customers", key=customer, set={"name": "B"}, updated_at=half)
    assert sync().success  # events mode writes B
    # a third change in that second, stamped with 0 digits: back to A, with A's very stamp
    admin.post("mutate", resource="customers", key=customer, set={"name": "A"}, updated_at=whole)
    assert sync(run_config=listing).success
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "A"
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)


@pytest.mark.usefixtures("backfilled")
def test_a_full_refresh_keeps_what_it_listed_while_a_newer_event_is_still_late(
    warehouse: Path, admin: Admin
) -> None:
    customer = admin.truth("customers")[1]["id"]
    admin.post("mutate", resource="customers", key=customer, set={"name": "visible old"})
    admin.post("advance", seconds=2)
    late = admin.post("mutate", resource="customers", key=customer, set={"name": "held newer"}, hold_event=True)
    admin.post("advance", seconds=2, updates=4)
    assert sync(run_config={"ops": {"analytics_api": {"config": {"full_refresh": True}}}}).success
    # the listing saw the newer state; the events before its start are not applied over it
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "held newer"
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    admin.post("release", event_ids=[late["event_id"]])
    admin.post("advance", seconds=2)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
def test_a_later_gap_is_reported_too(warehouse: Path, admin: Admin) -> None:
    gaps = []
    for _ in range(2):
        admin.post("advance", seconds=95 * DAY)
        admin.post("advance", updates=4)
        result = sync()
        gaps.append(metadata(result)["events"]["events_gap"])
        assert not check_results(result, "events_applied")["events"].passed
    # each run that found a gap says so; a gap older than the API's retention is let go
    assert "none" not in gaps and gaps[0] != gaps[1] and gaps[1].count(" to ") == 1


# ---------------------------------------------------------------------- found by a second adversary
def chunked_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 20 events, a load after every 20: the stream read in many chunks."""
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "20")
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", "600")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", json.dumps({"events": 20}))


@pytest.mark.usefixtures("backfilled")
def test_a_late_event_read_a_chunk_before_a_newer_applied_one_does_not_win(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked_stream(monkeypatch)
    customers = [c["id"] for c in admin.truth("customers")]
    late = [admin.post("mutate", resource="customers", key=customers[i], set={"name": f"Late {i}"},
                       hold_event=True)["event_id"] for i in range(3)]
    admin.post("advance", seconds=2, updates=70)  # newer changes of the same customers, some
    for i in range(3):  # certainly newer changes of each, visible at once
        admin.post("mutate", resource="customers", key=customers[i], set={"name": f"Newer {i}"})
    admin.post("advance", seconds=2, updates=30)
    admin.post("stats/reset")
    admin.post("release", event_ids=late, after_requests=4)  # while this run reads the stream
    assert sync().success
    # the next run's window, in chunks, meets each late event a chunk before the newer one
    admin.post("advance", seconds=30)
    assert sync().success
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
    assert_events_cover_api(warehouse, admin)


@pytest.mark.usefixtures("backfilled")
@pytest.mark.timeout(180)
def test_a_chunk_of_events_without_ids_does_not_read_itself_again_and_again(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunked_stream(monkeypatch)
    customer = admin.truth("customers")[0]["id"]
    for n in range(25):  # more than a page and a chunk of them
        admin.post("event", event_type="customer.updated", data={"id": customer, "n": n}, drop=["event_id"])
    admin.post("advance", seconds=1, updates=4)
    admin.post("stats/reset")
    result = sync()
    assert admin.get("stats")["by_resource"]["events"] <= 3
    assert metadata(result)["customers"]["bad_events"] == 25
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)


@pytest.mark.usefixtures("backfilled")
def test_many_events_without_ids_are_reported_once(warehouse: Path, admin: Admin) -> None:
    customer = admin.truth("customers")[0]["id"]
    for n in range(60):
        admin.post("event", event_type="customer.updated", data={"id": customer, "n": n}, drop=["event_id"])
        admin.post("event", event_type="payout.created", data={"id": f"pay_{n}"}, event_id=100000 + n)  # no table
    admin.post("advance", seconds=1, updates=2)
    first = sync()
    assert metadata(first)["customers"]["bad_events"] == 50  # (the newest 50 findings are kept)
    for _ in range(2):  # read again by the window: not reported again, not written again
        result = sync()
        assert not [e for e in result.all_events if e.message and "was not applied" in e.message]
        assert metadata(result)["events"]["rows_written"] == 0
    assert len([k for k in warehouse_rows(warehouse, "events") if str(k).isdigit()]) == 60


@pytest.mark.usefixtures("backfilled")
@pytest.mark.parametrize("listing_again", ["full refresh", "backfill"])
def test_an_events_mode_listing_makes_listing_mode_forget_its_memory(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, listing_again: str
) -> None:
    customer = admin.truth("customers")[2]["id"]
    stamp = format_ns((sandbox.world.clock_ns // 10**9 + 5) * 10**9, 0)
    listing = {"ops": {"analytics_api": {"config": {"incremental": "listing"}}}}
    admin.post("mutate", resource="customers", key=customer, set={"name": "AAA"}, updated_at=stamp)
    assert sync(run_config=listing).success  # listing mode writes AAA and remembers it
    admin.post("mutate", resource="customers", key=customer, set={"name": "BBB"}, updated_at=stamp)
    if listing_again == "full refresh":
        assert sync(run_config={"ops": {"analytics_api": {"config": {"full_refresh": True}}}}).success
    else:  # past the retention: events mode lists the table again (a backfill, every row written)
        admin.post("advance", seconds=89 * DAY)
        assert sync().success
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "BBB"
    admin.post("mutate", resource="customers", key=customer, set={"name": "AAA"}, updated_at=stamp)
    assert sync(run_config=listing).success
    assert warehouse_rows(warehouse, "customers")[customer]["name"] == "AAA"
    assert_warehouse_equals_api(warehouse, admin, WITHOUT_EVENTS)
