"""Adversarial tests of the dbt models, second pass (written by a helper playing the adversary
after test_models_adversary.py's fixes, then fixed): inputs the API contract allows, or Dagster
paths the docs say are supported, that made a model's figures differ from the sandbox's own data
or `dbt build` fail, and probes that held. The PostgreSQL tests need ANALYTICS_TEST_POSTGRES.

What they found, each fixed and tested here:
- an event whose id is not the API's (`evt_...`) was a state, and the running start lifted every
  later state of its subscription: only the API's ids are states now;
- a listed-only subscription changed while `events` lagged lost its past: the recorded listed
  state is kept while older than the new row;
- the stream and the subscriptions table can disagree for a while (a late event within a second
  of the change before it; `events` synced alone): `mrr_today_is_the_current_subscriptions` and
  the history's relationship test failed the run; they warn now (the run goes on, the check says
  why), and heal once the tables agree;
- no subscription billed today failed every run (the test read the newest day with MRR): it
  reads today's or yesterday's rows now;
- a lower-case RFC 3339 stamp or a leap second failed the history's cast; a trailing newline or
  non-ASCII digits, which the sync took, made a null valid_from: stamps are upper-cased before the
  cast, a leap second is no state, the sync's parser takes ASCII and no trailing newline, and a
  listed row without an updated_at starts at its created_at;
- amounts around 10^18: MRR's floating-point sums differ by their order, and the test's
  tolerance is relative now.

Design remarks, not findings: customer_overview repeats active_subscriptions on each currency row
of a customer; beyond 6 fractional digits DuckDB's cast truncates where PostgreSQL's rounds.
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.rfc3339 import parse_ns
from analytics_dagster_tests.conftest import Admin
from analytics_dagster_tests.test_models import assert_close, mrr_on, query, sync_all, today, truth_mrr
from analytics_dagster_tests.test_models_adversary import (RECONCILED, active_recurring, run_ok, subscription_events,
                                                           world_now)


def listed_only(admin: Admin, events: dict[str, list[dict[str, Any]]]) -> tuple[date, dict[str, Any]]:
    """A day ten days back on the sandbox's clock, and an active subscription with no event in
    the stream, unchanged since before that day."""
    past = (world_now(admin) - timedelta(days=10)).date()
    return past, first_sub(admin, lambda s: s["id"] not in events and active_recurring(s)
                           and parse_ns(s["updated_at"]) < parse_ns(f"{past}T00:00:00Z"))


def warned(result: Any) -> list[str]:
    """The run succeeded, and every dbt test that failed is a warning: the ones on the stream and
    the subscriptions table agreeing (docs/models.md). Returns their names."""
    errors = [f"{e.check_name}: {e.description}" for e in result.get_asset_check_evaluations()
              if not e.passed and e.severity.value != "WARN"]
    assert result.success and not errors, failed_checks(result)
    # (not the checks against Paddle's own figures: see test_models_adversary.run_ok)
    return sorted({e.check_name for e in result.get_asset_check_evaluations()
                   if not e.passed and e.check_name not in RECONCILED})


def failed_checks(result: Any) -> list[str]:
    """The dbt tests that failed, and the steps that failed (the start of their error)."""
    checks = [f"{e.check_name}: {e.description}" for e in result.get_asset_check_evaluations() if not e.passed]
    steps = [f"{e.step_key}: {e.step_failure_data.error.message[-500:] if e.step_failure_data.error else ''}"
             for e in result.all_events if e.is_step_failure]
    return checks + steps


def history_of(db: Path | str, sub_id: str) -> list[dict[str, Any]]:
    """The subscription's observed states (events, listings; those inferred before them from its
    transactions are test_history.py's)."""
    return query(db, "SELECT state_id, changed_by, valid_from, valid_to, status FROM analytics_models.subscription_history "
                     f"WHERE subscription_id = '{sub_id}' AND inferred_from IS NULL ORDER BY valid_from, state_id")


def first_sub(admin: Admin, predicate: Any) -> dict[str, Any]:
    return next(s for s in sorted(admin.truth("subscriptions"), key=lambda s: s["id"]) if predicate(s))


def with_quantity(sub: dict[str, Any], more: int) -> list[dict[str, Any]]:
    items = copy.deepcopy(sub["items"])
    items[0]["quantity"] += more
    return items


def run_alone(instance: Any, keys: list[Any]) -> Any:
    from analytics_dagster.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False)


def automation_requested(instance: Any, cursor: Any) -> tuple[list[Any], Any]:
    """The models the automation sensor would request now (and its next cursor)."""
    from dagster import AssetSelection, evaluate_automation_conditions

    from analytics_dagster.definitions import defs
    from analytics_dagster.models import MODEL_SPECS, MODELS_GROUP

    result = evaluate_automation_conditions(defs=defs, instance=instance,
                                            asset_selection=AssetSelection.groups(MODELS_GROUP), cursor=cursor)
    return sorted((s.key for s in MODEL_SPECS if result.get_num_requested(s.key)), key=str), result.cursor


