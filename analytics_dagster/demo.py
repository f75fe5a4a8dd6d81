"""`make demo`: sandbox up, every asset materialized into DuckDB (the raw tables, then the dbt
models), checks and dbt tests run, a summary, sandbox down.

Exits 1 when the run fails, any asset check or dbt test fails, or any table differs from the API
in rows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from typing import Any

from dagster import DagsterInstance

from analytics_dagster.sandbox import SandboxConfig, SandboxServer, World

DEMO_REQUESTS_PER_MINUTE = 12_000  # a faster API than the real one's 240, to keep the demo short


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # the sandbox enforces a rate limit, and the sync is paced to match it: no 429 expected
    config = SandboxConfig(rate_limit=DEMO_REQUESTS_PER_MINUTE, rate_limit_block=60)
    with SandboxServer(World(customers=args.customers, seed=args.seed, lifecycles=True), config=config) as server:
        os.environ["SOURCES__ANALYTICS__BASE_URL"] = server.url
        os.environ["SOURCES__ANALYTICS__API_KEY"] = server.config.api_key
        os.environ["SOURCES__ANALYTICS__REQUESTS_PER_MINUTE"] = str(DEMO_REQUESTS_PER_MINUTE)
        print(f"sandbox API up at {server.url} with {args.customers} customers", flush=True)

        # imported here so that the settings above are in place before anything reads them
        from analytics_dagster.definitions import defs
        from analytics_dagster.source import RESOURCES
        from analytics_dagster.source.pipeline import make_pipeline, table_stats

        started = time.monotonic()
        dbt_output = io.StringIO()  # dbt's own log, which dagster-dbt writes to stdout: shown if the run fails
        with contextlib.redirect_stdout(dbt_output):
            result = defs.resolve_job_def("sync_all").execute_in_process(
                instance=DagsterInstance.ephemeral(),
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
        elapsed = time.monotonic() - started
        if not result.success:
            print(dbt_output.getvalue()[-5000:])
        checks: dict[str, list[Any]] = {}
        for evaluation in result.get_asset_check_evaluations():
            checks.setdefault(evaluation.asset_key.path[-1], []).append(evaluation)
        stats = table_stats(make_pipeline(), [r.name for r in RESOURCES], keys=False) if result.success else {}
        requests = server.app.stats.total
        throttled = server.app.stats.by_status.get(429, 0)

        print(f"\njob sync_all {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f}s "
              f"({requests} API requests, paced to {DEMO_REQUESTS_PER_MINUTE}/min, {throttled} answered 429)")
        width = max(len(r.name) for r in RESOURCES) + 2
        print(f"{'table':<{width}}{'rows':>8}{'API':>8}  checks")
        ok = result.success
        for resource in RESOURCES:
            expected = len(server.world.truth(resource.name))
            rows = stats.get(resource.name, {}).get("rows", "-")
            check = checks.get(resource.name)
            verdict = ("not run" if not check else f"{len(check)} passed" if all(c.passed for c in check)
                       else "FAILED: " + ", ".join(c.check_name for c in check if not c.passed))
            ok = ok and rows == expected and verdict.endswith("passed")
            print(f"{resource.name:<{width}}{rows:>8}{expected:>8}  {verdict}")
        ok = print_models(result) and ok
        print(f"\nwarehouse: {os.environ.get('DESTINATION__DUCKDB__CREDENTIALS', 'data/warehouse.duckdb')} (dataset analytics)")
    print("sandbox down; " + ("all tables equal the API, all checks passed" if ok else "SOMETHING IS WRONG (see above)"))
    return 0 if ok else 1


def print_models(result: Any) -> bool:
    """The models built and their tests, today's MRR and the last month's net revenue; whether
    every model was built and every test passed."""
    import duckdb

    from analytics_dagster.models import MODEL_SPECS, MODELS_SCHEMA
    from analytics_dagster.source.pipeline import duckdb_file

    models = {spec.key for spec in MODEL_SPECS}
    built = {m.asset_key for m in result.asset_materializations_for_node("analytics_models")} if result.success else set()
    tests = [e for e in result.get_asset_check_evaluations() if e.asset_key in models]
    failed = [e.check_name for e in tests if not e.passed]
    print(f"\ndbt models: {len(built)} of {len(models)} built; tests: {len(tests) - len(failed)} passed"
          + (f", FAILED: {', '.join(failed)}" if failed else ""))
    target = duckdb_file()
    if not built or target is None:
        return False
    with duckdb.connect(target, read_only=True) as con:
        mrr = con.execute(f"SELECT currency_code, mrr, active_subscriptions FROM {MODELS_SCHEMA}.mrr_daily "
                          "WHERE day = (SELECT max(day) FROM " + MODELS_SCHEMA + ".mrr_daily) ORDER BY 1").fetchall()
        month = con.execute(f"SELECT max(month) FROM {MODELS_SCHEMA}.revenue_monthly").fetchone()[0]
        revenue = con.execute(f"SELECT currency_code, sum(gross), sum(refunds), sum(net) FROM {MODELS_SCHEMA}.revenue_monthly "
                              "WHERE month = ? GROUP BY 1 ORDER BY 1", [month]).fetchall()
    print("MRR today (minor units a month): " + (", ".join(
        f"{currency} {value:,.0f} ({subs} subscriptions)" for currency, value, subs in mrr) or "none"))
    print_paddle_mrr(result)
    print(f"net revenue of the last month with revenue ({month:%Y-%m}), minor units: " + ", ".join(
        f"{currency} {net:,} (gross {gross:,}, refunds {refunds:,})" for currency, gross, refunds, net in revenue))
    return len(built) == len(models) and not failed


def print_paddle_mrr(result: Any) -> None:
    """Today's MRR beside Paddle's (its `/metrics/monthly-recurring-revenue`), in the balance
    currency, and the difference: the reconciliation check's figures of the newest day."""
    check = next((e for e in result.get_asset_check_evaluations() if e.check_name == "mrr_matches_paddle"), None)
    seen = {k: getattr(v, "value", v) for k, v in (check.metadata if check else {}).items()}
    if "paddle" not in seen:
        print("MRR beside Paddle's: " + (check.description if check else "not checked"))
        return
    print(f"MRR beside Paddle's ({seen['newest_day']}, {seen['balance_currency']}, other currencies at their payout "
          f"rate): ours {seen['ours']:,.0f}, Paddle's {seen['paddle']:,.0f}, difference {seen['difference']:,.0f} "
          f"({seen['difference_pct']:+.3f}%): {'within' if check.passed else 'BEYOND'} {seen['tolerance_pct']}%")


if __name__ == "__main__":
    sys.exit(main())
