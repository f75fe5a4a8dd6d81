"""The `dagster dev` experience in a real browser: Debian's Chromium driven by Playwright.

Starts the sandbox and `dagster dev` (webserver and daemon) on free ports, checks the asset graph,
clicks *Materialize all*, waits for the run, and checks that every asset check passed. Set
ANALYTICS_SCREENSHOT_DIR to keep the screenshots (`make screenshot` writes docs/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from analytics_dagster.sandbox import SandboxServer
from analytics_dagster.source.resources import RESOURCES_BY_NAME, STREAM_TABLES
from analytics_dagster_tests.conftest import (DAGSTER, TABLES, Admin, assert_warehouse_equals_api, dagster_ui,
                                             graphql, poll)

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.browser
if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser test: install Debian's chromium (.ci/run does)")
    pytest.skip("no /usr/bin/chromium here (apt-get install chromium); CI installs it and never skips",
                allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402


@pytest.fixture
def dagster_dev(warehouse: Path, sandbox: SandboxServer, tmp_path: Path) -> Iterator[str]:
    with dagster_ui([DAGSTER, "dev"], tmp_path) as url:
        yield url


# the lineage of the group analytics (the raw tables): with the models' group beside it, the
# global lineage shows each group collapsed, and /asset-groups/<group> leads there
GROUP_GRAPH = '{url}/asset-groups~group:%22analytics%22'


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    folder = Path(os.environ.get("ANALYTICS_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))


def test_materialize_all_in_the_ui(dagster_dev: str, warehouse: Path, admin: Admin, tmp_path: Path) -> None:
    url = dagster_dev
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # Dagster's community sign-up modal shows up at some moment of the first visit and covers
        # the page: dismiss it whenever it is there before an action
        skip = page.get_by_role("button", name="Skip")
        page.add_locator_handler(skip, lambda *_: skip.click())

        # the group's graph lists every asset
        page.goto(GROUP_GRAPH.format(url=url), wait_until="networkidle")
        for table in TABLES:
            page.get_by_text(table, exact=True).first.wait_for(timeout=30_000)

        # lineage: customers -> customer_addresses and customers -> businesses (and the model
        # customer_overview, which reads customers)
        page.goto(f"{url}/assets/analytics/customers?view=lineage&lineageScope=downstream&lineageDepth=1",
                  wait_until="networkidle")
        graph = page.locator("[class*=AssetNode_assetName]")
        poll(lambda: graph.count() == 4, timeout=30)
        assert sorted(graph.all_inner_texts()) == ["businesses", "customer_addresses", "customer_overview", "customers"]
        for child in ("customer_addresses", "businesses"):
            page.goto(f"{url}/assets/analytics/{child}", wait_until="networkidle")
            page.locator("a[href='/assets/analytics/customers']").first.wait_for(timeout=30_000)

        # Materialize all (of the group), then wait (with a deadline) for the run to succeed
        page.goto(GROUP_GRAPH.format(url=url), wait_until="networkidle")
        page.get_by_role("button", name="Materialize all").click()
        runs_query = "{ runsOrError { ... on Runs { results { runId status } } } }"

        def finished() -> str | None:
            runs = graphql(url, runs_query)["runsOrError"]["results"]
            done = [r["status"] for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return done[0] if done else None

        assert poll(finished, timeout=300, interval=1.0) == "SUCCESS"
        assert_warehouse_equals_api(warehouse, admin)

        # every check green, as the UI reports it
        checks_query = """{ assetNodes(group: {groupName: "analytics", repositoryName: "__repository__",
            repositoryLocationName: "analytics_dagster"}) { assetKey { path }
            assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization {
            evaluation { success } } } } } } }"""
        nodes = graphql(url, checks_query)["assetNodes"]
        results = {n["assetKey"]["path"][-1]: [c["executionForLatestMaterialization"]["evaluation"]["success"]
                                               for c in n["assetChecksOrError"]["checks"]] for n in nodes}
        # the primary-key check on every table, the events check on those the stream keeps, and
        # the key's permission on those that need one
        assert results == {t: [True] * (1 + (t in STREAM_TABLES) + bool(RESOURCES_BY_NAME[t].permission))
                           for t in TABLES}
        page.goto(f"{url}/assets/analytics/customers?view=lineage&lineageScope=downstream&lineageDepth=1",
                  wait_until="networkidle")
        page.get_by_text("3 / 3 Passed").first.wait_for(timeout=30_000)
        poll(lambda: page.get_by_text("3 / 3 Passed").count() == 3, timeout=30)
        shoot(page, tmp_path, "asset-graph.png")

        # lineage from the raw tables to a metric: revenue_monthly, two levels up, reads the
        # staging models and they the raw transactions and adjustments
        page.goto(f"{url}/assets/analytics_models/revenue_monthly?view=lineage&lineageScope=upstream&lineageDepth=2",
                  wait_until="networkidle")
        expected = sorted(["revenue_monthly", "stg_transactions", "stg_transaction_line_items", "stg_adjustments",
                           "stg_adjustment_items", "transactions", "adjustments"])
        poll(lambda: sorted(graph.all_inner_texts()) == expected, timeout=30)
        # (the nodes' links render after their names: polled too; read at once, one was not there
        # yet in a clean-clone run)
        for raw in ("transactions", "adjustments"):
            poll(lambda raw=raw: page.locator(f"a[href*='/assets/analytics/{raw}']").count() >= 1, timeout=30)
        shoot(page, tmp_path, "metric-lineage.png")
        browser.close()
