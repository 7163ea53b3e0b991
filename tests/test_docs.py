"""The docs stay what they are for: users' pages, with the measurements in bench/README.md.

docs/ tell a user how to use Veritee and what it guarantees; the figures of the benchmarks, one
table per benchmark with the command that makes it, live in bench/README.md. Links between the
pages (and into the tree) resolve, anchors included.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md"))
BENCH = REPO / "bench" / "README.md"
PAGES = [*DOCS, REPO / "README.md", BENCH]
LINK = re.compile(r"\]\(([^)\s]+)\)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b(?!T)")  # a day; an ISO timestamp in an example is fine
MEASURED = re.compile(r"\b\d+(?:\.\d+)?[–-]\d+(?:\.\d+)? ?(?:ms|µs)\b")  # a range of timings


def _anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    lines = page.read_text().splitlines()
    fenced = False
    found = set()
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(_anchor(line))
    return found


def test_every_link_between_pages_resolves_with_its_anchor() -> None:
    broken = []
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # another site
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            checked += 1
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such section)")
    assert checked >= 30, "the pages link to each other"
    assert not broken, "\n".join(broken)


def test_the_users_docs_keep_no_measurement_diary() -> None:
    """Dated runs and ranges of timings belong to bench/README.md, not to the users' pages."""
    found = []
    for page in DOCS:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for pattern in (DATE, MEASURED):
                if pattern.search(line):
                    found.append(f"{page.name}:{number}: {line.strip()}")
    assert not found, "move these to bench/README.md:\n" + "\n".join(found)


def test_every_benchmark_has_a_table_and_its_command_in_bench_readme() -> None:
    text = BENCH.read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_name = {section.split(":", 1)[0].strip(): section for section in sections}
    scripts = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))
    assert "events" in scripts and "compute" in scripts
    missing = []
    for name in scripts:
        section = by_name.get(name, "")
        if f"bench/{name}.py" not in section or not re.search(r"^\|.*\|$", section, re.M):
            missing.append(name)
    assert not missing, f"bench/README.md lacks a section, command and table for {missing}"
