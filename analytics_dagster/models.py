"""The dbt project's models (analytics_dagster/dbt) as Dagster assets downstream of the raw
tables, and its tests as their asset checks.

The definition is made from the manifest `make install` parses (`dbt parse`), read as JSON:
importing dagster-dbt imports dbt-core, which costs more than the whole code location does
today (0.9 s measured), so nothing here imports either until a run starts. The keys, lineage
and checks are what dagster-dbt's own `@dbt_assets` makes of that manifest with `ModelsTranslator`
(a test compares them); a run is dagster-dbt's: `DbtCliResource` runs `dbt build` of the
selected models and tests (in this process: `dbt_in_process.py`) and its events become this
step's materializations and check results.

Sources are the raw assets `analytics/<table>` (`meta.dagster.asset_key` in sources.yml), so
lineage runs from `analytics/transactions` to each metric; a model is `analytics_models/<name>`,
the schema and table it is written to, in group `models`.

The warehouse is the destination's: dbt's target is profiles.yml's output of the destination's
type, `duckdb` (the file the pipeline resolves) or `postgres` (the destination's credentials,
resolved the dlt way), its connection passed to dbt through the environment.
"""


import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    AutomationCondition,
    Failure,
    FreshnessPolicy,
    MaterializeResult,
    TableColumn,
    TableSchema,
    multi_asset,
)

from analytics_dagster.assets import DESTINATION_POOL
from analytics_dagster.dbt_in_process import environment
from analytics_dagster.source.pipeline import destination_type

DBT_PROJECT_DIR = Path(__file__).resolve().parent / "dbt"
MANIFEST = DBT_PROJECT_DIR / "target" / "manifest.json"
MODELS_GROUP = "models"
MODELS_SCHEMA = "analytics_models"  # profiles.yml: where the models are written
# the DuckDB file, as the asset passes it to dbt (profiles.yml reads it)
DUCKDB_FILE_ENV = "ANALYTICS_DUCKDB_FILE"
# dbt's setting of its log file's level (dbt_environment: info unless set)
DBT_LOG_LEVEL_FILE = "DBT_LOG_LEVEL_FILE"
# The PostgreSQL connection, as the asset passes it to dbt (profiles.yml's output `postgres`
# reads them), from the destination's credentials. The password only ever goes through the
# environment of the dbt process: never on its command line, in a log line or in metadata (dbt
# logs no password). Not a DBT_ENV_SECRET_ variable: dbt would scrub its value from every log
# line, and a password that is also a word of the project (a role "analytics" with password
# "analytics") then vanishes from the node ids of dbt's structured log, which dagster-dbt reads
# (seen: KeyError 'model.*****_models.stg_adjustment_items').
POSTGRES_ENV = {"host": "ANALYTICS_POSTGRES_HOST", "port": "ANALYTICS_POSTGRES_PORT",
                "username": "ANALYTICS_POSTGRES_USER", "database": "ANALYTICS_POSTGRES_DBNAME"}
POSTGRES_PASSWORD_ENV = "ANALYTICS_POSTGRES_PASSWORD"
# The warehouses the models run on, each an output of that name in profiles.yml (a dbt target).
WAREHOUSES = ("duckdb", "postgres")
# A model is rebuilt once a raw table it reads has a new materialization (eager: any dependency
# updated), every dependency's blocking checks passed, and none is being synced: a failed sync,
# or a table whose primary-key check failed, leaves the models as they were rather than
# rebuilding them on stale or bad data. A table synced alone rebuilds the models that read it on
# the others as they are (subscription_history takes a listed row newer than the stream).
MODELS_AUTOMATION = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()
# The marts are what a reader looks at: the daily sync (daily_all, 02:30) rebuilds them, so one
# older than a day and a bit means that sync did not run or failed.
MARTS_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=25))


def model_key(name: str) -> AssetKey:
    return AssetKey([MODELS_SCHEMA, name])


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: `make install` parses the dbt project into it "
                                "(`dbt parse --project-dir analytics_dagster/dbt --profiles-dir analytics_dagster/dbt`)")
    return json.loads(path.read_text())


def node_key(manifest: Mapping[str, Any], unique_id: str) -> AssetKey:
    """The asset of a dbt node: a source's `meta.dagster.asset_key`, a model's `model_key`."""
    if unique_id in manifest["sources"]:
        source = manifest["sources"][unique_id]
        return AssetKey(source["meta"]["dagster"]["asset_key"])
    return model_key(manifest["nodes"][unique_id]["name"])


