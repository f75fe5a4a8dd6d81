"""Adversary 11 of the events sensor's wait on the API: a tick waits on the API's retries only within
`TICK_WAIT_SECONDS` (40 s) of its start (`tick_session`), and a 429 whose `Retry-After` is longer
ends its reads and rests the ticks until then (`EventsSensorCursor.rest_until`), against what the
API may do (docs/api.md, "Authentication, errors, limits": 240 requests a minute per IP address, one
more answered 429 with `Retry-After` and the address blocked 60 s; 5xx faults; its clock in `Date`):
a 429 on the late-event window's read after the read of what is new succeeded, a block while the run
the sensor follows failed, a block on a sensor's first tick, a share of the limit smaller than a
tick's read, and `Retry-After` as an HTTP date, empty, or huge.

Against 4978337 (a tick met by such a 429 kept nothing it read; the rest was the Retry-After as
given, by this machine's clock, none when it could not be read) five findings failed: they now pass,
each docstring saying what was measured then and what holds now. Each test states a claim
(docs/api.md's sentences on the tick's wait, README's rate-limit row in "When something goes wrong")
or a harm, and what happened (measured numbers in each docstring). Ticks are evaluated, no run is
executed; a block the tick cannot wait out is the sandbox's own (`rate_limit`, `rate_limit_block`)
or an injected 429 with `fault_retry_after` as its `Retry-After`; no test waits a block out: the
cursor's `rest_until` is moved, or the wait lowered.
"""

from __future__ import annotations

import email.utils
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from analytics_dagster import automation
from analytics_dagster.automation import EventsSensorCursor
from analytics_dagster_tests.conftest import Admin, poll
from analytics_dagster_tests.test_automation import _use_the_clients_one_request, evaluate, rest_over
from analytics_dagster_tests.test_automation_adversary_2 import add_run
from analytics_dagster_tests.test_automation_adversary_3 import api_clock


def statuses(admin: Admin) -> dict[str, int]:
    """The API's answers since its stats were reset, by status."""
    return admin.get("stats")["by_status"]


def answer_429(admin: Admin, retry_after: str, count: int = 50, after_requests: int = 0) -> None:
    """From now (after `after_requests` more requests), the event stream answers `count` requests
    429 with `Retry-After: <retry_after>` (the API's fault 429's header); its stats reset."""
    admin.post("config", fault_retry_after=retry_after)
    admin.post("stats/reset")
    admin.post("inject", resource="events", kind="status", status=429, count=count, after_requests=after_requests)


