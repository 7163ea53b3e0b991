"""The benchmark scripts still run and report what they promise (slow: `make test-slow`).

They reach into the code they measure (private helpers, store calls), so a change can break
them without any other test noticing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _bench(script: str, *args: str) -> Any:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_attestation_bench() -> None:
    report = _bench("attestation.py", "--quick", "--clients", "2")
    assert report["throughput"]["appraisals"] > 0 and report["throughput"]["rate"] > 0
    # The clients' connections are spread over the workers as a load balancer would.
    split = report["throughput"]["connections_per_worker"]
    assert sum(split) == 2 and max(split) - min(split) <= 1
    # The warm decision reuses what repeats; it must not be slower than the cold one.
    assert report["appraise"]["p50_ms"] <= report["appraise_cold"]["p50_ms"]


def test_vtee_bench() -> None:
    report = _bench("vtee.py", "--vtees", "1", "--reps", "1")
    assert report["appraise_3link_ms"] > 0 and report["idle_vtee_pss_mib"] > 0


def test_ratls_bench() -> None:
    report = _bench("ratls.py", "--runs", "3")
    assert report["runs"] == 3 and report["results"]


def test_events_bench() -> None:
    report = _bench("events.py", "--hops", "50", "--burst", "300")
    # Measured with a core per node (no suffix) when the machine has one, and shared.
    for placement in report["placements"]:
        assert report[f"throughput_across_nodes{placement}"]["events_per_s"] > 0
        assert report[f"latency_across_nodes{placement}"]["p50_ms"] > 0
        assert report[f"latency_within_node{placement}"]["p50_ms"] > 0
    assert "_shared_cores" in report["placements"]