def attached_model(manifest: Mapping[str, Any], test: Mapping[str, Any]) -> str | None:
    """The model a test checks, as dagster-dbt finds it: a generic test's `attached_node`, a
    singular test's one upstream node or its `meta.dagster.ref`."""
    upstream = test["depends_on"]["nodes"]
    attached = test.get("attached_node") or (upstream[0] if len(upstream) == 1 else None)
    ref = ((test.get("config") or {}).get("meta") or test.get("meta") or {}).get("dagster", {}).get("ref")
    if ref:
        attached = next((uid for uid, node in manifest["nodes"].items() if node["name"] == ref["name"]), None)
    return attached if attached in manifest["nodes"] else None


def _description(node: Mapping[str, Any]) -> str:
    return (node.get("description") or "").strip() or f"dbt model {node['name']}"


def model_kinds(warehouse: str) -> set[str]:
    """dbt, and the warehouse the models are written to when they run there."""
    return {"dbt", warehouse} if warehouse in WAREHOUSES else {"dbt"}


def build_specs(manifest: Mapping[str, Any], warehouse: str = "duckdb") -> tuple[list[AssetSpec], list[AssetCheckSpec]]:
    """An asset per model (deps: the models and sources it reads), a check per test attached to one.
    `warehouse`: the destination's type (its kind, beside dbt's)."""
    models = {uid: node for uid, node in manifest["nodes"].items() if node["resource_type"] == "model"}
    specs = []
    for uid, node in sorted(models.items()):
        mart = node["fqn"][1:2] == ["marts"]
        specs.append(AssetSpec(
            key=model_key(node["name"]),
            deps=[node_key(manifest, dep) for dep in node["depends_on"]["nodes"]],
            description=_description(node),
            group_name=MODELS_GROUP,
            kinds=model_kinds(warehouse),
            code_version=node["checksum"]["checksum"],
            automation_condition=MODELS_AUTOMATION,
            # dbt skips a model whose upstream model failed or whose test failed (the step then
            # fails); on a warehouse other than DuckDB and PostgreSQL nothing is built
            skippable=True,
            freshness_policy=MARTS_FRESHNESS if mart else None,
            metadata={"dagster/table_name": f"{node['schema']}.{node['name']}", "dbt_unique_id": uid,
                      "dbt_materialized": node["config"].get("materialized", "")},
        ))
    checks = []
    for uid, test in sorted(manifest["nodes"].items()):
        attached = attached_model(manifest, test) if test["resource_type"] == "test" else None
        if attached in models:
            checks.append(AssetCheckSpec(
                name=test["name"], asset=node_key(manifest, attached),
                description=(test.get("description") or "").strip() or f"dbt test {test['name']}",
                metadata={"dbt_unique_id": uid},
            ))
    return specs, checks


def models_translator() -> Any:
    """dagster-dbt's translator of this project: the keys `node_key` gives, group `models`.
    Made at run time (it imports dbt-core)."""
    from dagster_dbt import DagsterDbtTranslator

    class ModelsTranslator(DagsterDbtTranslator):
        def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
            if dbt_resource_props["resource_type"] == "source":
                return super().get_asset_key(dbt_resource_props)  # meta.dagster.asset_key
            return model_key(dbt_resource_props["name"])

        def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str:
            return MODELS_GROUP

    return ModelsTranslator()


def models_dbt(target: str = "duckdb") -> Any:
    """dagster-dbt's `DbtCliResource` for this project, profiles.yml's output `target`, and this
    environment's dbt (whatever the PATH: a daemon's, a test's), made at run time (it imports
    dbt-core).

    Without two things it does before starting dbt that a build here does not use, which took
    2.5 s and 3 s of a 13 s step at 300 customers (docs/benchmark.md, "The models"): running
    `dbt --version` in a subprocess (the version is the installed dbt-core's: the executable is
    this environment's), and loading dbt's adapter and macros in this process, which dagster-dbt
    needs only for its own row counts and column metadata (`table_metadata` reads them from the
    warehouse instead).

    And dbt runs in this process, not in a subprocess (analytics_dagster/dbt_in_process.py: the
    2 s of importing dbt paid once per process), unless `ANALYTICS_DBT_IN_PROCESS=false`."""
    from importlib.metadata import version as installed

    from dagster_dbt import DbtCliResource
    from packaging import version

    from analytics_dagster.dbt_in_process import in_process, popen_in_process

    class ModelsDbt(DbtCliResource):
        @property
        def _cli_version(self) -> Any:
            return version.parse(installed("dbt-core"))

        def _initialize_dbt_core_adapter(self, args: Any) -> Any:
            return None

        def cli(self, args: Any, **kwargs: Any) -> Any:
            if not in_process():
                return super().cli(args, **kwargs)
            with popen_in_process():
                return super().cli(args, **kwargs)

    return ModelsDbt(project_dir=str(DBT_PROJECT_DIR), profiles_dir=str(DBT_PROJECT_DIR),
                     dbt_executable=str(Path(sys.executable).parent / "dbt"), target=target)


