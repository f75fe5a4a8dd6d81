"""The events sensor as 2a770d5 and b7969eb left it (issue #30), against what Dagster's operators
do: a cursor cleared in Dagster's UI (its only way: the sensor page's "Edit cursor" dialog, its
text emptied, sends `setSensorCursor` the cursor "", not None), and a window begun again behind a
busy stretch (a cursor cleared, the lag set to 0 and back), a late event in it.

Each test states a claim of README's sensor row or docs/design.md ("Late events", "The events
sensor, and why its runs take every table with events") and what broke it (measured numbers in
each docstring), or that it held. Ticks are evaluated every 10 s of the API's clock, as the
daemon would (`EVENTS_SENSOR_INTERVAL_SECONDS`); no run is executed: the sensor's requests are
the claim.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from analytics_dagster.automation import RUN_KEY_TAG, EventsSensorCursor
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_automation import evaluate
from analytics_dagster_tests.test_automation_adversary_2 import add_run
from analytics_dagster_tests.test_automation_adversary_3 import BURST, tick
from analytics_dagster_tests.test_automation_adversary_4 import launch, the_windows_first_read_ended

# the cursor Dagster's UI sets when its "Edit cursor" dialog is saved with its text emptied
# (dagster-ui's EditCursorDialog sends the text as it is; dagster_graphql's set_sensor_cursor
# stores it as it is): the only way to clear a cursor in the UI
EMPTIED = ""


@pytest.mark.xfail(strict=True, reason=(
    "open (#30): a cursor emptied in Dagster's UI is \"\", which the sensor decodes as a cursor of "
    "before on an empty stream: it reads the whole retained stream as new, and requests a run keyed by "
    "the newest event, the key of the sensor's last run (launched, or in flight): nothing launched, "
    "nothing owed"))
@pytest.mark.parametrize("last_run", ["ended", "in flight"])
@pytest.mark.usefixtures("backfilled")
def test_a_cursor_emptied_in_dagsters_ui_is_a_cleared_cursor(warehouse: Path, admin: Admin, last_run: str) -> None:
    """Claim (docs/design.md, "The events sensor, and why its runs take every table with events":
    a cursor cleared, "Dagster's UI, the sensor's page", is read as a first tick, three requests,
    and owes a run: one at once keyed by the reset, `events-cursor-reset-<newest>-<ms>`, or,
    while a run of the sensor is in flight, the run after it; README: "One run at a time").
    The API: an account's 90 days (2,100 changes, then 700 s of quiet: 2,281 events retained),
    the sensor watching; 3 changes and their run (ended, or in flight). The operator: clears
    the cursor in Dagster's UI, the sensor's page, "Edit cursor", its text emptied (what the
    dialog sends: ""). Measured, both: the next tick made 12 requests of the events (the whole
    retained stream read from its start, as new; 50 pages a tick on an account of 10,000 events
    or more, 300 a minute where Paddle allows 240) and requested
    `events-up-to-<the newest event>`, the key of the run of the 3 changes, so the daemon
    launched nothing: no reset run, and the run in flight followed with nothing owed after it."""
    instance = DagsterInstance.ephemeral()
    admin.post("advance", seconds=0, updates=BURST, same_instant=True)
    admin.post("advance", seconds=700)  # (the burst left the lag)
    cursor = the_windows_first_read_ended(admin, instance)
    admin.post("advance", seconds=2, updates=3)
    result, _ = tick(admin, instance, cursor)
    ours = result.run_requests[0]
    if last_run == "ended":
        launch(instance, result)
    else:
        add_run(instance, ours, DagsterRunStatus.STARTED)
    admin.post("stats/reset")
    emptied = evaluate(instance, EMPTIED)
    cost = admin.get("stats")["by_resource"].get("events", 0)
    state = EventsSensorCursor.decode(emptied.cursor)
    keys = [r.run_key for r in emptied.run_requests]
    launched = [k for k in keys if not instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: k}), limit=1)]
    owes = (len(launched) == 1 and launched[0].startswith("events-cursor-reset-") if last_run == "ended"
            else not keys and state.run_key == ours.run_key and state.owed)
    assert cost <= 3 and owes, (
        f"the cursor emptied, the sensor's last run {ours.run_key} {last_run}: {cost} requests of the "
        f"events; runs requested {keys} (the daemon launches {launched}); followed {state.run_key}, owed {state.owed}")
