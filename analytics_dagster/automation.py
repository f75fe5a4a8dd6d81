"""Jobs, schedules and sensors: when the sync runs, and what watches it."""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Optional

import dlt
from requests import HTTPError
from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterEventType,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    run_failure_sensor,
    sensor,
)

from analytics_dagster.assets import GROUP, METRICS_GROUP, asset_key
from analytics_dagster.models import MODELS_GROUP, analytics_models
from analytics_dagster.source import configured_api_root
from analytics_dagster.rfc3339 import NS_PER_SECOND
from analytics_dagster.source.events import (
    DEFAULT_VISIBILITY_LAG_SECONDS,
    EVENTS_PAGE_SIZE,
    EVENTS_PATH,
    api_now_ns,
    event_client,
    keyed,
    window_floor,
)
from analytics_dagster.source.permissions import is_forbidden
from analytics_dagster.source.resources import RESOURCES_BY_NAME, STREAM_TABLES, table_of_event


sync_all_job = define_asset_job(
    "sync_all",
    selection=AssetSelection.groups(GROUP, METRICS_GROUP, MODELS_GROUP),
    description=(
        "Sync every resource of the API into the warehouse, then check primary keys, then build "
        "the dbt models and run their tests (a model runs only if every raw table it reads was "
        "synced and passed its check)."
    ),
)
sync_fast_moving_job = define_asset_job(
    "sync_fast_moving",
    selection=AssetSelection.assets(*[asset_key(n) for n in STREAM_TABLES]),
    description=(
        "Sync the event stream and every table it keeps (" + ", ".join(STREAM_TABLES) + "): in events "
        "mode one read of the stream, a request per 200 changes."
    ),
)

full_refresh_job = define_asset_job(
    "full_refresh",
    selection=AssetSelection.groups(GROUP, METRICS_GROUP, MODELS_GROUP),
    config={"ops": {"analytics_api": {"config": {"full_refresh": True}}}},
    description=(
        "Forget the incremental state: read every resource whole and write every row (merged on "
        "its key), then build the models. The safety net for whatever incremental sync cannot see."
    ),
)

def _schedule(name: str, job: Any, cron: str, description: str) -> ScheduleDefinition:
    # schedules ship stopped: a user turns on what fits their API budget
    return ScheduleDefinition(
        name=name, job=job, cron_schedule=cron, description=description,
        default_status=DefaultScheduleStatus.STOPPED,
    )


hourly_fast_moving = _schedule(
    "hourly_fast_moving", sync_fast_moving_job, "0 * * * *",
    "Every hour: the event stream and every table it keeps (sync_fast_moving).",
)
daily_all = _schedule("daily_all", sync_all_job, "30 2 * * *", "Every day at 02:30: every resource.")
weekly_full_refresh = _schedule(
    "weekly_full_refresh", full_refresh_job, "0 4 * * 0",
    "Every Sunday at 04:00: a full refresh of every resource.",
)

# The models follow the raw tables by their automation condition (models.py, MODELS_AUTOMATION);
# this sensor evaluates it. On by default: it makes no API request, and builds a model only once
# a raw table it reads was synced and the tables it reads passed their checks.
models_automation = AutomationConditionSensorDefinition(
    "models_automation",
    target=AssetSelection.groups(MODELS_GROUP),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description=(
        "Builds the dbt models (group models) after a raw table they read was synced by any run "
        "(the events sensor's, a schedule's, a launch), once the tables they read passed their "
        "blocking checks and none is being synced: never on a failed sync's stale data."
    ),
)


def models_reading(tables: list[str]) -> list[AssetKey]:
    """The models that read any of `tables`, directly or through another model, in the
    manifest's order (dbt's own order within a run comes from the graph)."""
    deps = {spec.key: {dep.asset_key for dep in spec.deps} for spec in analytics_models.specs}
    reached = {asset_key(t) for t in tables}
    while True:
        more = {key for key, read in deps.items() if key not in reached and read & reached}
        if not more:
            return [key for key in deps if key in reached]
        reached |= more