MANIFEST_DATA = load_manifest()
# the destination as configured when the code location loads (its kind on the models)
MODEL_SPECS, MODEL_CHECK_SPECS = build_specs(MANIFEST_DATA, destination_type())


@multi_asset(
    specs=MODEL_SPECS,
    check_specs=MODEL_CHECK_SPECS,
    name="analytics_models",
    can_subset=True,
    pool=DESTINATION_POOL,
    description="`dbt build` of the selected models and their tests, on the warehouse the sync writes.",
)
def analytics_models(context: AssetExecutionContext) -> Iterator[MaterializeResult | AssetCheckResult]:
    """`dbt build --select` the selected models and tests on the warehouse the sync writes: the
    DuckDB file the pipeline resolves, or PostgreSQL (`--target postgres`, connected with the
    destination's credentials); under the pipeline's lock, one writer at a time."""
    warehouse = destination_type()
    if warehouse not in WAREHOUSES:  # the raw tables synced, and nothing else to do: not a failure of the run
        context.log.warning(f"the dbt models run on DuckDB and PostgreSQL only, and the destination is "
                            f"{warehouse}: none built (docs/models.md, 'PostgreSQL')")
        return
    from analytics_dagster.source.pipeline import locked_pipeline

    env = dbt_environment(warehouse)
    names = {key: key.path[-1] for key in context.selected_asset_keys}
    checks = {(key.asset_key, key.name) for key in context.selected_asset_check_keys}
    select = sorted(names.values()) + sorted(name for key, name in checks if key not in names)
    # the target is profiles.yml's output of the warehouse's name
    dbt = models_dbt(target=warehouse)
    # The pipeline's lock (one writer at a time on this machine; dbt's target folder is beside
    # it) and its connections, which wait, bounded and saying who holds it, while another
    # process has the DuckDB file open: dbt's own open would fail at once (profiles.yml retries
    # it a few times, for a reader that opens the file between this wait and dbt's start).
    # dagster-dbt gives the dbt process this process's environment.
    with environment(env), locked_pipeline(report=context.log.warning) as pipeline:
        if warehouse == "duckdb":
            with pipeline.sql_client():
                pass
        invocation = dbt.cli(["build", "--select", " ".join(select)], manifest=MANIFEST, target_path=dbt_target(),
                             dagster_dbt_translator=models_translator(), raise_on_error=False)
        results = [r for r in (_result(event, names, checks) for event in invocation.stream()) if r is not None]
        built = [r.asset_key for r in results if isinstance(r, MaterializeResult)]
        tables, figures = table_metadata(pipeline, built), figure_metadata(pipeline, built)
        samples = failing_samples(pipeline, invocation, results)
        for result in results:
            if isinstance(result, MaterializeResult):
                result = MaterializeResult(asset_key=result.asset_key,
                                           metadata={**(result.metadata or {}), **tables[result.asset_key],
                                                     **figures.get(result.asset_key, {})})
            elif result.check_name in samples:
                result = AssetCheckResult(asset_key=result.asset_key, check_name=result.check_name,
                                          passed=result.passed, severity=result.severity,
                                          description=result.description,
                                          metadata={**result.metadata, "failing_sample": samples[result.check_name]})
            yield result
        error = invocation.get_error()  # the command, its exit code and the errors dbt logged
        if error is not None:
            raise Failure(description=str(error))


