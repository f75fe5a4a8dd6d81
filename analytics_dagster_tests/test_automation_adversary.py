"""The events sensor (issue #30) against what the API allows: bursts, failures, cancels.

Each test states a claim of docs/design.md ("The events sensor, and why its runs take every table
with events", "How fast a change arrives") and the API's behaviour that breaks it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import DagsterInstance

from analytics_dagster.automation import EventsSensorCursor
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_automation import KEPT, evaluate, launch

# a burst of more changes than the sensor reads in a tick (10 pages of 200 events), all within
# the visibility window (600 s of the API's clock) it reads again at every tick
BURST = 2100


@pytest.mark.usefixtures("backfilled")
def test_a_change_after_a_burst_larger_than_ten_pages_requests_a_run(warehouse: Path, admin: Admin) -> None:
    """Claim: no change waits for more than one run after the current one (p95 lag < 30 s).
    The API: a burst of 2,100 changes (a bulk import), then, after the sensor's run synced it,
    one more change. The sensor re-reads its window (600 s before its last poll) from the
    start at every tick, but reads at most 10 pages: the window holds more than 2,000 events, all
    seen, so the new change is beyond what it reads and no run is requested until the API's clock
    moves 10 minutes on."""
    instance = DagsterInstance.ephemeral()
    cursor = evaluate(instance, None).cursor
    admin.post("advance", updates=BURST)
    tick = evaluate(instance, cursor)
    assert len(tick.run_requests) == 1
    assert launch(instance, tick.run_requests[0]).success
    assert_warehouse_equals_api(warehouse, admin, KEPT)  # the run read the stream to its end
    cursor = evaluate(instance, tick.cursor).cursor  # the run succeeded: nothing owed
    customer = admin.truth("customers")[0]["id"]
    admin.post("advance", seconds=5)
    admin.post("mutate", resource="customers", key=customer, set={"name": "After the burst"})
    after = evaluate(instance, cursor)
    state = EventsSensorCursor.decode(after.cursor)
    assert len(after.run_requests) == 1, (
        f"a change after a burst of {BURST} events requested no run: {after.skip_message!r}; the sensor's "
        f"newest event is {state.event_id}, the API's {admin.truth('events')[-1]['event_id']}")
