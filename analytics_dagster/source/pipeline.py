"""The dlt pipeline that lands the source in the warehouse (dlt only, no Dagster).

The destination is dlt's own configuration: DuckDB unless `DESTINATION_TYPE` (or
`destination_type` in `.dlt/config.toml`) names another, with its credentials in the usual
place (`DESTINATION__DUCKDB__CREDENTIALS`, `DESTINATION__POSTGRES__CREDENTIALS`, ...). A DuckDB
file held by another process (a notebook, a BI tool) is waited for, up to
`destination.duckdb.lock_wait_seconds`, by every connection the pipeline opens (`duckdb_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import dlt
from dlt.common.configuration.exceptions import ConfigFieldMissingException
from dlt.common.pipeline import get_dlt_pipelines_dir
from dlt.destinations.exceptions import DatabaseUndefinedRelation

from analytics_dagster.source.duckdb_lock import DEFAULT_LOCK_WAIT_SECONDS, waiting_credentials
from analytics_dagster.source.resources import RESOURCES_BY_NAME

PIPELINE_NAME = "analytics_sync"
SOURCE_NAME = "analytics"  # the dlt source's name: where its state lives
DATASET_NAME = "analytics"
DEFAULT_DUCKDB_FILE = "data/warehouse.duckdb"  # not analytics.duckdb: named like the dataset, references are ambiguous
# DuckDB's memory limit for a run's connections (its default: 80% of the machine's memory). Its
# buffer pool keeps the blocks a load touches up to that limit, and that, not the rows in
# flight, was what grew with the account: peak RSS of a full sync at 10,000 against 1,000
# customers 2.12x without a limit, 1.28x with 256 MB (docs/benchmark.md). DuckDB spills what
# does not fit to a temporary directory beside the file.
DEFAULT_DUCKDB_MEMORY_LIMIT = "256MB"
# But a load of very wide rows needs more (seen: 300 customers with 200 KB of custom_data each,
# one field of 40 MB): a load that runs out of it is loaded again, from the package it left,
# with the limit raised step by step ("": DuckDB's default), so the run goes on and says so
# (`load_with_more_memory`). A limit the user set is kept.
MEMORY_LIMIT_STEPS = ("1GB", "4GB", "")


def make_pipeline(report: Optional[Callable[[str], None]] = None, memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT,
                  ) -> dlt.Pipeline:
    """The pipeline, with its destination resolved from dlt's configuration at call time.

    `report`: where a connection waiting for a DuckDB file held by another process says so
    (at most every few seconds); default, the logger `analytics_dagster.warehouse`.
    `memory_limit`: DuckDB's, unless the credentials' own `global_config` sets one ("": DuckDB's
    default).
    """
    target = duckdb_file()
    if target is not None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        credentials = waiting_credentials(
            target, lock_wait_seconds=_setting("destination.duckdb.lock_wait_seconds", float, DEFAULT_LOCK_WAIT_SECONDS),
            report=report)
        # (a memory_limit of the credentials' own global_config wins)
        credentials.global_config = {**({"memory_limit": memory_limit} if memory_limit else {}),
                                     **(credentials.global_config or {})}
        dest = dlt.destinations.duckdb(credentials=credentials)
        _capabilities_configured_once(dest)
    else:
        dest = dlt.config.get("destination_type", str)
    pipeline = dlt.pipeline(pipeline_name=PIPELINE_NAME, destination=dest, dataset_name=DATASET_NAME)
    if target is not None:
        for step in _STEPS_ON_ONE_CONNECTION:
            _on_one_connection(pipeline, step)
    return pipeline


# The steps of a run that each open the DuckDB file once (`_on_one_connection`): restoring the
# state and schemas from the destination (at a run's start, and wherever a run plans from what
# the destination committed), and a load.
_STEPS_ON_ONE_CONNECTION = ("_sync_destination", "load")


def _on_one_connection(pipeline: dlt.Pipeline, step: str) -> None:
    """Each call of `pipeline`'s `step` (DuckDB) opens the file once and checkpoints it once.

    dlt's DuckDB pool opens the file at a borrow when no connection is out and closes it when
    the last one is returned. Within a step, each of dlt's clients borrows and returns its own:
    restoring from the destination opened the file twice (state, then schemas), a load once or
    more (its schema, its jobs, its state), and each close is a full checkpoint
    (`enable_checkpoint_on_shutdown`). Now the step holds one connection of the pool, borrowed
    as dlt's own SQL client borrows it, from its start to its end, and its clients get clones
    of it. Between steps the file is closed as before: while a run extracts (hours of paced
    requests on a large account), readers may open it.
    """
    run_step = getattr(pipeline, step)

    @functools.wraps(run_step)
    def on_one_connection(*args: Any, **kwargs: Any) -> Any:
        with pipeline.sql_client():
            return run_step(*args, **kwargs)

    setattr(pipeline, step, on_one_connection)


def _capabilities_configured_once(destination: Any) -> None:
    """`destination`'s capabilities resolve its configuration once, not at each lookup.

    dlt looks up a destination's capabilities at each step and for each of its clients, and each
    lookup resolves the destination's configuration from dlt's settings again (partially:
    `Destination.capabilities`) only to adjust the capabilities to it, which DuckDB's do not
    use (its factory keeps dlt's adjustment to the naming convention alone): 26 resolutions in
    a small first sync, about 6% of the test suite's CPU in a profile of the whole suite. The
    first serves the rest of the pipeline's life (one pipeline per run and per step:
    `make_pipeline`). A client's own configuration (`Destination.client`) is resolved in full,
    each time, as before.
    """
    configuration = destination.configuration
    partial: list[Any] = []

    @functools.wraps(configuration)
    def configured_once(initial_config: Any, accept_partial: bool = False) -> Any:
        if not accept_partial:
            return configuration(initial_config)
        if not partial:
            partial.append(configuration(initial_config, accept_partial=True))
        return partial[0]

    destination.configuration = configured_once


def load_with_more_memory(pipeline: dlt.Pipeline, error: BaseException,
                          report: Callable[[str], None]) -> Optional[dlt.Pipeline]:
    """After a load of `pipeline` failed on DuckDB's memory limit, load the package it left
    again, with the limit raised by `MEMORY_LIMIT_STEPS`: the pipeline that loaded it. None when
    `error` is no such failure, nothing is pending, or the load is not DuckDB's (`error` stands).
    When the user set the limit, `OutOfDuckDBMemory` names it and the memory."""
    if not pipeline.has_pending_data or pipeline.destination is None or destination_type(pipeline) != "duckdb":
        return None
    memory = _ran_out_of_memory(pipeline, error)
    if memory is None:
        return None
    if _own_memory_limit():
        raise OutOfDuckDBMemory(
            f"the load ran out of DuckDB's memory, under the memory_limit that "
            f"destination.duckdb.credentials.global_config sets (raise it, or remove it to let "
            f"the run raise its own step by step): {memory}") from error
    for limit in MEMORY_LIMIT_STEPS:
        report(f"the load ran out of DuckDB's memory; loading it again with memory_limit "
               f"{limit or 'DuckDB default (80% of RAM)'} (destination.duckdb.credentials.global_config sets it)")
        retry = make_pipeline(report=report, memory_limit=limit)
        try:
            retry.load()
            return retry
        except Exception as again:  # noqa: BLE001 (re-raised unless it is the memory again)
            if not limit or _ran_out_of_memory(retry, again) is None:
                raise
    return None


class OutOfDuckDBMemory(Exception):
    """A load ran out of the DuckDB memory limit the user set."""


# What DuckDB says when memory runs out: `Out of Memory Error: failed to allocate data of size
# 64.0 MiB (180.2 MiB/244.1 MiB used)`, or at a commit `TransactionContext Error: Failed to
# commit: could not allocate block of size 1.9 KiB (254.3 MiB/244.1 MiB used)` (or "failed to
# pin block"): the memory used against the limit, in parentheses, is in each. After a failed
# commit DuckDB may invalidate the database, and every later statement of the load, dlt's
# retries included, fails with `FatalException: database has been invalidated`, which names no
# memory: the load's own record of its tries does.
_MEMORY_SIGN = re.compile(r"Out of Memory|\([\d.]+ [KMGT]?i?B/[\d.]+ [KMGT]?i?B used\)")


def _ran_out_of_memory(pipeline: dlt.Pipeline, error: BaseException) -> Optional[str]:
    """DuckDB's line saying a load of `pipeline` ran out of memory, in `error` (or what caused it)
    or else in its pending package's record of the tries; None when neither says so."""
    return _out_of_memory(error) or _memory_in_package(pipeline)


