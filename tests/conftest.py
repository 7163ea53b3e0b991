"""Shared fixtures. Tests reach files by name through ``asset`` / ``vector``, never by hand-built paths."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
# Published vectors from other projects live beside the repository (../shared/vectors).
VECTORS = REPO.parent / "shared" / "vectors"


@pytest.fixture
def asset() -> Callable[[str], Path]:
    """Path of a fixture file under tests/assets/."""

    def _asset(name: str) -> Path:
        path = ASSETS / name
        assert path.exists(), f"missing test asset {name}"
        return path

    return _asset


@pytest.fixture
def vector() -> Callable[[str], Path]:
    """Path of a published test vector under ../shared/vectors/ (e.g. "psa/tfm-iak-pub.pem")."""

    def _vector(name: str) -> Path:
        path = VECTORS / name
        assert path.exists(), f"missing shared vector {name} (expected ../shared/vectors beside the repo)"
        return path

    return _vector
