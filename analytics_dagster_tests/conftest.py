"""Shared fixtures: the sandbox on loopback, and a warehouse and dlt directory under tmp_path."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import pytest
import requests

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World
from analytics_dagster.source import RESOURCES

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "paddle"
DAGSTER = str(Path(sys.executable).parent / "dagster")  # the CLI of this environment
# the command a user runs: every asset, in a process of its own
MATERIALIZE_ALL = [DAGSTER, "asset", "materialize", "-m", "analytics_dagster.definitions", "--select", "*"]
# the API's entities; Paddle's metrics (`/metrics/*`, daily series by date) are `METRICS`:
# test_metrics.py syncs and compares them, by the days each run read
TABLES = [r.name for r in RESOURCES if r.listing != "days"]
METRICS = [r.name for r in RESOURCES if r.listing == "days"]
PRIMARY_KEYS = {r.name: r.primary_key for r in RESOURCES}
REPLACED = {r.name for r in RESOURCES if r.listing == "replace"}  # read whole by every run
# the tables without events: every run asks each for its one page (reports, event types, IPs, ...)
# the tables every run lists (no events, or fields that change with none: discounts), with the
# requests a small world's listing of each costs (one a part)
EVERY_RUN = {r.name: len(r.parts) for r in RESOURCES
             if (not r.event_entity or r.unnotified) and r.listing not in ("event_stream", "days")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that syncs into a warehouse (the `warehouse` fixture: Dagster or dlt runs against
    the sandbox) is `e2e`, unless it is one of the few `smoke` ones the fast subset keeps
    (`make test-fast`: `-m "not e2e and not slow and not browser"`).

    The tests that sync, and the browser's, run first: the long ones start early and the last
    to start are the short ones, which a worker that runs out takes from another's queue
    (`--dist worksteal`): a long test started last would hold the whole suite up while other
    workers idle.
    """
    for item in items:
        if "warehouse" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("smoke"):
            item.add_marker(pytest.mark.e2e)

    def runs_long(item: pytest.Item) -> bool:
        return "warehouse" in getattr(item, "fixturenames", ()) or item.get_closest_marker("browser") is not None

    items.sort(key=lambda item: not runs_long(item))  # stable: the modules' order kept within each


# The sandbox counts a rate limit over a short window (2 s) so that a test crosses it quickly;
# the real API counts a minute. Compressing the window compresses as much the delay it
# tolerates between a request leaving the client and being counted: the sandbox counts a
# request when its thread, which shares the test's process, gets to it, and the pacer's 3% of
# headroom is 1.8 s of a minute but 60 ms of 2 s, less than a pause of a busy test process (seen:
# 4 requests answered 429 with 3 test processes on 2 cores). A paced sync under such a limit is
# paced at this share of it: 10% of 2 s, 0.2 s.
PACE_UNDER_A_SHORT_WINDOW = 0.9
SANDBOX_CUSTOMERS, SANDBOX_SEED = 40, 7  # the world every test's `sandbox` serves
# a world of 40 customers with every case of billing (test_models.billing_cases): `world(**LOCALIZED_WORLD)`
LOCALIZED_WORLD = {"seed": 19, "localized": 0.6}
# A test that starts from a backfill asks for one of these fixtures instead of syncing itself:
# by name, how the backfill is made (`assert sync().success`, or the same with the models built)
BACKFILLS = ("backfilled", "backfilled_with_models")
# the environment variables of the project's settings (dlt's sections), the DuckDB file's and
# dlt's folder included
PROJECT_SETTINGS = ("SOURCES__", "DESTINATION", "DLT_", "RUNTIME__", "EXTRACT__", "NORMALIZE__", "LOAD__",
                    "DATA_WRITER__")


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Any:
    """A small world (40 customers) served on a free loopback port; for a test that starts from
    a backfill (`backfilled`, `backfilled_with_models`), the world as that backfill left it.
    A test marked `world(...)` gets the world of those arguments instead (`World`'s)."""
    kind = next((name for name in BACKFILLS if name in request.fixturenames), None)
    marker = request.node.get_closest_marker("world")
    if marker is not None:
        assert kind is None, "a test of a world of its own starts from no shared backfill"
        world = World(**{"customers": SANDBOX_CUSTOMERS, "seed": SANDBOX_SEED, **marker.kwargs})
    elif kind is None:
        world = World(customers=SANDBOX_CUSTOMERS, seed=SANDBOX_SEED)
    else:
        world = copy.deepcopy(request.getfixturevalue("backfill_templates").get(kind).world)
    with SandboxServer(world, config=SandboxConfig()) as server:
        yield server


