"""`make bench`: the project's full sync and a no-change rerun against the sandbox, timed.

The sandbox runs in a process of its own (so it does not share the GIL with the sync), the
sync runs through Dagster's CLI exactly as users run it, and every number comes from this run.
Covered so far: (1) the project's full sync and (4) the no-change incremental rerun; the plain
dlt and bare-floor baselines of issue #6 are not written yet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def start_sandbox(customers: int, latency: float) -> tuple[subprocess.Popen, str]:
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "analytics-sandbox"), "--port", "0", "--customers", str(customers), "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        process.kill()
        raise SystemExit(f"sandbox did not start: {line}")
    print(f"sandbox: {customers} customers, latency {latency}s, ready in {time.monotonic() - started:.1f}s")
    return process, match.group(0)


def materialize(env: dict[str, str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of `dagster asset materialize --select '*'`."""
    command = ["/usr/bin/time", "-f", "%M", str(BIN / "dagster"), "asset", "materialize",
               "-m", "analytics_dagster.definitions", "--select", "*"]
    if not Path("/usr/bin/time").exists():
        command = command[3:]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(result.stderr[-4000:])
    tail = result.stderr.strip().splitlines()[-1] if command[0] == "/usr/bin/time" else "0"
    return elapsed, int(tail) if tail.isdigit() else 0


def rows_written(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return sum(con.execute(f"SELECT count(*) FROM analytics.{t} WHERE _dlt_load_id = (SELECT max(load_id) FROM analytics._dlt_loads)").fetchone()[0]
                   for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='analytics' AND table_name NOT LIKE '_dlt%'").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    sandbox, url = start_sandbox(args.customers, args.latency)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "bench.duckdb"
            env = {**os.environ, "SOURCES__ANALYTICS__BASE_URL": url,
                   "SOURCES__ANALYTICS__API_KEY": "sandbox_api_key",
                   "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": "0",
                   "DESTINATION__DUCKDB__CREDENTIALS": str(db), "DLT_DATA_DIR": str(Path(tmp) / "dlt")}
            truth_rows = sum(requests.get(f"{url}/_admin/counts", timeout=60).json().values())
            results = []
            for label in ("full sync", "no-change rerun"):
                requests.post(f"{url}/_admin/stats/reset", timeout=10)
                seconds, rss = materialize(env)
                stats = requests.get(f"{url}/_admin/stats", timeout=10).json()
                results.append((label, seconds, stats["total"], rows_written(db), rss, stats["by_resource"]))
            print(f"\n{'run':<18}{'wall s':>8}{'requests':>10}{'rows written':>14}{'peak RSS MiB':>14}")
            for label, seconds, total, rows, rss, _ in results:
                print(f"{label:<18}{seconds:>8.1f}{total:>10}{rows:>14}{rss / 1024:>14.0f}")
            print(f"(API holds {truth_rows} rows)")
            print("requests of the no-change rerun by resource:", json.dumps(results[1][5], sort_keys=True))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)


if __name__ == "__main__":
    main()
