"""`make bench-lag`: how long a change in the API takes to reach the warehouse, as a user meets it.

The events sensor on under `dagster-daemon run` (what `make dev` and a deployment run), with the
instance of `make dev` (dagster.dev.yaml) in a temporary DAGSTER_HOME:

1. a sandbox of CUSTOMERS customers; the first sync (`dagster asset materialize --select '*'`,
   raw tables and models) unpaced, into a warehouse of its own;
2. then the sandbox enforces 240 requests a minute, and the daemon's runs are paced to it, as on
   Paddle; `api_events_sensor` is turned on (`dagster sensor start`), `models_automation` is on by
   default;
3. idle: the API requests a minute while nothing changes, over `--idle-seconds` (the sandbox
   counts them), and the CPU the daemon and its processes took meanwhile;
4. SAMPLES samples, each a change made through the sandbox's admin API at a random moment (a
   subscription's first item one more in quantity, its customer renamed), then a read-only copy of
   the DuckDB file (its WAL too) polled until both rows equal the API's, field for field (the raw
   lag), and until `mrr_daily`'s today moved as the API's MRR did (the models lag). The writer's
   file is only ever copied, never opened: a reader would block the daemon's runs.

Each sample's seconds are broken down from the Dagster instance: the sensor's tick (its run's
creation), the queue, the run's launch (a process started and the code location loaded), the
sync to the changed tables' materializations, the checks and the run's end; then the models'
run the same way. Prints p50/p95/max of both lags, the idle cost and the breakdown's medians.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import requests
from dagster import RunsFilter

from bench import BIN, KEY, ROOT, start_sandbox

PER_MINUTE = 240  # the API's budget, as Paddle's
SUBSCRIPTION, CUSTOMER, MRR = ("analytics", "subscriptions"), ("analytics", "customers"), ("analytics_models", "mrr_daily")


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (p95 of 10 samples is the largest but none: the 10th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class Warehouse:
    """A read-only copy of the writer's DuckDB file, taken again whenever the file changed."""

    def __init__(self, db: Path, folder: Path) -> None:
        self.db, self.copy, self.seen = db, folder / "copy.duckdb", None

    def snapshot(self) -> Optional[Path]:
        """A fresh copy when the file (or its WAL) changed since the last one, else None."""
        wal = Path(f"{self.db}.wal")
        stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in (self.db, wal))
        if stamp == self.seen:
            return None
        self.seen = stamp
        Path(f"{self.copy}.wal").unlink(missing_ok=True)
        shutil.copyfile(self.db, self.copy)
        if wal.exists():
            shutil.copyfile(wal, f"{self.copy}.wal")
        return self.copy


def rows(db: Path, subscription: str, customer: str) -> tuple[dict, dict, dict[str, float]]:
    """The subscription's and the customer's rows, and mrr_daily's today by currency."""
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        def one(sql: str, key: str) -> dict:
            cursor = con.execute(sql, [key])
            found = cursor.fetchone()
            return dict(zip([d[0] for d in cursor.description], found)) if found else {}

        sub = one("SELECT * FROM analytics.subscriptions WHERE id = ?", subscription)
        cus = one("SELECT * FROM analytics.customers WHERE id = ?", customer)
        today = datetime.now(timezone.utc).date()
        mrr = {c: float(v) for c, v in con.execute(
            "SELECT currency_code, mrr FROM analytics_models.mrr_daily WHERE day = ?", [today]).fetchall()}
    return sub, cus, mrr


def run_times(instance: Any, since: float, sensor: Optional[str], asset: tuple[str, ...]) -> Optional[dict[str, Any]]:
    """The first run created after `since` (by `sensor`'s tag, or any run that materialized `asset`)
    that materialized `asset`: its events' times, seconds after `since`."""
    from dagster import AssetKey, DagsterEventType

    filters = RunsFilter(tags={"dagster/sensor_name": sensor} if sensor else {}, created_after=_utc(since))
    for record in sorted(instance.get_run_records(filters=filters), key=lambda r: r.create_timestamp.timestamp()):
        times: dict[str, Any] = {"created": record.create_timestamp.timestamp() - since, "run_id": record.dagster_run.run_id}
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            at = entry.timestamp - since
            kind = event.event_type
            if kind in (DagsterEventType.RUN_DEQUEUED, DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
                        DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE):
                times[kind.value] = at
            elif kind == DagsterEventType.STEP_START:
                times.setdefault("STEP_START", at)
            elif kind == DagsterEventType.ASSET_MATERIALIZATION and event.asset_key == AssetKey(list(asset)):
                times["materialized"] = at
        if "materialized" in times:
            return times
    return None


def breakdown(instance: Any, t0: float) -> dict[str, Any]:
    """The times of the sensor's run after the change at `t0`, and of the run that built mrr_daily
    after it (the same run, when the sensor's run carries the models)."""
    return {"sync": run_times(instance, t0, "api_events_sensor", SUBSCRIPTION),
            "models_run": run_times(instance, t0, None, MRR)}


