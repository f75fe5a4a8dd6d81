"""DuckDB connections that wait while another process holds the warehouse file (dlt only).

DuckDB lets one process at a time open a file for writing, and none while another process has it
open, even read-only: a notebook or a BI tool left connected makes `duckdb.connect` fail at once
with `IO Error: Could not set lock on file ... Conflicting lock is held in <program> (PID n)`.
Every connection dlt opens to the warehouse (the state restored before a run, the load, the SQL
client of the checks) comes from one place, `DuckDbConnectionPool.borrow_conn` of the
destination's credentials. `LockWaitingDuckDbCredentials` gives dlt a pool whose `borrow_conn`
retries on that error alone, reporting who holds the file at most every
`REPORT_EVERY_SECONDS`, until `lock_wait_seconds` have passed; then it raises `WarehouseLocked`,
which names the holder and says how to read without blocking syncs.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable, Dict, List, Optional

from dlt.common.configuration import configspec, resolve_configuration
from dlt.common.configuration.specs.base_configuration import NotResolved
from dlt.common.typing import Annotated
from dlt.destinations.impl.duckdb.configuration import DuckDbConnectionPool, DuckDbCredentials

LOG = logging.getLogger("analytics_dagster.warehouse")
DEFAULT_LOCK_WAIT_SECONDS = 300.0
REPORT_EVERY_SECONDS = 5.0
RETRY_EVERY_SECONDS = 0.2  # a failed attempt costs DuckDB an open and an fcntl lock: cheap
HOW_TO_READ = (
    "To read the warehouse without blocking syncs: connect read-only, query, and close the "
    "connection at once (a connection left open, in a notebook or a BI tool, blocks every sync); "
    "or query a snapshot, a copy made with DuckDB's COPY FROM DATABASE; or use PostgreSQL as the "
    "warehouse for many concurrent readers (docs/design.md, 'Reading the warehouse while it syncs')."
)
_HELD = re.compile(r"Could not set lock on file .*Conflicting lock is held in (?P<program>.*?) \(PID (?P<pid>\d+)\)", re.S)


class WarehouseLocked(Exception):
    """The warehouse file stayed held by another process for longer than the wait allowed."""

    def __init__(self, path: str, program: str, pid: int, waited: float, bound: float) -> None:
        self.path, self.program, self.pid, self.waited = path, program, pid, waited
        super().__init__(
            f"the DuckDB warehouse {path} is held by another process, {program} (PID {pid}): "
            f"waited {waited:.0f} s for it (destination.duckdb.lock_wait_seconds = {bound:g}). "
            f"DuckDB lets no process write a file that another process has open, even read-only. "
            f"Close that connection (or end PID {pid}), then run again. {HOW_TO_READ}"
        )


def lock_holder(error: BaseException) -> Optional[tuple[str, int]]:
    """The program and PID of the process holding the file, if `error` is DuckDB's lock error."""
    match = _HELD.search(str(error))
    return (match["program"], int(match["pid"])) if match else None


class LockWaitingPool(DuckDbConnectionPool):
    """dlt's pool, with `borrow_conn` waiting (bounded) while another process holds the file.

    Only opening the file can meet the lock: a borrow that clones the pool's open connection
    does not. A failed open leaves the pool as it was (no borrow counted), so it is retried as is.
    """

    credentials: "LockWaitingDuckDbCredentials"

    def borrow_conn(
        self,
        global_config: Optional[Dict[str, Any]] = None,
        local_config: Optional[Dict[str, Any]] = None,
        pragmas: Optional[List[str]] = None,
    ) -> Any:
        import duckdb

        started: Optional[float] = None
        reported = float("-inf")
        while True:
            try:
                return super().borrow_conn(global_config, local_config, pragmas)
            except duckdb.IOException as error:
                holder = lock_holder(error)
                if holder is None:
                    raise
                now = time.monotonic()
                started = now if started is None else started
                waited, bound = now - started, float(self.credentials.lock_wait_seconds)
                if waited >= bound:
                    raise WarehouseLocked(self.credentials.database, *holder, waited, bound) from error
                if now - reported >= REPORT_EVERY_SECONDS:
                    reported = now
                    self.credentials.say(
                        f"the DuckDB warehouse {self.credentials.database} is held by {holder[0]} "
                        f"(PID {holder[1]}): waiting for it, {waited:.0f} s of up to {bound:g} s "
                        f"(a connection left open, in a notebook or a BI tool, blocks syncs)"
                    )
                time.sleep(min(RETRY_EVERY_SECONDS, bound - waited))


@configspec(init=False)
class LockWaitingDuckDbCredentials(DuckDbCredentials):
    """dlt's DuckDB credentials whose connections wait for a file held by another process."""

    lock_wait_seconds: Annotated[float, NotResolved()] = DEFAULT_LOCK_WAIT_SECONDS
    """how long a connection waits for the file before the run fails"""
    report: Annotated[Optional[Callable[[str], None]], NotResolved()] = None
    """where the waiting lines go (a Dagster context's log); None: the logger `analytics_dagster.warehouse`"""

    def on_resolved(self) -> None:
        super().on_resolved()
        self.conn_pool = LockWaitingPool(self)

    def say(self, line: str) -> None:
        if self.report is not None:
            self.report(line)
        else:
            LOG.warning(line)


def waiting_credentials(
    path: str, *, lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
    report: Optional[Callable[[str], None]] = None,
) -> LockWaitingDuckDbCredentials:
    """Credentials of the DuckDB file `path`, resolved as dlt would resolve the destination's.

    Resolved here, under `destination.duckdb`, so that the rest of the credentials' settings
    (`global_config`, ...) still come from dlt's configuration: dlt takes a resolved
    credentials instance as it is, where it would rebuild an unresolved one as its own class.
    """
    credentials = LockWaitingDuckDbCredentials()
    credentials.lock_wait_seconds = lock_wait_seconds
    credentials.report = report
    return resolve_configuration(credentials, sections=("destination", "duckdb"), explicit_value=path)
