"""The events sensor as b7969eb left it (issue #30): the digests of the events without a string id
it kept in its cursor (`unkeyed`, the newest 100), and a cursor of None whose first
tick begins the window, against events the API can list (docs/api.md, "The event stream": nothing
guarantees an event is well formed): one without an id at the stream's head when the sensor is
turned on, more than 100 of them within the late-event window, one listed just before the
sensor's code is upgraded from a cursor that kept no digests; and a cursor cleared while the
sensor's run is in flight, a change owed (one without an id, or a late one).

Each test states a claim of README's sensor row or docs/design.md ("Late events", "The events
sensor, and why its runs take every table with events") and what broke it (measured numbers in
each docstring), or that it held. Ticks are evaluated every 10 s of the API's clock, as the
daemon would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is executed: the sensor's requests are
the claim. Fixed since (the docstrings say what was measured before): the newest event with an
id found at a first start (a page of 200 more when the newest has none); a cursor of before
owes a run for the events without an id its first read finds; the run owed after a cleared
cursor's run in flight keyed by the reset; more than 100 of them in the window (their digests
kept with the window's ids; a cursor of the code that kept them in it is still read); a read of
the window stuck on a page of them. The page per 200 of them that every tick reads again is now
the claim (README, docs/design.md), tested as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from analytics_dagster.automation import EventsSensorCursor, _load_window, _store_window
from analytics_dagster.source.events import EVENTS_PAGE_SIZE
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate
from analytics_dagster_tests.test_automation_adversary_2 import add_run, hold_a_change
from analytics_dagster_tests.test_automation_adversary_3 import BURST, tick
from analytics_dagster_tests.test_automation_adversary_4 import launch, the_windows_first_read_ended, ticks_for
from analytics_dagster_tests.test_automation_adversary_6 import WAIT_SECONDS

MAX_UNKEYED = 100  # the digests the cursor kept before b7969eb's follow-up (the newest 100)


def _post_without_id(admin: Admin, rows: list[dict], customer: int, name: str) -> None:
    """`rows[customer]`'s (modulo their number) `customer.updated`, named `name`, without its `event_id`."""
    admin.post("event", event_type="customer.updated", data={**rows[customer % len(rows)], "name": name},
               drop=["event_id"])


def post_without_id(admin: Admin, customer: int, name: str) -> None:
    """A customer's `customer.updated` whose `event_id` is missing, listed last in the stream."""
    _post_without_id(admin, admin.truth("customers"), customer, name)
    assert "event_id" not in admin.truth("events")[-1]


def post_without_ids(admin: Admin, count: int) -> None:
    """`count` customers' `customer.updated` whose `event_id` is missing ("Without an id <n>"),
    listed last in the stream (the customers read once: each read of the truth lists it whole)."""
    rows = admin.truth("customers")
    for n in range(count):
        _post_without_id(admin, rows, n, f"Without an id {n}")
    assert not any("event_id" in e for e in admin.truth("events")[-count:])


