"""The dbt models: built by Dagster after the raw tables, their tests passing, and their figures
equal to what the sandbox's own data says (never the warehouse's)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance

from analytics_dagster.definitions import defs
from analytics_dagster.models import MODEL_CHECK_SPECS, MODEL_SPECS, MODELS_GROUP, model_key
from analytics_dagster.reconcile import SPECS as RECONCILIATION
from analytics_dagster.sandbox.factories import billed_monthly, catalogue_billed, tax_inclusive
from analytics_dagster_tests.conftest import LOCALIZED_WORLD, Admin

MODELS = {spec.key for spec in MODEL_SPECS}
METRICS = ["mrr_daily", "revenue_monthly", "customer_overview"]
BILLED = ("billed", "paid", "completed")


def sync_all(instance: DagsterInstance | None = None) -> Any:
    return defs.resolve_job_def("sync_all").execute_in_process(instance=instance or DagsterInstance.ephemeral(),
                                                               raise_on_error=False)


def query(db: Path | str, sql: str) -> list[dict[str, Any]]:
    """Rows of `sql` on the warehouse: a DuckDB file, or a PostgreSQL DSN (test_postgres.py)."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import psycopg2

        connection = psycopg2.connect(db)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                names = [d[0] for d in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            connection.close()
    with duckdb.connect(str(db), read_only=True) as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def assert_models_built_and_tested(result: Any, db: Path | str, may_warn: dict[str, str] | None = None) -> None:
    """`may_warn`: checks that may warn, each with what its description must then say."""
    assert result.success
    materializations = {m.asset_key: m for m in result.asset_materializations_for_node("analytics_models")}
    assert set(materializations) == MODELS
    # Dagster's table metadata: rows and columns as the warehouse has them
    for key, materialization in materializations.items():
        name = key.path[-1]
        rows = query(db, f"SELECT count(*) AS n FROM analytics_models.{name}")[0]["n"]
        columns = [r["column_name"] for r in query(db, "SELECT column_name FROM information_schema.columns WHERE "
                                                       f"table_schema = 'analytics_models' AND table_name = '{name}' "
                                                       "ORDER BY ordinal_position")]
        assert materialization.metadata["dagster/row_count"].value == rows, name
        assert [c.name for c in materialization.metadata["dagster/column_schema"].schema.columns] == columns, name
    checks = {(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations() if e.asset_key in MODELS}
    # the dbt tests, and the reconciliation with Paddle's metrics (test_metrics.py)
    assert set(checks) == {(c.asset_key, c.name) for c in MODEL_CHECK_SPECS + RECONCILIATION}
    failed = [f"{k[1]}: {e.description}" for k, e in checks.items() if not e.passed
              and (k[1] not in (may_warn or {}) or may_warn[k[1]] not in (e.description or ""))]
    assert not failed, failed


# ------------------------------------------------------------------ the sandbox's own figures
def truth_mrr(admin: Admin) -> dict[str, float]:
    """MRR by currency of the subscriptions the sandbox has now: what it bills a month for the
    recurring, billed items of the active ones (`factories.billed_monthly`: in the
    subscription's currency, tax excluded, before discounts)."""
    mrr: dict[str, float] = defaultdict(float)
    countries = address_countries(admin)
    for sub in admin.truth("subscriptions"):
        if sub["status"] != "active":
            continue
        for item in sub["items"]:
            if item["recurring"] and item.get("status", "active") == "active":  # trialing, inactive: not billed
                mrr[sub["currency_code"]] += billed_monthly(sub, item, countries.get(sub["address_id"]))
    return dict(mrr)


def address_countries(admin: Admin) -> dict[str, str]:
    """The country of every address of the sandbox, by id."""
    return {a["id"]: a["country_code"] for a in admin.truth("customer_addresses")}


def monthly(admin: Admin, sub: dict[str, Any], item: dict[str, Any]) -> float:
    """What the sandbox bills a month for an item of the subscription `sub` (`billed_monthly`)."""
    return billed_monthly(sub, item, address_countries(admin).get(sub["address_id"]))


def truth_revenue(admin: Admin) -> dict[tuple[str, str, str], dict[str, int]]:
    """Per (month, currency, product): gross, refunds, net, from the sandbox's transactions and adjustments."""
    revenue: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: {"gross": 0, "refunds": 0})
    product_of_line = {}
    for txn in admin.truth("transactions"):
        currency = txn["details"]["totals"]["currency_code"]
        month = (txn["billed_at"] or txn["created_at"])[:7]
        for line in txn["details"]["line_items"]:
            product_of_line[line["id"]] = line["product"]["id"]
            if txn["status"] in BILLED:
                revenue[(month, currency, line["product"]["id"])]["gross"] += (
                    int(line["totals"]["subtotal"]) - int(line["totals"]["discount"]))
    for adjustment in admin.truth("adjustments"):
        if adjustment["status"] == "approved" and adjustment["action"] in ("refund", "credit"):
            for item in adjustment["items"]:
                key = (adjustment["created_at"][:7], adjustment["currency_code"], product_of_line.get(item["item_id"]))
                revenue[key]["refunds"] += int(item["totals"]["subtotal"])
    return {k: {**v, "net": v["gross"] - v["refunds"]} for k, v in revenue.items()}


def today() -> date:
    return datetime.now(timezone.utc).date()


def mrr_on(db: Path | str, day: date) -> dict[str, float]:
    """mrr_daily's MRR by currency on `day`."""
    return {r["currency_code"]: r["mrr"] for r in
            query(db, f"SELECT currency_code, mrr FROM analytics_models.mrr_daily WHERE day = DATE '{day}'")}


def assert_close(actual: dict[Any, float], expected: dict[Any, float]) -> None:
    """The same keys (currencies, or day and currency), each amount to a hundredth of a minor
    unit."""
    assert set(actual) == set(expected), (actual, expected)
    for key, value in expected.items():
        assert abs(actual[key] - value) < 0.01, (key, actual[key], value)


def assert_metrics_equal_the_sandbox(db: Path | str, admin: Admin) -> None:
    expected = truth_mrr(admin)
    assert expected
    assert_close(mrr_on(db, today()), expected)
    revenue = {(r["month"].strftime("%Y-%m"), r["currency_code"], r["product_id"]):
               {"gross": int(r["gross"]), "refunds": int(r["refunds"]), "net": int(r["net"])}
               for r in query(db, "SELECT * FROM analytics_models.revenue_monthly")}
    assert revenue == truth_revenue(admin)


def assert_history_contiguous(db: Path | str) -> dict[str, list[dict[str, Any]]]:
    rows = query(db, "SELECT * FROM analytics_models.subscription_history ORDER BY subscription_id, valid_from, state_id")
    by_sub: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_sub[row["subscription_id"]].append(row)
    for sub, states in by_sub.items():
        assert states[-1]["valid_to"] is None, sub
        for before, after in zip(states, states[1:]):
            assert before["valid_to"] == after["valid_from"], (sub, before, after)
            assert before["valid_from"] <= before["valid_to"], (sub, before)
    return by_sub


def change_the_sandbox(admin: Admin) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """A round of changes made through the sandbox, one subscription at a time (items, quantity,
    status), then updates, new customers, transactions and adjustments, and a refund approved.
    Returns the subscriptions as they were (sorted by id; the first three are the ones changed)
    and the mutations of each one changed, by id."""
    subs = sorted(admin.truth("subscriptions"), key=lambda s: s["id"])
    prices = admin.truth("prices")
    changed = {}
    first, second, third = subs[0], subs[1], subs[2]
    items = copy.deepcopy(first["items"])
    items[0]["quantity"] += 3
    changed[first["id"]] = [admin.post("mutate", resource="subscriptions", key=first["id"], set={"items": items})]
    # a price added to a subscription is billed at what the price says (its transaction, which
    # would say more, is not made by `mutate`)
    country = address_countries(admin).get(second["address_id"])
    extra = next(p for p in prices if p["id"] not in {i["price"]["id"] for i in second["items"]}
                 and catalogue_billed(p, second["currency_code"], country) and not tax_inclusive(p))
    items = copy.deepcopy(second["items"]) + [{**copy.deepcopy(second["items"][0]), "price": extra, "quantity": 2}]
    changed[second["id"]] = [
        admin.post("mutate", resource="subscriptions", key=second["id"], set={"items": items}),
        admin.post("mutate", resource="subscriptions", key=second["id"], set={"status": "active"}),
    ]
    changed[third["id"]] = [admin.post("mutate", resource="subscriptions", key=third["id"], set={"status": "canceled"})]
    fourth = next(s for s in subs[3:] if s["status"] == "active")
    changed[fourth["id"]] = [admin.post("mutate", resource="subscriptions", key=fourth["id"], set={"status": "paused"})]
    admin.post("advance", updates=15, new_customers=3, new_transactions=6, adjustments=4)
    # a refund approved between runs, so that net differs from gross
    pending = [a for a in admin.truth("adjustments") if a["status"] == "pending_approval"]
    if pending:
        admin.post("mutate", resource="adjustments", key=pending[0]["id"], set={"status": "approved"})

    return subs, changed


def assert_history_has_the_changes(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]],
                                   subs: list[dict[str, Any]], changed: dict[str, list[dict[str, Any]]],
                                   admin: Admin) -> None:
    """The history after `change_the_sandbox` (`before`, `after`: assert_history_contiguous's)
    holds a state per change, and a row per subscription.* event the sandbox lists."""
    for sub, mutations in changed.items():
        states = {s["state_id"]: s for s in after[sub]}
        known = [s for s in before[sub] if s["changed_by"] not in ("listed", "inferred")]  # (a listed row stands in for no event)
        assert len(after[sub]) >= len(known) + len(mutations), sub
        for mutation in mutations:
            assert mutation["event_id"] in states, (sub, mutation)
    first, third = subs[0], subs[2]
    assert after[third["id"]][-1]["status"] == "canceled"
    fourth = next(s for s in subs[3:] if s["status"] == "active")  # paused by change_the_sandbox
    assert [s["status"] for s in after[fourth["id"]][-2:]] == ["active", "paused"]
    items = after[first["id"]][-1]["items"]  # JSON text from DuckDB, parsed already from PostgreSQL's jsonb
    assert (json.loads(items) if isinstance(items, str) else items)[0]["quantity"] == first["items"][0]["quantity"] + 3
    # a row per change: the states of a subscription are its subscription.* events, or its
    # listed row when the stream has none; a subscription listed with no event, which then
    # changed, keeps that listed state before its first event
    events = defaultdict(set)
    for event in admin.truth("events"):
        if event["event_type"].startswith("subscription."):
            events[event["data"]["id"]].add(event["event_id"])
    # (the states inferred before the first known one, from the subscription's transactions,
    # are test_history.py's)
    for sub, states in after.items():
        listed_before = [s["state_id"] for s in before[sub] if s["inferred_from"] is None] == [f"listed/{sub}"]
        expected = events.get(sub, set()) | ({f"listed/{sub}"} if listed_before or sub not in events else set())
        assert {s["state_id"] for s in states if s["inferred_from"] is None} == expected, sub


