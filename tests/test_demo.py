"""`make demo` (`veritee demo`): the distributed story runs end to end, over TLS, and every
attack in it is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def _demo(tmp_path: Path, *flags: str) -> str:
    """`veritee demo` as a newcomer runs it (no CA of their own set), in a pipe; its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "VERITEE_CA")}
    demo = ["demo", *flags, "--presses", "2", "--workdir", str(tmp_path / "d")]
    proc = subprocess.run(
        [sys.executable, "-m", "veritee", *demo],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stdout


def test_the_distributed_demo_runs_over_tls_and_refuses_every_attack(tmp_path: Path) -> None:
    out = _demo(tmp_path)
    # Every service it started spoke HTTPS, verified against the demo's own certificate.
    urls = re.findall(r"(https?)://127\.0\.0\.1:\d+", out)
    assert urls and set(urls) == {"https"}, urls
    assert "all over TLS 1.3" in out
    # The attacks are told as refused (✘), and the story ends as it should.
    refused = [ln for ln in out.splitlines() if "✘" in ln]
    assert any("replays" in ln for ln in refused) and any("tampered" in ln for ln in refused)
    assert "Done." in out


def test_the_demo_runs_over_a_nats_broker_with_one_flag(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--nats")
    assert "nats-server (JetStream) at nats://127.0.0.1:" in out
    assert out.count("events through its NATS broker") == 2  # both nodes, no direct link
    assert "replay" in out and "altered" in out and "Done." in out