def assets_for_events(events: list[dict]) -> list[str]:
    """The tables a batch of events touches, `events` included, in a stable order (the sensor
    logs them; the run it requests syncs every table of `STREAM_TABLES`, in listing mode these:
    `_selection`)."""
    touched = {"events"}
    for event in events:
        table = table_of_event(event.get("event_type"))
        if table:
            touched.add(table)
    return sorted(touched)


SENSOR_NAME = "api_events_sensor"
# the tags the sensor daemon puts on a run it launches for a sensor's run request
# (dagster._core.storage.tags RUN_KEY_TAG, SENSOR_NAME_TAG): how the sensor finds its run again
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
# After the n-th run in a row failed, the next run is requested RETRY_DELAYS[n-1] seconds after
# it ended (the last delay for any later one): at the next tick, then 5 min, 15 min, 1 h. With no
# new event, a failed run is run again MAX_RETRIES times at most; then the sensor waits for new
# events (still at most one run an hour while runs keep failing) or a schedule.
RETRY_DELAYS = (0, 300, 900, 3600)
MAX_RETRIES = 4
_IN_FLIGHT = {
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.MANAGED,
    DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING,
}


def _now() -> float:
    return time.time()


@dataclass
class EventsSensorCursor:
    """What `api_events_sensor` keeps between ticks, as JSON in its cursor.

    Before runs were followed the cursor was the newest event id alone (or "" for an empty
    stream); `decode` reads that too.
    """

    event_id: Optional[str] = None  # the newest event seen (None: the stream was empty)
    run_key: Optional[str] = None  # the run requested last, until it is seen finished
    owed: bool = False  # a run is owed: events came after the last run requested, or it failed
    # the newest id new to a tick since the last run requested (a late event's is older than
    # `event_id`): it names the next run's key, which a late event seen while a run is in flight
    # would otherwise share with that run (the daemon launches no key twice)
    newest_new: Optional[str] = None
    # the tables of the stream its events touched since the last run requested, and those of a run
    # that failed or was canceled: what a run takes in listing mode (`_selection`)
    tables: list[str] = field(default_factory=list)
    failures: int = 0  # the runs requested that failed in a row (0 after a success)
    # when the last of them ended, or the last run that failed in its models or was canceled
    # (seconds since the epoch)
    failed_at: Optional[float] = None
    # the runs requested that failed in their models step alone, in a row (their raw tables were
    # synced): retried once, and no backoff for the next changes (`_follow_run`)
    models_failed: int = 0
    # the runs requested that were canceled, in a row: the first is run again once, a canceled
    # retry is not (`_follow_run`)
    canceled: int = 0
    # the last read of the late-event window (the API's clock, seconds since the epoch; a read in
    # chunks: its first) and the ids seen within the lag before it, folded per stretch of their
    # instant into a count and a digest ({stretch: [count, digest]}, `_fold`): the window's next
    # read starts there, so an event that becomes visible late is seen (`_new_events`)
    polled_at: Optional[float] = None
    window: dict[str, list] = field(default_factory=dict)
    # the ids up to this one were never read by the sensor (the cursor when its window began, the
    # stream's end then; for a cursor of before, where its window began): the window's stretches
    # up to this id's count the ids after it, until a read takes them all whole (their baseline,
    # none of its ids late); then None
    baseline: Optional[str] = None
    # a read of the window cut by its pages: the id it reached, and the count and digest of the
    # ids of that id's stretch it read ([id, count, digest]); the next read goes on from there, so
    # a stretch longer than the read's pages is read whole across reads. `read_at`: the API's
    # clock of that read (the next is due WINDOW_SECONDS after it)
    resume: Optional[list] = None
    read_at: Optional[float] = None

    @classmethod
    def decode(cls, text: Optional[str]) -> "EventsSensorCursor":
        if not text:
            return cls()
        if not text.lstrip().startswith("{"):
            return cls(event_id=text)  # the cursor of before: an event id
        data = json.loads(text)
        if "recent" in data:  # the cursor of before: the window's ids themselves, from the lag before its poll
            data.setdefault("window", _encode_window(_fold(data["recent"])))
            if data.get("polled_at") is not None and _lag_ns() > 0:
                data.setdefault("baseline", window_floor(int(data["polled_at"] * NS_PER_SECOND), _lag_ns()))
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def wait_seconds(self, now: float) -> float:
        """How long the next run must wait after failed runs (0: none failed, or time is up)."""
        if not self.failures:
            return 0.0
        delay = RETRY_DELAYS[min(self.failures, len(RETRY_DELAYS)) - 1]
        return max(0.0, (self.failed_at or 0.0) + delay - now)