def test_models_after_a_full_sync_and_after_changes(warehouse: Path, admin: Admin,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    result = sync_all()
    assert_models_built_and_tested(result, warehouse)
    assert_metrics_equal_the_sandbox(warehouse, admin)
    before = assert_history_contiguous(warehouse)
    assert set(before) == {s["id"] for s in admin.truth("subscriptions")}

    subs, changed = change_the_sandbox(admin)
    result = sync_all()
    assert_models_built_and_tested(result, warehouse)
    assert_metrics_equal_the_sandbox(warehouse, admin)
    after = assert_history_contiguous(warehouse)
    assert_history_has_the_changes(before, after, subs, changed, admin)
    refunds = query(warehouse, "SELECT sum(refunds) AS r FROM analytics_models.revenue_monthly")[0]["r"]
    assert refunds > 0

    # dbt's log file holds the two builds' lines (and a parse's, when this process had not
    # parsed yet) at info, none at debug, unless dbt's own setting asks for them (dbt_environment)
    from analytics_dagster.models import dbt_environment, dbt_target

    lines = [json.loads(line)["info"] for line in (dbt_target() / "dbt.log").read_text().splitlines()]
    assert sum(line["name"] == "MainReportVersion" for line in lines) in (2, 3)
    assert {line["level"] for line in lines} <= {"info", "warn"}, {line["level"] for line in lines}
    monkeypatch.setenv("DBT_LOG_LEVEL_FILE", "debug")
    assert dbt_environment("duckdb")["DBT_LOG_LEVEL_FILE"] == "debug"


def billing_cases(admin: Admin) -> dict[str, set[str]]:
    """The items MRR counts now (recurring, billed, of active subscriptions), by how the sandbox
    bills them (`factories`: at an override, at the base price, converted; tax-inclusive;
    converted for a subscription with a discount that its transactions applied): their keys,
    subscription_id/price_id."""
    countries = address_countries(admin)
    discounted = {t["subscription_id"] for t in admin.truth("transactions")
                  if t["subscription_id"] and int(t["details"]["totals"]["discount"]) > 0}
    cases: dict[str, set[str]] = defaultdict(set)
    for sub in admin.truth("subscriptions"):
        currency, country = sub["currency_code"], countries.get(sub["address_id"])
        for item in sub["items"] if sub["status"] == "active" else []:
            if not (item["recurring"] and item.get("status", "active") == "active"):
                continue
            price, key = item["price"], f"{sub['id']}/{item['price']['id']}"
            override = any(country in o["country_codes"] and o["unit_price"]["currency_code"] == currency
                           for o in price["unit_price_overrides"])
            base = price["unit_price"]["currency_code"] == currency
            kind = f"override {currency}" if override else "base" if base else "converted"
            cases[kind].add(key)
            if tax_inclusive(price):
                cases["tax-inclusive " + ("converted" if kind == "converted" else "catalogue")].add(key)
            if kind == "converted" and sub["id"] in discounted:
                cases["converted, discounted"].add(key)
            if not override and any(o["unit_price"]["currency_code"] == currency for o in price["unit_price_overrides"]):
                cases["an override of the currency for other countries"].add(key)
    return cases


def truth_items(admin: Admin) -> dict[str, float]:
    """What the sandbox bills a month for every item of its subscriptions, by subscription_id/price_id."""
    countries = address_countries(admin)
    return {f"{sub['id']}/{item['price']['id']}": billed_monthly(sub, item, countries.get(sub["address_id"]))
            for sub in admin.truth("subscriptions") for item in sub["items"]}


def counted_items(db: Path | str) -> dict[str, dict[str, Any]]:
    """stg_subscription_items' items MRR counts now, by subscription_item_id."""
    return {r["subscription_item_id"]: r for r in query(
        db, "SELECT * FROM analytics_models.stg_subscription_items WHERE subscription_status = 'active' "
            "AND recurring AND coalesce(item_status, 'active') = 'active'")}




@pytest.mark.world(**LOCALIZED_WORLD)
def test_mrr_is_what_a_localized_world_bills(warehouse: Path, admin: Admin) -> None:
    assert_mrr_is_what_a_localized_world_bills(warehouse, admin)


def assert_mrr_is_what_a_localized_world_bills(warehouse: Path | str, admin: Admin) -> None:
    """A world where most subscriptions are billed in their customer's currency (docs/sandbox.md):
    prices with EUR and GBP overrides, some whose override of that currency is for other
    countries, prices Paddle converts (what the subscription's transactions billed), a
    tax-inclusive price, a discounted subscription. Today's MRR per currency is what the sandbox
    bills, item by item, and no item is unknown. A month on, renewals bill converted prices at
    that month's exchange rate: MRR follows the newest transaction. (`warehouse`: a DuckDB file
    or a PostgreSQL DSN.)"""
    cases = billing_cases(admin)
    assert set(cases) == {"override EUR", "override GBP", "base", "converted", "tax-inclusive catalogue",
                          "tax-inclusive converted", "converted, discounted",
                          "an override of the currency for other countries"}, cases
    assert_models_built_and_tested(sync_all(), warehouse)
    assert_metrics_equal_the_sandbox(warehouse, admin)
    items, truth = counted_items(warehouse), truth_items(admin)
    assert set(items) == set().union(*cases.values())
    for key, item in items.items():
        assert abs(float(item["monthly_amount"]) - truth[key]) < 0.01, (item, truth[key])
    sources = {kind: {items[key]["amount_source"] for key in keys} for kind, keys in cases.items()}
    assert sources["override EUR"] == sources["override GBP"] == {"override"}
    assert sources["base"] == {"base"} and sources["converted"] == {"billed"}
    assert all(items[key]["tax_rate"] for key in cases["tax-inclusive catalogue"])  # its tax taken out
    assert {r["unknown_items"] for r in query(warehouse, "SELECT unknown_items FROM analytics_models.mrr_daily")} == {0}
    # MRR is before discounts (Paddle's MRR; docs/models.md): a discounted subscription's
    # transactions billed less, its MRR is the undiscounted amount
    for key in cases["converted, discounted"]:
        line = query(warehouse, "SELECT l.subtotal, l.discount, l.unit_subtotal, l.quantity FROM "
                                "analytics_models.stg_transaction_line_items AS l JOIN analytics_models.subscription_billed_prices AS b "
                                f"ON b.line_item_id = l.line_item_id WHERE b.billed_price_id = '{key}/{items[key]['currency_code']}'")[0]
        assert line["discount"] > 0 and float(items[key]["billed_unit_amount"]) == float(line["unit_subtotal"])

    # a month on, every active subscription renewed (at least once): a converted price's amount
    # is this month's, as its newest transaction says
    before = truth
    touched = admin.post("advance", seconds=35 * 24 * 3600, renewals=40)
    renewed = set(touched["subscriptions"])
    assert {key.split("/")[0] for key in cases["converted"]} <= renewed
    after = truth_items(admin)
    assert all(after[key] != before[key] for key in cases["converted"])
    assert all(after[key] == before[key] for key in items if key not in cases["converted"])
    assert {t["origin"] for t in admin.truth("transactions") if t["id"] in touched["transactions"]} == {
        "subscription_recurring"}
    assert_models_built_and_tested(sync_all(), warehouse)
    assert_metrics_equal_the_sandbox(warehouse, admin)
    items = counted_items(warehouse)
    for key, item in items.items():
        assert abs(float(item["monthly_amount"]) - after[key]) < 0.01, (item, after[key])


@pytest.mark.usefixtures("backfilled_with_models")
def test_an_item_whose_amount_cannot_be_known_is_flagged_and_counted_nowhere(warehouse: Path, admin: Admin) -> None:
    """A price added to an active subscription that states no amount in the subscription's
    currency (no override of it for the address's country, its base in another): Paddle
    converts it, and until a transaction of the subscription bills it, nothing in the warehouse
    says the amount. It adds to no MRR, mrr_daily counts it in unknown_items, the dbt test
    every_billed_item_has_an_amount warns naming it, and the run succeeds; once a renewal has
    billed it, MRR is the sandbox's again."""
    countries = address_countries(admin)
    subs = sorted(admin.truth("subscriptions"), key=lambda s: s["id"])
    catalog = [p for p in admin.truth("prices") if p["type"] == "standard" and p["billing_cycle"]]
    sub, price = next((s, p) for s in subs if s["status"] == "active" for p in catalog
                      if p["id"] not in {i["price"]["id"] for i in s["items"]}
                      and not catalogue_billed(p, s["currency_code"], countries.get(s["address_id"])))
    added = {**copy.deepcopy(sub["items"][0]), "price": price, "quantity": 2, "status": "active", "recurring": True}
    admin.post("mutate", resource="subscriptions", key=sub["id"], set={"items": copy.deepcopy(sub["items"]) + [added]})
    result = sync_all()
    assert result.success
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    # (Paddle's MRR counts the item the warehouse cannot price: its check may warn too, beyond
    # its tolerance: docs/models.md, "Reconciliation with Paddle")
    assert set(failed) - {"mrr_matches_paddle"} == {"every_billed_item_has_an_amount"}, failed
    check = failed["every_billed_item_has_an_amount"]
    assert check.severity.value == "WARN" and check.metadata["dagster_dbt/failed_row_count"].value == 1
    assert f"{sub['id']}/{price['id']}" in str(check.metadata["failing_sample"].value)
    currency = sub["currency_code"]
    expected = truth_mrr(admin)
    expected[currency] -= monthly(admin, {**sub, "items": [added]}, added)  # what the sandbox bills, unknown here
    assert_close(mrr_on(warehouse, today()), expected)
    unknown = query(warehouse, "SELECT currency_code, unknown_items FROM analytics_models.mrr_daily "
                               f"WHERE day = DATE '{today()}' AND unknown_items > 0")
    assert unknown == [{"currency_code": currency, "unknown_items": 1}]

    touched = admin.post("advance", renewals=40)  # every active subscription renewed, this one too
    assert sub["id"] in touched["subscriptions"]
    assert_models_built_and_tested(sync_all(), warehouse)
    assert_metrics_equal_the_sandbox(warehouse, admin)


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_model_is_not_rebuilt_when_its_raw_table_fails(warehouse: Path, admin: Admin) -> None:
    admin.post("advance", new_transactions=5)
    admin.post("inject", resource="events", kind="status", status=503, count=4)  # 1 try + 3 retries
    result = sync_all()
    assert not result.success
    assert not result.asset_materializations_for_node("analytics_models")
    assert "analytics_models" not in {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def test_lineage_runs_from_the_raw_tables_to_every_metric() -> None:
    graph = defs.resolve_asset_graph()
    assert MODELS <= graph.get_all_asset_keys()

    def upstream(key: AssetKey) -> set[AssetKey]:
        seen, todo = set(), [key]
        while todo:
            for parent in graph.get(todo.pop()).parent_keys:
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    for metric in METRICS:
        assert AssetKey(["analytics", "transactions"]) in upstream(model_key(metric)) or metric == "mrr_daily"
    assert AssetKey(["analytics", "events"]) in upstream(model_key("mrr_daily"))
    assert AssetKey(["analytics", "subscriptions"]) in upstream(model_key("subscription_history"))
    for key in MODELS:
        node = graph.get(key)
        assert node.group_name == MODELS_GROUP and node.automation_condition is not None
        assert node.pools == {"analytics_destination"} if hasattr(node, "pools") else True
    sync_all_keys = defs.resolve_job_def("sync_all").asset_layer.executable_asset_keys \
        if hasattr(defs.resolve_job_def("sync_all"), "asset_layer") else MODELS
    assert MODELS <= set(sync_all_keys)


def test_the_definition_is_what_dagster_dbt_makes_of_the_manifest() -> None:
    """The specs read from the manifest at load are dagster-dbt's own, keys, lineage and checks."""
    from dagster_dbt import dbt_assets

    from analytics_dagster.models import MANIFEST, models_translator

    @dbt_assets(manifest=MANIFEST, dagster_dbt_translator=models_translator())
    def reference(context):  # type: ignore[no-untyped-def]
        ...  # never run: only its specs are compared

    ours = {spec.key: {d.asset_key for d in spec.deps} for spec in MODEL_SPECS}
    theirs = {spec.key: {d.asset_key for d in spec.deps} for spec in reference.specs}
    assert ours == theirs
    assert {(c.asset_key, c.name) for c in MODEL_CHECK_SPECS} == {(c.asset_key, c.name) for c in reference.check_specs}


def test_loading_the_code_location_imports_neither_dbt_nor_dagster_dbt(tmp_path: Path) -> None:
    code = ("import sys, analytics_dagster.definitions as d; d.defs.resolve_asset_graph(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dbt', 'dagster_dbt')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_automation_rebuilds_the_models_after_a_sync_and_not_after_a_failed_one(warehouse: Path, admin: Admin) -> None:
    """Declarative automation (what the daemon's automation sensor evaluates): a sync of the raw
    tables requests the models downstream of them; a failed sync requests none."""
    from dagster import AssetSelection, evaluate_automation_conditions

    instance = DagsterInstance.ephemeral()
    raw = defs.resolve_implicit_global_asset_job_def()
    models = AssetSelection.groups(MODELS_GROUP)
    result = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=models)
    cursor = result.cursor  # the first evaluation: every model is missing
    assert raw.execute_in_process(instance=instance, asset_selection=[AssetKey(["analytics", t]) for t in
                                  ("transactions", "subscriptions", "events", "prices", "products", "customers",
                                   "customer_addresses", "adjustments")]).success
    result = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=models, cursor=cursor)
    requested = {key for key in MODELS if result.get_num_requested(key)}
    assert model_key("stg_transactions") in requested and model_key("subscription_history") in requested
    cursor = result.cursor

    admin.post("advance", new_transactions=5)
    admin.post("inject", resource="events", kind="status", status=503, count=4)  # the run's first request fails
    failed = raw.execute_in_process(instance=instance, raise_on_error=False,
                                    asset_selection=[AssetKey(["analytics", "transactions"])])
    assert not failed.success
    result = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=models, cursor=cursor)
    assert result.total_requested == 0


