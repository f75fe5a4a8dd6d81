"""The whole account: entities a default listing leaves out (non-catalog prices and products,
custom discounts, archived ones) land in the warehouse, by a backfill, by events, in listing
mode and through a backfill that failed part-way; the models build on them; a relationship the
API does not guarantee warns, and the models are built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from analytics_dagster.models import model_key
from analytics_dagster.source.resources import RESOURCES_BY_NAME
from analytics_dagster_tests.conftest import Admin, active, assert_warehouse_equals_api
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_failures import step_error
from analytics_dagster_tests.test_models import assert_models_built_and_tested, sync_all
from analytics_dagster_tests.test_sync import sync

# what a default listing leaves out, by table: the field and the value it hides
HIDDEN = {"prices": ("type", "custom"), "products": ("type", "custom"), "discounts": ("mode", "custom")}


def hidden(admin: Admin, table: str) -> list[dict[str, Any]]:
    field, value = HIDDEN[table]
    return [e for e in admin.truth(table) if e[field] == value]


def test_the_registry_lists_every_part_the_spec_defines() -> None:
    """Each listing's parts together ask for every value of each filter that hides entities."""
    assert RESOURCES_BY_NAME["prices"].parts == (
        {"status": "active,archived", "type": "standard"}, {"status": "active,archived", "type": "custom"})
    every = "active,archived,expired,used"
    assert RESOURCES_BY_NAME["discounts"].parts == ({"status": every, "mode": "standard"}, {"status": every, "mode": "custom"})
    assert RESOURCES_BY_NAME["customers"].parts == ({"status": "active,archived"},)
    assert RESOURCES_BY_NAME["subscriptions"].parts == ({},)


def test_a_default_listing_hides_them_and_the_sandbox_has_them(admin: Admin, sandbox: Any) -> None:
    import requests

    headers = {"Authorization": f"Bearer {sandbox.config.api_key}"}
    for table, (field, value) in HIDDEN.items():
        path = RESOURCES_BY_NAME[table].path
        assert hidden(admin, table), f"the sandbox makes no {field}={value} {table}"
        active(admin, table, **{field: value}), active(admin, table, **{field: "standard"})  # (both shown or hidden)
        listed = requests.get(f"{sandbox.url}/v1{path}?per_page=200", headers=headers, timeout=30).json()["data"]
        assert listed and all(e[field] != value for e in listed), f"a default listing of {table} shows {value} ones"
        asked = requests.get(f"{sandbox.url}/v1{path}?per_page=200&{field}={value}", headers=headers,
                             timeout=30).json()["data"]
        assert {e["id"] for e in asked} == {e["id"] for e in hidden(admin, table) if e["status"] == "active"}
    # transactions and subscriptions bill them
    custom_prices = {e["id"] for e in hidden(admin, "prices")}
    billed = [t for t in admin.truth("transactions") if any(i["price"]["id"] in custom_prices for i in t["items"])]
    assert billed


def change_hidden_entities(admin: Admin) -> None:
    """A round of changes to the entities a default listing hides: updates, an archive, and new
    ones (new transactions bill a non-catalog price now and then)."""
    for table, (field, value) in HIDDEN.items():
        active(admin, table, **{field: value})
        entities = [e for e in hidden(admin, table) if e["status"] == "active"]
        admin.post("mutate", resource=table, key=entities[0]["id"], set={"custom_data": {"round": table}})
        if len(entities) > 1:
            admin.post("mutate", resource=table, key=entities[1]["id"], set={"status": "archived"})
    admin.post("advance", updates=30, archives=4, new_customers=3, new_transactions=25)


