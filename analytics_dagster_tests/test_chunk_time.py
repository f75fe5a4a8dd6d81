"""Chunks by time: a backfill (and a read of the stream) commits after `backfill_chunk_seconds`
of extraction or `backfill_chunk_rows` rows, whichever comes first."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import duckdb
import pytest

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster_tests.conftest import (
    EVERY_RUN,
    MATERIALIZE_ALL,
    REPO,
    PACE_UNDER_A_SHORT_WINDOW,
    Admin,
    assert_warehouse_equals_api,
    poll,
    requests_but_metrics,
)
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_sync import sync

PER_MINUTE = 600  # the sandbox's limit: 10 requests a second
PACE = int(PER_MINUTE * PACE_UNDER_A_SHORT_WINDOW)  # the sync's
CHUNK_SECONDS = 2
PAGE = 5  # customers a page: a page and its children are 11 requests, about a second paced
# the most a chunk of CHUNK_SECONDS can ask, paced: its time's budget (the pacer keeps 3% under
# the limit), plus what is in flight when the time is up: a chunk ends at a page, and a page of
# customers carries its children (the page that ends the chunk, and the one before it, whose
# children may still be asked), a page of each other list and of the stream; plus the next
# chunk's plan
ONE_CHUNK = PER_MINUTE * CHUNK_SECONDS // 60 + 2 * (1 + 2 * PAGE) + 8 + 2


@pytest.fixture
def paced(admin: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox enforces 600 requests a minute (over 2 s windows), the sync keeps under it
    (`PACE_UNDER_A_SHORT_WINDOW`), and a chunk ends after 2 s of extraction (the row cap left far above)."""
    admin.post("config", rate_limit=PER_MINUTE, rate_limit_window=2, rate_limit_block=60)
    monkeypatch.setenv("SOURCES__ANALYTICS__REQUESTS_PER_MINUTE", str(PACE))
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", str(CHUNK_SECONDS))
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "100000")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", f'{{"customers": {PAGE}, "transactions": 10, "events": 50}}')


def load_ids(db: Path) -> list[float]:
    with duckdb.connect(str(db), read_only=True) as con:
        return sorted(float(i) for (i,) in con.execute("SELECT load_id FROM analytics._dlt_loads").fetchall())


def test_a_paced_backfill_commits_a_chunk_about_every_chunk_seconds(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, paced: None
) -> None:
    admin.post("stats/reset")
    result = sync()
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_warehouse_equals_api(warehouse, admin)
    stats = admin.get("stats")
    assert "429" not in stats["by_status"], stats
    meta = metadata(result)
    assert meta["customers"]["loads"] > 1, "the backfill came in chunks"
    # each load's id is the time its extraction began: the requests between one and the next
    # are that chunk's (and the next one's plan); none asked more than its time's worth
    starts = load_ids(warehouse)
    assert len(starts) > 2, starts
    times = sorted(at for at, _ in sandbox.app.stats.times)
    per_chunk = [sum(1 for at in times if a <= at < b) for a, b in zip(starts, starts[1:] + [float("inf")])]
    assert sum(per_chunk) >= stats["total"] - 2, (per_chunk, stats["total"])  # (the first plan's, before)
    assert max(per_chunk) <= ONE_CHUNK, per_chunk


def test_an_unpaced_small_sync_is_one_load(warehouse: Path, admin: Admin) -> None:
    # the defaults: 60 s, 20,000 rows; a 40-customer account extracts in well under a minute
    result = sync()
    assert result.success
    meta = metadata(result)
    # the listings and the stream in one load; the tables listed, then one more read of the
    # stream for the changes made while they were listed (every backfill ends so)
    loads = {t: m["loads"] for t, m in meta.items()}
    assert loads["customers"] == 2 and max(loads.values()) == 2, loads
    assert loads["reports"] == 1 and loads["event_types"] == 1, loads
    assert_warehouse_equals_api(warehouse, admin)


def test_a_paced_backfill_killed_after_its_second_chunk_resumes_after_it(
    warehouse: Path, admin: Admin, sandbox: SandboxServer, tmp_path: Path, paced: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as control:  # a whole backfill's requests, into a warehouse of its own
        control.setenv("SOURCES__ANALYTICS__REQUESTS_PER_MINUTE", "0")  # (the same requests, paced or not)
        control.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "control.duckdb"))
        control.setenv("DLT_DATA_DIR", str(tmp_path / "control_dlt"))
        admin.post("config", rate_limit=0)
        admin.post("stats/reset")
        assert sync().success
        whole = admin.get("stats")["total"]
    admin.post("config", rate_limit=PER_MINUTE)
    admin.post("stats/reset")
    process = subprocess.Popen(MATERIALIZE_ALL, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        poll(lambda: any("chunk 2 committed" in line for line in log), timeout=120, interval=0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "killed before it finished"
    killed = requests_but_metrics(admin)  # (the run of every asset asked Paddle's metrics too)
    admin.post("stats/reset")
    result = sync()
    resumed = admin.get("stats")["total"]
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    assert_warehouse_equals_api(warehouse, admin)
    # what was left, plus at most the chunk it was killed in (read again), plus what every run
    # asks again (the stream's plan and its replay at the end; the tables without events)
    assert resumed <= whole - killed + ONE_CHUNK + 2 + sum(EVERY_RUN.values()), (whole, killed, resumed)
    assert resumed < whole


def test_the_row_cap_still_ends_a_chunk_when_requests_are_fast(warehouse: Path, admin: Admin,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", "3600")
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", str(PAGE))
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", f'{{"customers": {PAGE}}}')
    result = sync()
    assert result.success
    customers = len(admin.truth("customers"))
    # a chunk of 5 customers a load (then the replay of the changes made meanwhile)
    assert metadata(result)["customers"]["loads"] >= -(-customers // PAGE)
    assert_warehouse_equals_api(warehouse, admin)