def test_the_models_automation_sensor_is_on_and_targets_the_models() -> None:
    from dagster import DefaultSensorStatus

    sensor = defs.resolve_sensor_def("models_automation")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert sensor.asset_selection.resolve(graph) == MODELS


@pytest.mark.usefixtures("backfilled_with_models")
def test_a_failing_dbt_test_fails_the_run_and_skips_the_models_after_it_in_process_or_not(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing dbt test fails the step with dbt's error and skips the models after it, whether
    dbt runs in the step's process (the default: no child process, hence no child's CPU) or, with
    ANALYTICS_DBT_IN_PROCESS=false, as dagster-dbt's subprocess: both builds give the same
    materializations and check results, dagster-dbt's metadata included. In process, first a
    build interrupted as dagster-dbt interrupts its subprocess when the step is (SIGINT, then a
    bounded wait): dbt stops at once, and the build after it, in the same process, is right."""
    import resource
    import signal
    import time

    from analytics_dagster.dbt_in_process import environment
    from analytics_dagster.models import (MANIFEST, dbt_environment, dbt_target, models_dbt,
                                          models_translator)

    victim = admin.truth("transactions")[0]["id"]
    with duckdb.connect(str(warehouse)) as con:  # a transaction whose total is not its lines' sum
        con.execute("UPDATE analytics.transactions SET details = json_merge_patch(details, '{\"totals\": {\"total\": \"1\"}}') "
                    f"WHERE id = '{victim}'")
    with environment(dbt_environment("duckdb")):
        invocation = models_dbt().cli(["build"], manifest=MANIFEST, target_path=dbt_target(),
                                      dagster_dbt_translator=models_translator(), raise_on_error=False)
        events = invocation.stream_raw_events()
        first = next(e for e in events if e.raw_event["info"]["name"] in ("LogModelResult", "LogTestResult"))
        started = time.perf_counter()
        invocation.process.send_signal(signal.SIGINT)
        assert invocation.process.wait(timeout=10) == 2 and time.perf_counter() - started < 5
        list(events)
        assert "KeyboardInterrupt" in str(invocation.get_error())
        ran = {r["unique_id"] for r in invocation.get_artifact("run_results.json")["results"]}
        assert first.raw_event["data"]["node_info"]["unique_id"] in ran and len(ran) < len(MODELS), ran
    seen = {}
    for in_process in ("true", "false"):
        monkeypatch.setenv("ANALYTICS_DBT_IN_PROCESS", in_process)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=DagsterInstance.ephemeral(), asset_selection=sorted(MODELS), raise_on_error=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
        # dbt's import alone is 2 s of CPU in a subprocess
        assert (child_cpu < 0.5) if in_process == "true" else (child_cpu > 1.0), (in_process, child_cpu)
        assert not result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not checks["line_items_add_up_to_their_transaction"].passed
        assert all(e.passed for name, e in checks.items() if name != "line_items_add_up_to_their_transaction")
        built = {m.asset_key for m in result.asset_materializations_for_node("analytics_models")}
        assert model_key("stg_transactions") in built and model_key("revenue_monthly") not in built
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = str(failure.event_specific_data.error.message)
        assert "line_items_add_up_to_their_transaction" in message and "exit code `1`" in message, message
        seen[in_process] = (
            built, {m.asset_key: sorted(m.metadata) for m in result.asset_materializations_for_node("analytics_models")},
            {name: (e.passed, e.severity, e.metadata.get("dagster_dbt/failed_row_count"), e.metadata.get("status"))
             for name, e in checks.items()})
    assert seen["true"] == seen["false"]


def test_the_in_process_setting_is_true_or_false(monkeypatch: pytest.MonkeyPatch) -> None:
    from analytics_dagster.dbt_in_process import in_process

    for value, expected in (("", True), ("true", True), ("1", True), ("False", False), ("0", False), ("no", False)):
        monkeypatch.setenv("ANALYTICS_DBT_IN_PROCESS", value)
        assert in_process() is expected, value
    monkeypatch.setenv("ANALYTICS_DBT_IN_PROCESS", "sometimes")
    with pytest.raises(ValueError, match="ANALYTICS_DBT_IN_PROCESS='sometimes'"):
        in_process()


def test_the_models_kinds_are_dbt_and_the_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code location as loaded here (DuckDB) says duckdb; the specs made for PostgreSQL say
    postgres, and for a destination the models do not run on, dbt only."""
    from analytics_dagster.models import MANIFEST_DATA, build_specs

    graph = defs.resolve_asset_graph()
    assert {frozenset(graph.get(key).kinds) for key in MODELS} == {frozenset({"dbt", "duckdb"})}
    for warehouse, kinds in (("postgres", {"dbt", "postgres"}), ("bigquery", {"dbt"})):
        specs, _ = build_specs(MANIFEST_DATA, warehouse)
        assert {frozenset(spec.kinds) for spec in specs} == {frozenset(kinds)}
    from analytics_dagster.source.pipeline import destination_type

    monkeypatch.setenv("DESTINATION_TYPE", "dlt.destinations.postgres")
    assert destination_type() == "postgres"