@pytest.mark.usefixtures("backfilled")
def test_a_429_on_the_windows_read_keeps_what_is_new_and_the_tick_after_the_wait_reads_the_window_on(
    warehouse: Path, admin: Admin
) -> None:
    """Claim (docs/api.md, "Authentication, errors, limits": a 429 whose Retry-After is longer
    than a tick waits ends the tick's reads, what it read before kept, "and the ticks until then
    make no request"). The API: 300 changes; the tick's read of what is new (2 pages) is
    answered, the late-event window's read behind it meets a 429, Retry-After 60. Held: the tick
    made 3 requests (2 answered, one 429), requests one run keyed by the newest event, and rests
    60 s (`rest_until`); before (4978337), it kept nothing and read the 300 again after the wait.
    The tick after the wait reads the window on and requests nothing more (no late event)."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=10, updates=300)
    cursor = evaluate(instance, cursor).cursor  # (its window now holds 300 ids: two reads a tick)
    admin.post("advance", seconds=10, updates=300)
    answer_429(admin, "60", count=1, after_requests=3)
    newest = admin.truth("events")[-1]["event_id"]
    blocked = evaluate(instance, cursor)
    assert [r.run_key for r in blocked.run_requests] == [f"events-up-to-{newest}"]
    assert statuses(admin) == {"200": 2, "429": 1}
    state = EventsSensorCursor.decode(blocked.cursor)
    assert state.event_id == newest and state.reached == EventsSensorCursor.decode(cursor).reached
    assert time.time() + 50 < state.rest_until <= time.time() + 60
    assert not evaluate(instance, blocked.cursor).run_requests and statuses(admin) == {"200": 2, "429": 1}

    admin.post("stats/reset")
    add_run(instance, blocked.run_requests[0], DagsterRunStatus.SUCCESS)
    after = evaluate(instance, rest_over(blocked.cursor))
    assert not after.run_requests, after.skip_message
    assert EventsSensorCursor.decode(after.cursor).rest_until is None
    assert 1 <= statuses(admin)["200"] and set(statuses(admin)) == {"200"}


@pytest.mark.usefixtures("backfilled")
def test_a_run_that_failed_before_a_block_is_run_again_after_it(warehouse: Path, admin: Admin) -> None:
    """Claim (README's sensor row: a run the sensor requested that failed is requested again "at
    the next tick"; docs/api.md, "Authentication, errors, limits": the blocked tick keeps its
    cursor). The API: 5 changes, their run fails; 5 more, then the client is blocked 60 s. Held:
    the blocked tick is skipped with the cursor that follows the failed run (its run key, no
    failure counted yet); the tick after the wait finds the run failed and requests its retry
    (`...-after-1-failed-...`), of every change up to the newest."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=10, updates=5)
    first = evaluate(instance, cursor)
    add_run(instance, first.run_requests[0], DagsterRunStatus.FAILURE)
    admin.post("advance", seconds=10, updates=5)
    _use_the_clients_one_request(admin, block=60)
    blocked = evaluate(instance, first.cursor)
    assert not blocked.run_requests and statuses(admin) == {"429": 1}, blocked.skip_message
    state = EventsSensorCursor.decode(blocked.cursor)
    assert state.run_key == first.run_requests[0].run_key and state.failures == 0

    admin.post("config", rate_limit=0)
    after = evaluate(instance, rest_over(blocked.cursor))
    newest = admin.truth("events")[-1]["event_id"]
    assert [r.run_key.split("-after-")[0] for r in after.run_requests] == [f"events-up-to-{newest}"]
    assert after.run_requests[0].tags["analytics/after_failed_runs"] == "1"