# ---------------------------------------------------------------------- findings
@pytest.mark.usefixtures("backfilled_with_models")
def test_an_event_whose_id_is_no_string_is_no_state(warehouse: Path, admin: Admin) -> None:
    """The contract's bad events: an `event_id` that is a number, its data a well-formed
    subscription (another quantity). The sync reports it (events_applied) and applies nothing;
    the history must not take it either, and no past day may change."""
    events = subscription_events(admin)
    past = (world_now(admin) - timedelta(days=3)).date()
    sub = first_sub(admin, lambda s: s["id"] in events and active_recurring(s)
                    and min(parse_ns(e["occurred_at"]) for e in events[s["id"]]) < parse_ns(f"{past}T00:00:00Z"))
    before = mrr_on(warehouse, past)
    admin.post("event", event_type="subscription.updated", data={**sub, "items": with_quantity(sub, 7)},
               event_id=12345)
    result = sync_all()
    assert result.success, failed_checks(result)
    assert query(warehouse, "SELECT count(*) AS n FROM analytics.events WHERE event_id = '12345'")[0]["n"] == 1
    assert "12345" not in {s["state_id"] for s in history_of(warehouse, sub["id"])}
    assert_close(mrr_on(warehouse, past), before)
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


def test_a_listed_only_subscription_changed_while_events_lag_keeps_its_past(warehouse: Path, admin: Admin) -> None:
    from dagster import AssetKey, DagsterInstance

    from analytics_dagster.models import MODEL_SPECS

    instance = DagsterInstance.ephemeral()
    run_ok(sync_all(instance))
    events = subscription_events(admin)
    past, sub = listed_only(admin, events)
    before = mrr_on(warehouse, past)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 1)})
    # the UI's Materialize of analytics/subscriptions alone, then the models (what the automation requests)
    assert run_alone(instance, [AssetKey(["analytics", "subscriptions"])]).success
    run_ok(run_alone(instance, [spec.key for spec in MODEL_SPECS]))
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))
    # the state before the change is still there, from the listed row's updated_at
    assert history_of(warehouse, sub["id"])[0]["valid_from"].timestamp() * 1e9 <= parse_ns(sub["updated_at"]) + 1e6
    assert_close(mrr_on(warehouse, past), before)  # nothing changed on that day
    run_ok(sync_all(instance))  # the event is read: the past is still what it was
    assert_close(mrr_on(warehouse, past), before)


def test_a_late_event_within_a_second_of_the_one_before_only_warns(warehouse: Path, admin: Admin) -> None:
    events = subscription_events(admin)
    sub = first_sub(admin, lambda s: s["id"] in events and active_recurring(s))
    first = admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 1)})
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 3)},
               updated_at=first["updated_at"], hold_event=True)
    # the newest state is the change before (the listed row is not a second newer): MRR lags
    # until the event is read (the next test), and the run goes on
    assert warned(sync_all()) == ["mrr_today_is_the_current_subscriptions"]


def test_a_late_event_within_a_second_heals_once_read(warehouse: Path, admin: Admin) -> None:
    """After that first sync (it warned, as above), the late event is released: the
    next sync reads it, every dbt test passes and today's MRR is the sandbox's (the failure is
    not for good)."""
    events = subscription_events(admin)
    sub = first_sub(admin, lambda s: s["id"] in events and active_recurring(s))
    first = admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 1)})
    late = admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 3)},
                      updated_at=first["updated_at"], hold_event=True)
    sync_all()
    admin.post("release", event_ids=[late["event_id"]])
    run_ok(sync_all())
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


@pytest.mark.usefixtures("backfilled_with_models")
def test_no_subscription_billed_today_fails_no_run(warehouse: Path, admin: Admin) -> None:
    for sub in admin.truth("subscriptions"):
        if sub["status"] == "active":
            admin.post("mutate", resource="subscriptions", key=sub["id"], set={"status": "canceled"})
    assert truth_mrr(admin) == {}
    assert warned(sync_all()) == []  # not even a warning: today has no MRR, and none is listed
    assert mrr_on(warehouse, today()) == {}


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_lower_case_rfc3339_stamp_fails_no_build(warehouse: Path, admin: Admin) -> None:
    sub = first_sub(admin, active_recurring)
    stamp = world_now(admin).strftime("%Y-%m-%dt%H:%M:%S.5z")
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 2)},
               updated_at=stamp)
    result = sync_all()
    assert result.success, failed_checks(result)
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