@pytest.mark.parametrize("newest", ["with an id", "without an id"])
@pytest.mark.usefixtures("backfilled")
def test_a_first_start_only_sets_the_cursor(warehouse: Path, admin: Admin, newest: str) -> None:
    """Claim (docs/design.md, "The events sensor, and why its runs take every table with events":
    the first tick of a cursor of None sets it to the stream's end and begins the window, "three
    requests"; on a first start "that is all"; README: "Its first tick only sets its cursor").
    The API: 2,100 changes (an account's last 90 days), then, as the sensor is turned on, the
    stream's newest event is a customer's `customer.updated` `newest` its `event_id`. Held with an
    id: 3 requests, then 2 a tick, no run. Measured without one: the first tick made 13 requests
    of the events (the stream, 2,279 events, read from its start), its cursor's `event_id` None;
    the next made 12 more and requested a run `events-up-to-<the newest with an id>` for every
    event of the stream, none changed since the sensor was turned on (at 10,000 events or more:
    50 requests a tick, the cap of then, until read: 300 a minute where Paddle allows 240)."""
    instance = DagsterInstance.ephemeral()
    admin.post("advance", seconds=0, updates=BURST, same_instant=True)
    customer = admin.truth("customers")[0]["id"]
    if newest == "with an id":
        admin.post("mutate", resource="customers", key=customer, set={"name": "Newest, with an id"})
    else:
        post_without_id(admin, 0, "Newest, without an id")
    retained = len(admin.truth("events"))
    admin.post("stats/reset")
    first = evaluate(instance, None)
    costs, keys, cursor = [admin.get("stats")["by_resource"].get("events", 0)], [], first.cursor
    for _ in range(6):
        result, cost = tick(admin, instance, cursor)
        costs, keys, cursor = costs + [cost], keys + launch(instance, result), result.cursor
    started = EventsSensorCursor.decode(first.cursor).event_id
    # (the newest without an id: one page of 200 more finds the newest with one)
    assert started is not None and costs[0] <= (3 if newest == "with an id" else 4) and not keys, (
        f"first tick: cursor {started}; ticks' requests of the events {costs} ({retained} events in "
        f"the stream); runs requested {keys}")


@pytest.mark.parametrize("then", ["nothing", "an event with an id"])
@pytest.mark.usefixtures("backfilled")
def test_more_events_without_an_id_than_the_cursor_keeps_get_one_run(warehouse: Path, admin: Admin, then: str) -> None:
    """Claim (docs/design.md, "Late events", an event without a string id: one the sensor reads
    for the first time is new, "and owed a run once"; README: "One run at a time"). The API: 101
    customers' `customer.updated` without an `event_id`, listed at once (an API version, or a
    bug, that drops the field from a type of event: 101 in the 600 s of the window). Measured: 90
    runs requested in the 900 s that followed, a run at every tick while they stayed in the
    window (`events-up-to-~<digest>`, each keyed by the one digest the tick before dropped; 89
    keys: one repeated a key launched before, so that tick's request launched nothing), where
    one was owed. Fixed: the digests are kept with the window's ids in the key-value storage, each
    until no read can list its event again (`_unseen_unkeyed`), not the newest 100 in the cursor;
    `then` an event with an id follows them (the same run), the window keeps them as long as it
    keeps that id (the lag before the newest id, 600 s): none kept once a change 900 s later
    moved it on (its own run)."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    post_without_ids(admin, MAX_UNKEYED + 1)
    if then == "an event with an id":
        admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"], set={"name": "After them"})
    keys, cursor = ticks_for(admin, instance, cursor, WAIT_SECONDS)
    assert len(keys) == 1, (f"{MAX_UNKEYED + 1} events without an id: {len(keys)} runs requested "
                            f"({len(set(keys))} keys) {keys[:4]}...")
    if then == "an event with an id":
        admin.post("mutate", resource="customers", key=admin.truth("customers")[1]["id"], set={"name": "Later"})
        more, cursor = ticks_for(admin, instance, cursor, 20)
        assert len(more) == 1, f"a change 900 s later: runs {more}"
    state = EventsSensorCursor.decode(cursor)
    window = _load_window(instance, state)
    assert window is not None and not state.unkeyed
    assert len(window[1]) == (MAX_UNKEYED + 1 if then == "nothing" else 0), f"digests kept: {len(window[1])}"


@pytest.mark.usefixtures("backfilled")
def test_with_no_window_the_cursor_keeps_the_digests_until_it_passes_them(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim (docs/design.md, "Late events": an event without a string id is "owed a run once";
    with no window, a lag of 0, the cursor keeps the digests). The operator: the lag set to 0
    (`event_visibility_lag_seconds`). The API: 101 customers' `customer.updated` without an
    `event_id`, then nothing for a minute; then a change with an id after them. One run for the
    101 and one for the change; the cursor keeps the 101 digests while they are after it, none
    once the change's id moved it past them."""
    monkeypatch.setenv("SOURCES__ANALYTICS__EVENT_VISIBILITY_LAG_SECONDS", "0")
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    post_without_ids(admin, MAX_UNKEYED + 1)
    keys, cursor = ticks_for(admin, instance, cursor, 60)
    state = EventsSensorCursor.decode(cursor)
    assert len(keys) == 1 and state.floor is None and len(state.unkeyed or ()) == MAX_UNKEYED + 1, (
        f"runs {keys}, digests in the cursor {len(state.unkeyed or ())}")
    admin.post("mutate", resource="customers", key=admin.truth("customers")[0]["id"], set={"name": "After them"})
    more, cursor = ticks_for(admin, instance, cursor, 20)
    state = EventsSensorCursor.decode(cursor)
    assert len(more) == 1 and state.unkeyed == [], f"runs {more}, digests in the cursor {state.unkeyed}"


