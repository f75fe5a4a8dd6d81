"""dbt run in this process, behind dagster-dbt's `DbtCliInvocation` (issue #27).

dagster-dbt runs every dbt command as a subprocess: each `dbt build` pays about 2 s importing
dbt, and the models' step (`analytics_dagster/models.py`) runs one per build. Here the build runs
in the step's own process with dbt's documented programmatic invocation (`dbtRunner().invoke`,
https://docs.getdbt.com/reference/programmatic-invocations), so the import is paid once per
process, and everything else stays dagster-dbt's.

The seam. `DbtCliResource.cli` computes the command, the environment (`DBT_LOG_FORMAT=json`,
`DBT_TARGET_PATH`, `DBT_LOG_PATH`, `DBT_PROFILES_DIR`, `DBT_PROJECT_DIR`,
`DBT_SEND_ANONYMOUS_USAGE_STATS=false`, the indirect selection of checks, ...) and copies the
partial parse into the target; then `DbtCliInvocation.run` starts `subprocess.Popen(args,
stdout=PIPE, stderr=STDOUT, env=env, cwd=project_dir)`, and the invocation only ever reads the
process's `stdout` (one JSON line per dbt event), `wait()`, `returncode`, `args` and, when the
step is interrupted, `send_signal(SIGINT)`. `popen_in_process()` swaps, for the one call of
`cli`, the `subprocess` module that `dagster_dbt.core.dbt_cli_invocation` sees for one whose
`Popen` is `InProcessDbt`: the same arguments, a thread running `dbtRunner().invoke(args[1:])`
under that environment, and dbt's own stdout logger writing into a pipe that the invocation
reads as `process.stdout` (dbt's `capture_stdout_logs`: the very lines, filters and secret
scrubbing of `--log-format json`, written there instead of to sys.stdout, so the step's stdout
shows dbt's log once, as dagster-dbt re-emits it). dagster-dbt's parsing of events, its
materializations and check evaluations, `get_artifact`, `get_error` are then unchanged.

dbt's global state. dbt keeps its flags, event manager, invocation context and adapters in
module globals, which each invocation sets up again (`requires.preflight`: flags from the
command and the environment as it is then, `reset_adapters()`; `cleanup_connections()` at its
end): one invocation at a time in a process (`_LOCK`), each under its own environment (set for
the invocation, then restored: dbt reads `env_var()` and its DBT_* flags at its start), and
dbt-duckdb's DuckDB instance (kept in a class attribute across invocations) closed after each,
so that the file is not held open by this process between builds. Not done: the working
directory (the subprocess's is the project's; dbt is given it as DBT_PROJECT_DIR, and every
path passed here is absolute), and no `dbt --version` (models.py's resource asks none).

The parse, once per process. A build given a parsed manifest does not parse (dbt's documented
reuse of objects between invocations: `dbtRunner(manifest=...)`); dbt's own partial parse does
not help a new warehouse, as its state check hashes the profile's connection (a DuckDB file's
path) and rejects the saved parse of any other: every test's first build parsed the whole
project, 2 s. So a build here is handed a copy of the manifest a parse in this process made for
the same project files (their names, sizes and times), the same command but its selection, and
the same `DBT_*` and `ANALYTICS_*` environment, but for the paths that cannot change a parse:
the target and log folders, and a DuckDB file but for its name's stem (dbt-duckdb's database
name, which the manifest's nodes hold). Otherwise it parses first (`dbt parse`, under the same
command and environment), and keeps that manifest; a parse that fails leaves the build to parse
and report it as it would.

Cancellation. `send_signal` (dagster-dbt's SIGINT on an interrupted step) raises
KeyboardInterrupt in dbt's thread, as a Ctrl-C does dbt's main thread, and cancels the queries
dbt's adapters have open (what dbt's own KeyboardInterrupt handling does), so that dbt's thread,
waiting for its node threads, wakes: dbt writes run_results.json, reports the interrupted run
and returns; `wait(timeout)` raises `subprocess.TimeoutExpired` as the subprocess's does.

Off: `ANALYTICS_DBT_IN_PROCESS=false` runs dbt as dagster-dbt does, a subprocess.
"""

