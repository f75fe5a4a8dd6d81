"""The MRR history a first sync makes (issue #31; docs/models.md, "Before the first known state:
what is inferred"), measured: on the sandbox's world whose subscriptions live their lives
(`World(lifecycles=True)`, `--customers`, default 2,000, `--seed`, default 7), served unpaced,
one first sync (`sync_all`, the raw tables then the models' build), then every day of
`mrr_daily` from the first subscription's to the API's today against the sandbox's own MRR of
that day (`test_history.days_off`, the test's comparison): days compared (no currency flagged)
and flagged (`mrr_daily.flagged`), those off by more than 0.5%, the largest errors, the
day-currencies with an uncertain state (what the flag was before `uncertain_mrr`), those
flagged with no bound and those off by more than theirs, the model's row of the largest
errors; the same held to `flagged_unless_defaults` and `assumption_mrr` (`unless_defaults`: the
days an account that may not use Paddle's defaults would have compared); the history's states,
and those assuming a default by what they assume; then
`--builds` more builds of the models alone (default 3): wall time, and dbt's own
(run_results.json: models and tests, without dbt's start). Prints one JSON object.

    .venv/bin/python -m benchmarks.history [--customers 2000] [--seed 7] [--builds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--builds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    world = World(customers=args.customers, seed=args.seed, lifecycles=True)
    report: dict = {"customers": args.customers, "seed": args.seed, "world_seconds": round(time.monotonic() - started, 1)}
    with SandboxServer(world, config=SandboxConfig()) as server, tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "warehouse" / "history.duckdb"
        os.environ.update({  # as the tests' `use_sandbox` sets them
            "SOURCES__ANALYTICS__BASE_URL": server.url, "SOURCES__ANALYTICS__API_KEY": server.config.api_key,
            "DESTINATION__DUCKDB__CREDENTIALS": str(db), "DLT_DATA_DIR": f"{folder}/dlt",
            "SOURCES__ANALYTICS__REQUESTS_PER_MINUTE": "0"})
        # (imported once the settings are: the definitions read none at import, but the tests' helpers' modules do)
        from dagster import DagsterInstance

        from analytics_dagster.definitions import defs
        from analytics_dagster.models import dbt_target
        from analytics_dagster_tests.conftest import Admin
        from analytics_dagster_tests.test_history import days_off
        from analytics_dagster_tests.test_models import MODELS, query, sync_all

        started = time.monotonic()
        assert sync_all().success, "the first sync failed"
        report["first_sync_seconds"] = round(time.monotonic() - started, 1)
        counts, off = days_off(db, Admin(server.url))
        truth = server.world.mrr_history()
        report.update(first_day=min(d for d, by in truth.items() if by), today=max(truth), **counts,
                      unflagged_off=len(off), unflagged_off_first=off[:5])
        counts, off = days_off(db, Admin(server.url), unless_defaults=True)
        report["unless_defaults"] = dict(counts, unflagged_off=len(off), beyond_bound=counts["beyond_bound"][:5])
        for largest in ("largest_flagged_error", "largest_unflagged_error"):  # the model's row there
            _, day, currency = counts[largest]
            report[largest + "_row"] = query(db, "SELECT mrr, uncertain_subscriptions, uncertain_mrr FROM "
                                                 f"analytics_models.mrr_daily WHERE day = '{day}' AND currency_code = '{currency}'")
        report["history"] = query(db, """
            SELECT count(*) AS states, count(*) FILTER (WHERE inferred_from = 'transaction') AS from_transactions,
                count(*) FILTER (WHERE inferred_from = 'no_transaction') AS unbilled,
                count(*) FILTER (WHERE inferred_from = 'first_state') AS first_state,
                count(*) FILTER (WHERE inferred_from IS NULL) AS observed,
                count(*) FILTER (WHERE uncertain) AS uncertain,
                count(DISTINCT subscription_id) FILTER (WHERE uncertain) AS subscriptions_uncertain,
                count(*) FILTER (WHERE assumes IS NOT NULL) AS assuming,
                count(DISTINCT subscription_id) FILTER (WHERE assumes IS NOT NULL) AS subscriptions_assuming,
                count(DISTINCT subscription_id) AS subscriptions
            FROM analytics_models.subscription_history""")[0]
        report["uncertain_by_reason"] = query(db, """
            SELECT coalesce(t.origin, h.inferred_from) AS reason, count(*) AS states
            FROM analytics_models.subscription_history AS h
            LEFT JOIN analytics.transactions AS t ON t.id = h.transaction_id
            WHERE h.uncertain GROUP BY 1 ORDER BY 1""")
        report["assuming_by_what"] = query(db, """
            SELECT assumes, count(*) AS states, count(*) FILTER (WHERE uncertain) AS uncertain_too
            FROM analytics_models.subscription_history WHERE assumes IS NOT NULL GROUP BY 1 ORDER BY 1""")
        job, builds = defs.resolve_implicit_global_asset_job_def(), []
        for _ in range(args.builds):
            started = time.monotonic()
            assert job.execute_in_process(instance=DagsterInstance.ephemeral(), asset_selection=sorted(MODELS),
                                          raise_on_error=False).success
            dbt = json.loads((dbt_target() / "run_results.json").read_text())["elapsed_time"]
            builds.append({"wall": round(time.monotonic() - started, 2), "dbt": round(dbt, 2)})
        report["builds"] = builds
        report["mrr_daily_build_seconds"] = next(
            (round(r["execution_time"], 2) for r in json.loads((dbt_target() / "run_results.json").read_text())["results"]
             if r["unique_id"].endswith(".mrr_daily")), None)
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