def _out_of_memory(error: BaseException) -> Optional[str]:
    """DuckDB's line saying memory ran out, in `error` or what caused it; None when none does."""
    seen: Optional[BaseException] = error
    while seen is not None:
        line = _memory_line(str(seen))
        if line:
            return line
        seen = seen.__cause__ or seen.__context__
    return None


def _memory_line(text: str) -> Optional[str]:
    return next((line.strip() for line in text.splitlines() if _MEMORY_SIGN.search(line)), None)


def _memory_in_package(pipeline: dlt.Pipeline) -> Optional[str]:
    """DuckDB's line saying memory ran out, in what dlt recorded of the failed tries of the jobs
    of `pipeline`'s pending load packages (a package's `.exceptions` folder, one file a try)."""
    packages = pipeline._get_load_storage().normalized_packages  # noqa: SLF001 (no public reader of the tries)
    for load_id in pipeline.list_normalized_load_packages():
        folder = Path(packages.storage.make_full_path(packages.get_package_path(load_id))) / ".exceptions"
        for record in sorted(folder.glob("*.exception")) if folder.is_dir() else ():
            line = _memory_line(record.read_text(errors="replace"))
            if line:
                return line
    return None


def _own_memory_limit() -> bool:
    """Whether the user's DuckDB settings (`destination.duckdb.credentials.global_config`) set one."""
    credentials = waiting_credentials(_duckdb_file())
    return "memory_limit" in (credentials.global_config or {})


