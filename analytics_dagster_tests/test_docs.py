"""The README and the docs pages: every relative link resolves, and the README is a guide."""

from __future__ import annotations

import bisect
import fnmatch
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

from analytics_dagster.source.resources import RESOURCES
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
        "The models", "Settings", "When something goes wrong", "Further reading",
    ]
    assert len(text.splitlines()) <= 210
    assert not re.search(r"#\d+\b", text), "no issue numbers"
    for doc in ("design", "benchmark", "sandbox", "deploy", "models"):
        assert f"(docs/{doc}.md)" in text


# --- No dead references -------------------------------------------------------------------------
#
# Every file a newcomer reads: the docs, the code's comments, docstrings and messages, the settings
# files. A reference in any of them must land in this repository, on something that is there:
# - a section (`README, "Settings"`, `docs/design.md, "Late events"`, `[x](docs/design.md#late-events)`,
#   `(#settings)`, `design.md#late-events`): the page exists and has that heading;
# - a path (`analytics_dagster/source/events.py`, `source/resources.py`, `fixtures/paddle`,
#   `docs/api.md`, `.dlt/config.toml`, `resources.py`): a token with a `/` whose first part is a
#   directory or file of the repository (or of its packages: `source/`, `sandbox/`, `fixtures/`),
#   or one a reader would look for that it does not have (ABSENT_ROOTS), or that ends in a file's
#   extension; and a file name alone. It names an existing path (a whole path from the root, or
#   the end of one), or one git ignores because a run makes it (`data/`, `.dlt/secrets.toml`);
# - nothing outside the repository: no relative path that climbs out of it, no machine's own path
#   (MACHINE_PATH). Links to web pages (`https://...`) are not this test's business.
# A provenance list (SOURCES.md) names paths of the upstream repositories it copied from: there,
# only a path that climbs out of this one is, and its listing is checked apart
# (test_every_provenance_list_lists_exactly_the_files_beside_it).

EXTENSIONS = ("md", "py", "toml", "yaml", "yml", "json", "lock", "example", "png", "sh", "cfg", "ini", "txt")
# directories a reader would look for that this repository does not have
ABSENT_ROOTS = {"tests", "test", "src", "shared", "lib"}
# file names of other projects' that the docs name as theirs
NOT_OURS = {"values.yaml": "the values file of Dagster's Helm chart (docs/deploy.md)",
            "run_results.json": "dbt's record of a build, in its target folder (benchmarks/bench.py)"}
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def _gitignore_patterns() -> list[str]:
    lines = (REPO / ".gitignore").read_text().splitlines()
    return [line.strip().strip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(rel: str) -> bool:
    """Whether .gitignore covers a repository-relative path: something a run or a tool makes."""
    parts = rel.strip("/").split("/")
    for pattern in _gitignore_patterns():
        if "/" in pattern:
            if fnmatch.fnmatch(rel, pattern) or rel.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pattern) for part in parts):
            return True
    return False