def quiet(instance: Any, deadline: float) -> None:
    """Wait until no run is queued or in flight."""
    from dagster import DagsterRunStatus

    busy = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    while instance.get_run_records(filters=RunsFilter(statuses=busy), limit=1):
        if time.monotonic() > deadline:
            raise SystemExit("runs still in flight")
        time.sleep(0.5)


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=int(os.environ.get("CUSTOMERS") or 2000))
    parser.add_argument("--samples", type=int, default=int(os.environ.get("SAMPLES") or 10))
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="a sample's longest wait for the models")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose code the daemon runs (to compare commits)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    assert args.samples >= 1
    root = args.root.resolve()
    sandbox, url, ready = start_sandbox(args.customers, 0.0)
    admin = f"{url}/_admin"
    tmp = Path(tempfile.mkdtemp(prefix="lag-"))
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(root / "dagster.dev.yaml", home / "dagster.yaml")
    db = tmp / "warehouse.duckdb"
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(root), "SOURCES__ANALYTICS__API_KEY": KEY,
           "SOURCES__ANALYTICS__BASE_URL": url, "DESTINATION__DUCKDB__CREDENTIALS": str(db),
           "DLT_DATA_DIR": str(tmp / "dlt"), "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": str(PER_MINUTE)}
    os.environ["DAGSTER_HOME"] = str(home)
    daemon = None
    print(f"{args.customers:,} customers, sandbox ready in {ready:.1f} s; code of {root}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    try:
        started = time.monotonic()
        subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "analytics_dagster.definitions",
                        "--select", "*"], cwd=root, env={**env, "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": "0"},
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"first sync (unpaced, raw tables and models): {time.monotonic() - started:.1f} s", flush=True)
        requests.post(f"{admin}/config", json={"rate_limit": PER_MINUTE}, timeout=10).raise_for_status()
        log = open(tmp / "daemon.log", "w")
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(root / "workspace.yaml")], cwd=root,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        subprocess.run([str(BIN / "dagster"), "sensor", "start", "api_events_sensor", "-w", str(root / "workspace.yaml")],
                       cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
        requests.post(f"{admin}/stats/reset", timeout=10).raise_for_status()
        # the sensor's first tick only sets its cursor: a change before it would be taken as old
        deadline = time.monotonic() + 300
        while requests.get(f"{admin}/stats", timeout=10).json()["by_resource"].get("events", 0) < 2:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"the sensor did not tick twice: {(tmp / 'daemon.log').read_text()[-3000:]}")
            time.sleep(0.5)

        from dagster import DagsterInstance

        instance = DagsterInstance.get()
        quiet(instance, time.monotonic() + 600)  # the sensor's first run may bring in what the first sync left (late events)
        requests.post(f"{admin}/stats/reset", timeout=10).raise_for_status()
        cpu_before, idle_from = _cpu(daemon.pid), time.time()
        time.sleep(args.idle_seconds)
        idle = requests.get(f"{admin}/stats", timeout=10).json()
        cpu = _cpu(daemon.pid) - cpu_before
        runs = len(instance.get_run_records(filters=RunsFilter(created_after=_utc(idle_from))))
        per_minute = idle["total"] * 60 / args.idle_seconds
        print(f"idle over {args.idle_seconds:.0f} s: {idle['total']} requests ({idle['by_resource']}), "
              f"{per_minute:.1f} a minute = {per_minute / PER_MINUTE:.1%} of {PER_MINUTE}/min, {runs} runs; the "
              f"daemon's processes' CPU {cpu:.1f} s ({cpu / args.idle_seconds:.1%} of a core)", flush=True)

        sys.path.insert(0, str(root))
        from analytics_dagster_tests.conftest import same_value
        from analytics_dagster_tests.test_models import truth_mrr

        warehouse = Warehouse(db, tmp)
        subs = [s for s in requests.get(f"{admin}/truth/subscriptions", timeout=60).json()
                if s["status"] == "active" and s["items"][0]["recurring"]]
        chooser = random.Random(args.seed)
        chooser.shuffle(subs)
        base_truth = truth_mrr(_Admin(url))
        base_model = rows(warehouse.snapshot() or warehouse.copy, subs[0]["id"], subs[0]["customer_id"])[2]
        samples = []
        for n in range(args.samples):
            quiet(instance, time.monotonic() + 600)  # the last sample's runs (the models' checks) ended
            time.sleep(chooser.uniform(0, 10))  # a change comes at any moment of the sensor's period
            sub = subs[n]
            items = copy.deepcopy(sub["items"])
            items[0]["quantity"] += 1
            t0 = time.time()
            requests.post(f"{admin}/mutate", json={"resource": "subscriptions", "key": sub["id"], "set": {"items": items}},
                          timeout=30).raise_for_status()
            requests.post(f"{admin}/mutate", json={"resource": "customers", "key": sub["customer_id"],
                                                   "set": {"name": f"Lag sample {n}"}}, timeout=30).raise_for_status()
            want_sub = _one(admin, "subscriptions", sub["id"])
            want_cus = _one(admin, "customers", sub["customer_id"])
            truth = truth_mrr(_Admin(url))
            want_mrr = {c: base_model.get(c, 0.0) + truth.get(c, 0.0) - base_truth.get(c, 0.0) for c in truth}
            raw_lag = models_lag = None
            while time.time() - t0 < args.timeout and models_lag is None:
                copied = warehouse.snapshot()
                if copied is None:
                    time.sleep(0.25)
                    continue
                at = time.time() - t0
                try:
                    got_sub, got_cus, got_mrr = rows(copied, sub["id"], sub["customer_id"])
                except Exception:  # a copy taken mid-write: the next one
                    warehouse.seen = None
                    continue
                exact = all(same_value(v, got_sub.get(k)) for k, v in want_sub.items()) and all(
                    same_value(v, got_cus.get(k)) for k, v in want_cus.items())
                if exact and raw_lag is None:
                    raw_lag = at
                if raw_lag is not None and all(abs(got_mrr.get(c, 0.0) - v) < 0.01 for c, v in want_mrr.items()):
                    models_lag = at
            samples.append({"t0": t0, "raw": raw_lag, "models": models_lag})
            print(f"  sample {n + 1}: raw {_s(raw_lag)}, models {_s(models_lag)}; load {os.getloadavg()[0]:.1f}",
                  flush=True)
        quiet(instance, time.monotonic() + 600)
        for n, sample in enumerate(samples):  # from the runs' event logs, complete once they ended
            sample.update(breakdown(instance, sample["t0"]))
            print(f"  sample {n + 1}: sensor's run {_times(sample['sync'])}; models' run {_times(sample['models_run'])}")
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, 15)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, 9)
        sandbox.terminate()
        sandbox.wait(timeout=10)
    report(samples, args, per_minute)
    shutil.rmtree(tmp, ignore_errors=True)