@dataclass
class Backfill:
    """A backfill made once per test process (an xdist worker): the world it read, the
    warehouse folder it wrote."""

    world: World
    warehouse: Path


class BackfillTemplates:
    """The backfills tests start from, each made the first time a test asks for it: the
    default world synced into a warehouse of its own, exactly as a test would sync it (the
    settings of `warehouse`), and checked equal to the API. A test gets a copy of both: the world
    (a deep copy, served on its own port) and the warehouse folder (copied under its tmp_path).
    It saves each test its own backfill (3 to 9 s of CPU), and changes nothing it asserts: the
    sync of a copied warehouse reads its state from the warehouse, as on a machine whose dlt
    folder is empty."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[str, Backfill] = {}

    def get(self, kind: str) -> Backfill:
        if kind not in self.made:
            self.made[kind] = self._make(kind)
        return self.made[kind]

    def _make(self, kind: str) -> Backfill:
        from analytics_dagster_tests.test_models import sync_all
        from analytics_dagster_tests.test_sync import sync

        folder = self.root / kind
        world = World(customers=SANDBOX_CUSTOMERS, seed=SANDBOX_SEED)
        with SandboxServer(world, config=SandboxConfig()) as server, pytest.MonkeyPatch.context() as patch:
            for name in [n for n in os.environ if n.startswith(PROJECT_SETTINGS)]:
                patch.delenv(name)  # whatever the asking test set already: the defaults
            db = use_sandbox(patch, server, folder)
            result = sync() if kind == "backfilled" else sync_all()
            assert result.success and all(e.passed for e in result.get_asset_check_evaluations()), kind
            assert_warehouse_equals_api(db, Admin(server.url))
        return Backfill(world=world, warehouse=db.parent)


@pytest.fixture(scope="session")
def backfill_templates(tmp_path_factory: pytest.TempPathFactory) -> BackfillTemplates:
    return BackfillTemplates(tmp_path_factory.mktemp("backfills"))


class Admin:
    """The sandbox's admin interface, over HTTP like any other client."""

    def __init__(self, url: str) -> None:
        self.url = url + "/_admin"

    def get(self, path: str) -> Any:
        response = requests.get(f"{self.url}/{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, **body: Any) -> Any:
        response = requests.post(f"{self.url}/{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def truth(self, table: str) -> list[dict[str, Any]]:
        return self.get(f"truth/{table}")


@pytest.fixture
def admin(sandbox: SandboxServer) -> Admin:
    return Admin(sandbox.url)


def use_sandbox(patch: pytest.MonkeyPatch, sandbox: SandboxServer, folder: Path) -> Path:
    """Settings pointing the project at the sandbox, a DuckDB file and dlt dir under `folder`:
    the DuckDB file."""
    db = folder / "warehouse" / "test.duckdb"
    patch.setenv("SOURCES__ANALYTICS__BASE_URL", sandbox.url)
    patch.setenv("SOURCES__ANALYTICS__API_KEY", sandbox.config.api_key)
    patch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(db))
    patch.setenv("DLT_DATA_DIR", str(folder / "dlt"))
    patch.setenv("SOURCES__ANALYTICS__REQUESTS_PER_MINUTE", "0")  # the test sandbox has no limit
    return db


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer) -> Path:
    """Settings pointing the project at the sandbox, a DuckDB file and dlt dir under tmp_path."""
    return use_sandbox(monkeypatch, sandbox, tmp_path)


def _copy_backfill(kind: str, templates: BackfillTemplates, warehouse: Path) -> Path:
    shutil.copytree(templates.get(kind).warehouse, warehouse.parent)
    return warehouse


@pytest.fixture
def backfilled(warehouse: Path, backfill_templates: BackfillTemplates) -> Path:
    """`warehouse`, and the sandbox, as `assert sync().success` (every raw table) leaves them."""
    return _copy_backfill("backfilled", backfill_templates, warehouse)


@pytest.fixture
def backfilled_with_models(warehouse: Path, backfill_templates: BackfillTemplates) -> Path:
    """`warehouse`, and the sandbox, as a successful `sync_all()` (raw tables and models) leaves them."""
    return _copy_backfill("backfilled_with_models", backfill_templates, warehouse)


