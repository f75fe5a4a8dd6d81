"""Adversarial tests of the whole account (non-catalog prices and products, custom discounts,
listed in parts): states the API allows in which the warehouse is not the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from analytics_dagster.source.resources import ApiResource
from analytics_dagster_tests.conftest import Admin, assert_warehouse_equals_api
from analytics_dagster_tests.test_events import metadata
from analytics_dagster_tests.test_sync import sync

HIDDEN = {"prices": ("type", "custom"), "products": ("type", "custom"), "discounts": ("mode", "custom")}


def hidden(admin: Admin, table: str) -> list[dict[str, Any]]:
    field, value = HIDDEN[table]
    return [e for e in admin.truth(table) if e[field] == value]


@pytest.mark.parametrize("mode", ["events", "listing"])
def test_a_warehouse_synced_before_the_change_gets_the_non_catalog_entities(
    warehouse: Path, admin: Admin, monkeypatch: pytest.MonkeyPatch, mode: str,
) -> None:
    """A deployment upgraded to this change: its warehouse was synced by the release before,
    whose listings asked only `status=active,archived` (Paddle then lists the catalog: standard
    prices and products, standard discounts). The API has non-catalog ones that existed all
    along, and no change to them follows the upgrade. After the upgrade a sync must leave the
    warehouse equal to the API: the custom entities listed before the upgrade was deployed
    are part of it."""
    monkeypatch.setenv("SOURCES__ANALYTICS__INCREMENTAL", mode)
    with monkeypatch.context() as before:  # the release before: one listing, the API's defaults (catalog only)
        whole = ApiResource.parts.fget  # type: ignore[attr-defined]
        before.setattr(ApiResource, "parts", property(lambda self: whole(self)[:1]))
        assert sync(["prices", "products", "discounts"]).success
    missing = {t: len(hidden(admin, t)) for t in HIDDEN}
    assert all(missing.values()), missing
    # the upgrade: the same warehouse synced by this change, the API as it was plus some activity
    admin.post("advance", updates=10, new_customers=1, new_transactions=5)
    result = sync(["prices", "products", "discounts"])
    assert result.success
    reasons = {t: metadata(result)[t].get("sync_reason") for t in HIDDEN}
    assert_warehouse_equals_api(warehouse, admin, list(HIDDEN)), reasons
