"""What Paddle's metrics (`/metrics/*`) add to a run: requests and seconds of the seven series,
on a first run (a 365-day history) and on a run a day later (the re-read window), at a given
scale (`--customers`, default 2,000), paced at 240 requests/minute against a sandbox enforcing
that limit, and unpaced. The metrics are synced alone through the engine (`source.sync.SyncRun`):
in `sync_all` they are resources of the same load, so what they add is their own requests
(the run's first request, to the event stream, tells them the API's today; alone, they ask one
more) and the rows they load. Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World
from analytics_dagster.source.resources import RESOURCES

METRICS = [r.name for r in RESOURCES if r.listing == "days"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--marginal", action="store_true",
                        help="after an unpaced backfill of the other tables, daily runs (events mode, paced at 240/minute) "
                             "of them alone, with the metrics' first history, and with the metrics' re-read")
    args = parser.parse_args()
    started = time.monotonic()
    world = World(customers=args.customers, seed=args.seed)
    print(json.dumps({"world_seconds": round(time.monotonic() - started, 1), "customers": args.customers,
                      "subscriptions": len(world.ids["subscriptions"]), "transactions": len(world.ids["transactions"])}))
    from analytics_dagster.source.pipeline import loader_file_format, locked_pipeline
    from analytics_dagster.source.sync import SyncRun

    def sync(tables: list[str] = METRICS) -> SyncRun:
        """The engine's run of `tables` (`sync.sync` hands a run of a subset its whole source,
        which Dagster's dlt resource subsets and plain `pipeline.run` does not)."""
        with locked_pipeline() as pipeline:
            run = SyncRun(pipeline, tables, report=lambda line: None)
            for _ in run.run(lambda source: [pipeline.run(source.with_resources(*source_tables(source, tables)),
                                                          loader_file_format=loader_file_format(pipeline))]):
                pass
        return run

    def source_tables(source: Any, tables: list[str]) -> list[str]:
        return [t for t in tables if t in source.resources]

    if args.marginal:
        marginal(args, sync)
        return

    for paced in (240, 0):
        config = SandboxConfig(rate_limit=paced, rate_limit_block=60)
        with SandboxServer(World(customers=args.customers, seed=args.seed) if paced == 0 else world,
                           config=config) as server, tempfile.TemporaryDirectory() as folder:
            os.environ.update({
                "SOURCES__ANALYTICS__BASE_URL": server.url, "SOURCES__ANALYTICS__API_KEY": server.config.api_key,
                "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": str(paced),
                "DESTINATION__DUCKDB__CREDENTIALS": f"{folder}/w.duckdb", "DLT_DATA_DIR": f"{folder}/dlt"})
            for run in ("first", "a day later"):
                if run == "a day later":
                    server.world.advance(seconds=86400, updates=args.customers // 100, new_transactions=args.customers // 100)
                server.app.stats.__init__()
                started = time.monotonic()
                result = sync()
                seconds = time.monotonic() - started
                stats = server.app.stats
                print(json.dumps({"run": run, "paced_per_minute": paced, "seconds": round(seconds, 2),
                                  "requests": stats.total, "answered_429": stats.by_status.get(429, 0),
                                  "rows_written": sum(result.written.values())}))


def marginal(args: Any, sync: Any) -> None:
    tables = [r.name for r in RESOURCES if r.listing != "days"]
    world = World(customers=args.customers, seed=args.seed)
    with SandboxServer(world, config=SandboxConfig()) as server, tempfile.TemporaryDirectory() as folder:
        os.environ.update({
            "SOURCES__ANALYTICS__BASE_URL": server.url, "SOURCES__ANALYTICS__API_KEY": server.config.api_key,
            "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": "0",
            "DESTINATION__DUCKDB__CREDENTIALS": f"{folder}/w.duckdb", "DLT_DATA_DIR": f"{folder}/dlt"})
        started = time.monotonic()
        sync(tables)
        print(json.dumps({"backfill_unpaced_seconds": round(time.monotonic() - started, 1)}))
        os.environ["SOURCES__ANALYTICS__REQUESTS_PER_MINUTE"] = "240"
        server.app.config.rate_limit = 240
        for run, selected in (("daily, without the metrics", tables), ("daily, the metrics' first history", tables + METRICS),
                              ("daily, the metrics' re-read", tables + METRICS), ("daily, without the metrics", tables)):
            server.world.advance(seconds=86400, updates=args.customers // 100, new_transactions=args.customers // 100)
            server.app.stats.__init__()
            started = time.monotonic()
            result = sync(selected)
            print(json.dumps({"run": run, "seconds": round(time.monotonic() - started, 2),
                              "requests": server.app.stats.total, "answered_429": server.app.stats.by_status.get(429, 0),
                              "rows_written": sum(result.written.values())}))


if __name__ == "__main__":
    main()