def poll(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Call `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def warehouse_rows(db: Path | str, table: str) -> dict[str, dict[str, Any]]:
    """The table's rows keyed by primary key, from a DuckDB file or a PostgreSQL DSN."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import psycopg2

        with psycopg2.connect(db) as con, con.cursor() as cursor:
            cursor.execute(f"SELECT * FROM analytics.{table}")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        con.close()
    else:
        with duckdb.connect(str(db), read_only=True) as con:
            cursor = con.execute(f"SELECT * FROM analytics.{table}")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    # (a metric's `day`, a date, by its ISO string: as the API says it)
    return {_key(row[PRIMARY_KEYS[table]]): row for row in rows}


def _key(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) and not isinstance(value, datetime) else value


def same_value(expected: Any, actual: Any) -> bool:
    if expected is None:
        return actual is None
    if isinstance(actual, date) and not isinstance(actual, datetime):  # a metric's `day`
        return expected == actual.isoformat()
    if isinstance(actual, datetime):  # the warehouse keeps microseconds (docs/design.md, "The warehouse")
        return parse_ns(expected) // 1000 == int(actual.timestamp()) * 1_000_000 + actual.microsecond
    if isinstance(expected, (dict, list)):
        return json.loads(actual) == expected if isinstance(actual, str) else actual == expected
    return expected == actual


def assert_table_equals_truth(
    db: Path | str, table: str, truth: list[dict[str, Any]], extra_allowed: bool = False
) -> None:
    """Key for key and field for field, the table holds exactly what the API holds."""
    rows = warehouse_rows(db, table)
    key = PRIMARY_KEYS[table]
    expected = {entity[key]: entity for entity in truth}
    missing = sorted(set(expected) - set(rows))[:5]
    extra = [] if extra_allowed else sorted(set(rows) - set(expected))[:5]
    assert not missing and not extra, f"{table}: missing {missing}, extra {extra}"
    for pk, entity in expected.items():
        row = rows[pk]
        for field, value in entity.items():
            assert field in row, f"{table}.{field} is not a column"
            assert same_value(value, row[field]), f"{table} {pk}.{field}: API {value!r}, warehouse {row[field]!r}"


def assert_events_cover_api(db: Path | str, admin: Admin) -> None:
    """Every event the API lists is in the warehouse, field for field; the warehouse may keep
    older ones the API no longer lists (its 90-day retention)."""
    rows = warehouse_rows(db, "events")
    listed = admin.truth("events")
    assert_table_equals_truth(db, "events", listed, extra_allowed=True)
    assert len(rows) >= len(listed)


def active(admin: Admin, table: str, **fields: Any) -> dict[str, Any]:
    """An active entity of `table` whose fields have these values: the world's, or, when its
    draws made none (all archived or expired), one of them made active again now (an update)."""
    matching = [e for e in admin.truth(table) if all(e.get(k) == v for k, v in fields.items())]
    found = next((e for e in matching if e["status"] == "active"), None)
    if found is not None:
        return found
    assert matching, f"the world has no {table} with {fields}"
    revive = {"status": "active", **({"expires_at": None} if "expires_at" in matching[0] else {})}
    admin.post("mutate", resource=table, key=matching[0]["id"], set=revive)
    return next(e for e in admin.truth(table) if e["id"] == matching[0]["id"])


def assert_warehouse_equals_api(db: Path | str, admin: Admin, tables: list[str] = TABLES) -> None:
    for table in tables:
        assert_table_equals_truth(db, table, admin.truth(table))


def requests_but_metrics(admin: Admin) -> int:
    """The API requests since the last stats reset, but Paddle's metrics': a run of every asset
    (`MATERIALIZE_ALL`) asks them too, a run of `TABLES` does not."""
    stats = admin.get("stats")
    return stats["total"] - sum(stats["by_resource"].get(m, 0) for m in METRICS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str) -> dict:
    response = requests.post(f"{url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]


@contextlib.contextmanager
def dagster_ui(command: list[str], tmp_path: Path) -> Iterator[str]:
    """`command` (`dagster dev`, `dg dev`) run from the project's root on a free loopback port,
    with an instance of its own (dagster.dev.yaml) under tmp_path: yields its URL once it serves."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.dev.yaml", home / "dagster.yaml")
    port = free_port()
    log = open(tmp_path / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/server_info", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        poll(lambda: up() or process.poll() is not None, timeout=180, interval=0.5)
        assert process.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