def resource_states(pipeline: dlt.Pipeline, *, from_destination: bool = True) -> dict[str, Any]:
    """The source's resource states (cursors) as the destination last committed them.

    The local working directory is dropped first, as dagster-dlt does before every run: after a
    run killed mid-load it holds a state whose cursors moved with rows that never landed, and
    a plan made from it would skip those rows. What the destination committed is the truth.
    `from_destination=False` reads the local state as it is: right after a load this process
    made, it is what the destination committed.
    """
    if from_destination:
        pipeline.drop()
        pipeline.sync_destination()
    return dict(pipeline.state.get("sources", {}).get(SOURCE_NAME, {}).get("resources", {}))


def definition_pipeline() -> dlt.Pipeline:
    """A pipeline object for building asset definitions: reads no setting, opens nothing.

    Only its names are used. It is made in a scratch directory, removed at once: a pipeline
    made where runs keep theirs would, while no state is there yet (the first run, or a run
    between dropping its working folder and restoring it from the destination), wipe that
    folder, and every process that loads the code location makes one (seen: two
    `dagster asset materialize` started together, one failing on the other's folder).
    """
    with tempfile.TemporaryDirectory(prefix="analytics_definitions_") as scratch:
        return dlt.pipeline(pipeline_name=PIPELINE_NAME, destination="duckdb", dataset_name=DATASET_NAME,
                            pipelines_dir=scratch)


def _duckdb_file() -> str:
    """The DuckDB file as an absolute path, relative ones taken from the working directory.

    dlt would resolve a relative path against its own local dir, which is not always the
    working directory (seen: two steps of one run opening two different files).
    """
    return os.path.abspath(_setting("destination.duckdb.credentials", str, None) or DEFAULT_DUCKDB_FILE)


def _setting(key: str, kind: type, default: Any) -> Any:
    """A setting from dlt's configuration, read now (never at import), or `default`."""
    try:
        value = dlt.config.get(key, kind)
    except ConfigFieldMissingException:
        value = None
    return default if value is None else value


# Chosen per destination: into DuckDB parquet is 5 to 20x faster than the default insert_values
# (measured: 80k rows loaded in 21 s against 0.9 s); PostgreSQL gets csv, loaded with COPY (its parquet path needs an ADBC
# driver; csv and insert_values took the same 5.7 s at 300 customers here). Any other
# destination gets its own preferred format.
_LOADER_FILE_FORMATS = {"duckdb": "parquet", "postgres": "csv"}