import contextlib
import ctypes
import os
from pathlib import Path
import signal
import subprocess
import threading
import types
from typing import Any, Iterator, Mapping, Sequence

IN_PROCESS_ENV = "ANALYTICS_DBT_IN_PROCESS"
_FALSE = ("0", "false", "no", "off")
# one dbt invocation at a time in this process: dbt's state is its modules'
_LOCK = threading.Lock()
# the swap of dagster-dbt's `subprocess`, one `cli` call at a time
_SWAP_LOCK = threading.Lock()


def in_process() -> bool:
    """Whether the models' dbt runs in this process (`ANALYTICS_DBT_IN_PROCESS`, default true)."""
    value = os.environ.get(IN_PROCESS_ENV, "true").strip().lower()
    if value in _FALSE:
        return False
    if value in ("1", "true", "yes", "on", ""):
        return True
    raise ValueError(f"{IN_PROCESS_ENV}={value!r}: expected true or false")


class InProcessDbt:
    """What `DbtCliInvocation` reads of a `subprocess.Popen`, for dbt run in a thread of this
    process: `args`, `stdout` (bytes, one line per event), `wait`, `poll`, `returncode` (dbt's
    own: 0 success, 1 a node failed, 2 an error stopped dbt), `send_signal`, `terminate`, `kill`."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Any = None,
                 stdout: Any = None, stderr: Any = None, **_: Any) -> None:
        self.args = list(args)
        self.env = dict(env if env is not None else os.environ)
        self.returncode: int | None = None
        self.exception: BaseException | None = None
        read, write = os.pipe()
        self.stdout = open(read, "rb")
        self._write = open(write, "w", encoding="utf-8", buffering=1)
        self._thread = threading.Thread(target=self._run, name="dbt-in-process", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from dbt.cli.main import dbtRunner
        from dbt_common.events.functions import capture_stdout_logs, stop_capture_stdout_logs

        code = 2
        try:
            with _LOCK, environment(self.env, exact=True):
                capture_stdout_logs(self._write)
                try:
                    result = dbtRunner(manifest=_parsed_manifest(self.args[1:], self.env)).invoke(self.args[1:])
                finally:
                    stop_capture_stdout_logs()
                    _close_duckdb()
            code = 0 if result.success else 2 if result.exception is not None else 1
            self.exception = result.exception
            if result.exception is not None:  # as a subprocess's stderr would say it
                self._write.write(f"dbt: {type(result.exception).__name__}: {result.exception}\n")
        except BaseException as error:  # noqa: BLE001 (a KeyboardInterrupt before dbt's own handling)
            self.exception = error
            with contextlib.suppress(Exception):
                self._write.write(f"dbt: {type(error).__name__}: {error}\n")
        finally:
            self.returncode = code
            with contextlib.suppress(Exception):
                self._write.close()

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired(self.args, timeout)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """SIGINT, SIGTERM, SIGKILL alike: dbt interrupted (see the module's docstring)."""
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt))
        _cancel_open_queries()

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> "InProcessDbt":
        return self

    def __exit__(self, *_: Any) -> None:
        self.stdout.close()
        self.wait()


@contextlib.contextmanager
def popen_in_process() -> Iterator[None]:
    """dagster-dbt's `DbtCliInvocation.run` starts `InProcessDbt` instead of a subprocess while
    the block runs (the module's docstring says why this seam)."""
    from dagster_dbt.core import dbt_cli_invocation

    in_process_subprocess = types.SimpleNamespace(**{name: getattr(subprocess, name) for name in dir(subprocess)
                                                     if not name.startswith("__")})
    in_process_subprocess.Popen = InProcessDbt
    with _SWAP_LOCK:
        previous = dbt_cli_invocation.subprocess
        dbt_cli_invocation.subprocess = in_process_subprocess
        try:
            yield
        finally:
            dbt_cli_invocation.subprocess = previous