@pytest.mark.usefixtures("backfilled")
def test_the_digests_a_cursor_of_before_kept_are_still_known(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events": an event without a string id is "owed a run once").
    The operator: the sensor ran the code that kept the digests in its cursor (`unkeyed`, a list
    of them; none with the window's ids), and a customer's `customer.updated` without an
    `event_id` got its run; then the code is upgraded. Its first tick reads the cursor's digests:
    no run again in the minute after, and the digest is kept with the window's ids from then."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    post_without_id(admin, 0, "Changed before the upgrade")
    keys, cursor = ticks_for(admin, instance, cursor, 20)
    assert len(keys) == 1, f"a customer.updated without an event_id: runs {keys}"
    state = EventsSensorCursor.decode(cursor)
    window = _load_window(instance, state)
    assert window is not None and len(window[1]) == 1
    state.unkeyed = sorted(window[1])  # the cursor and the window as the code of before wrote them
    _store_window(instance, state, (window[0], {}))
    keys, cursor = ticks_for(admin, instance, state.encode(), 60)
    state = EventsSensorCursor.decode(cursor)
    window = _load_window(instance, state)
    assert not keys and state.unkeyed == [] and window is not None and len(window[1]) == 1, (
        f"after the upgrade: runs {keys}, the cursor's digests {state.unkeyed}, the window's "
        f"{window[1] if window else None}")


@pytest.mark.usefixtures("backfilled")
def test_idle_ticks_behind_many_events_without_an_id_cost_what_is_claimed(warehouse: Path, admin: Admin) -> None:
    """Claim (README's sensor row; `EVENTS_SENSOR_INTERVAL_SECONDS`; docs/design.md, "Late events"):
    a tick costs one request when nothing is new, two while the late-event window behind its
    cursor holds over 200 events, and a request more per 200 events without an id it reads over:
    after the cursor, until an event with an id follows them, then in the window, whose read goes
    on past them, while they are in it. The API: 401 customers' `customer.updated` without an
    `event_id` (an API version, or a bug, that drops the field from a type of event), then
    nothing for a minute; then a change with an id, then nothing for a minute. Measured before
    (the claim then: two at most): 3 requests every idle tick of the first minute (a page per 200
    of them, the read of what is new); 2 in the second, the window's read stuck on its first page
    (200 of them, no id: the next read started where it did, its end never reached, the window
    never read again from the lag before). Now: 3, then 4 (a read of the window goes on to a page
    with an id in it, and reaches the cursor: the next read starts 10 s later). The page after an
    id is the API's `next` (docs/api.md, "Lists": `after=<the last id of the page>`), which says
    nothing of where an event without an id lies, so a read cannot resume among them."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    many = 2 * EVENTS_PAGE_SIZE + 1
    post_without_ids(admin, many)
    _, cursor = ticks_for(admin, instance, cursor, 20)  # their run
    after_them, in_window, floors = [], [], []
    for costs in (after_them, in_window):
        for _ in range(6):
            result, cost = tick(admin, instance, cursor)
            costs.append(cost)
            cursor = result.cursor
            assert not result.run_requests
            floors.append(EventsSensorCursor.decode(cursor).floor)
        if costs is after_them:  # a change with an id follows them: they are in the window
            customer = admin.truth("customers")[0]["id"]
            admin.post("mutate", resource="customers", key=customer, set={"name": "After them"})
            keys, cursor = ticks_for(admin, instance, cursor, 20)
            assert len(keys) == 1, f"a change after {many} events without an id: runs {keys}"
    pages = many // EVENTS_PAGE_SIZE + 1
    assert max(after_them) <= pages and max(in_window) <= pages + 1 and len(set(floors[6:])) > 1, (
        f"idle ticks behind {many} events without an id: requests {after_them}, then with them in the "
        f"window {in_window} (claimed at most {pages}, then {pages + 1}); the window's floors {floors[6:]}")


@pytest.mark.usefixtures("backfilled")
def test_an_event_without_an_id_listed_before_the_upgrade_gets_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim (docs/design.md, "Late events": an event without a string id the sensor reads for the
    first time is new and owed a run once; "The events sensor, and why its runs take every table
    with events": a cursor of before requests no run for its window, nothing said of these).
    The operator: the sensor runs the code of before b7969eb (its cursor has no `unkeyed`). The
    API: a customer's `customer.updated` without an `event_id`, listed after the cursor; the
    sensor of before drops it (no run; adversary 6's first test). Then the code is upgraded.
    Measured: no run in the 900 s after the upgrade; the change waits for another change's run or
    a schedule, though the upgraded sensor reads it as it would any event without an id."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    before = json.loads(cursor)
    assert before.pop("unkeyed") == []  # the cursor as the code of before wrote it
    post_without_id(admin, 0, "Changed before the upgrade")
    keys, _ = ticks_for(admin, instance, json.dumps(before), WAIT_SECONDS)
    assert len(keys) == 1, f"a customer.updated without an event_id listed before the upgrade: runs {keys}"


@pytest.mark.parametrize("change", ["without an id", "late"])
@pytest.mark.usefixtures("backfilled")
def test_a_change_before_a_cleared_cursor_gets_the_run_after_the_one_in_flight(
    warehouse: Path, admin: Admin, change: str
) -> None:
    """Claim (docs/design.md, "The events sensor, and why its runs take every table with events": a
    cursor cleared while a run of the sensor is in flight follows it and owes the run after it;
    README: a cursor cleared "also owes a run"). The daemon and the API: 3 changes and their run,
    in flight; then a change the run read too early for: a customer's `customer.updated` without
    an `event_id` (listed last), or one whose write committed late (its id before the 3, visible
    now, within the lag); the cursor cleared before the next tick (Dagster's UI). Measured, both:
    the tick after the run ended requested `events-up-to-<the newest of the 3>`, the run in
    flight's own key, so the daemon launched nothing; no run in the 900 s that followed, and the
    change waits for another change's run or a schedule."""
    instance = DagsterInstance.ephemeral()
    cursor = the_windows_first_read_ended(admin, instance)
    late = hold_a_change(admin, 1) if change == "late" else None
    admin.post("advance", seconds=2, updates=3)
    result, _ = tick(admin, instance, cursor)
    first = result.run_requests[0]
    running = add_run(instance, first, DagsterRunStatus.STARTED)
    if late:
        admin.post("release", event_ids=[late])
    else:
        post_without_id(admin, 0, "Changed just before the clear")
    cleared = evaluate(instance, None)
    assert not cleared.run_requests and EventsSensorCursor.decode(cleared.cursor).run_key == first.run_key
    instance.delete_run(running.run_id)
    add_run(instance, first, DagsterRunStatus.SUCCESS)  # it ended: it read the stream before the change
    keys, _ = ticks_for(admin, instance, cleared.cursor, WAIT_SECONDS)
    assert [k for k in keys if k != first.run_key], f"after the run in flight ({first.run_key}): runs requested {keys}"