def loader_file_format(pipeline: dlt.Pipeline) -> Optional[str]:
    """The loader file format for the pipeline's destination (None: the destination's default)."""
    return _LOADER_FILE_FORMATS.get(destination_type(pipeline))


@contextlib.contextmanager
def locked_pipeline(report: Optional[Callable[[str], None]] = None) -> Iterator[dlt.Pipeline]:
    """The pipeline (`make_pipeline`), made and used under this machine's lock on it: one run
    at a time, the next one waits.

    DuckDB allows one writer per file and a dlt pipeline's working directory one run; two
    `dagster asset materialize` processes would otherwise collide. The pipeline is made under
    the lock, too: made while another run has dropped its working folder and not yet restored
    it, dlt would find no state there and wipe the folder under that run.
    """
    with warehouse_lock():
        yield make_pipeline(report=report)


@contextlib.contextmanager
def warehouse_lock() -> Iterator[None]:
    """This machine's lock on the pipeline and its warehouse, held by every writer (a sync, the
    checks, a dbt build): the next one waits."""
    lock_dir = Path(get_dlt_pipelines_dir())
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f".{PIPELINE_NAME}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def destination_type(pipeline: Optional[dlt.Pipeline] = None) -> str:
    """The destination's type without a module path ("dlt.destinations.postgres" is "postgres"):
    `pipeline`'s, or as dlt's configuration names it now (`DESTINATION_TYPE`, or
    `destination_type` in `.dlt/config.toml`; unset: "duckdb")."""
    name = pipeline.destination.destination_type if pipeline is not None else _setting("destination_type", str, None)
    return (name or "duckdb").split(".")[-1]


def duckdb_file() -> Optional[str]:
    """The warehouse's DuckDB file, absolute, as a run resolves it; None when the destination
    is not DuckDB."""
    return _duckdb_file() if destination_type() == "duckdb" else None


def postgres_credentials() -> Any:
    """The PostgreSQL destination's credentials (dlt's `PostgresCredentials`: host, port,
    username, password, database, query), resolved as the pipeline's load resolves them:
    `destination.postgres.credentials`, a connection string or its fields, from the
    environment, `.dlt/secrets.toml` or `.dlt/config.toml`. Raises dlt's configuration error
    (which names the missing fields and where they were looked for, and never shows a value)."""
    from dlt.destinations import postgres

    factory = postgres()
    return factory.configuration(factory.spec()._bind_dataset_name(dataset_name=DATASET_NAME)).credentials


def table_stats(
    pipeline: dlt.Pipeline, tables: Iterable[str], *, keys: bool = True
) -> dict[str, dict[str, object]]:
    """Per table: rows and, with `keys`, null primary keys and up to 10 duplicated ones.

    Goes through dlt's SQL client, so it works on whichever destination is configured. A table
    no load has made yet (its listing was skipped: the key may not read it) has no rows.
    """
    stats: dict[str, dict[str, object]] = {}
    with pipeline.sql_client() as client:
        for table in tables:
            try:
                stats[table] = _table_stats(client, table, keys)
            except DatabaseUndefinedRelation:
                stats[table] = {"rows": 0} if not keys else {"rows": 0, "null_keys": 0, "duplicate_keys": {}}
    return stats


def _table_stats(client: Any, table: str, keys: bool) -> dict[str, object]:
    """`table_stats` of one table (raises DatabaseUndefinedRelation when it does not exist)."""
    qualified = client.make_qualified_table_name(table)
    if not keys:
        return {"rows": int(client.execute_sql(f"SELECT COUNT(*) FROM {qualified}")[0][0])}
    column = client.escape_column_name(RESOURCES_BY_NAME[table].primary_key)
    rows, null_keys = client.execute_sql(f"SELECT COUNT(*), COUNT(*) - COUNT({column}) FROM {qualified}")[0]
    duplicates = client.execute_sql(
        f"SELECT {column}, COUNT(*) FROM {qualified} WHERE {column} IS NOT NULL "
        f"GROUP BY {column} HAVING COUNT(*) > 1 ORDER BY COUNT(*) DESC, {column} LIMIT 10"
    )
    return {"rows": int(rows), "null_keys": int(null_keys), "duplicate_keys": {str(k): int(n) for k, n in duplicates}}
