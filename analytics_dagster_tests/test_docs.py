"""The README and the docs pages: every relative link resolves, and the README is a guide."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analytics_dagster_tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in targets if not (page.parent / t.split("#")[0]).resolve().exists()]
    outside = [t for t in targets if REPO not in (page.parent / t.split("#")[0]).resolve().parents]
    assert not missing, f"{page.name}: links to nothing: {missing}"
    assert not outside, f"{page.name}: links out of the repository: {outside}"


def test_the_readme_is_a_guide_in_the_order_a_user_needs_it() -> None:
    text = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == [
        "Quick start", "Using it on a real account", "The UI", "Jobs, schedules and sensors",
        "Settings", "When something goes wrong", "Further reading",
    ]
    assert len(text.splitlines()) <= 210
    assert not re.search(r"#\d+\b", text), "no issue numbers"
    for doc in ("design", "benchmark", "sandbox", "deploy"):
        assert f"(docs/{doc}.md)" in text