def _follow_run(context: SensorEvaluationContext, state: EventsSensorCursor) -> str:
    """Update `state` with the outcome of the run it follows; a phrase saying what became of it."""
    key = state.run_key
    records = context.instance.get_run_records(
        filters=RunsFilter(tags={RUN_KEY_TAG: key, SENSOR_NAME_TAG: SENSOR_NAME}), limit=1
    )
    if not records:  # never launched, or deleted: nothing to wait for, nothing known to retry
        state.run_key = None
        return f"run {key} not found in the instance; no longer followed"
    run = records[0].dagster_run
    if run.status in _IN_FLIGHT:
        return f"run {run.run_id} ({key}) is {run.status.value.lower()}"
    state.run_key = None
    if run.status != DagsterRunStatus.SUCCESS:  # what it was to sync, a run again will
        state.tables = sorted(set(state.tables) | {k.path[-1] for k in run.asset_selection or ()
                                                   if k.path[-1] in STREAM_TABLES})
    if run.status == DagsterRunStatus.SUCCESS:
        state.failures, state.failed_at, state.models_failed, state.canceled = 0, None, 0, 0
        return f"run {run.run_id} ({key}) succeeded"
    if run.status == DagsterRunStatus.CANCELED:
        # by a user, a script, a deployment terminating the runs in flight: all look alike. The
        # events it was requested for are in the cursor already, so they get one more run, at once
        # (no backoff: a cancel says nothing of the API); a canceled retry is not run again, so a
        # user who keeps canceling is not fought. (`failed_at` keys the retry apart, as below)
        state.canceled += 1
        state.failed_at = records[0].end_time or _now()
        state.owed = state.owed or state.canceled == 1
        return (f"run {run.run_id} ({key}) was canceled ({state.canceled} in a row): "
                + ("it will be run again once" if state.canceled == 1
                   else "not run again; the next new event or schedule runs it"))
    state.canceled = 0
    failed_steps = {
        record.event_log_entry.dagster_event.step_key
        for record in context.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.STEP_FAILURE).records
        if record.event_log_entry.dagster_event
    }
    if failed_steps and failed_steps <= {analytics_models.op.name}:
        # the raw tables were synced and passed their checks: not a failed sync, no backoff (the
        # next change gets a run at the next tick); its models' failure is reported by their
        # checks and report_failed_runs. Run again once (a model can fail for a passing reason,
        # a lock); one failing on the data fails again until the data or the model changes.
        # (`failed_at` keys its retry apart from the run it follows: the daemon launches no key twice)
        state.failures, state.failed_at = 0, records[0].end_time or _now()
        state.models_failed += 1
        state.owed = state.owed or state.models_failed == 1
        return (f"run {run.run_id} ({key}) failed in its models step alone ({state.models_failed} in a row; "
                "the raw tables were synced): " + ("it will be run again" if state.models_failed == 1
                                                   else "the next new event runs it again"))
    state.models_failed = 0
    state.failures += 1
    state.failed_at = records[0].end_time or _now()
    if state.failures <= MAX_RETRIES:
        state.owed = True
        return f"run {run.run_id} ({key}) failed ({state.failures} in a row): it will be run again"
    return (
        f"run {run.run_id} ({key}) failed ({state.failures} in a row): no more retries; "
        "the next new event or schedule runs it again"
    )