@pytest.mark.parametrize("mode", ["events", "listing"])
def test_every_hidden_entity_lands_and_stays_exact_through_changes(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", mode)
    result = sync_all()
    assert_models_built_and_tested(result, warehouse)
    assert_warehouse_equals_api(warehouse, admin)
    before = {t: len(hidden(admin, t)) for t in HIDDEN}
    for _ in range(2):
        change_hidden_entities(admin)
        result = sync_all()
        assert_models_built_and_tested(result, warehouse)
        assert_warehouse_equals_api(warehouse, admin)
    assert len(hidden(admin, "prices")) > before["prices"], "the rounds made new non-catalog prices"
    if mode == "events":  # kept by events: the hidden tables were not listed again (discounts are, every run)
        assert all(metadata(result)[t]["sync_mode"] == "events" for t in HIDDEN if not RESOURCES_BY_NAME[t].unnotified)


@pytest.mark.world(seed=4)  # a world with 14 non-catalog prices: five pages of them
def test_a_backfill_failing_in_a_later_part_resumes_in_it(
    warehouse: Path, admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prices listed 3 a page, committed every page: a request of the non-catalog part keeps
    failing, the run fails; the next one resumes in that part, after its last committed page."""
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_ROWS", "3")
    monkeypatch.setenv("SOURCES__ANALYTICS__BACKFILL_CHUNK_SECONDS", "3600")
    monkeypatch.setenv("SOURCES__ANALYTICS__PAGE_SIZES", '{"prices": 3}')
    with monkeypatch.context() as patch:  # the control: a whole backfill of prices, in a warehouse of its own
        patch.setenv("DESTINATION__DUCKDB__CREDENTIALS", str(tmp_path / "control.duckdb"))
        patch.setenv("DLT_DATA_DIR", str(tmp_path / "control_dlt"))
        admin.post("stats/reset")
        assert sync(["prices"]).success
        whole = admin.get("stats")["by_resource"]["prices"]
    standard_pages = -(-len([p for p in admin.truth("prices") if p["type"] == "standard"]) // 3)
    assert whole - standard_pages >= 4, "the non-catalog part takes several pages"
    admin.post("stats/reset")
    # the third page from the end fails, with its retries: it is in the non-catalog part
    admin.post("inject", resource="prices", kind="status", status=503, count=4, after_requests=whole - 3 + 1)
    failed = sync(["prices"], raise_on_error=False)
    assert not failed.success and "503" in step_error(failed)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        kept = con.sql("SELECT type, count(*) FROM analytics.prices GROUP BY 1").fetchall()
    assert dict(kept).get("custom"), f"the failed run committed pages of the non-catalog part: {kept}"
    admin.post("stats/reset")
    result = sync(["prices"])
    assert result.success
    assert admin.get("stats")["by_resource"]["prices"] <= 4, "resumed in the non-catalog part, not started over"
    assert "backfill resumed" in metadata(result)["prices"]["sync_reason"]
    assert_warehouse_equals_api(warehouse, admin, ["prices"])


@pytest.mark.usefixtures("backfilled")
def test_a_line_whose_price_was_never_synced_warns_and_the_models_build(warehouse: Path, admin: Admin) -> None:
    """A state the API allows (a key without price.read; prices synced apart from transactions):
    a transaction bills a price the warehouse does not have. The relationship test warns, with
    the count and the price in the check's metadata, and every model is built."""
    billed = {line["price_id"] for t in admin.truth("transactions") for line in t["details"]["line_items"]}
    price = next(p["id"] for p in hidden(admin, "prices") if p["id"] in billed)
    with duckdb.connect(str(warehouse)) as con:
        con.execute("DELETE FROM analytics.prices WHERE id = ?", [price])
    result = sync_all()
    assert result.success
    built = {m.asset_key for m in result.asset_materializations_for_node("analytics_models")}
    assert model_key("mrr_daily") in built and model_key("revenue_monthly") in built
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()
              if e.asset_key == model_key("stg_transaction_line_items")}
    warned = [e for name, e in checks.items() if name.startswith("relationships") and "price_id" in name]
    assert len(warned) == 1 and not warned[0].passed and warned[0].severity.value == "WARN", checks
    meta = {k: v.value for k, v in warned[0].metadata.items()}
    assert meta["dagster_dbt/failed_row_count"] >= 1
    assert any(price in row for row in meta["failing_sample"]), meta