@pytest.mark.usefixtures("backfilled")
def test_a_first_tick_in_a_block_asks_again_at_every_tick(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/api.md, "Authentication, errors, limits": the ticks of a block make no request
    "but a sensor's first tick, whose cursor is empty: it asks again at the next"). The API: the
    client blocked 60 s when the sensor is turned on. Held, as documented: each first tick makes
    one request (429, Retry-After 60; no retry: its wait would pass the tick's) and keeps no
    cursor, so the next asks again: 3 ticks, 3 requests into the block (a tick every 10 s: 6 in
    a block of 60 s). Its skip message said it "keeps its cursor; the ticks after the wait read
    on", which a first tick does not do; it now says the next asks again."""
    instance = DagsterInstance.ephemeral()
    _use_the_clients_one_request(admin, block=60)
    for asked in (1, 2, 3):
        result = evaluate(instance, None)
        assert result.cursor is None and not result.run_requests and "Retry-After" in result.skip_message
        assert "this first tick read nothing; the next asks again" in result.skip_message
        assert statuses(admin) == {"429": asked}


@pytest.mark.usefixtures("backfilled")
def test_a_share_of_the_limit_below_a_ticks_read_still_gets_the_sensor_past_a_burst(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Harm (docs/api.md, "Authentication, errors, limits": the limit is per IP address, shared
    with "your product's own backend"; README's rate-limit row: "the ticks after the wait read
    on"). The API: 1,000 changes (5 pages); the backend leaves this client 4 requests of the
    limit, and blocks it past them (here 2 s, the tick's wait lowered to 1 s: Paddle's 60 s
    against 40). Measured: 4 ticks after each block's end, each reads 4 pages (answered), meets
    the 429 on the 5th and throws the 4 pages away: 16 pages read, 4 blocks, the cursor never
    moved, no run, as long as the backend's load lasts; each block is brought on by the
    sensor's re-read, and on Paddle blocks the backend too (the address), 60 s each time. Before
    4978337 no better (each tick waited the block out, past Dagster's 60 s: its message). A
    tick that kept what it read before the 429 (as a read stopped at `TICK_PAGES` does:
    `behind`) would be past the burst in the 2nd tick.
    Now the tick keeps what it read before the 429, as a read stopped at `TICK_PAGES` does: the
    first tick reads 4 pages, keeps them and requests the run; the next ones read on."""
    monkeypatch.setattr(automation, "TICK_WAIT_SECONDS", 1)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", seconds=10, updates=1000)
    admin.post("config", rate_limit=4, rate_limit_block=2)
    admin.post("stats/reset")
    newest, keys = admin.truth("events")[-1]["event_id"], []
    for _ in range(4):
        result = evaluate(instance, cursor)
        keys += [r.run_key for r in result.run_requests]
        cursor = result.cursor
        state = EventsSensorCursor.decode(cursor)
        if state.rest_until:  # (the block the sandbox set ends with it: polled, never slept)
            poll(lambda: time.time() >= state.rest_until, timeout=10)
    assert f"events-up-to-{newest}" in keys or EventsSensorCursor.decode(cursor).event_id == newest, (
        f"runs {keys}; answers {statuses(admin)}")


@pytest.mark.usefixtures("backfilled")
def test_a_retry_after_date_is_read_by_the_apis_clock(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/api.md, "Authentication, errors, limits": a 429 whose Retry-After is longer
    "ends the tick ... and the ticks until then make no request"; `retry_after_seconds` reads "a
    number of them, or an HTTP date"). The API: its clock (`Date`) behind this machine's (the
    sandbox's by 3.2 years; any difference past the wait does it), a 429 whose Retry-After is
    the date 60 s after its `Date`. Measured: dlt's retry reads the date as past and retries on
    its backoff (2, 4, 8 s), and `retry_after_seconds` reads 0 s: no `rest_until`; with the
    tick's 40 s, 4 requests a tick into the block, each tick 14 s (here, the wait lowered to
    5 s: 2 requests); the next tick asks again (2 more). With the API's clock ahead, the other
    way: the sensor rests 60 s plus the difference.
    Now the date is read against the answer's `Date`: the sensor rests 60 s, and the next tick
    asks nothing."""
    monkeypatch.setattr(automation, "TICK_WAIT_SECONDS", 5)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    answer_429(admin, email.utils.formatdate(api_clock(admin) + 60, usegmt=True))
    blocked = evaluate(instance, cursor)
    assert not blocked.run_requests, blocked.skip_message
    asked = sum(statuses(admin).values())
    rest_until = EventsSensorCursor.decode(blocked.cursor).rest_until
    evaluate(instance, blocked.cursor)
    assert sum(statuses(admin).values()) == asked and rest_until and rest_until > time.time() + 50, (
        f"rest_until {rest_until}; answers {statuses(admin)}")


@pytest.mark.usefixtures("backfilled")
@pytest.mark.parametrize("retry_after", ["", "soon"])
def test_a_429_without_a_readable_retry_after_rests_the_documented_block(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch, retry_after: str
) -> None:
    """Harm (docs/api.md, "Authentication, errors, limits": one request past the limit gets a 429
    "and the address is blocked for 60 s"). The API: a 429 with an empty Retry-After (as none: a
    proxy's, a gateway's) or one no parser reads. Measured: dlt retries on its backoff (2, 4,
    8 s), the tick takes 14.0 s and makes 4 requests, all 429, and is skipped saying the wait is
    "longer than a tick waits (40 s)" with no `rest_until`; every tick after does the same: 4
    requests into the block each 14 s, 16 in its 60 s (here, the wait lowered to 5 s: 2 a
    tick).
    Now such a 429 rests the sensor for Paddle's block, 60 s (`BLOCK_SECONDS`): the next tick
    asks nothing."""
    monkeypatch.setattr(automation, "TICK_WAIT_SECONDS", 5)
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    answer_429(admin, retry_after)
    blocked = evaluate(instance, cursor)
    assert not blocked.run_requests, blocked.skip_message
    asked = sum(statuses(admin).values())
    evaluate(instance, blocked.cursor)
    assert sum(statuses(admin).values()) == asked, statuses(admin)


@pytest.mark.usefixtures("backfilled")
def test_a_huge_retry_after_does_not_fail_every_tick_after_it(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/api.md, "Authentication, errors, limits": the ticks until the wait is over
    "make no request", each skipped, saying so). The API: a 429 with Retry-After
    100000000000000000000 (an integer of seconds, as HTTP allows: no bound). Measured: the tick
    is skipped (1 request; dlt caps the wait at 60 s, past the tick's) and keeps `rest_until`
    1e20 s on; the next tick raises OverflowError ("timestamp out of range for platform time_t")
    formatting it for its skip message, and so does every tick after: the sensor fails each
    tick, for good, until its cursor is edited or cleared.
    Now the rest is capped as a run's wait is (60 s): the next tick is skipped, resting."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    answer_429(admin, "100000000000000000000")
    blocked = evaluate(instance, cursor)
    assert not blocked.run_requests and statuses(admin) == {"429": 1}, blocked.skip_message
    resting = evaluate(instance, blocked.cursor)
    assert not resting.run_requests and statuses(admin) == {"429": 1}


@pytest.mark.usefixtures("backfilled")
def test_a_retry_after_of_a_day_rests_the_sensor_no_longer_than_a_run_waits(warehouse: Path, admin: Admin) -> None:
    """Harm (README's rate-limit row: a run's retries obey Retry-After "capped at
    `request_max_retry_delay`", 60 s; docs/api.md, "Authentication, errors, limits": Paddle
    blocks 60 s). The API: one 429 with Retry-After 86400 (a gateway's, a misconfigured proxy's),
    then answers again at once. Measured: the sensor rests 86,400 s: no request, no run for a
    day of changes (the schedules ship stopped), each tick skipped until then; a run launched
    meanwhile would have waited 60 s and read on.
    Now the rest is capped at `request_max_retry_delay` (60 s), as a run's wait is."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    answer_429(admin, "86400", count=1)
    blocked = evaluate(instance, cursor)
    assert not blocked.run_requests, blocked.skip_message
    rest = EventsSensorCursor.decode(blocked.cursor).rest_until - time.time()
    assert rest <= 60, f"the sensor rests {rest:.0f} s"


@pytest.mark.usefixtures("backfilled")
def test_faults_at_15_percent_fail_no_bulk_tick_under_the_ticks_wait(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/api.md, "Authentication, errors, limits": "a page answered 429 or 5xx is
    retried as every request is (up to 3 times ...)"; a tick waits on a retry only while the wait
    ends within 40 s of its start). The API: 15% of requests answered 429 (Retry-After 1), 500,
    502, 503 or 504 (the sandbox's faults: at most 2 in a row per request), 1,000 changes before
    each tick. Held: no tick failed, the cursor reached the newest event. Measured over 12 such
    ticks: 0 failed, 10 to 15 requests a tick (up to 5 retries), the longest 11.4 s (its retries'
    backoff), far from the 40 s: the tick's wait changed nothing here (the same requests as the
    session of before)."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("config", fault_rate=0.15)
    answers = []
    for _ in range(6):
        admin.post("advance", seconds=10, updates=1000)
        admin.post("stats/reset")
        result = evaluate(instance, cursor)
        assert result.run_requests, result.skip_message
        cursor = result.cursor
        answers.append(statuses(admin))
    assert any(set(a) != {"200"} for a in answers), answers  # (faults were met)
    assert EventsSensorCursor.decode(cursor).event_id == admin.truth("events")[-1]["event_id"]
