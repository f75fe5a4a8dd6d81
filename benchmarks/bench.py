"""`make bench`: the project against plain dlt and a bare floor, on the same sandbox, in one run.

Every variant runs in a process of its own (peak RSS is that process's), against one sandbox
process started with the chosen scale and latency:

1. project: `dagster asset materialize --select '*'`, unpaced (the sandbox has no limit here);
2. plain dlt: a `rest_api` pipeline with dlt's defaults (insert_values, nested child tables,
   sequential children, the API's default page size);
3. floor: plain HTTP (one `requests` session) + one Arrow bulk insert per table into DuckDB,
   sequential, and with the customers' children fetched by 16 threads;
4. project again, with nothing changed: the no-change incremental rerun;
5. project paced at 240 requests/minute against a sandbox that enforces that limit (at a small
   scale: the budget, not the data, sets its length): the share of the budget used while the
   customers' children are fetched;
6. incremental runs by mode (`--incremental`, default 2,000 and 20,000 customers): after an
   unpaced backfill, a no-change run, a run after 1% of the entities changed and a no-change run
   right after it, in events mode (with its late-event window, and without: what it cost before)
   paced at 240/minute against a sandbox enforcing that limit, and in listing mode unpaced (paced,
   its runs would take hours: their time at 240/minute is computed from their requests);
7. backfills (`--rss`, `--fault-customers`, `--resume-customers`; `--only-backfills`): peak RSS of
   a full sync at 1,000 and 10,000 customers, with DuckDB's defaults and, as a diagnostic, with
   its row-group compaction off; a backfill paced at 1,200/minute, clean and with 12% of the
   requests failing transiently; the requests of a resume after a SIGKILL at 75% of a backfill
   paced at `--resume-per-minute` (chunks end on time: paced, a chunk is about a minute of
   requests).
8. the models (`--models`, default 2,000 and 20,000 customers; `--only-models`): after a full sync
   (raw tables, then the first dbt build), a no-change run of the raw tables alone and one of
   everything (raw tables and `dbt build`): the time the build adds to that run and its share,
   the models step's time and dbt's own.

Ratios are to the floor measured in the same run: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from analytics_dagster.source.resources import DEFAULT_PATH_PREFIX, RESOURCES

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEY = "sandbox_api_key"
# the API's resources as the project declares them (path, primary key, archived hidden or not)
LISTS = [r for r in RESOURCES if r.paginated and not r.parent]
CHILDREN = [r for r in RESOURCES if r.parent]  # listed once per customer
# the project's sync, as a user runs it: every asset, in a process of its own
MATERIALIZE = [str(BIN / "dagster"), "asset", "materialize", "-m", "analytics_dagster.definitions", "--select", "*"]


# ---------------------------------------------------------------------- the variants (children)
def floor(url: str, db: str, threads: int) -> int:
    """Plain HTTP and one Arrow bulk insert per table. Returns rows written."""
    import duckdb
    import pyarrow as pa
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(threads, 1))
    session.mount("http://", adapter)

    def listing(path: str, parts: tuple[dict[str, str], ...]) -> list[dict]:
        rows = []
        for part in parts:  # the whole resource: every part of its listing (archived, non-catalog)
            response = session.get(url + DEFAULT_PATH_PREFIX + path, params={"per_page": 200, **part})
            while True:
                body = response.json()
                rows += body["data"]
                if not body["meta"]["pagination"]["has_more"]:
                    break
                response = session.get(body["meta"]["pagination"]["next"])
        return rows

    tables = {r.name: listing(r.path, r.parts) for r in LISTS}
    tables["event_types"] = session.get(url + "/v1/event-types").json()["data"]
    tables["ip_addresses"] = [{"ipv4_cidr": c} for c in session.get(url + "/v1/ips").json()["data"]["ipv4_cidrs"]]
    ids = [c["id"] for c in tables["customers"]]
    for child in CHILDREN:
        fetch = lambda cid, child=child: listing(child.path.format(cus_id=cid), child.parts)  # noqa: E731
        if threads > 1:
            with ThreadPoolExecutor(threads) as pool:
                pages = list(pool.map(fetch, ids))
        else:
            pages = [fetch(cid) for cid in ids]
        tables[child.name] = [row for page in pages for row in page]
    with duckdb.connect(db) as con:
        con.execute("CREATE SCHEMA floor")
        for name, rows in tables.items():
            columns = sorted({k for row in rows for k in row})
            data = {c: [json.dumps(v) if isinstance(v, (dict, list)) else v for v in (r.get(c) for r in rows)]
                    for c in columns}
            arrow = pa.table({c: pa.array(v, type=pa.string() if any(isinstance(x, str) for x in v) else None)
                              for c, v in data.items()})
            con.register("batch", arrow)
            con.execute(f"CREATE TABLE floor.{name} AS SELECT * FROM batch")
            con.unregister("batch")
    return sum(len(rows) for rows in tables.values())


def plain_dlt(url: str, db: str) -> int:
    """A dlt rest_api pipeline as the docs would have it, every setting left at its default."""
    import dlt
    from dlt.sources.rest_api import rest_api_source

    from analytics_dagster.source.paginator import HasMorePaginator  # the API's paging contract

    resources: list[dict[str, Any]] = []
    for r in RESOURCES:
        endpoint = {"path": r.path.replace("{cus_id}", "{resources.customers.id}"), "data_selector": r.data_selector,
                    "paginator": HasMorePaginator(r.name, parts=r.parts) if r.paginated else "single_page"}
        resources.append({"name": r.name, "endpoint": endpoint, "primary_key": r.primary_key,
                          "write_disposition": "merge"})
        if r.name == "ip_addresses":  # the API lists bare CIDR strings
            resources[-1]["processing_steps"] = [{"map": lambda c: {"ipv4_cidr": c}}]
    source = rest_api_source({"client": {"base_url": url + DEFAULT_PATH_PREFIX, "auth": {"type": "bearer", "token": KEY}},
                              "resources": resources})
    pipeline = dlt.pipeline("bench_plain_dlt", destination=dlt.destinations.duckdb(db), dataset_name="plain")
    pipeline.run(source)
    return sum(pipeline.last_trace.last_normalize_info.row_counts.get(r.name, 0) for r in RESOURCES)


# ---------------------------------------------------------------------- the orchestrator
def run_variant(argv: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) and output of one variant in a process of its own."""
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{output[-4000:]}")
    return elapsed, usage.ru_maxrss // 1024, output


