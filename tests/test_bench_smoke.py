"""The benchmark scripts still run and report what they promise (slow: `make test-slow`).

They reach into the code they measure (private helpers, store calls), so a change can break
them without any other test noticing.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from veritee.app.transport import POLL

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


@pytest.mark.parametrize("generator", ["c", "python"])
def test_attestation_bench(generator: str) -> None:
    report = _bench("attestation.py", "--quick", "--clients", "2", "--load-generator", generator)
    assert report["throughput"]["load_generator"] == generator
    assert report["throughput"]["appraisals"] > 0 and report["throughput"]["rate"] > 0
    assert report["throughput"]["client_cpu_ms_per_appraisal"] > 0
    if generator == "c":  # it reports progress: the run's rate window by window
        windows = report["throughput"]["windows"]
        assert len(windows) >= int(report["throughput"]["seconds"] / 0.5) - 1
        assert all(w["seconds"] > 0 and 0 <= w["stolen"] <= 1 for w in windows)
    # The clients' connections are spread over the workers as a load balancer would.
    split = report["throughput"]["connections_per_worker"]
    assert sum(split) == 2 and max(split) - min(split) <= 1
    # The warm decision reuses what repeats; it must not be slower than the cold one.
    assert report["appraise"]["p50_ms"] <= report["appraise_cold"]["p50_ms"]


def test_load_generator_stops_on_an_unexpected_answer(tmp_path: Path) -> None:
    # bench/loadgen.c counts only complete sessions with a result: a server that answers
    # anything else ends the run with what it answered, not with a count.
    binary = tmp_path / "loadgen"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(REPO / "bench" / "loadgen.c")], check=True)
    work = tmp_path / "work.bin"
    work.write_bytes(b"\0\0\0\x04AAAA\0\0\0\x02ev")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen(
            [str(binary), "verifier", f"{theirs.fileno()}:{work}"],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()
        request = ours.recv(4096)
        assert request.startswith(b"POST /challenge-response/v1/newSession?nonce=AAAA HTTP/1.1")
        ours.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\nno")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == b""
    assert b"newSession did not answer 201: HTTP/1.1 404 Not Found" in err


def test_vtee_bench() -> None:
    report = _bench("vtee.py", "--vtees", "1", "--reps", "1")
    assert report["appraise_3link_ms"] > 0 and report["idle_vtee_pss_mib"] > 0


def test_tpm_bench() -> None:
    report = _bench("tpm.py", "--reps", "3", "--boots", "1")
    assert set(report["ratios"]) == {
        "boot_ratio",
        "vtee_start_ratio",
        "evidence_ratio",
        "appraise_ratio",
        "seal_ratio",
    }
    assert report["tpm"]["evidence_bytes"] > report["emulated"]["evidence_bytes"]


def test_ratls_bench() -> None:
    report = _bench("ratls.py", "--runs", "3")
    assert report["runs"] == 3 and report["results"]


def test_events_bench() -> None:
    report = _bench("events.py", "--hops", "50", "--burst", "300")
    # Measured with a core per node (no suffix) when the machine has one, and shared.
    for placement in report["placements"]:
        tput = report[f"throughput_across_nodes{placement}"]
        assert tput["received"] == tput["events"] and tput["events_per_s"] > 0
        assert report[f"latency_across_nodes{placement}"]["p50_ms"] > 0
        assert 0 <= report[f"latency_across_nodes{placement}"]["stolen"] <= 1
        assert report[f"latency_within_node{placement}"]["p50_ms"] > 0
    assert "_shared_cores" in report["placements"]
    assert "halt_poll_ns" in report  # None where the machine has no haltpoll driver
    assert report["poll_us"] == round(POLL * 1e6)
    history = report["history"]
    assert history["ended"] == 4096 and all(
        p > 0 for p in history["p50_before_ms"] + history["p50_after_ms"]
    )


def test_events_nats_bench() -> None:
    report = _bench(
        "events_nats.py",
        *("--hops", "50", "--burst", "300"),
        *("--fanout", "1,4", "--fanout-burst", "100", "--fanout-rounds", "1"),
    )
    for transport in ("direct", "nats"):
        tput = report[f"throughput_{transport}"]
        assert tput["received"] == tput["events"] and tput["events_per_s"] > 0
        assert report[f"latency_{transport}"]["p50_ms"] > 0
    assert report["nats_alone"]["events_per_s"] > 0 and report["tcp_alone"]["p50_ms"] > 0
    rows = {(r["n"], r["transport"]): r for r in report["fanout"]}
    assert set(rows) == {(n, t) for n in (1, 4) for t in ("direct", "nats")}
    for (n, _), row in rows.items():
        assert row["received"] == 100 and row["deliveries"] == 100 * n
        assert row["deliveries_per_s"] > 0
    # Fan-out to 4 over the broker: each source event stored once, with a wrap per input,
    # on the fan-out stream and not on the node stream; to 1, a plain event on the node's.
    four, one = rows[4, "nats"]["broker"], rows[1, "nats"]["broker"]
    assert four["fanout_events"] == 100 and four["fanout_wraps"] == 400
    assert four["node_messages"] == 0 and 0 < four["fanout_messages"] <= 100
    assert one["fanout_messages"] == 0 and one["node_messages"] > 0


def test_events_ab_bench_runs_a_revision_beside_this_tree() -> None:
    report = _bench(
        "events_ab.py",
        *("HEAD", "--rounds", "2", "--hops", "50", "--placement", "shared"),
        *("--burst", "300", "--base-poll-us", "0"),
    )
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert report["base"] == head and report["this"].startswith(head[:12])
    shared = report["nodes sharing all cores"]
    assert len(shared["base_p50_ms"]) == len(shared["this_p50_ms"]) == 2
    assert all(v > 0 for v in shared["base_p50_ms"] + shared["this_p50_ms"])
    assert shared["ratio"] == pytest.approx(shared["this_median_ms"] / shared["base_median_ms"])
    assert 0 <= shared["this_lower_in"] <= 2
    assert shared["base_cpu_ms_per_hop"] > 0 and shared["this_cpu_ms_per_hop"] > 0
    assert len(shared["base_events_per_s"]) == 2 and all(
        v > 0 for v in shared["base_events_per_s"] + shared["this_events_per_s"]
    )
    # The base's checkout is gone again.
    worktrees = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert "veritee-bench-ab-" not in worktrees


def test_events_ab_bench_refuses_an_unknown_revision() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "events_ab.py"), "no-such-revision"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "'no-such-revision' is not a revision of" in result.stderr
    assert "Traceback" not in result.stderr


def test_haltpoll_bench_measures_and_restores_the_setting_or_says_why_it_cannot() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from haltpoll import PARAM, usable  # bench/haltpoll.py
    finally:
        sys.path.pop(0)
    why = usable(PARAM)
    if why is not None:  # not a VM with the haltpoll driver, or not root: a clear refusal
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "haltpoll.py")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2 and why in result.stderr
        return
    before = PARAM.read_text()
    report = _bench(
        "haltpoll.py",
        "--values",
        "0,200000",
        "--rounds",
        "1",
        "--hops",
        "50",
        "--placement",
        "shared",
    )
    assert PARAM.read_text() == before
    shared = report["nodes sharing all cores"]
    assert set(shared) == {"0", "200000"}
    assert all(r["p50_median_ms"] > 0 and len(r["p50_ms"]) == 1 for r in shared.values())


def test_haltpoll_bench_refuses_without_the_driver() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "haltpoll.py"), "--param", "/nonexistent/param"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "has no haltpoll cpuidle driver" in result.stderr and "Traceback" not in result.stderr