def test_events_synced_alone_then_the_automation_only_warns(warehouse: Path, admin: Admin) -> None:
    from dagster import AssetKey, DagsterInstance

    from analytics_dagster.models import model_key

    instance = DagsterInstance.ephemeral()
    run_ok(sync_all(instance))
    _, cursor = automation_requested(instance, None)
    sub = first_sub(admin, active_recurring)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 4)})
    assert run_alone(instance, [AssetKey(["analytics", "events"])]).success
    requested, _ = automation_requested(instance, cursor)
    assert model_key("subscription_history") in requested and model_key("mrr_daily") in requested
    # the history's newest state is the event's, the subscriptions row is older: the check warns
    assert warned(run_alone(instance, requested)) == ["mrr_today_is_the_current_subscriptions"]
    run_ok(sync_all(instance))  # the tables agree again
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


# ---------------------------------------------------------------------- probes that held
@pytest.mark.usefixtures("backfilled_with_models")
def test_a_late_event_older_than_a_kept_listed_state(warehouse: Path, admin: Admin) -> None:
    """A listed-only subscription changes twice: the first change's event is late, the second's
    is not. The history keeps listed/ (older than the first event read), then the late event is
    released; today and the past stay the sandbox's, the history contiguous."""
    events = subscription_events(admin)
    past, sub = listed_only(admin, events)
    before = mrr_on(warehouse, past)
    late = admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 1)},
                      hold_event=True)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 2)})
    run_ok(sync_all())
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))
    admin.post("release", event_ids=[late["event_id"]])
    run_ok(sync_all())
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))
    assert_close(mrr_on(warehouse, past), before)
    states = history_of(warehouse, sub["id"])
    assert [s["state_id"][:7] for s in states][0] == "listed/"
    assert late["event_id"] in {s["state_id"] for s in states}


def test_a_full_refresh_keeps_a_listed_only_subscriptions_past(warehouse: Path, admin: Admin) -> None:
    """A listed-only subscription changes, then the weekly full refresh (a listing of every table
    and every model rebuilt): its listed state, read from the model's previous build, stays."""
    from dagster import DagsterInstance

    from analytics_dagster.definitions import defs

    run_ok(sync_all())
    events = subscription_events(admin)
    past, sub = listed_only(admin, events)
    before = mrr_on(warehouse, past)
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 1)})
    job = defs.resolve_job_def("full_refresh")
    run_ok(job.execute_in_process(instance=DagsterInstance.ephemeral(), raise_on_error=False))
    assert_close(mrr_on(warehouse, past), before)
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


def test_listing_mode_runs_leave_the_figures_right(warehouse: Path, admin: Admin,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing mode (every table listed every run): rounds of changes with precision traps and
    same-instant stamps; every dbt test passes, today's MRR is the sandbox's."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", "listing")
    run_ok(sync_all())
    admin.post("advance", updates=60, precision_traps=20, same_instant=False)
    run_ok(sync_all())
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))


def test_large_amounts_leave_the_mrr_today_test_passing(warehouse: Path, admin: Admin) -> None:
    """Many active subscriptions priced around 10^18 minor units in one currency; sync_all (the
    models rebuilt each time) passes every time."""
    subs = [s for s in sorted(admin.truth("subscriptions"), key=lambda s: s["id"]) if active_recurring(s)]
    currency = subs[0]["currency_code"]
    for n, sub in enumerate(subs):
        items = copy.deepcopy(sub["items"])
        for item in items:  # billed at these amounts: in the subscription's currency, no override, tax excluded
            item["price"]["unit_price"]["currency_code"] = currency
            item["price"]["unit_price"]["amount"] = str(10**18 + 7919 * n + 1)
            item["price"].update(unit_price_overrides=[], tax_mode="external")
        admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": items, "currency_code": currency})
    from dagster import DagsterInstance

    instance = DagsterInstance.ephemeral()
    # DuckDB sums in a different order each build: with an absolute tolerance, 2 builds in 3
    # failed the check (4 builds all pass by luck about once in 80)
    for _ in range(4):
        assert warned(sync_all(instance)) == []


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_leap_second_fails_no_build(warehouse: Path, admin: Admin) -> None:
    """RFC 3339's time-second 60 (2016-12-31T23:59:60Z): the sync reads it and applies the event;
    neither warehouse's cast takes it, so the history skips such an event (its state is the
    listed row's, or the next event's) and the build goes on. What Python's regex once took
    beyond RFC 3339 (a trailing newline, digits of another script) the sync now sets aside, as
    the history does (test_source.py), and the sandbox refuses to stamp."""
    sub = first_sub(admin, active_recurring)
    stamp = "2016-12-31T23:59:60Z"
    parse_ns(stamp)  # the sync reads it
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": with_quantity(sub, 2)},
               updated_at=stamp)
    result = sync_all()
    assert result.success, failed_checks(result)
    assert_close(mrr_on(warehouse, today()), truth_mrr(admin))