# How often the events sensor asks the stream "anything new?": one request when nothing is (a
# page of the events after its cursor), 6 a minute, 2.5% of Paddle's 240; a change waits 5 s for
# a tick on average, where 60 s made that wait most of a change's lag
# (docs/benchmark.md, "Lag: from a change to the warehouse").
EVENTS_SENSOR_INTERVAL_SECONDS = 10


@sensor(
    name=SENSOR_NAME,
    job=sync_all_job,
    minimum_interval_seconds=EVENTS_SENSOR_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.STOPPED,
    description=(
        "Polls the API's event stream (/v1/events; /events on Paddle itself) for events newer than "
        "its cursor and requests a sync of the event stream and every table it keeps ("
        + ", ".join(STREAM_TABLES) + "), not only the tables the events touch (in listing mode only those: every run "
        "lists the tables it takes): in events mode the run reads the stream once (a request per "
        "200 events) and every table's cursor stays current, so no quiet table ages past the "
        "retention into a full listing; then, in the same run, the models reading them. One run at a time: "
        f"events that come while its run is in flight go in one run after it. Every {EVENTS_SENSOR_INTERVAL_SECONDS} s (a request when "
        "nothing is new). It follows the run it requested: if that run failed, it "
        "requests another with no new event needed, at the next tick, then after 5 min, 15 min, "
        "1 h (at most 4 retries without new events; a run failed in its models step alone: once, and no "
        "backoff for the next changes; a canceled run: once, at the next tick). The first tick only sets the cursor."
    ),
)
def api_events_sensor(context: SensorEvaluationContext) -> SensorResult:
    # settings are resolved here, at evaluation, never when the code location loads; the API's
    # root as a run resolves it (environment, base_url, path_prefix)
    base_url = configured_api_root()
    api_key = dlt.secrets["sources.analytics.api_key"]
    try:
        return _evaluate(context, base_url, api_key)
    except HTTPError as exc:
        if not is_forbidden(exc.response):
            raise
        # a key without notification.read: nothing to watch; every tick says why (no run: it would fail)
        permission = RESOURCES_BY_NAME["events"].permission
        return SensorResult(skip_reason=SkipReason(
            f"the API key lacks the permission {permission} (403 forbidden on the event stream): this sensor "
            f"cannot watch it. Grant {permission} to the key (Paddle: Developer tools > Authentication), or "
            "keep the warehouse current with the daily_all schedule and incremental = \"listing\"."))