def repo_paths() -> set[str]:
    """Every file and directory of the working tree, repository-relative, but what git ignores."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(REPO):
        rel_folder = Path(folder).relative_to(REPO).as_posix()
        rel = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not ignored(rel + d)]
        found.update(rel + name for name in [*dirs, *files] if not ignored(rel + name))
    return found


PATHS = repo_paths()
BASENAMES = {p.rsplit("/", 1)[-1] for p in PATHS}
# where a path can start: the repository's root, or a package's (`source/`, `sandbox/`, `fixtures/`)
PACKAGES = ("analytics_dagster", "analytics_dagster_tests")
ROOTS = {p for p in PATHS if "/" not in p} | {
    p.split("/")[1] for p in PATHS if p.count("/") == 1 and p.startswith(PACKAGES) and (REPO / p).is_dir()
}


def scanned_files() -> list[Path]:
    patterns = [
        "*.md", "docs/*.md", "analytics_dagster/**/*.md", "analytics_dagster_tests/**/*.md",
        "analytics_dagster/**/*.py", "analytics_dagster_tests/**/*.py", "benchmarks/**/*.py",
        "pyproject.toml", ".dlt/*.toml", ".dlt/*.example", "dagster*.yaml", "deploy/*.yaml",
        "workspace.yaml", "Makefile", ".ci/*",
    ]
    files = {f for pattern in patterns for f in REPO.glob(pattern) if f.is_file()}
    return sorted(f for f in files if not ignored(f.relative_to(REPO).as_posix()))


SCANNED = scanned_files()


def prose_lines(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The lines of a file a reader reads, with their numbers: the whole of a page or a settings
    file, a Python file's comments and docstrings; and apart, a Python file's other string
    literals (messages, but regular expressions and code too: only their references to a page's
    section are checked)."""
    text = path.read_text()
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1)), []
    prose: list[tuple[int, str]] = []
    strings: list[tuple[int, str]] = []
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type != tokenize.NL]
    for i, token in enumerate(tokens):
        if token.type == tokenize.COMMENT:
            prose.append((token.start[0], token.string.lstrip("#")))
        elif token.type == tokenize.STRING:
            before = tokens[i - 1].type if i else tokenize.NEWLINE
            after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
            statement = before in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.COMMENT) and after in (
                tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER)
            literal = token.string.replace('\\"', '"').replace("\\'", "'")  # `\"Settings\"` is `"Settings"`
            lines = [(token.start[0] + n, line) for n, line in enumerate(literal.splitlines())]
            (prose if statement else strings).extend(lines)
        elif token.type == getattr(tokenize, "FSTRING_MIDDLE", None):  # Python 3.12+: an f-string's text
            strings.extend((token.start[0] + n, line) for n, line in enumerate(token.string.splitlines()))
    return prose, strings