def start_sandbox(customers: int, latency: float, *extra: str) -> tuple[subprocess.Popen, str, float]:
    started = time.monotonic()
    process = subprocess.Popen(
        [str(BIN / "analytics-sandbox"), "--port", "0", "--customers", str(customers), "--latency", str(latency),
         *extra],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not match:
        process.kill()
        raise SystemExit(f"sandbox did not start: {line}")
    return process, match.group(0), time.monotonic() - started


def own_warehouse(env: dict[str, str], url: str, directory: Path, name: str, per_minute: int = 0) -> dict[str, str]:
    """`env` for a sync against the sandbox at `url` into a warehouse (and a dlt working
    directory) of its own, `name` under `directory`, paced at `per_minute` (0: unpaced)."""
    return {**env, "SOURCES__ANALYTICS__BASE_URL": url, "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": str(per_minute),
            "DLT_DATA_DIR": str(directory / name), "DESTINATION__DUCKDB__CREDENTIALS": str(directory / f"{name}.duckdb")}


def sync_on_own_sandbox(customers: int, argv: list[str], env: dict[str, str], per_minute: int = 0,
                        fault_rate: float = 0.0) -> tuple[float, int, dict[str, Any]]:
    """A full sync into a new warehouse against a sandbox of its own (enforcing `per_minute`
    when set, failing `fault_rate` of the requests transiently): wall seconds, peak RSS (MiB)
    and the sandbox's request stats."""
    import requests

    sandbox, url, _ = start_sandbox(customers, 0.0, *(["--rate-limit", str(per_minute)] if per_minute else []),
                                    *(["--fault-rate", str(fault_rate)] if fault_rate else []))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, rss, _ = run_variant(argv, own_warehouse(env, url, Path(tmp), "own", per_minute))
        stats = requests.get(f"{url}/_admin/stats", params={"during": ",".join(r.name for r in CHILDREN)}, timeout=10).json()
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    return seconds, rss, stats


def budget_use(customers: int, per_minute: int, argv: list[str], env: dict[str, str]) -> dict[str, float]:
    """A paced full sync against a sandbox enforcing `per_minute`: how much of the budget the
    sync used while the children were fetched (from the first child request to the last)."""
    seconds, _, stats = sync_on_own_sandbox(customers, argv, env, per_minute)
    during = stats["during"]
    return {"seconds": seconds, "requests": stats["total"], "fan_out_seconds": during["seconds"],
            "per_minute": during["per_minute"], "use": during["per_minute"] / per_minute,
            "429s": stats["by_status"].get("429", 0)}


def peak_rss(sizes: list[int], argv: list[str], env: dict[str, str]) -> dict[int, int]:
    """Peak RSS (MiB) of a full sync at each size, each against a sandbox of its own."""
    return {size: sync_on_own_sandbox(size, argv, env)[1] for size in sizes}


def fault_cost(customers: int, per_minute: int, fault_rate: float, argv: list[str], env: dict[str, str],
               ) -> dict[str, Any]:
    """A paced backfill against a sandbox enforcing `per_minute`, clean and with `fault_rate`
    of the requests failing transiently (429 with Retry-After, 500, 502, 503, 504)."""
    clean, _, clean_stats = sync_on_own_sandbox(customers, argv, env, per_minute)
    faulty, _, faulty_stats = sync_on_own_sandbox(customers, argv, env, per_minute, fault_rate)
    failed = sum(n for status, n in faulty_stats["by_status"].items() if status != "200")
    return {"clean": clean, "faulty": faulty, "ratio": faulty / clean, "requests": clean_stats["total"],
            "faulty_requests": faulty_stats["total"], "failed": failed}


def resume_cost(customers: int, at: float, argv: list[str], env: dict[str, str], per_minute: int = 0,
                ) -> dict[str, Any]:
    """Requests of a backfill killed (SIGKILL) once it made `at` of a whole backfill's requests,
    then run again, against one sandbox. The killed backfill is paced at `per_minute` (0:
    unpaced) against the sandbox enforcing it; the whole one and the resume are not (their
    requests are the same paced or not)."""
    import requests

    sandbox, url, _ = start_sandbox(customers, 0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def total() -> int:
                return requests.get(f"{url}/_admin/stats", timeout=10).json()["total"]

            requests.post(f"{url}/_admin/stats/reset", timeout=10)
            run_variant(argv, own_warehouse(env, url, Path(tmp), "whole"))
            whole = total()
            requests.post(f"{url}/_admin/config", json={"rate_limit": per_minute}, timeout=10)
            requests.post(f"{url}/_admin/stats/reset", timeout=10)
            started = time.monotonic()
            process = subprocess.Popen(argv, cwd=ROOT, env=own_warehouse(env, url, Path(tmp), "killed", per_minute),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            while total() < at * whole and process.poll() is None:
                time.sleep(0.02)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            killed_after = time.monotonic() - started
            killed = total()
            requests.post(f"{url}/_admin/config", json={"rate_limit": 0}, timeout=10)
            requests.post(f"{url}/_admin/stats/reset", timeout=10)
            seconds, _, _ = run_variant(argv, own_warehouse(env, url, Path(tmp), "killed"))
            resumed = total()
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    return {"whole": whole, "killed": killed, "resumed": resumed, "left": whole - killed, "seconds": seconds,
            "killed_after": killed_after}


# each mode's settings: events mode with its late-event window (the default), without it (what a
# run cost before the window), and listing mode
MODES = {
    "events": {"SOURCES__ANALYTICS__INCREMENTAL": "events"},
    "events_no_window": {"SOURCES__ANALYTICS__INCREMENTAL": "events", "SOURCES__ANALYTICS__EVENT_VISIBILITY_LAG_SECONDS": "0"},
    "listing": {"SOURCES__ANALYTICS__INCREMENTAL": "listing"},
}


def incremental_costs(customers: int, per_minute: int = 240, modes: list[str] = list(MODES)) -> list[dict[str, Any]]:
    """Backfill, no-change run, 1%-changed run and a no-change run right after it (which reads
    the 1% of changes again in events mode's late-event window), in each mode, against one
    sandbox; each mode has a warehouse of its own."""
    import requests

    sandbox, url, _ = start_sandbox(customers, 0.0)
    admin = f"{url}/_admin"
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            def run(mode: str, label: str, paced: bool) -> None:
                requests.post(f"{admin}/config", json={"rate_limit": per_minute if paced else 0}, timeout=10)
                requests.post(f"{admin}/stats/reset", timeout=10)
                env = own_warehouse({**os.environ, "SOURCES__ANALYTICS__API_KEY": KEY, **MODES[mode]},
                                    url, Path(tmp), mode, per_minute if paced else 0)
                seconds, _, _ = run_variant(MATERIALIZE, env)
                stats = requests.get(f"{admin}/stats", timeout=10).json()
                rows.append({"customers": customers, "mode": mode, "run": label, "paced": paced, "seconds": seconds,
                             "requests": stats["total"], "429s": stats["by_status"].get("429", 0)})
                print(f"  {customers} customers, {mode}, {label}: {seconds:.1f}s, {stats['total']} requests", flush=True)

            for mode in modes:
                run(mode, "backfill", paced=False)
            for mode in modes:
                run(mode, "no change", paced=mode != "listing")
            counts = requests.get(f"{admin}/counts", timeout=10).json()
            entities = sum(n for table, n in counts.items() if table not in ("events", "event_types", "ip_addresses"))
            requests.post(f"{admin}/advance", json={"updates": entities // 100}, timeout=60)
            for mode in modes:
                run(mode, "1% changed", paced=mode != "listing")
            for mode in modes:
                run(mode, "no change, right after", paced=mode != "listing")
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    return rows


def incremental_table(rows: list[dict[str, Any]], per_minute: int = 240) -> str:
    """The Markdown table of `incremental_costs` (docs/benchmark.md has the same shape)."""
    lines = [f"| customers | mode | run | requests | wall time | at {per_minute}/minute |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        floor = r["requests"] * 60 / per_minute  # what the budget alone allows
        at_limit = (f"{r['seconds']:.1f} s measured" if r["paced"] else
                    f"≥ {floor / 60:.1f} min" if floor >= 60 else f"≥ {floor:.1f} s")
        wall = f"{r['seconds']:.1f} s" + ("" if r["paced"] else " unpaced")
        if r["429s"]:
            at_limit += f" ({r['429s']} x 429)"
        lines.append(f"| {r['customers']:,} | {r['mode']} | {r['run']} | {r['requests']:,} | {wall} | {at_limit} |")
    return "\n".join(lines)


# a step's time as Dagster logs it: `Finished execution of step "analytics_models" in 8.0s.`
STEP_TIME = re.compile(r'Finished execution of step "(?P<step>[^"]+)" in (?P<value>[\d.]+)(?P<unit>ms|s|m)\b')
MODELS_STEP = "analytics_models"


def step_seconds(output: str) -> dict[str, float]:
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}
    return {m["step"]: float(m["value"]) * scale[m["unit"]] for m in STEP_TIME.finditer(output)}


def models_cost(customers: int) -> dict[str, Any]:
    """The dbt build against the data: a full sync (raw tables, then the first build), then a
    no-change run of the raw tables alone and one of everything, into one warehouse (unpaced).
    Of each build: the models step's time as Dagster logs it (from its start, which may wait for
    the pipeline's lock while another step ends) and dbt's own (run_results.json)."""
    sandbox, url, _ = start_sandbox(customers, 0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = own_warehouse({**os.environ, "SOURCES__ANALYTICS__API_KEY": KEY}, url, Path(tmp), "models")
            # dbt's target folder, as analytics_dagster.models.dbt_target puts it
            run_results = Path(env["DLT_DATA_DIR"]) / "pipelines" / ".analytics_dbt_target" / "run_results.json"

            def build(argv: list[str]) -> tuple[float, float, float]:
                seconds, _, output = run_variant(argv, env)
                return seconds, step_seconds(output)[MODELS_STEP], json.loads(run_results.read_text())["elapsed_time"]

            full, first_step, first_dbt = build(MATERIALIZE)
            raw, _, _ = run_variant([*MATERIALIZE[:-1], "group:analytics"], env)
            everything, step, dbt = build(MATERIALIZE)
            import duckdb
            with duckdb.connect(env["DESTINATION__DUCKDB__CREDENTIALS"], read_only=True) as con:
                rows = {t: con.execute(f"SELECT count(*) FROM analytics_models.{t}").fetchone()[0]
                        for t in ("stg_transaction_line_items", "subscription_history", "mrr_daily")}
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)
    return {"customers": customers, "full": full, "first_step": first_step, "first_dbt": first_dbt, "raw": raw,
            "everything": everything, "step": step, "dbt": dbt, "rows": rows}


def print_models(sizes: list[int]) -> None:
    if not sizes:
        return
    print("\nthe models (dbt build, unpaced; step: Dagster's, dbt: dbt's own elapsed time):")
    print("| customers | full sync | its first build: step, dbt | no-change run, raw tables | no-change run, "
          "everything | its build: step, dbt | added by the build | share | rows: line items, history, mrr_daily |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size in sizes:
        m = models_cost(size)
        rows = ", ".join(f"{n:,}" for n in m["rows"].values())
        added = m["everything"] - m["raw"]
        print(f"| {size:,} | {m['full']:.1f} s | {m['first_step']:.1f} s, {m['first_dbt']:.1f} s | {m['raw']:.1f} s "
              f"| {m['everything']:.1f} s | {m['step']:.1f} s, {m['dbt']:.1f} s | {added:.1f} s "
              f"| {added / m['everything']:.0%} | {rows} |", flush=True)


def import_cost(env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds to import dagster alone, dagster with dlt and dagster-dlt (which `@dlt_assets`
    needs), and to load the code location (best of 3 each)."""
    def best(code: str) -> float:
        times = []
        for _ in range(3):
            started = time.monotonic()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, capture_output=True)
            times.append(time.monotonic() - started)
        return min(times)

    return best("import dagster"), best("import dagster, dagster_dlt, dlt"), best(
        "import analytics_dagster.definitions as d; d.defs.resolve_asset_graph()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--skip-plain-dlt", action="store_true", help="the slowest variant")
    parser.add_argument("--rss", default="1000,10000",
                        help="account sizes of full syncs whose peak RSS is compared, comma-separated ('': skip)")
    parser.add_argument("--fault-customers", type=int, default=150,
                        help="scale of the paced backfill with and without 12%% faults (0: skip)")
    parser.add_argument("--resume-customers", type=int, default=2000,
                        help="scale of the backfill killed at 75%% and resumed (0: skip)")
    parser.add_argument("--resume-per-minute", type=int, default=1200,
                        help="pace of the backfill killed at 75%%, against a sandbox enforcing it (0: unpaced)")
    parser.add_argument("--paced-customers", type=int, default=60,
                        help="scale of the paced run (0: skip it); at 240/min, 60 customers take about a minute")
    parser.add_argument("--incremental", default="2000,20000",
                        help="account sizes for the incremental runs by mode, comma-separated ('': skip)")
    parser.add_argument("--only-incremental", action="store_true", help="run nothing but the incremental runs")
    parser.add_argument("--models", default="2000,20000",
                        help="customers of the models' runs (comma-separated; empty: none)")
    parser.add_argument("--only-models", action="store_true", help="run nothing but the models' runs")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"the incremental runs' modes, comma-separated (default: {','.join(MODES)})")
    parser.add_argument("--only-backfills", action="store_true",
                        help="run nothing but the backfill measures (--rss, --fault-customers, --resume-customers)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant == "floor":
        print("rows", floor(args.url, args.db, args.threads))
        return
    if args.variant == "plain_dlt":
        print("rows", plain_dlt(args.url, args.db))
        return
    sizes = [int(n) for n in args.incremental.split(",") if n.strip()]
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: no such mode {sorted(unknown)}; choose from {list(MODES)}")
    model_sizes = [int(n) for n in args.models.split(",") if n.strip()]
    if args.only_incremental:
        print_incremental(sizes, modes)
        return
    if args.only_models:
        print_models(model_sizes)
        return
    if args.only_backfills:
        print_backfills(args, MATERIALIZE, {**os.environ, "SOURCES__ANALYTICS__API_KEY": KEY})
        return

    sandbox, url, ready = start_sandbox(args.customers, args.latency)
    import requests

    print(f"sandbox: {args.customers} customers, latency {args.latency}s, ready in {ready:.1f}s")
    results: list[tuple[str, float, int, int, int]] = []  # name, seconds, requests, rows, rss
    try:
        with tempfile.TemporaryDirectory() as tmp:
            env = own_warehouse({**os.environ, "SOURCES__ANALYTICS__API_KEY": KEY}, url, Path(tmp), "project")
            me = [sys.executable, str(Path(__file__).resolve()), "--url", url]

            def measure(name: str, argv: list[str]) -> None:
                requests.post(f"{url}/_admin/stats/reset", timeout=10)
                seconds, rss, output = run_variant(argv, env)
                total = requests.get(f"{url}/_admin/stats", timeout=10).json()["total"]
                rows = int(m.group(1)) if (m := re.search(r"^rows (\d+)$", output, re.M)) else -1
                results.append((name, seconds, total, rows, rss))
                print(f"  {name}: {seconds:.1f}s", flush=True)

            measure("floor, sequential", me + ["--variant", "floor", "--db", str(Path(tmp) / "f1.duckdb")])
            measure("floor, 16 threads", me + ["--variant", "floor", "--db", str(Path(tmp) / "f2.duckdb"), "--threads", "16"])
            if not args.skip_plain_dlt:
                measure("plain dlt defaults", me + ["--variant", "plain_dlt", "--db", str(Path(tmp) / "p.duckdb")])
            last_load = 0.0  # the newest load before the run: a run makes a load per chunk
            loads: dict[str, int] = {}
            for name in ("project, full sync", "project, no-change rerun"):
                measure(name, MATERIALIZE)
                import duckdb
                with duckdb.connect(env["DESTINATION__DUCKDB__CREDENTIALS"], read_only=True) as con:
                    tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                              "table_schema='analytics' AND table_name NOT LIKE '_dlt%'").fetchall()]
                    written = sum(con.execute(f"SELECT count(*) FROM analytics.{t} WHERE CAST(_dlt_load_id AS DOUBLE) > ?",
                                              [last_load]).fetchone()[0] for t in tables)
                    loads[name] = con.execute("SELECT count(*) FROM analytics._dlt_loads WHERE CAST(load_id AS DOUBLE) > ?",
                                              [last_load]).fetchone()[0]
                    last_load = con.execute("SELECT max(CAST(load_id AS DOUBLE)) FROM analytics._dlt_loads").fetchone()[0]
                results[-1] = results[-1][:3] + (written,) + results[-1][4:]
            bare, with_dlt, location = import_cost(env)
            paced = budget_use(args.paced_customers, 240, MATERIALIZE, env) if args.paced_customers else None
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=10)

    floor_seq = results[0][1]
    floor_par = results[1][1]
    # the table of docs/benchmark.md, row for row: refreshing the page is a paste
    print("\n| scenario | variant | wall s | requests | rows | peak RSS MiB | / floor seq | / floor 16 |")
    print("|---|---|---|---|---|---|---|---|")
    scenario = f"{args.customers:,} customers, {args.latency * 1000:.0f} ms latency"
    for i, (name, seconds, total, rows, rss) in enumerate(results):
        print(f"| {scenario if i == 0 else ''} | {name} | {seconds:.1f} | {total:,} | {rows:,} | {rss:,} | "
              f"{seconds / floor_seq:.2f}x | {seconds / floor_par:.2f}x |")
    by = {r[0]: r for r in results}
    print("loads: " + ", ".join(f"{name} {n}" for name, n in loads.items()))
    if "plain dlt defaults" in by:
        print(f"project full sync is {by['plain dlt defaults'][1] / by['project, full sync'][1]:.1f}x faster than plain dlt defaults")
    print(f"import dagster: {bare:.2f}s; dagster+dlt+dagster_dlt: {with_dlt:.2f}s ({with_dlt - bare:+.2f}s); "
          f"load the code location: {location:.2f}s ({location - bare:+.2f}s over dagster, "
          f"{location - with_dlt:+.2f}s over dagster+dlt)")
    if paced:
        print(f"paced at 240/min, {args.paced_customers} customers: {paced['seconds']:.1f}s, {paced['requests']} requests, "
              f"{paced['per_minute']:.0f}/min over the {paced['fan_out_seconds']:.0f}s children fan-out = "
              f"{paced['use']:.0%} of the budget, {paced['429s']} x 429")
    print_backfills(args, MATERIALIZE, env)
    print_incremental(sizes, modes)
    print_models(model_sizes)


def print_backfills(args: argparse.Namespace, argv: list[str], env: dict[str, str]) -> None:
    """Peak RSS against the data, a paced backfill under faults, and a resume after a kill."""
    rss_sizes = [int(n) for n in args.rss.split(",") if n.strip()]
    # the same syncs with DuckDB's row-group compaction off, which is not a setting we ship: it
    # tells the project's memory (the chunk) from the checkpoint's merge of a table's small row
    # groups, which holds up to a whole row group of the table (docs/benchmark.md)
    no_compaction = {**env, "DESTINATION__DUCKDB__CREDENTIALS__GLOBAL_CONFIG": json.dumps({"max_vacuum_tasks": 0})}
    for label, variant_env in (("", env), (" with DuckDB's compaction off (a diagnostic)", no_compaction)):
        if not rss_sizes:
            break
        rss = peak_rss(rss_sizes, argv, variant_env)
        print(f"peak RSS of a full sync{label}: " + ", ".join(f"{rss[n]} MiB at {n:,} customers" for n in rss_sizes)
              + (f": {rss[rss_sizes[-1]] / rss[rss_sizes[0]]:.2f}x" if len(rss_sizes) > 1 else ""), flush=True)
    if args.fault_customers:
        f = fault_cost(args.fault_customers, 1200, 0.12, argv, env)
        print(f"paced backfill at 1,200/minute, {args.fault_customers} customers: clean {f['clean']:.1f}s "
              f"({f['requests']} requests), with 12% faults {f['faulty']:.1f}s ({f['faulty_requests']} requests, "
              f"{f['failed']} failed and retried): {f['ratio']:.2f}x", flush=True)
    if args.resume_customers:
        per_minute = args.resume_per_minute
        r = resume_cost(args.resume_customers, 0.75, argv, env, per_minute)
        pace = f"paced at {per_minute:,}/minute" if per_minute else "unpaced"
        print(f"backfill of {args.resume_customers:,} customers, {pace}, killed at 75% ({r['killed_after']:.0f}s in): "
              f"whole {r['whole']:,} requests, killed after {r['killed']:,}, left {r['left']:,}; the resume made "
              f"{r['resumed']:,} ({r['resumed'] / r['whole']:.0%} of a whole backfill, {r['resumed'] - r['left']:+,} "
              f"over what was left) in {r['seconds']:.1f}s", flush=True)


def print_incremental(sizes: list[int], modes: list[str]) -> None:
    if not sizes:
        return
    print("\nincremental runs by mode (events paced at 240/minute against an enforcing sandbox):")
    rows = [row for size in sizes for row in incremental_costs(size, modes=modes)]
    print("\n" + incremental_table(rows))


if __name__ == "__main__":
    main()