def _evaluate(context: SensorEvaluationContext, base_url: str, api_key: str) -> SensorResult:
    if context.cursor is None:
        newest = latest_event_id(base_url, api_key)
        return SensorResult(
            skip_reason=SkipReason(f"cursor set to the newest event {newest}"),
            cursor=EventsSensorCursor(event_id=newest).encode(),
        )
    state = EventsSensorCursor.decode(context.cursor)
    events, newest_new, unplaced = _new_events(base_url, api_key, state)
    if newest_new:
        state.newest_new = max(state.newest_new or "", newest_new)
    notes = list(unplaced)
    state.owed = state.owed or bool(unplaced)
    # (events told apart by no id may touch any table)
    state.tables = sorted(set(state.tables) | set(assets_for_events(events) if events else ())
                          | set(STREAM_TABLES if unplaced else ()))
    if events:
        state.event_id, state.owed = max(state.event_id or "", events[-1]["event_id"]), True
        by_type: dict[str, int] = defaultdict(int)
        for event in events:
            by_type[str(event.get("event_type"))] += 1
        notes.append(
            f"{len(events)} new events up to {state.event_id}: {dict(by_type)}, touching "
            f"{assets_for_events(events)}"
        )
    elif not unplaced:
        notes.append(f"no events after {state.event_id}")
    if state.run_key:
        notes.append(_follow_run(context, state))
    if state.run_key and state.owed:
        # one run at a time: the events that came meanwhile wait for it to end, then go in one
        # next run (that run reads the stream from each table's cursor to its end), not a run a tick
        notes.append("the new events go in the run after it")
        return SensorResult(skip_reason=SkipReason("; ".join(notes)), cursor=state.encode())
    wait = state.wait_seconds(_now())
    if not state.owed or wait > 0:
        if state.owed:
            notes.append(f"the next run waits {wait:.0f} s more after {state.failures} failed runs")
        return SensorResult(skip_reason=SkipReason("; ".join(notes)), cursor=state.encode())

    after = state.failures
    # keyed by the newest event new to a tick since the last run requested: a late one (older
    # than the cursor) makes a key of its own, where the cursor's would repeat a run key already
    # used, and launch nothing (a retry's key names the failure it follows, when it ended: no two
    # retries share a key)
    run_key = f"events-up-to-{state.newest_new or state.event_id}" + (
        f"-after-{after}-failed-{int((state.failed_at or 0) * 1000)}" if after else
        f"-after-canceled-{int((state.failed_at or 0) * 1000)}" if state.canceled else
        f"-after-models-failed-{int((state.failed_at or 0) * 1000)}" if state.models_failed else "")
    tags = {"analytics/events_up_to": str(state.event_id)}
    if after:
        tags["analytics/after_failed_runs"] = str(after)
    tables, why = _selection(state.tables)
    state.run_key, state.owed, state.tables, state.newest_new = run_key, False, [], None
    context.log.info("; ".join(notes) + f"; requesting {run_key} of {tables} and the models reading them{why}")
    return SensorResult(
        run_requests=[RunRequest(
            run_key=run_key, asset_selection=[asset_key(t) for t in tables] + models_reading(tables), tags=tags)],
        cursor=state.encode(),
    )


def _selection(touched: list[str]) -> tuple[list[str], str]:
    """The tables the sensor's run syncs (then, in the same run, the models that read them:
    docs/design.md, "How fast a change arrives"; they follow in seconds, not at the automation
    sensor's next tick and a run of their own, and no update is lost to that sensor's resolution:
    a table synced in the same tick as its models' last build counts as handled by that build,
    dagster-io/dagster#24650, #33586), and why when they are not every table of the stream.
    In events mode every table of `STREAM_TABLES`: one read of the stream serves them all, and
    none ages into a listing. In listing mode (`incremental = listing`) every run lists every
    table it takes, whatever changed: a run of them all would cost a listing of the account per
    change (two requests per customer), so the run takes the tables the events touched (docs/design.md,
    "The events sensor, and why its runs take every table with events")."""
    mode = dlt.config.get("sources.analytics.incremental", str)
    if mode != "listing":
        return list(STREAM_TABLES), ""
    tables = [t for t in STREAM_TABLES if t in set(touched) | {"events"}] if touched else list(STREAM_TABLES)
    return tables, (f" (incremental = listing: every run lists the tables it takes, so it takes those the "
                    f"events touched, not the {len(STREAM_TABLES)} of the stream; the schedules list the rest)")


# What a tick reads (docs/design.md, "How fast a change arrives"): the events after the newest it
# saw, every page of them up to NEW_PAGES (10,000 events: a burst beyond that is read on by the
# next ticks), so nothing that follows a burst waits. The late-event window behind it (the
# visibility lag before the last read of the window) is read again at every tick while it holds
# fewer ids than a page (the one request then reads the window and what is new), and otherwise
# every WINDOW_SECONDS of the API's clock, WINDOW_PAGES pages at most (a read those pages cut is
# gone on with by the next, `resume`): after a burst an idle tick costs one request, and the
# window's re-read at most 10 pages every 2 minutes, 11 a minute in all.
NEW_PAGES = 50
WINDOW_PAGES = 10
WINDOW_SECONDS = 120
# The cursor keeps the window's ids folded per stretch of their instant: the first STRETCH_CHARS
# characters of an id's ULID (2**15 ms, 32.8 s), a count and a digest each. About 20 stretches
# in a 600 s window, 40 bytes each whatever the number of events (the daemon writes the cursor
# with every tick); a stretch read again whose count or digest differs holds an event seen late.
STRETCH_CHARS = 7