class _Admin:
    """What test_models' truth helpers ask of the sandbox's admin API."""

    def __init__(self, url: str) -> None:
        self.url = url + "/_admin"

    def get(self, path: str) -> Any:
        return requests.get(f"{self.url}/{path}", timeout=60).json()

    def truth(self, table: str) -> list[dict[str, Any]]:
        return self.get(f"truth/{table}")


def _one(admin: str, table: str, key: str) -> dict:
    return next(e for e in requests.get(f"{admin}/truth/{table}", timeout=60).json() if e["id"] == key)


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) of a process and all its descendants now alive, from /proc."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12]) + int(stats[p][13]) + int(stats[p][14])) / ticks
        todo += children.get(p, [])
    return total


def _s(value: Optional[float]) -> str:
    return "timeout" if value is None else f"{value:.1f} s"


def _times(times: Optional[dict[str, float]]) -> str:
    return "not found" if times is None else ", ".join(
        f"{k} {v:.1f}" if k != "run_id" else v[:8] for k, v in times.items())


def report(samples: list[dict], args: argparse.Namespace, per_minute: float) -> None:
    print(f"\n{args.customers:,} customers, {len(samples)} samples, load average now {os.getloadavg()[0]:.1f}")
    for name in ("raw", "models"):
        values = [s[name] if s[name] is not None else float("inf") for s in samples]
        print(f"{name} lag: p50 {statistics.median(values):.1f} s, p95 {percentile(values, 0.95):.1f} s, "
              f"max {max(values):.1f} s ({sum(v == float('inf') for v in values)} timed out)")
    print(f"idle: {per_minute:.1f} requests a minute ({per_minute / PER_MINUTE:.1%} of the budget)")
    # each step's seconds, from the end of the step before it (median and max over the samples)
    gaps: dict[str, list[float]] = {}
    for sample in samples:
        sync, models = sample["sync"] or {}, sample["models_run"] or {}
        same = models.get("run_id") == sync.get("run_id")
        points = [("the change to the sensor's tick (its run created)", sync.get("created")),
                  ("the queue: the run queued, dequeued, handed to the launcher (a run waits for the pool "
                   "while another writes)", sync.get("PIPELINE_STARTING")),
                  ("the launch: a process started, the code location loaded", sync.get("PIPELINE_START")),
                  ("plan, sync and load to subscriptions materialized", sync.get("materialized")),
                  ("its checks, the commit seen by the poll (raw lag)", sample["raw"])]
        if same:
            points += [("the models, in the same run: dbt build to mrr_daily materialized", models.get("materialized"))]
        else:
            points += [("the sensor's run ends", sync.get("PIPELINE_SUCCESS")),
                       ("to the models' run created (models_automation's tick)", models.get("created")),
                       ("its queue and launch", models.get("PIPELINE_START")),
                       ("dbt build to mrr_daily materialized", models.get("materialized"))]
        points += [("the poll sees today's MRR (models lag)", sample["models"])]
        last = 0.0
        for label, at in points:
            if at is not None:
                gaps.setdefault(label, []).append(at - last)
                last = at
    print("\n| step (seconds from the step before) | median | max |\n|---|---:|---:|")
    for label, values in gaps.items():
        print(f"| {label} | {statistics.median(values):.1f} | {max(values):.1f} |")

if __name__ == "__main__":
    main()