@contextlib.contextmanager
def environment(values: Mapping[str, str], *, exact: bool = False) -> Iterator[None]:
    """`values` set in this process's environment while the block runs, then restored; `exact`:
    the environment is `values` alone (what a subprocess given them as its environment sees),
    every other variable unset meanwhile."""
    changed = {name: os.environ.get(name) for name, value in values.items() if os.environ.get(name) != value}
    if exact:
        changed.update({name: os.environ[name] for name in os.environ if name not in values})
    for name in changed:
        if name in values:
            os.environ[name] = values[name]
        else:
            del os.environ[name]
    try:
        yield
    finally:
        for name, value in changed.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# the manifests this process parsed, by what a parse depends on (`_parse_inputs`); the last few
_MANIFESTS: dict[tuple, Any] = {}
_MANIFESTS_KEPT = 4
# the environment a parse does not depend on, and the DuckDB file's, of which only the stem does
_NOT_PARSED = ("DBT_TARGET_PATH", "DBT_LOG_PATH")
_DUCKDB_FILE_ENV = "ANALYTICS_DUCKDB_FILE"


def _parse_inputs(args: Sequence[str], env: Mapping[str, str]) -> tuple:
    """What a parse of the project depends on (the module's docstring says which and why)."""
    variables = {name: value for name, value in env.items()
                 if name.startswith(("DBT_", "ANALYTICS_")) and name not in _NOT_PARSED}
    if _DUCKDB_FILE_ENV in variables:
        variables[_DUCKDB_FILE_ENV] = Path(variables[_DUCKDB_FILE_ENV]).stem
    project = Path(env.get("DBT_PROJECT_DIR") or ".")
    files = sorted((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in project.rglob("*")
                   if path.is_file() and not {"target", "logs"} & set(path.relative_to(project).parts))
    return tuple(_without_selection(args)), tuple(sorted(variables.items())), tuple(files)


def _without_selection(args: Sequence[str]) -> list[str]:
    """The command's options but its selection (`--select` and its value), its subcommand dropped."""
    options = list(args[1:])
    if "--select" in options:
        at = options.index("--select")
        del options[at:at + 2]
    return options


def _parsed_manifest(args: Sequence[str], env: Mapping[str, str]) -> Any:
    """A copy of this process's manifest for `args` under `env` (the environment is `env` now),
    parsed now if there is none; None when the parse fails (the build then parses, and says why)."""
    key = _parse_inputs(args, env)
    if key not in _MANIFESTS:
        manifest = _parse(_without_selection(args))
        if manifest is None:
            return None
        while len(_MANIFESTS) >= _MANIFESTS_KEPT:
            del _MANIFESTS[next(iter(_MANIFESTS))]
        _MANIFESTS[key] = manifest
    return _MANIFESTS[key].deepcopy()


def _parse(options: Sequence[str]) -> Any:
    """`dbt parse` with the build's `options`, in this process: its manifest, or None if it failed."""
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(["parse", "--quiet", *options])
    return result.result if result.success else None


def _close_duckdb() -> None:
    """dbt-duckdb keeps its DuckDB instance in a class attribute from one invocation to the next:
    closed, so this process does not hold the file between builds."""
    import sys

    connections = sys.modules.get("dbt.adapters.duckdb.connections")
    if connections is None:
        return
    manager = connections.DuckDBConnectionManager
    with manager._LOCK:
        env, manager._ENV = manager._ENV, None
    if env is not None:
        with contextlib.suppress(Exception):
            env.close()


def _cancel_open_queries() -> None:
    """The queries dbt's adapters are running, canceled (DuckDB's interrupt, PostgreSQL's
    pg_cancel_backend), as dbt does on a Ctrl-C."""
    from dbt.adapters.factory import FACTORY

    with FACTORY.lock:
        adapters = list(FACTORY.adapters.values())
    for adapter in adapters:
        with contextlib.suppress(Exception):
            if adapter.is_cancelable():
                adapter.cancel_open_connections()


__all__ = ["IN_PROCESS_ENV", "InProcessDbt", "in_process", "popen_in_process"]