def dbt_environment(warehouse: str) -> dict[str, str]:
    """The environment profiles.yml reads for `warehouse`'s output: the DuckDB file the pipeline
    resolves, or the PostgreSQL destination's connection (its credentials, the dlt way) with the
    session's time zone UTC (libpq's PGTZ; days and months are UTC's). A Failure naming the
    setting when the credentials are missing or unreadable (dlt's message shows no value)."""
    from analytics_dagster.source.pipeline import duckdb_file, postgres_credentials

    # dbt's own log file (dbt.log in dbt_target()) at info, not dbt's default debug, unless
    # DBT_LOG_LEVEL_FILE (dbt's own setting) says otherwise: the debug lines (each statement
    # dbt sends, each connection opened and closed: 9 in 10 of the file's lines) cost 13% of a
    # 40-customer build's CPU (docs/models.md, "In Dagster")
    logs = {DBT_LOG_LEVEL_FILE: os.environ.get(DBT_LOG_LEVEL_FILE, "info")}
    if warehouse == "duckdb":
        return {**logs, DUCKDB_FILE_ENV: str(duckdb_file())}
    from dlt.common.configuration.exceptions import ConfigurationException

    try:
        credentials = postgres_credentials()
    except (ConfigurationException, KeyError) as error:  # dlt's missing-field error is a KeyError too
        raise Failure(description=f"the models' PostgreSQL connection: destination.postgres.credentials "
                                  f"(DESTINATION__POSTGRES__CREDENTIALS) cannot be resolved: {error}") from None
    env = {variable: str(getattr(credentials, field)) for field, variable in POSTGRES_ENV.items()}
    env[POSTGRES_PASSWORD_ENV] = credentials.password or ""
    env["PGTZ"] = "UTC"
    # PostgreSQL's JIT off for the models' sessions (libpq's PGOPTIONS, after the user's own):
    # the planner's estimates for unnested JSON (100 rows a call) cost each model's query past
    # jit_above_cost, and compiling it took 1.5 to 5 s on rows a plan runs in milliseconds (9 s
    # of a 40-customer build); docs/models.md, "PostgreSQL"
    env["PGOPTIONS"] = " ".join(filter(None, [os.environ.get("PGOPTIONS", "").strip(), "-c jit=off"]))
    # TLS as the connection string asks (dbt-postgres leaves libpq to read it from the environment)
    for key, variable in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT"),
                          ("sslcert", "PGSSLCERT"), ("sslkey", "PGSSLKEY")):
        if (credentials.query or {}).get(key):
            env[variable] = str(credentials.query[key])
    return {**logs, **env}


def dbt_target() -> Path:
    """dbt's target and log folder for this machine's builds: beside the pipeline's lock, which
    every build holds, so one build at a time writes it. Kept from one build to the next, it
    keeps dbt's partial parse: a build that finds the project and profile unchanged skips the
    parse, 1.5 s of dbt's 5 s at 300 customers (docs/benchmark.md, "The models")."""
    from dlt.common.pipeline import get_dlt_pipelines_dir

    return Path(get_dlt_pipelines_dir()) / ".analytics_dbt_target"


def table_metadata(pipeline: Any, keys: list[AssetKey]) -> dict[AssetKey, dict[str, Any]]:
    """Per model built: its rows and columns as the warehouse has them now, under Dagster's
    metadata conventions (`dagster/row_count`, `dagster/column_schema`, the columns described as
    the dbt project describes them). Read once dbt has exited, through the pipeline's SQL client."""
    described = {node["name"]: node.get("columns") or {} for node in MANIFEST_DATA["nodes"].values()
                 if node["resource_type"] == "model"}
    metadata = {}
    with pipeline.sql_client() as client:
        for key in keys:
            name = key.path[-1]
            rows = client.execute_sql(f"SELECT COUNT(*) FROM {MODELS_SCHEMA}.{name}")[0][0]
            columns = client.execute_sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", MODELS_SCHEMA, name)
            schema = TableSchema(columns=[
                TableColumn(name=column, type=str(kind).lower(),
                            description=(described[name].get(column) or {}).get("description") or None)
                for column, kind in columns])
            metadata[key] = {"dagster/row_count": int(rows), "dagster/column_schema": schema}
    return metadata


# The classes of mrr_movements, in the order a reader reads them (and mrr_monthly's columns of them)
MOVEMENTS = ("new", "expansion", "reactivation", "contraction", "churn")
# mrr_monthly's figures, as numbers on its materialization: its columns
MONTHLY_FIGURES = ("starting_mrr", *(f"{m}_mrr" for m in MOVEMENTS), "net_movement", "ending_mrr",
                   "net_revenue_retention")