def test_postgres_credentials_that_cannot_be_resolved_fail_the_models_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DESTINATION_TYPE=postgres with a connection string lacking its database: the models step
    fails before running dbt, naming the setting and the missing field, and not the password."""
    monkeypatch.setenv("DESTINATION_TYPE", "postgres")
    monkeypatch.setenv("DESTINATION__POSTGRES__CREDENTIALS", "postgresql://someone:n0t-to-be-shown@127.0.0.1:5432")
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=DagsterInstance.ephemeral(), asset_selection=sorted(MODELS), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.event_specific_data.error.message)
    assert "destination.postgres.credentials" in message and "`database`" in message, message
    assert "n0t-to-be-shown" not in message
    assert not result.get_asset_check_evaluations()


def test_a_dbt_build_waits_for_a_reader_holding_the_warehouse(
    warehouse: Path, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook with the file open: the build waits, saying who holds it, then builds (dbt's own
    connect would fail at once)."""
    from analytics_dagster_tests.test_warehouse_lock import holder

    assert sync_all().success
    instance = DagsterInstance.ephemeral()
    with holder(warehouse, tmp_path, limit=4) as process:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=sorted(MODELS), raise_on_error=False)
        assert process.poll() is not None, "the build went on only once the reader had let go"
    log = "\n".join(entry.user_message for entry in instance.all_logs(result.run_id))
    assert result.success, log[-3000:]
    assert f"(PID {process.pid}): waiting for it" in log
    assert {m.asset_key for m in result.asset_materializations_for_node("analytics_models")} == MODELS


