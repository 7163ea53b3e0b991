"""docs/threat-model.md names the test that attacks each row: every such test must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "threat-model.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
LINK = re.compile(r"\(threat-model\.md#([\w-]+)\)")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return {node.name for node in ast.walk(tree) if isinstance(node, functions)}


def test_every_test_the_threat_model_names_exists() -> None:
    named = NAMED.findall(PAGE.read_text())
    assert len(named) >= 20, "the threat model names the tests that attack each row"
    missing = []
    for file, name in named:
        path = REPO / file
        if not path.exists() or name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"


def _anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_every_link_into_the_threat_model_names_one_of_its_sections() -> None:
    anchors = {_anchor(line) for line in PAGE.read_text().splitlines() if line.startswith("#")}
    linked = {
        (doc.name, anchor)
        for doc in (REPO / "docs").glob("*.md")
        for anchor in LINK.findall(doc.read_text())
    }
    assert len(linked) >= 6, "the other docs point their security sections at the threat model"
    assert not [x for x in linked if x[1] not in anchors], sorted(linked)