def _stretch(event_id: str) -> str:
    """The stretch of instants an id was taken in: its prefix and the start of its ULID."""
    head, _, ulid = event_id.rpartition("_")
    return f"{head}_{ulid[:STRETCH_CHARS]}"


def _id_digest(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def _fold(ids: Iterable[str], into: Optional[dict[str, tuple[int, int]]] = None) -> dict[str, tuple[int, int]]:
    """`ids` folded per stretch into (count, XOR of their digests), onto `into` (a copy)."""
    folded = dict(into or {})
    for event_id in ids:
        count, xor = folded.get(_stretch(event_id), (0, 0))
        folded[_stretch(event_id)] = (count + 1, xor ^ _id_digest(event_id))
    return folded


def _encode_window(folded: dict[str, tuple[int, int]]) -> dict[str, list]:
    return {stretch: [count, f"{xor:016x}"] for stretch, (count, xor) in sorted(folded.items())}


def _window_start(polled_ns: int, lag_ns: int) -> str:
    """Where the window's read starts: the smallest id of the stretch of the instant `lag_ns`
    before `polled_ns` (the window spans whole stretches, up to 33 s more than the lag)."""
    floor = window_floor(polled_ns, lag_ns)
    stretch = _stretch(floor)
    return stretch + "0" * (len(floor) - len(stretch))


def _reached(events: list[dict], complete: bool, cursor: str) -> str:
    """How far a read from the window's start saw every id up to `cursor`: all of them when it
    read to the stream's end or past the cursor, else up to its last id."""
    return cursor if complete or not events or events[-1]["event_id"] >= cursor else events[-1]["event_id"]


def _told_apart(ids: list[str], more: int, xor: int) -> list[str]:
    """The ids among `ids` that a stretch's count and digest say are new: `more` of them, whose
    digests XOR to `xor`; one or two can be found (two: the one whose digest, XORed with
    `xor`, is another's), more cannot ([] then)."""
    by_digest = {_id_digest(i): i for i in ids}
    if more == 1:
        return [by_digest[xor]] if xor in by_digest else []
    if more == 2:
        return next(([i, by_digest[d ^ xor]] for d, i in by_digest.items() if d ^ xor in by_digest), [])
    return []


def _lag_ns() -> int:
    """The visibility lag the late-event window spans (`event_visibility_lag_seconds`), in ns."""
    lag = dlt.config.get("sources.analytics.event_visibility_lag_seconds", int)
    return (DEFAULT_VISIBILITY_LAG_SECONDS if lag is None else int(lag)) * NS_PER_SECOND


def _new_events(base_url: str, api_key: str, state: EventsSensorCursor) -> tuple[list[dict], Optional[str], list[str]]:
    """The events this tick has not seen, oldest first; what names them in a run key (the newest
    of their ids); and a line per stretch of the window that holds events seen late that its
    digest cannot tell apart (more than two). It reads the events after the cursor and, when due,
    the window of late events behind it: from the visibility lag before the window's last read
    (or on from where a read cut by its pages stopped, `resume`), comparing each stretch read
    whole with the count and digest of the ids it saw there; an event that became visible late
    is new to it. Ids up to `baseline` (never read before) are counted only once read whole."""
    lag_ns = _lag_ns()
    cursor, polled_ns = state.event_id or "", int((state.polled_at or 0) * NS_PER_SECOND)
    seen = {stretch: (count, int(xor, 16)) for stretch, (count, xor) in state.window.items()}
    # no window before the first poll (the cursor was the stream's end then), nor without a lag
    start = _window_start(polled_ns, lag_ns) if cursor and state.polled_at is not None and lag_ns > 0 else None
    if start is None and cursor and lag_ns > 0:  # the window begins: what is before the cursor was never read
        state.baseline = cursor
    resume = state.resume if start is not None and state.resume and state.resume[0] >= start else None
    small = start is not None and not resume and sum(count for count, _ in seen.values()) < EVENTS_PAGE_SIZE
    read, now_ns, complete = events_after(  # (small: one read takes the window and what is new)
        base_url, api_key, min(cursor, start) if small else cursor or None, max_pages=NEW_PAGES)
    # where the window's read began (None: no stretch read whole) and how far it saw every id
    begin, reached = (start, _reached(read, complete, cursor)) if small else (None, None)
    window_read = start is None or small
    due_ns = int((state.read_at or state.polled_at or 0) * NS_PER_SECOND) + WINDOW_SECONDS * NS_PER_SECOND
    if not window_read and now_ns >= due_ns:
        if start < cursor:  # (a window at all: there is a cursor)
            begin = resume[0] if resume else start
            behind, _, complete = events_after(base_url, api_key, begin, max_pages=WINDOW_PAGES, until=cursor)
            read, reached = read + behind, _reached(behind, complete, cursor)
        window_read = True
    going_on = resume is not None and begin == resume[0]  # (a read of the window cut before, going on)
    baseline = state.baseline
    # the stretches whose count is of the ids after the baseline: until a read from the window's
    # start takes every one of them whole (then their count is of every id)
    until_baseline = _stretch(baseline) if baseline else ""
    ends_baseline = bool(baseline) and begin is not None and not going_on and reached is not None and (
        reached >= cursor or _stretch(reached) > until_baseline)

    def counted(stretch: str, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i > baseline] if baseline and stretch <= until_baseline else list(ids)

    by_stretch: dict[str, dict[str, dict]] = defaultdict(dict)
    for event in read:
        by_stretch[_stretch(event["event_id"])].setdefault(event["event_id"], event)
    new = {event_id: got[event_id] for got in by_stretch.values() for event_id in got if event_id > cursor}
    unplaced, late_mark = [], 0
    window: dict[str, tuple[int, int]] = {}
    # what a read cut before in the window's stretch it goes on in had read of it
    carried = {_stretch(resume[0]): (resume[1], int(resume[2], 16))} if going_on else {}
    cut = begin is not None and reached < cursor
    for stretch in sorted(set(seen) | set(by_stretch)):
        ids = by_stretch.get(stretch, {})
        if begin is None or stretch < _stretch(begin) or (cut and stretch >= _stretch(reached)):
            window.update(_fold(counted(stretch, [i for i in ids if i > cursor]), {stretch: seen.get(stretch, (0, 0))}))
            continue  # (not read whole: what it saw there, and what is new)
        before = carried.get(stretch, (0, 0))
        compared = counted(stretch, [i for i in ids if i <= cursor])
        was, now = seen.get(stretch, (0, 0)), _fold(compared, {stretch: before})[stretch]
        if now != was:  # ids it had not seen: one or two are told by the digest, more are not
            late = _told_apart(compared, now[0] - was[0], now[1] ^ was[1])
            if late:
                new.update((i, ids[i]) for i in late)
            else:
                late_mark ^= now[1] ^ was[1]
                unplaced.append(f"the window's events of {stretch}… are {now[0]}, were {was[0]} (late events "
                                f"among {min(ids, default='-')}..{max(ids, default='-')}, not told apart)")
        window.update(_fold(ids if ends_baseline else counted(stretch, ids), {stretch: before}))
    if window_read:
        if going_on:  # the window still starts where the read's first chunk started it
            state.read_at = now_ns / NS_PER_SECOND
        else:
            state.polled_at, state.read_at = now_ns / NS_PER_SECOND, None  # the API's clock (its Date)
        if cut:  # the next read goes on from the id this one reached, with what it read of its stretch
            stretch = _stretch(reached)
            got = _fold(counted(stretch, [i for i in by_stretch.get(stretch, {}) if i <= reached]),
                        {stretch: carried.get(stretch, (0, 0))})[stretch]
            state.resume = [reached, got[0], f"{got[1]:016x}"]
        else:
            state.resume = None
    floor = _stretch(window_floor(int((state.polled_at or 0) * NS_PER_SECOND), lag_ns))
    if ends_baseline or (baseline and until_baseline < floor) or lag_ns <= 0:
        state.baseline = None
    state.window = _encode_window({s: v for s, v in window.items() if s >= floor and v[0]}) if lag_ns > 0 else {}
    events = sorted(new.values(), key=lambda e: e["event_id"])
    # (events told apart by no id are named by what they add to the window's digest)
    return events, max(new, default=None) or (f"{cursor}-late-{late_mark:016x}" if unplaced else None), unplaced


@run_failure_sensor(
    name="report_failed_runs",
    default_status=DefaultSensorStatus.RUNNING,
    description="Writes one clear line per failed run to the log: job, run id, failed steps, error.",
)
def report_failed_runs(context: RunFailureSensorContext) -> None:
    context.log.error(failure_report(context))


def failure_report(context: RunFailureSensorContext) -> str:
    """One line: which run of which job failed, in which steps, the first line of each error, and
    the checks each step found failing (a dbt test's name: the models step's error is dbt's
    command and exit code first)."""
    run = context.dagster_run
    failed_checks: dict[str, list[str]] = defaultdict(list)
    for record in context.instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if evaluation is not None and not evaluation.passed:
            failed_checks[event.step_key].append(f"{evaluation.asset_key.path[-1]}.{evaluation.check_name}")
    errors = []
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        cause = error
        while cause is not None and cause.cause is not None:  # the innermost error says most
            cause = cause.cause
        text = (cause.message if cause else error.message if error else "").strip().splitlines()
        checks = failed_checks.get(event.step_key)
        errors.append(f"{event.step_key}: {text[0] if text else 'no message'}"
                      + (f" (failed checks: {', '.join(sorted(checks))})" if checks else ""))
    detail = "; ".join(errors) or (context.failure_event.message or "no message")
    return f"Run {run.run_id} of job {run.job_name} failed. {detail}"


# ------------------------------------------------------------- the sensor's reads of the stream
def latest_event_id(base_url: str, api_key: str) -> Optional[str]:
    """The newest event's id, or None when the API has no events (`base_url`: the API's root,
    prefix included)."""
    response = event_client(base_url, api_key).get(EVENTS_PATH, params={"per_page": 1})
    response.raise_for_status()
    data = [e for e in response.json().get("data") or [] if keyed(e)]
    return data[0]["event_id"] if data else None


def events_after(
    base_url: str, api_key: str, after: Optional[str], max_pages: int = 10, until: Optional[str] = None
) -> tuple[list[dict[str, Any]], int, bool]:
    """Events newer than `after`, oldest first (at most `max_pages` pages of 200; with `until`,
    up to the page that reaches that id), the API's clock when the read began (its first
    page's `Date`), and whether it read to the stream's end or `until` (False: `max_pages` cut it)."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": EVENTS_PAGE_SIZE}
    if after:
        params["after"] = after
    events: list[dict[str, Any]] = []
    now: Optional[int] = None
    for pages, page in enumerate(event_client(base_url, api_key).paginate(EVENTS_PATH, params=params), 1):
        now = now or api_now_ns(page.response)
        events.extend(e for e in page if keyed(e))  # (one without a string id cannot be a cursor)
        if until and events and events[-1]["event_id"] >= until:
            break
        if pages >= max_pages:
            return events, now or time.time_ns(), False
    return events, now or time.time_ns(), True