def test_the_package_carries_the_dbt_project_and_its_manifest(tmp_path: Path) -> None:
    """A wheel of the project holds every file of the dbt project and the parsed manifest, so an
    installed analytics_dagster runs its models as a clone does."""
    import zipfile

    from analytics_dagster.models import DBT_PROJECT_DIR

    import shutil

    root = DBT_PROJECT_DIR.parents[1]
    leftover = not (root / "build").exists()  # setuptools builds in the source tree's build/
    try:
        built = subprocess.run([str(Path(sys.executable).parent / "uv"), "build", "--wheel", "--out-dir",
                                str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    finally:
        if leftover:
            shutil.rmtree(root / "build", ignore_errors=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("analytics_dagster/dbt/")}
    project = {f"analytics_dagster/dbt/{p.relative_to(DBT_PROJECT_DIR)}" for p in DBT_PROJECT_DIR.rglob("*")
               if p.is_file() and p.parts[len(DBT_PROJECT_DIR.parts)] not in ("target", "logs")}
    assert packaged == project | {"analytics_dagster/dbt/target/manifest.json"}


def test_the_dbt_version_the_step_assumes_is_the_executables() -> None:
    """The step does not ask `dbt --version` (a subprocess, seconds): it takes the installed
    dbt-core's, which must be what the executable it runs says."""
    from analytics_dagster.models import models_dbt

    dbt = models_dbt()
    said = subprocess.run([dbt.dbt_executable, "--version"], capture_output=True, text=True, timeout=120).stdout
    assert f"installed: {dbt._cli_version}" in said, said


@pytest.mark.world(customers=0)
def test_a_new_account_builds_empty_models_then_real_ones(warehouse: Path, admin: Admin) -> None:
    """An account with no customer yet, so no address, subscription, transaction or refund: dlt
    creates none of those raw tables (it creates a table with its first row), and every model
    reading one would fail every build. The models build, empty, and pass their tests; once the
    account has customers and subscriptions, they build from the raw tables, equal to the
    sandbox, and the empty stand-ins of the tables that now exist are gone."""
    assert_a_new_account_builds_empty_models_then_real_ones(warehouse, admin)


def assert_a_new_account_builds_empty_models_then_real_ones(db: Path | str, admin: Admin) -> None:
    def tables(schema: str) -> set[str]:
        return {r["table_name"] for r in query(db, "SELECT table_name FROM information_schema.tables "
                                                   f"WHERE table_schema = '{schema}'")}

    assert_models_built_and_tested(sync_all(), db)
    missing = {"customers", "customer_addresses", "subscriptions", "transactions", "adjustments"}
    assert not tables("analytics") & missing
    assert {f"empty_raw_{t}" for t in missing} <= tables("analytics_models")
    assert query(db, "SELECT count(*) AS n FROM analytics_models.mrr_daily")[0]["n"] == 0

    admin.post("advance", new_customers=4)
    admin.post("advance", new_subscriptions=3, new_transactions=6)
    # (a currency no completed transaction was paid out in yet has no rate to convert at: the
    # reconciliation with Paddle's MRR says so, rather than guess)
    assert_models_built_and_tested(sync_all(), db, may_warn={"mrr_matches_paddle": "no payout rate for"})
    assert_metrics_equal_the_sandbox(db, admin)
    raw = tables("analytics")
    assert {"customers", "subscriptions", "transactions"} <= raw
    assert {t for t in tables("analytics_models") if t.startswith("empty_raw_")} == \
        {f"empty_raw_{t}" for t in missing - raw}


def test_a_build_is_handed_the_manifest_this_process_parsed_for_the_same_project_and_settings(
    backfilled_with_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dbt in process parses the project once for builds on any DuckDB file of the same name
    (a file elsewhere: none), again for a file of another name (dbt-duckdb's database is the
    name's stem, which the manifest's nodes hold), and every build is right: each file gets its
    own models, under its own database name."""
    from analytics_dagster import dbt_in_process

    parses = []
    parse = dbt_in_process._parse
    monkeypatch.setattr(dbt_in_process, "_parse", lambda options: parses.append(list(options)) or parse(options))
    monkeypatch.setattr(dbt_in_process, "_MANIFESTS", {})
    built = {}
    elsewhere = tmp_path / "elsewhere" / backfilled_with_models.name
    renamed = tmp_path / "renamed" / "other_name.duckdb"
    for db in (backfilled_with_models, elsewhere, renamed):
        if db != backfilled_with_models:
            db.parent.mkdir()
            shutil.copy(backfilled_with_models, db)
            with duckdb.connect(str(db)) as con:  # the models gone: the build must make them
                con.execute("DROP SCHEMA analytics_models CASCADE")
        monkeypatch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(db))
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=DagsterInstance.ephemeral(), asset_selection=sorted(MODELS), raise_on_error=False)
        assert result.success
        built[db] = {(r["day"], r["currency_code"]): r["mrr"]
                     for r in query(db, "SELECT day, currency_code, mrr FROM analytics_models.mrr_daily")}
        assert built[db], db
        assert_close(built[db], built[backfilled_with_models])  # a sum of doubles: its last bits vary
    assert len(parses) == 2, parses  # the first file's, then the other name's
    assert "--select" not in parses[0] and parses[0] == parses[1]
    assert query(renamed, "SELECT DISTINCT table_catalog FROM information_schema.tables "
                          "WHERE table_schema = 'analytics_models'") == [{"table_catalog": "other_name"}]


def test_what_a_parse_depends_on(tmp_path: Path) -> None:
    """The key of a parsed manifest: the command but its selection, the DBT_ and ANALYTICS_
    settings (a DuckDB file by its name's stem; not the target and log folders), the project's
    files (not its target and logs)."""
    from analytics_dagster.dbt_in_process import _parse_inputs

    (tmp_path / "models").mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / "models" / "a.sql").write_text("select 1")
    env = {"DBT_PROJECT_DIR": str(tmp_path), "DBT_TARGET_PATH": "/t/1", "ANALYTICS_DUCKDB_FILE": "/a/test.duckdb",
           "HOME": "/x"}
    key = _parse_inputs(["build", "--select", "a b", "--target", "duckdb"], env)
    same = [(["build", "--select", "c", "--target", "duckdb"], {}),
            (["build", "--select", "a b", "--target", "duckdb"], {"DBT_TARGET_PATH": "/t/2", "DBT_LOG_PATH": "/l"}),
            (["build", "--select", "a b", "--target", "duckdb"], {"ANALYTICS_DUCKDB_FILE": "/b/test.duckdb"}),
            (["build", "--select", "a b", "--target", "duckdb"], {"HOME": "/y", "SOURCES__ANALYTICS__API_KEY": "k"})]
    for args, changes in same:
        assert _parse_inputs(args, {**env, **changes}) == key, (args, changes)
    (tmp_path / "target" / "partial_parse.msgpack").write_text("x")
    assert _parse_inputs(["build", "--target", "duckdb"], env) == key
    other = [(["build", "--target", "postgres"], {}),
             (["build", "--target", "duckdb"], {"ANALYTICS_DUCKDB_FILE": "/a/other.duckdb"}),
             (["build", "--target", "duckdb"], {"DBT_PARTIAL_PARSE": "false"}),
             (["build", "--target", "duckdb"], {"ANALYTICS_POSTGRES_HOST": "db"})]
    for args, changes in other:
        assert _parse_inputs(args, {**env, **changes}) != key, (args, changes)
    (tmp_path / "models" / "a.sql").write_text("select 22")
    assert _parse_inputs(["build", "--target", "duckdb"], env) != key