def figure_metadata(pipeline: Any, keys: list[AssetKey]) -> dict[AssetKey, dict[str, Any]]:
    """The newest figures of the MRR models, as numbers on their materializations, so that the
    asset's page plots each over time (Dagster plots a numeric metadata key across
    materializations): for `mrr_movements`, the movements of the last whole day (UTC: yesterday,
    as of the build), per currency and class (`EUR new`, ..., 0 when none), with `movements_day`;
    for `mrr_monthly`, the newest month's row (this month, to today) per currency (`EUR
    starting_mrr`, ..., `EUR ending_mrr`, `EUR net_revenue_retention` when it started with MRR),
    with `month`. A currency counts when it had MRR that day or moved. Read from the warehouse
    once dbt has exited, as `table_metadata` is."""
    today = datetime.now(timezone.utc).date()
    names = {key.path[-1]: key for key in keys}
    metadata: dict[AssetKey, dict[str, Any]] = {}
    if not {"mrr_movements", "mrr_monthly"} & set(names):
        return metadata
    with pipeline.sql_client() as client:
        if "mrr_movements" in names:
            day = (today - timedelta(days=1)).isoformat()
            rows = client.execute_sql(
                f"SELECT currency_code, movement, sum(amount) FROM {MODELS_SCHEMA}.mrr_movements "
                "WHERE day = CAST(%s AS date) GROUP BY 1, 2", day)
            currencies = {r[0] for r in client.execute_sql(
                f"SELECT currency_code FROM {MODELS_SCHEMA}.mrr_daily WHERE day = CAST(%s AS date)", day)}
            moved = {(currency, movement): float(amount) for currency, movement, amount in rows}
            figures: dict[str, Any] = {"movements_day": day}
            for currency in sorted(currencies | {c for c, _ in moved}):
                figures.update({f"{currency} {m}": moved.get((currency, m), 0.0) for m in MOVEMENTS})
            metadata[names["mrr_movements"]] = figures
        if "mrr_monthly" in names:
            month = today.replace(day=1).isoformat()
            columns = ", ".join(MONTHLY_FIGURES)
            rows = client.execute_sql(f"SELECT currency_code, {columns} FROM {MODELS_SCHEMA}.mrr_monthly "
                                      "WHERE month = CAST(%s AS date) ORDER BY currency_code", month)
            figures = {"month": month}
            for currency, *values in rows:
                figures.update({f"{currency} {name}": float(value) for name, value in zip(MONTHLY_FIGURES, values)
                                if value is not None})
            metadata[names["mrr_monthly"]] = figures
    return metadata


FAILING_SAMPLE_ROWS = 5


def failing_samples(pipeline: Any, invocation: Any, results: list[Any]) -> dict[str, list[str]]:
    """Per test that failed or warned: the first rows its query returns (a relationship test's
    values with nothing to refer to), `FAILING_SAMPLE_ROWS` at most, each as text, so the
    check's metadata names a few of what dagster-dbt counts (`dagster_dbt/failed_row_count`).
    The query is the one dbt ran (run_results.json's `compiled_code`), read once dbt exits."""
    # a test that failed or warned returned rows; one that errored (its table missing, say) has
    # none to show, and its query would fail again
    failed = {r.metadata["unique_id"].value: r.check_name for r in results if isinstance(r, AssetCheckResult)
              and not r.passed and "unique_id" in r.metadata
              and getattr(r.metadata.get("status"), "value", None) in ("fail", "warn")}
    if not failed:
        return {}
    compiled = {r["unique_id"]: r.get("compiled_code") for r in invocation.get_artifact("run_results.json")["results"]}
    samples = {}
    with pipeline.sql_client() as client:
        for unique_id, check_name in failed.items():
            if not compiled.get(unique_id):
                continue
            try:
                rows = client.execute_sql(f"SELECT * FROM ({compiled[unique_id]}) AS failing LIMIT {FAILING_SAMPLE_ROWS}")
            except Exception as error:  # a sample is a courtesy: the test's own result stands without it
                samples[check_name] = [f"(no sample: {type(error).__name__}: {str(error)[:200]})"]
                continue
            samples[check_name] = [", ".join(str(v) for v in row) for row in rows]
    return samples


def _result(event: Any, names: Mapping[AssetKey, str], checks: set[tuple[AssetKey, str]]) -> Any:
    """dagster-dbt's event of a model or test as this step's result (None: not selected here)."""
    from dagster import AssetCheckEvaluation, AssetMaterialization

    if isinstance(event, AssetMaterialization) and event.asset_key in names:
        return MaterializeResult(asset_key=event.asset_key, metadata=dict(event.metadata))
    if isinstance(event, AssetCheckEvaluation) and (event.asset_key, event.check_name) in checks:
        return AssetCheckResult(asset_key=event.asset_key, check_name=event.check_name, passed=event.passed,
                                severity=event.severity, description=event.description, metadata=dict(event.metadata))
    return None
