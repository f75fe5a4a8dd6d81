"""Backfills in chunks: each chunk committed with its state, a killed or failed backfill resumed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster_tests.conftest import (
    EVERY_RUN,
    MATERIALIZE_ALL,
    REPO,
    TABLES,
    Admin,
    assert_events_cover_api,
    assert_warehouse_equals_api,
    poll,
    requests_but_metrics,
)
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_sync import sync

CHUNK = 5  # customers (and their children) per chunk, one page of 5


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", str(CHUNK))
    # chunks of rows: no chunk ends on time, however slow the machine (test_chunk_time.py does)
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", "3600")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", f'{{"customers": {CHUNK}, "transactions": 10}}')


def whole_backfill_requests(admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """The requests of a whole backfill, into a warehouse of its own (the control)."""
    with monkeypatch.context() as patch:
        patch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "control.duckdb"))
        patch.setenv("DLT_DATA_DIR", str(tmp_path / "control_dlt"))
        admin.post("stats/reset")
        result = sync()
        assert result.success
        assert metadata(result)["customers"]["loads"] > 3, "the backfill came in chunks"
        return admin.get("stats")["total"]


def test_a_chunked_backfill_is_exact_and_keeps_its_events_position(
    warehouse: Path, admin: Admin, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("analytics_dagster.assets.PROGRESS_EVERY_SECONDS", 0.3)  # (10 s in use)
    admin.post("config", latency=0.01)
    # the world changes while the third chunk pages: the replay from where the stream stood
    # when the backfill began catches it
    admin.post("advance", after_requests=40, updates=20, archives=3, new_customers=2, new_transactions=3)
    result = sync()
    meta = metadata(result)
    assert meta["customers"]["loads"] >= 40 // CHUNK and meta["transactions"]["loads"] > 1
    # the same run ends with the events of the changes made while it listed (a table without
    # events changed after its listing is caught by the next run only: `advance` may pick one)
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t not in EVERY_RUN])
    assert meta["customers"]["sync_mode"] == "listing"
    # while it ran, the customers asset was observed getting on: customers listed of the
    # estimated total, the rate and the time to go
    seen = [(e.asset_key.path[-1], {k: v.value for k, v in e.asset_observation_data.asset_observation.metadata.items()})
            for e in result.get_asset_observation_events()]
    progress = [m for table, m in seen if table == "customers"]
    assert len(progress) >= 3, seen
    listed = [m["listing_listed"] for m in progress]
    assert listed == sorted(listed) and listed[0] < listed[-1] <= progress[-1]["listing_estimated_total"]
    assert all(m["listing_rows_per_second"] > 0 and m["listing_eta_seconds"] >= 0 for m in progress)


@pytest.mark.smoke
def test_a_backfill_killed_part_way_resumes_after_its_last_chunk(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, tmp_path: Path, small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = whole_backfill_requests(admin, tmp_path, monkeypatch)
    admin.post("stats/reset")
    admin.post("config", latency=0.03)  # slow enough to be caught part-way
    process = subprocess.Popen(MATERIALIZE_ALL, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    poll(lambda: requests_but_metrics(admin) >= 0.6 * whole, timeout=300, interval=0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "killed before it finished"
    killed = requests_but_metrics(admin)
    admin.post("config", latency=0.0)
    # changes between the killed run and the resume
    admin.post("advance", updates=15, archives=2, new_customers=2, new_transactions=3)
    admin.post("stats/reset")
    result = sync()
    resumed = admin.get("stats")["total"]
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_warehouse_equals_api(warehouse, admin)
    # what was left, plus at most one chunk read again (a page of 5 customers and their
    # children, a page of transactions), plus what every run asks (the stream, read again at the
    # end for the changes made meanwhile; a request for each table without events: reports,
    # event types, IPs) and what the world's changes added to the listings
    # (the new customers' children, a page of new transactions)
    one_chunk = 1 + 2 * CHUNK + 1
    every_run = 2 + sum(EVERY_RUN.values())
    grown = 2 * 2 + 1
    fetched = 1  # the subscriptions the changes touched, fetched by id for what their events leave out
    assert resumed <= whole - killed + one_chunk + every_run + grown + fetched, (whole, killed, resumed)
    assert resumed < 0.6 * whole


def test_a_request_that_keeps_failing_part_way_fails_the_run_and_the_next_resumes(
    warehouse: Path, admin: Admin, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = whole_backfill_requests(admin, tmp_path, monkeypatch)
    admin.post("stats/reset")
    # 60% in, one customer's addresses fail 1 + 3 times: past the retries
    admin.post("inject", resource="customer_addresses", kind="status", status=503, count=4,
               after_requests=int(0.6 * whole))
    result = sync(raise_on_error=False)
    assert not result.success
    error = step_error(result)
    assert "503" in error and "/addresses" in error, error[-2000:]
    admin.post("stats/reset")
    result = sync()
    assert result.success
    assert admin.get("stats")["total"] < 0.6 * whole, "resumed, not started over"
    assert_warehouse_equals_api(warehouse, admin)


def test_a_backfill_page_without_keys_fails_naming_the_resource(warehouse: Path, admin: Admin) -> None:
    admin.post("inject", resource="products", kind="missing_pk")
    result = sync(["products"], raise_on_error=False)
    assert not result.success
    assert "resource 'products': a record has no primary key 'id'" in step_error(result)
    assert sync(["products"]).success
    assert_warehouse_equals_api(warehouse, admin, ["products"])


def test_the_event_stream_is_read_and_committed_in_chunks(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", '{"events": 50}')
    assert sync().success
    cursor = metadata(sync(["products"]))["products"]["event_cursor"]
    # many changes; then products alone moves its cursor past all of them
    assert "products" in admin.post("advance", updates=300, new_customers=3)
    assert sync(["products"]).success
    new_events = sum(1 for e in admin.truth("events") if e["event_id"] > cursor)
    assert new_events > 250
    # a read of at most 100 events a load: the stream in chunks, each table's cursor moving
    # with them, products' never back before the events it has applied
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "100")
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", "3600")  # (rows end them)
    admin.post("stats/reset")
    result = sync()
    requests = admin.get("stats")["by_resource"]
    meta = metadata(result)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert meta["events"]["loads"] >= new_events // 100 and meta["customers"]["sync_mode"] == "events"
    # every page of the stream read once, however many loads it took
    assert requests["events"] == math.ceil(new_events / 50), requests
    assert_warehouse_equals_api(warehouse, admin, [t for t in TABLES if t != "events"])
    assert_events_cover_api(warehouse, admin)
    assert meta["products"]["event_cursor"] == meta["events"]["event_cursor"]
    assert meta["products"]["rows_written"] == 0, "products applied no event twice"
    # the next run reads again the late-event window before the read began (those changes came
    # seconds before it), once, and applies nothing twice
    admin.post("advance", seconds=601)
    admin.post("stats/reset")
    result = sync()
    assert admin.get("stats")["by_resource"]["events"] == math.ceil(new_events / 50)
    assert all(metadata(result)[t]["rows_written"] == 0 for t in ("events", "customers", "products"))
    # past the window: a run with nothing new asks the stream once
    admin.post("stats/reset")
    assert sync().success
    assert admin.get("stats")["by_resource"] == {"events": 1, **EVERY_RUN}


def test_a_listing_mode_run_that_fails_part_way_resumes_within_its_first_window(
    warehouse: Path, admin: Admin, tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    first = sync()
    assert first.success and metadata(first)["customers"]["loads"] > 3, "listing mode commits in chunks too"
    # the last customer changes now, the first one two hours on: the first chunk's rows move
    # the change window far past the last customer's change
    ids = sorted(c["id"] for c in admin.truth("customers"))
    changed = admin.post("mutate", resource="customers", key=ids[-1], set={"name": "Changed first"})
    later = (datetime.fromisoformat(changed["updated_at"].replace("Z", "+00:00")) + timedelta(hours=2))
    admin.post("mutate", resource="customers", key=ids[0], set={"name": "Changed later"},
               updated_at=later.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    admin.post("stats/reset")
    whole = sync()
    assert whole.success
    whole_requests = admin.get("stats")["total"]
    assert_warehouse_equals_api(warehouse, admin)
    # once more, the same way, failing 60% in: the customers listing stops after some chunks
    for key, name, at in ((ids[-1], "Changed again", later + timedelta(minutes=1)),
                          (ids[0], "Changed later again", later + timedelta(hours=2))):
        admin.post("mutate", resource="customers", key=key, set={"name": name},
                   updated_at=at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    admin.post("stats/reset")
    admin.post("inject", resource="customer_addresses", kind="status", status=503, count=4,
               after_requests=int(0.6 * whole_requests))
    assert not sync(raise_on_error=False).success
    admin.post("stats/reset")
    result = sync()
    assert result.success
    assert admin.get("stats")["total"] < 0.6 * whole_requests, "resumed, not started over"
    assert "resumed" in metadata(result)["customers"]["sync_reason"]
    # the last customer's change is older than the window the first chunk's rows imply: the
    # resume kept the window of its first chunk
    assert_warehouse_equals_api(warehouse, admin)