class Prose:
    """Lines as one text (so that a reference wrapped over two lines is still one), with the line
    each character came from."""

    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.starts: list[int] = []
        offset = 0
        for _, line in self.lines:
            self.starts.append(offset)
            offset += len(line) + 1
        self.text = "\n".join(line for _, line in self.lines)

    def line_of(self, offset: int) -> int:
        return self.lines[bisect.bisect_right(self.starts, offset) - 1][0]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> list[str]:
    found, fenced = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(page):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def same_heading(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[`*_]", " ", s).split()).casefold()

    return norm(a) == norm(b)


LINK_TARGET = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOC_ANCHOR = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+\.md)#([\w-]+)")
# `README, "Settings"`, `docs/design.md, 'Reading the warehouse while it syncs'`, `README's "Settings"`
DOC_SECTION = re.compile(
    r"(?<![\w./-])(?P<doc>(?:[\w.-]+/)*(?:README(?:\.md)?|[\w-]+\.md))"
    r"(?:\s*,\s*|'s\s+|\s+section\s+)(?:section\s+)?[\"'“‘](?P<name>[^\"'”’]{2,100}?)[\"'”’]"
)
PATH_TOKEN = re.compile(r"(?<![\w.$/:@~{}<>=-])((?:\.\.?/)*[\w.][\w.-]*(?:/[\w.-]+)*/?)")
# a file name alone (`resources.py`); not a method (`response.json()`)
BARE_NAME = re.compile(
    r"(?<![\w./$-])([\w-]+(?:\.[\w-]+)*\.(?:" + "|".join(EXTENSIONS) + r"))(?![\w/(-])(?!\.\w)"
)
MACHINE_PATH = re.compile(r"(?<![\w.:/-])((?:/work|/home|/root|~)/[\w./-]*)")


def resolve_doc(name: str, page: Path) -> Path | None:
    """The page a reference names: `README` is the README; a page by its path from the repository,
    from the referring file, or by its file name alone (`design.md`)."""
    name = "README.md" if name in ("README", "./README") else name
    for candidate in (REPO / name, page.parent / name):
        if candidate.resolve().is_file():
            return candidate.resolve()
    if "/" not in name:
        pages = [REPO / p for p in PATHS if p.rsplit("/", 1)[-1] == name]
        if len(pages) == 1:
            return pages[0]
    return None


def dead_references(path: Path) -> list[str]:
    """Every dead reference of a file, as `file:line: 'reference': why`."""
    rel = path.relative_to(REPO).as_posix()
    prose_part, strings_part = prose_lines(path)
    # a page's links are relative to the page; elsewhere, to the repository's root
    base = path.parent if path.suffix == ".md" else REPO
    dead: dict[tuple[int, str], str] = {}

    def inside(target: Path) -> bool:
        return target == REPO or REPO in target.parents

    def check_sections(prose: Prose, links: bool) -> None:
        def report(offset: int, ref: str, why: str) -> None:
            line = prose.line_of(offset)
            dead.setdefault((line, ref), f"{rel}:{line}: {ref!r}: {why}")

        def check(offset: int, ref: str, page: Path | None, section: str, by_anchor: bool) -> None:
            if page is None:
                report(offset, ref, "no such page in the repository")
            elif page.suffix != ".md":
                report(offset, ref, f"{page.relative_to(REPO)} has no sections")
            elif by_anchor and section not in anchors(page):
                report(offset, ref, f"{page.relative_to(REPO)} has no section with the anchor #{section}")
            elif not by_anchor and not any(same_heading(section, h) for h in headings(page)):
                report(offset, ref, f"{page.relative_to(REPO)} has no section {section!r}")

        text = prose.text
        for m in LINK_TARGET.finditer(text) if links else ():
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a web page
            file, _, anchor = target.partition("#")
            page = (base / file).resolve() if file else path
            if not inside(page):
                report(m.start(), target, "points outside the repository")
            elif not page.exists():
                report(m.start(), target, "no such file or directory")
            elif anchor:
                check(m.start(), target, page, anchor, by_anchor=True)
        for m in DOC_ANCHOR.finditer(text):
            check(m.start(), m.group(0), resolve_doc(m.group(1), path), m.group(2), by_anchor=True)
        for m in DOC_SECTION.finditer(text):
            section = " ".join(m.group("name").replace("#", " ").split())
            check(m.start(), " ".join(m.group(0).replace("#", " ").split()),
                  resolve_doc(m.group("doc"), path), section, by_anchor=False)

    check_sections(Prose(strings_part), links=False)
    prose = Prose(prose_part)
    check_sections(prose, links=True)

    def report(offset: int, ref: str, why: str) -> None:
        line = prose.line_of(offset)
        dead.setdefault((line, ref), f"{rel}:{line}: {ref!r}: {why}")

    text = prose.text
    for m in MACHINE_PATH.finditer(text):
        report(m.start(), m.group(1), "a path on some machine, outside the repository")
    # a provenance list's other paths are the upstream repositories'
    provenance = path.name == "SOURCES.md"
    for m in PATH_TOKEN.finditer(text):
        token = m.group(1).rstrip(".")
        if "/" not in token:
            continue
        parts = token.rstrip("/").split("/")
        climbs = parts[0] in ("..", ".")
        first = next((p for p in parts if p not in ("..", ".")), "")
        has_extension = "." in parts[-1] and parts[-1].rsplit(".", 1)[-1] in EXTENSIONS
        if not (climbs or first in ROOTS or first in ABSENT_ROOTS or has_extension) or (provenance and not climbs):
            continue
        if climbs:
            target = (base / token).resolve()
            if not inside(target):
                report(m.start(), token, "points outside the repository")
            elif not target.exists() and not ignored(target.relative_to(REPO).as_posix()):
                report(m.start(), token, "no such file or directory")
            continue
        plain = token.rstrip("/")
        if plain in PATHS or any(p.endswith("/" + plain) for p in PATHS) or ignored(plain) \
                or any(ignored(f"{package}/{plain}") for package in PACKAGES):  # made by a tool, in a package
            continue
        report(m.start(), token, "no such file or directory in the repository")
    for m in BARE_NAME.finditer(text) if not provenance else ():
        name = m.group(1)
        if name in BASENAMES or name in NOT_OURS or ignored(name):
            continue
        report(m.start(), name, "no file of that name in the repository")
    return sorted(dead.values())


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_dead_reference(path: Path) -> None:
    dead = dead_references(path)
    assert not dead, "dead references:\n" + "\n".join(dead)


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in `text`, header and separator left out."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break
    return rows[2:]


@pytest.mark.parametrize(
    "listing", sorted(p for p in REPO.glob("**/SOURCES.md") if not ignored(p.relative_to(REPO).as_posix())),
    ids=lambda p: p.relative_to(REPO).as_posix(),
)
def test_every_provenance_list_lists_exactly_the_files_beside_it(listing: Path) -> None:
    listed = [row[0].strip("`") for row in table_rows(listing.read_text())]
    present = sorted(
        f.relative_to(listing.parent).as_posix() for f in listing.parent.rglob("*")
        if f.is_file() and f != listing and "__pycache__" not in f.parts
    )
    assert len(listed) == len(set(listed)), f"{listing.relative_to(REPO)}: a file listed twice"
    assert not set(listed) - set(present), f"{listing.relative_to(REPO)} lists files that are not there: {sorted(set(listed) - set(present))}"
    assert not set(present) - set(listed), f"{listing.relative_to(REPO)} does not list: {sorted(set(present) - set(listed))}"


# --- Every count said once ----------------------------------------------------------------------
#
# How many resources, evented resources, tables the stream keeps and checks there are is the
# registry's to say (analytics_dagster/source/resources.py): a number of them written in the prose
# goes stale with the next resource. Say "every resource", "the resources with events", or point at
# the one table that lists them (docs/api.md, "Resources", checked against the registry below).

EVENTED_RESOURCES = [r for r in RESOURCES if r.event_entity]
STREAM_KEPT = [r for r in RESOURCES if r.event_entity or r.listing == "event_stream"]
COUNTS = {
    len(RESOURCES): "resources (and assets, and primary-key checks)",
    len(EVENTED_RESOURCES): "resources with events",
    len(STREAM_KEPT): "tables the event stream keeps (and events_applied checks)",
    len(RESOURCES) + len(STREAM_KEPT): "asset checks",
}
_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def in_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"[- ]{_ONES[ones]}" if ones else "")


COUNTED = re.compile(
    r"\b(?P<n>" + "|".join(sorted({in_words(n) for n in COUNTS} | {str(n) for n in COUNTS}, key=len, reverse=True)) + r")\b"
    r"(?:[\s`*]+[\w`*-]+){0,2}?[\s`*]+(?:resources?|assets?|tables?|checks?|paths?|entities|endpoints?|primary-key|events_applied)\b",
    re.I,
)


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_count_of_the_registry_in_prose(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    found = []
    for part in prose_lines(path):
        prose = Prose(part)
        for m in COUNTED.finditer(prose.text):
            n = m.group("n").lower()
            what = next(v for k, v in COUNTS.items() if n in (str(k), in_words(k).replace("[- ]", "-"), in_words(k).replace("[- ]", " ")))
            found.append(f"{rel}:{prose.line_of(m.start())}: {' '.join(m.group(0).split())!r}: the number of {what}")
    assert not found, "counts that go stale with the next resource (the registry says them):\n" + "\n".join(found)


def test_the_api_pages_table_of_resources_is_the_registry() -> None:
    """docs/api.md, "Resources" is the one table of the resources: it says what the registry says."""
    text = (REPO / "docs" / "api.md").read_text()
    rows = table_rows(text[text.index("## Resources"):])
    documented = {}
    for table, path, key, events in rows:
        entity = re.match(r"^`(\w+)`$", events)
        documented[table] = (path.strip("`"), re.match(r"`(\w+)`", key).group(1), entity.group(1) if entity else None)
    assert documented == {
        r.name: ("/v1" + r.path.replace("{cus_id}", "{customer id}"), r.primary_key, r.event_entity) for r in RESOURCES
    }


def test_the_readmes_asset_graph_shows_every_resource() -> None:
    text = (REPO / "README.md").read_text()
    graph = text[text.index("```\nanalytics/"):]
    graph = graph[:graph.index("\n```", 4)]
    assert set(re.findall(r"\banalytics/(\w+)", graph)) == {r.name for r in RESOURCES}
