"""Jobs, schedules and sensors: when the sync runs, and what watches it."""

from __future__ import annotations

import email.utils
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional
from uuid import uuid4

import dlt
from dlt.sources.helpers.requests import Client
from dlt.common.configuration.specs import RuntimeConfiguration
from requests import HTTPError, Response, Session
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
from analytics_dagster.rfc3339 import NS_PER_SECOND, format_ns, id_ns
from analytics_dagster.source.events import (
    DEFAULT_VISIBILITY_LAG_SECONDS,
    EVENTS_PAGE_SIZE,
    EVENTS_PATH,
    api_now_ns,
    digest,
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
OURS = RunsFilter(tags={SENSOR_NAME_TAG: SENSOR_NAME})  # the sensor's runs in the instance
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


def cleared(cursor: Optional[str]) -> bool:
    """Whether the sensor's cursor was cleared: None (`dagster sensor cursor --delete`, a first
    start) or blank (Dagster's UI, the sensor's page, "Edit cursor" with its text emptied, stores
    ""). A cursor of before on an empty stream was "" too: nothing was seen, so it is the same."""
    return not (cursor or "").strip()


@dataclass
class EventsSensorCursor:
    """What `api_events_sensor` keeps between ticks, as JSON in its cursor.

    Before runs were followed the cursor was the newest event id alone (or "" for an empty
    stream: read as cleared, `cleared`, as Dagster's UI clears a cursor); `decode` reads that too,
    and a cursor that kept the late-event window itself (its ids,
    `recent`, or their counts and digests per stretch, `window`) or its ids under one key with a
    count of writes (`kept` a number): its window begins again at the next tick.
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
    # the tick's read of what is new stopped at the tick's cap of requests (`TICK_PAGES`) before
    # the stream's end (a bulk change): the next ticks read on
    behind: bool = False
    # when a run was requested while that read was behind (seconds since the epoch): that run
    # reads the stream to its end itself, so the run after it waits until the read has caught up
    # (one run, not one a tick while the ticks catch up and the runs end faster), unless it
    # failed or was canceled, or for `HELD_SECONDS` at most (a rate the capped read never keeps
    # up with: a run every 5 minutes)
    held: Optional[float] = None
    # its last tick, by the API's clock and by this machine's (seconds since the epoch): a tick
    # later by both than the kept ids span (the sensor stopped, the daemon down) begins the
    # window again (`_new_events`)
    ticked_at: Optional[list[float]] = None
    # the late-event window (`_new_events`): its ids are kept in the instance's key-value storage
    # (`WINDOW_KEY`); the cursor keeps where its rolling read stands. That read goes from `floor`
    # (an id: the lag before the read before it began, or before the API's clock when that is
    # lower; never below `kept_from`) to the newest event seen, a few pages a tick, on from
    # `reached` (None: from `floor`); `read_at` is the API's clock when it began (seconds since
    # the epoch). None of them: no window yet (the next tick begins one)
    floor: Optional[str] = None
    read_at: Optional[float] = None
    reached: Optional[str] = None
    # the ids up to this one were never read by the sensor (the newest event when its window
    # began) and the tick that began it did not read them all: the window's first read takes
    # those it finds as they are, none of them late; then None
    baseline: Optional[str] = None
    # the token the window's ids are kept under (held with them, in the key `window_key` names), a
    # new one at every write: a tick loads the ids of its own cursor, never those of a tick whose
    # cursor was not kept, of an evaluation from the same cursor, or of another sensor on the
    # instance; and the token this one replaced (`parent`), blanked by the first tick that loads
    # this cursor
    kept: Optional[str] = None
    parent: Optional[str] = None
    # the kept ids are complete from this id (`floor` or below; never moved back): every id from
    # it that a read found is kept, so `floor` may move back to it and take no id read before as
    # late (None: from `floor`, a cursor of before)
    kept_from: Optional[str] = None
    # the digests of the events without a string id the sensor has read: one it reads for the
    # first time is new (no id orders it), and owed a run once (a cursor of before, which dropped
    # them: those its first read finds too). Kept with the window's ids (`Window`), each until no
    # read can list its event again; here [] then, or, with no window (a lag of 0), [digest, id]
    # pairs (a cursor of before: digests alone, still read). None: a first tick's (a cursor of
    # None): those its read finds are taken as seen, from before the sensor
    unkeyed: Optional[list[Any]] = field(default_factory=list)
    # the API answered a tick 429 with a Retry-After longer than a tick waits
    # (`TICK_WAIT_SECONDS`): until then (seconds since the epoch) ticks make no request
    rest_until: Optional[float] = None

    @classmethod
    def decode(cls, text: Optional[str]) -> "EventsSensorCursor":
        if cleared(text):  # nothing seen, nothing read: a first tick's (`_evaluate` begins it so)
            return cls(unkeyed=None)
        if not text.lstrip().startswith("{"):
            return cls(event_id=text.strip())  # the cursor of before: an event id
        data = json.loads(text)
        if "floor" not in data or not isinstance(data.get("kept"), (str, type(None))):
            # a cursor of before (the window's ids or digests in it, or its ids kept under one key
            # for the instance, `kept` a count of writes): no window yet
            data = {k: v for k, v in data.items() if k not in ("floor", "read_at", "reached", "baseline", "kept", "kept_from")}
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
# page of the events after its cursor), 6 a minute, 2.5% of Paddle's 240 (12, 5%, while its
# late-event window holds more than a page: `WINDOW_PAGES`; a page more per 200 events without an
# id it reads over: `events_after`); a change waits 5 s for a tick on
# average, where 60 s made that wait most of a change's lag
# (docs/benchmark.md, "Lag: from a change to the warehouse").
EVENTS_SENSOR_INTERVAL_SECONDS = 10
# the longest the run after one requested while the sensor's read was behind waits for the read
# to catch up (`EventsSensorCursor.held`)
HELD_SECONDS = 300


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
        "nothing is new; two while the late-event window behind its cursor holds over 200 events, whose ids it keeps in "
        "the instance's key-value storage; a page more per 200 events without an id it reads over; 10 pages at most, however "
        "large a bulk change: the next ticks read on). It follows the run it requested: if that run failed, it "
        "requests another with no new event needed, at the next tick, then after 5 min, 15 min, "
        "1 h (at most 4 retries without new events; a run failed in its models step alone: once, and no "
        "backoff for the next changes; a canceled run: once, at the next tick). The first tick only sets the cursor; "
        "a cursor cleared (its sensor having runs) also owes a run: at once, or after its run in flight."
    ),
)
def api_events_sensor(context: SensorEvaluationContext) -> SensorResult:
    # settings are resolved here, at evaluation, never when the code location loads; the API's
    # root as a run resolves it (environment, base_url, path_prefix)
    base_url = configured_api_root()
    api_key = dlt.secrets["sources.analytics.api_key"]
    state = None if cleared(context.cursor) else EventsSensorCursor.decode(context.cursor)
    if state is not None and state.rest_until is not None and time.time() < state.rest_until:
        return SensorResult(skip_reason=SkipReason(
            f"the API asked this client to wait (429) until {_utc(state.rest_until)}: no request before then; "
            "the cursor is kept"))
    tick = Tick(tick_session(time.monotonic() + TICK_WAIT_SECONDS))
    try:
        return _evaluate(context, base_url, api_key, tick)
    except HTTPError as exc:
        if exc.response is not None and exc.response.status_code == 429:
            # the API's block outlasts what a tick waits, and it met it before reading a page: the
            # ticks until the block ends make no request (the cursor says until when); a first
            # tick has no cursor to say it in
            note = rested(state, exc.response, read=False) if state is not None else (
                f"{limited_line(exc.response)}: this first tick read nothing; the next asks again")
            return SensorResult(skip_reason=SkipReason(note), cursor=state.encode() if state is not None else None)
        if not is_forbidden(exc.response):
            raise
        # a key without notification.read: nothing to watch; every tick says why (no run: it would fail)
        permission = RESOURCES_BY_NAME["events"].permission
        return SensorResult(skip_reason=SkipReason(
            f"the API key lacks the permission {permission} (403 forbidden on the event stream): this sensor "
            f"cannot watch it. Grant {permission} to the key (Paddle: Developer tools > Authentication), or "
            "keep the warehouse current with the daily_all schedule and incremental = \"listing\"."))


def _evaluate(context: SensorEvaluationContext, base_url: str, api_key: str, tick: Tick) -> SensorResult:
    if cleared(context.cursor):
        state = EventsSensorCursor(event_id=latest_event_id(base_url, api_key, tick.session), unkeyed=None)
        # the late-event window begins in this tick, its first read made: an event that becomes
        # visible late before the next tick is late to it (the next tick takes an event listed
        # after the cursor meanwhile as new: the cursor is not moved here). A first start reads a
        # page of it; a reset (the sensor has runs: `_start`) as much as the tick's requests allow
        # (`TICK_PAGES`, two taken by the stream's end), so that a window within them (a bulk
        # change of 1,400) keeps no baseline: an event of it that becomes visible late after the
        # reset's run read the stream is late to it, not taken as seen
        reset = bool(context.instance.get_run_records(filters=OURS, limit=1))
        _, kept, _ = _new_events(base_url, api_key, state, None, tick, budget=TICK_PAGES - 2,
                                 first_pages=TICK_PAGES if reset else WINDOW_PAGES)
        if tick.limited is not None:
            rested(state, tick.limited)
        if state.floor:
            _store_window(context.instance, state, kept)
        return _start(context, state, reset)
    state = EventsSensorCursor.decode(context.cursor)
    state.rest_until = None  # (a wait the API asked for is over: `api_events_sensor`)
    # what became of the run it follows, first: the window's ids are written last, once nothing
    # else of the tick can fail (a tick that fails keeps its cursor, and ids written without it,
    # under a token of their own, are never loaded)
    followed = _follow_run(context, state) if state.run_key else None
    window = _load_window(context.instance, state)
    notes = [] if window is not None or not state.floor else [
        "the late-event window's ids kept are not this cursor's: its window begins again"]
    events, kept, loose = _new_events(base_url, api_key, state, window, tick)
    if tick.limited is not None:
        notes.append(rested(state, tick.limited))
    if state.floor and kept != window:  # (written when it changes, and when a window begins)
        _store_window(context.instance, state, kept)
    if events or loose:
        newest = [events[-1]["event_id"]] if events else []
        # (an event without an id names the run by its digest: the cursor's id would repeat a key used)
        state.newest_new = max([state.newest_new or "", *newest, *(f"~{digest(e)}" for e in loose)])
        if newest:
            state.event_id = max(state.event_id or "", newest[0])
        state.tables = sorted(set(state.tables) | set(assets_for_events(events + loose)))
        state.owed = True
        by_type: dict[str, int] = defaultdict(int)
        for event in events + loose:
            by_type[str(event.get("event_type"))] += 1
        notes.append(
            f"{len(events)} new events up to {state.event_id}" + (f" and {len(loose)} without an id" if loose else "")
            + f": {dict(by_type)}, touching {assets_for_events(events + loose)}"
        )
    else:
        notes.append(f"no events after {state.event_id}")
    if followed:
        notes.append(followed)
    if state.run_key and state.owed:
        # one run at a time: the events that came meanwhile wait for it to end, then go in one
        # next run (that run reads the stream from each table's cursor to its end), not a run a tick
        notes.append("the new events go in the run after it")
        return SensorResult(skip_reason=SkipReason("; ".join(notes)), cursor=state.encode())
    if not state.behind or state.failures or state.canceled or state.models_failed or (
            _now() - (state.held or 0.0) > HELD_SECONDS):
        state.held = None
    if state.owed and state.held is not None:
        notes.append("the read of what is new is behind the stream: the run requested when it fell behind read the "
                     "stream to its end, and the run after waits until the read has caught up")
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
    return _request(context, state, run_key, tags, "; ".join(notes))


def _request(
    context: SensorEvaluationContext, state: EventsSensorCursor, run_key: str, tags: dict[str, str], note: str
) -> SensorResult:
    """Request the run `run_key` of the tables owed (`_selection`) and the models reading them;
    the cursor follows it, nothing owed."""
    tables, why = _selection(state.tables)
    state.run_key, state.owed, state.tables, state.newest_new = run_key, False, [], None
    state.held = _now() if state.behind else None  # (`EventsSensorCursor.held`)
    context.log.info(f"{note}; requesting {run_key} of {tables} and the models reading them{why}")
    return SensorResult(
        run_requests=[RunRequest(
            run_key=run_key, asset_selection=[asset_key(t) for t in tables] + models_reading(tables), tags=tags)],
        cursor=state.encode(),
    )


def _start(context: SensorEvaluationContext, state: EventsSensorCursor, reset: bool) -> SensorResult:
    """The first tick of a cursor of None (`state`: the cursor set to the newest event, its window
    begun). The first start ever (no run of the sensor in the instance, `reset` False) requests nothing. A cursor
    cleared (Dagster's UI; a code location renamed or moved) may have owed a run, and what it owed
    is unknown: the sensor follows a run of its own still in flight and owes the run after it, or
    requests one run at once, keyed apart by the instant of the reset (`events-cursor-reset-...`).
    Its runs are known by their tags, which a re-execution from Dagster's UI copies: a run of
    them in flight is looked for, not only the newest."""
    newest = state.event_id
    note = f"cursor set to the newest event {newest}"
    if not reset:
        return SensorResult(skip_reason=SkipReason(note), cursor=state.encode())
    in_flight = context.instance.get_run_records(
        filters=RunsFilter(tags=OURS.tags, statuses=list(_IN_FLIGHT)), limit=1)
    run = in_flight[0].dagster_run if in_flight else None
    if run is not None and run.tags.get(RUN_KEY_TAG):
        # (the run after it keyed by the reset: the newest event's id may be that run's own key)
        state.run_key, state.owed = run.tags[RUN_KEY_TAG], True
        state.newest_new = f"~reset-{int(_now() * 1000)}"
        return SensorResult(skip_reason=SkipReason(
            f"{note} (the cursor was cleared: what it owed is not known); run {run.run_id} "
            f"({state.run_key}) is {run.status.value.lower()}: a run after it is owed"), cursor=state.encode())
    return _request(context, state, f"events-cursor-reset-{newest}-{int(_now() * 1000)}",
                    {"analytics/events_up_to": str(newest)}, f"{note}; the cursor was cleared (what it owed is not known)")


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


# What a tick reads (docs/design.md, "How fast a change arrives"): TICK_PAGES requests at most, 60
# a minute, a quarter of Paddle's 240 (with a run paced to docs/api.md's share of 120: 180), however
# large a bulk change; what a tick does not read, the next ones read on. First the events after the
# newest it saw, every page of them up to that cap but a page (1,800 events: a burst beyond that is
# read on by the next ticks; a change after a burst is seen once they reach it, and the run the
# burst's first tick requested reads the stream to its end meanwhile). Then the late-event window
# behind it, read again on from where the last tick stopped: WINDOW_PAGES pages, and
# WINDOW_PAGES_PER_NEW more per 200 new events, within what the cap leaves (the window grows by what
# is new: its read keeps well ahead of that, so a read of the window at a steady rate takes a few
# minutes, not ever longer). An idle tick costs two requests while the window holds more than a
# page of ids (12 a minute, 5% of 240), one when the rest of the window's read fits the page of
# what is new (the usual case: one request takes both).
TICK_PAGES = 10
# The longest a tick waits on the API: a retry (a 429's Retry-After, a 5xx's backoff) is made only
# if its wait ends within TICK_WAIT_SECONDS of the tick's start (`tick_session`). Dagster fails a
# tick that runs past 60 s (`DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`), and Paddle blocks a client past
# its limit for 60 s: a tick that waited that out failed as timed out, each tick of the block.
TICK_WAIT_SECONDS = 40
WINDOW_PAGES = 1
WINDOW_PAGES_PER_NEW = 5
# the prefix of the keys of the window's ids in the instance's key-value storage (`window_key`)
WINDOW_KEY = f"{SENSOR_NAME}/late_event_window"


def _lag_ns() -> int:
    """The visibility lag the late-event window spans (`event_visibility_lag_seconds`), in ns."""
    lag = dlt.config.get("sources.analytics.event_visibility_lag_seconds", int)
    return (DEFAULT_VISIBILITY_LAG_SECONDS if lag is None else int(lag)) * NS_PER_SECOND


def tick_session(deadline: float) -> Session:
    """dlt's HTTP session with the configured retries (`[runtime]`: 3 retries, backoff factor 2,
    Retry-After obeyed), but no retry whose wait would end past `deadline` (`time.monotonic()`):
    the request then ends as its last try did (a 429 or 5xx answer, raised by the read; a
    connection's error)."""
    session = Client(raise_for_status=False).session
    send = session.send  # (tenacity's wrapper of the session's own: `retry_with` copies its policy)

    def past_deadline(state: Any) -> bool:  # (tenacity's RetryCallState: the wait is known by now)
        return time.monotonic() + state.upcoming_sleep > deadline

    session.send = send.retry_with(stop=send.retry.stop | past_deadline)  # type: ignore[attr-defined]
    return session


@dataclass
class Tick:
    """A tick's HTTP session (`tick_session`), and the 429 that ended its reads, if one did."""

    session: Session
    limited: Optional[Response] = None


def rested(state: EventsSensorCursor, response: Response, *, read: bool = True) -> str:
    """`state` rests until the end of the wait the 429 `response` asks for (`rest_seconds`); a
    phrase saying so. A tick that `read` nothing still ticked: its clocks are kept (`ticked_at`,
    the API's from the 429's `Date`), so a rate limit of minutes is not taken for a stop."""
    state.rest_until = time.time() + rest_seconds(response)
    if not read:
        state.ticked_at = [api_now_ns(response) / NS_PER_SECOND, _now()]
    kept = "what this tick read before it is kept" if read else "this tick read nothing, its cursor is kept"
    return f"{limited_line(response)}: {kept}; no request until {_utc(state.rest_until)}, then the ticks read on"


def limited_line(response: Response) -> str:
    return (f"the API answered 429 (rate limited, Retry-After {response.headers.get('Retry-After') or 'not given'}) "
            f"on the event stream, a wait past this tick's {TICK_WAIT_SECONDS} s")


# Paddle blocks a client past its rate limit for 60 s (docs/api.md): the wait of a 429 that says none
BLOCK_SECONDS = 60.0


def rest_seconds(response: Response) -> float:
    """How long a 429 `response` asks the client to wait: its `Retry-After`, a number of seconds
    or an HTTP date (by the API's clock, its `Date`), capped as a run's retries cap it
    (`runtime.request_max_retry_delay`); Paddle's block (`BLOCK_SECONDS`) when it gives none that
    can be read."""
    value = (response.headers.get("Retry-After") or "").strip()
    cap = float(dlt.config.get("runtime.request_max_retry_delay", float)
                or RuntimeConfiguration.request_max_retry_delay)
    try:
        wait = float(value) if value.isdigit() else (
            email.utils.parsedate_to_datetime(value).timestamp() - api_now_ns(response) / NS_PER_SECOND)
    except (TypeError, ValueError, IndexError, OverflowError):
        wait = BLOCK_SECONDS
    return max(0.0, min(wait, cap))


def _utc(seconds: float) -> str:
    return format_ns(int(seconds * NS_PER_SECOND), 0)


def window_key(token: str) -> str:
    """The key-value storage's key of the window's ids written under `token` (`kept`, 32 hex
    digits): its first 8 name the sensor's keys (drawn when its first window began: two sensors
    on one instance keep apart), the next 3 one of its 4,096 slots, so a sensor keeps at most
    that many keys, whatever it writes (the key-value storage has no delete)."""
    return f"{WINDOW_KEY}/{token[:8]}/{token[8:11]}"


# the late-event window as kept in the key-value storage: its ids, and the digests of the events
# without a string id its reads listed, each with an id its place in the stream is known to be
# at or before (None: not known yet; `_unseen_unkeyed`)
Window = tuple[set[str], dict[str, Optional[str]]]


def _load_window(instance: Any, state: EventsSensorCursor) -> Optional[Window]:
    """The window that goes with `state` (written under its token), or None when the key-value
    storage holds none (none yet, blanked, or its slot written since under another token). The
    key of the token `state` replaced (`parent`) is blanked: `state` was kept, so no tick loads
    those ids again."""
    storage = instance.run_storage
    if state.parent:  # (never the cursor's own key: a write goes to another slot, `_store_window`)
        storage.set_cursor_values({window_key(state.parent): ""})
    state.parent = None
    value = storage.get_cursor_values({window_key(state.kept)}).get(window_key(state.kept)) if state.kept else None
    kept = json.loads(value) if value else {}
    if kept.get("token") != state.kept or not state.floor:
        return None
    return set(kept["ids"]), dict(kept.get("unkeyed") or {})


def _store_window(instance: Any, state: EventsSensorCursor, window: Window) -> None:
    """Write `window` under a new token, in another slot than the cursor's; the cursor's from now
    on (its old one: `parent`)."""
    ids, unkeyed = window
    token = (state.kept or uuid4().hex)[:8] + uuid4().hex[:24]
    while state.kept and window_key(token) == window_key(state.kept):
        token = token[:8] + uuid4().hex[:24]
    instance.run_storage.set_cursor_values(
        {window_key(token): json.dumps({"token": token, "ids": sorted(ids), **({"unkeyed": unkeyed} if unkeyed else {})},
                                       sort_keys=True, separators=(",", ":"))})
    state.kept, state.parent = token, state.kept


def _new_events(
    base_url: str, api_key: str, state: EventsSensorCursor, window: Optional[Window], tick: Optional[Tick],
    budget: int = TICK_PAGES, first_pages: int = WINDOW_PAGES,
) -> tuple[list[dict], Window, list[dict]]:
    """The events this tick has not seen, oldest first, the window after it (`window`: before it;
    None: no window yet, one begins), and the events without an id read for the first time
    (`_unseen_unkeyed`). It reads the events after the cursor, and the
    late-event window behind it on from where the last tick's read stopped (`reached`), up to the
    cursor: an id read there that `window` does not hold became visible late, and is new to it,
    but for the ids up to `baseline` (never read before: taken as they are). A window begins with
    its first read, `first_pages` in the tick that begins it: a window within them has no
    baseline. A read that reaches the cursor ends; the next starts at the lag before it
    began, or before the API's clock when that is lower, never below `kept_from` (the ids kept
    are complete from there: a clock stepping back reads none pruned again), so an event visible
    late, within the lag of its id, is read by the read in progress or the next. It makes `budget`
    requests at most (`TICK_PAGES`), a page of them left to the window's read; a window's first
    read takes `first_pages` of them in the tick that begins it."""
    lag_ns = _lag_ns()
    cursor = state.event_id or ""
    going = lag_ns > 0 and window is not None and state.floor is not None and state.read_at is not None
    ids = set(window[0]) if going and window else set()
    known = _known_unkeyed(state, window)
    start = (state.reached or state.floor or "") if going else ""
    # the rest of the window's read fits a page: one read takes it and what is new (not while ids
    # up to the baseline lie ahead: they were never read, their number is not known)
    # (the events without an id known that may lie in it: counted too)
    merged = going and sum(1 for i in ids if start < i <= cursor) + sum(
        1 for at in (known or {}).values() if at is None or at > start) < EVENTS_PAGE_SIZE and not (
        state.baseline and start < state.baseline)
    after = min(start, cursor) if merged else cursor
    # (a page of the tick's requests is left to the window's read: `TICK_PAGES`)
    read, now_ns, complete, loose, used = events_after(
        base_url, api_key, after or None, max_pages=budget if merged or lag_ns <= 0 else budget - WINDOW_PAGES,
        tick=tick)
    if tick is not None and tick.limited is not None and not used:  # (not a page: the tick ends, keeping nothing)
        raise HTTPError(response=tick.limited)
    state.behind = not complete
    new = [e for e in read if e["event_id"] > cursor]
    now = now_ns / NS_PER_SECOND  # the API's clock (its Date)
    here, keep_s = _now(), max(lag_ns / NS_PER_SECOND, DEFAULT_VISIBILITY_LAG_SECONDS)
    if going and state.ticked_at and now - state.ticked_at[0] > keep_s and here - state.ticked_at[-1] > keep_s:
        # stopped for longer than the kept ids span (the sensor stopped, the daemon down): the
        # window kept is of before; read on, it would span the stop until that read ended (a
        # tick per 200 events of it, every id of it written each tick). It begins again, as on
        # a cleared cursor, and what became visible late meanwhile is owed a run of every table
        # (which reads the stream from each table's cursor), keyed by the instant. By both
        # clocks: one answer of the API's off (a `Date` stepped) is no stop, nor a patched clock
        going = merged = False
        ids = set()
        state.owed, state.tables = True, list(STREAM_TABLES)
        state.newest_new = max(state.newest_new or "", f"~stopped-{int(now * 1000)}")
    state.ticked_at = [now, here]
    again, done = (read, complete or bool(new)) if merged else ([], False)
    if lag_ns > 0 and not going:  # the window begins, the lag before now; what is up to the cursor was never read
        start = window_floor(now_ns, lag_ns)
        state.floor, state.read_at, state.reached, state.baseline = start, now, None, cursor or None
    if lag_ns > 0 and not merged and (tick is None or tick.limited is None):
        pages = min(budget - used,
                    WINDOW_PAGES + WINDOW_PAGES_PER_NEW * len(new) // EVENTS_PAGE_SIZE if going else first_pages)
        again, _, done, loose_again, _ = (
            events_after(base_url, api_key, start, max_pages=pages, until=cursor, tick=tick)
            if start < cursor else ([], 0, True, [], 0))
        loose = loose + loose_again
    late = [e for e in again if e["event_id"] <= cursor and e["event_id"] not in ids
            and not (state.baseline and e["event_id"] <= state.baseline)]
    ids.update(e["event_id"] for e in again if e["event_id"] <= cursor)
    ids.update(e["event_id"] for e in new)
    fresh, unkeyed = _unseen_unkeyed(known, loose, after if complete else None)
    newest_id = new[-1]["event_id"] if new else cursor
    if lag_ns <= 0:  # no window: the cursor keeps the digests, until the cursor passes them
        state.floor = state.read_at = state.reached = state.baseline = state.kept_from = None
        state.unkeyed = sorted([k, at] for k, at in unkeyed.items() if at is None or at > newest_id)
        return sorted(late + new, key=lambda e: e["event_id"]), (set(), {}), fresh
    kept_from = (state.kept_from if going else None) or state.floor or ""
    floor = state.floor or ""
    if done:  # the read reached the cursor: the next starts at the lag before it began
        floor = window_floor(int(state.read_at * NS_PER_SECOND), lag_ns)
        state.read_at, state.reached, state.baseline = now, None, None
    elif again:
        state.reached = max(start, again[-1]["event_id"])
    # the start moves back to the lag before the API's clock when that is below it (the clock
    # stepped back, the lag grew), never below where the kept ids are complete from: every id
    # between is kept (seen) or unseen (late), none pruned is read again
    state.floor = max(kept_from, min(floor, window_floor(now_ns, lag_ns)))
    # the kept ids are pruned at the lag (the default's at least) before the earlier of the API's
    # clock and the newest id's own instant: a clock ahead for a while, or a lag lowered, prunes
    # none of the ids a late event would need once they are right again
    newest = id_ns(new[-1]["event_id"] if new else cursor) if (new or cursor) else None
    keep_ns = max(lag_ns, DEFAULT_VISIBILITY_LAG_SECONDS * NS_PER_SECOND)
    state.kept_from = max(kept_from, min(state.floor, window_floor(min(now_ns, newest or now_ns), keep_ns)))
    # the window keeps the digests (the cursor none), each until no read can list its event again:
    # every read starts at the cursor or at `kept_from` or after
    state.unkeyed = []
    lowest = min(state.kept_from, newest_id)
    return sorted(late + new, key=lambda e: e["event_id"]), (
        {i for i in ids if i >= state.kept_from},
        {k: at for k, at in unkeyed.items() if at is None or at > lowest}), fresh


def _known_unkeyed(state: EventsSensorCursor, window: Optional[Window]) -> Optional[dict[str, Optional[str]]]:
    """The digests of the events without a string id read before (`Window`), from the window kept
    and the cursor (no window: [digest, id] pairs; a cursor of before: digests alone, where their
    events lie not known); None: a cursor of None's first read."""
    if state.unkeyed is None:
        return None
    known = dict(window[1]) if window is not None else {}
    for entry in state.unkeyed:
        key, at = (entry, None) if isinstance(entry, str) else entry
        known.setdefault(key, at)
    return known


def _unseen_unkeyed(
    known: Optional[dict[str, Optional[str]]], loose: list[list[Any]], listed_after: Optional[str]
) -> tuple[list[dict], dict[str, Optional[str]]]:
    """Of the events without a string id a tick read (`loose`, each with the first id its read
    listed after it), those it never read before (not in `known`, by their digests; None: a
    cursor of None's first read, which takes those it finds as read), and the digests known
    after it. Such an event has no place in the stream's order (the cursor cannot pass it, the
    window cannot hold it), so a read lists it again while it lies after where the read starts:
    its digest says it was read (the sync keeps them alike: `source.feed`). Each digest is kept
    with an id its event lies at or before, the lowest known: the first id listed after it, or,
    when the read of what is new read to the stream's end from `listed_after` without listing
    it, that id; once no read can start below it, the digest is dropped (`_new_events`)."""
    first = known is None
    kept = dict(known or {})
    fresh, listed = [], set()
    for event, before in loose:
        key = digest(event)
        listed.add(key)
        if key not in kept:
            fresh.append(event)
            kept[key] = before
        elif before is not None:
            kept[key] = min(before, kept[key] or before)
    if listed_after is not None:
        kept.update({k: listed_after for k, at in kept.items() if at is None and k not in listed})
    return ([] if first else fresh), kept


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
def latest_event_id(base_url: str, api_key: str, session: Optional[Session] = None) -> Optional[str]:
    """The newest event's id that has one (newest first: the API's default order), or None when
    the API has no events, or none with an id in its newest page (`base_url`: the API's root,
    prefix included). A page of one first; when that event has no id, a page of 200."""
    for per_page in (1, EVENTS_PAGE_SIZE):
        response = event_client(base_url, api_key, session).get(EVENTS_PATH, params={"per_page": per_page})
        response.raise_for_status()
        page = response.json().get("data") or []
        data = [e for e in page if keyed(e)]
        if data or len(page) < per_page:
            break
    return data[0]["event_id"] if data else None


def events_after(
    base_url: str, api_key: str, after: Optional[str], max_pages: int = 10, until: Optional[str] = None,
    tick: Optional[Tick] = None,
) -> tuple[list[dict[str, Any]], int, bool, list[list[Any]], int]:
    """Events newer than `after`, oldest first (at most `max_pages` pages of 200, then on to a
    page with an id in it: a read that goes on after its last id must not stop among events
    without one, or the next, from that id, would stop there again; with `until`, up to the page
    that reaches that id), the API's clock when the read began (its first
    page's `Date`), whether it read to the stream's end or `until` (False: `max_pages` cut it),
    the events it listed without a string id (apart: one cannot be a cursor), each with the
    first id the read listed after it (None: none), which its place in the stream is before, and
    its requests. In a `tick`, a 429 it could not wait out ends the read there, as `max_pages`
    would (False), the answer kept in `tick.limited`."""
    params: dict[str, Any] = {"order_by": "id[ASC]", "per_page": EVENTS_PAGE_SIZE}
    if after:
        params["after"] = after
    events: list[dict[str, Any]] = []
    loose: list[list[Any]] = []
    now: Optional[int] = None
    pages = 0
    read = event_client(base_url, api_key, tick.session if tick else None).paginate(EVENTS_PATH, params=params)
    while True:
        try:
            page = next(read)
        except StopIteration:
            break
        except HTTPError as exc:
            if tick is None or exc.response is None or exc.response.status_code != 429:
                raise
            tick.limited = exc.response
            return events, now or time.time_ns(), False, loose, pages
        pages += 1
        now = now or api_now_ns(page.response)
        listed = len(events)
        for event in page:
            if keyed(event):
                events.append(event)
                for before in reversed(loose):
                    if before[1] is not None:
                        break
                    before[1] = event["event_id"]
            elif isinstance(event, dict):
                loose.append([event, None])
        if until and events and events[-1]["event_id"] >= until:
            break
        if pages >= max_pages and len(events) > listed:
            return events, now or time.time_ns(), False, loose, pages
    return events, now or time.time_ns(), True, loose, pages
