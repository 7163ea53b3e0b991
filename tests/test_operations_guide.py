"""docs/operations.md's walk-through ("Three machines, step by step"), run exactly as written.

Each ```sh block of that section starts with ``# on MACHINE``; the blocks run in order with
bash, each in the network namespace and working directory of its machine (ops, hub, server
at their own addresses on one bridge), with ``$OPS``, ``$HUB`` and ``$SERVER`` set. The one
stand-in is ``scp FILES MACHINE:[NAME]``, which copies into that machine's directory. So the
guide is the test's script: a command that stops working fails this test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_app_netns import _netns_unavailable, hosts

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "operations.md"
SECTION = "## Three machines, step by step"
MACHINES = ("ops", "hub", "server")
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
STEP_TIMEOUT = 300  # seconds: a block that takes longer has hung

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_netns_unavailable() is not None, reason=str(_netns_unavailable())),
]
__all__ = ["hosts"]  # the three namespaces (tests/test_app_netns.py)

SCP = """#!/bin/bash
# The guide's "scp FILES MACHINE:[NAME]": a copy into that machine's working directory.
set -eu
target=${@: -1}
machine=${target%%:*} name=${target#*:}
for file in "${@:1:$#-1}"; do
  cp "$file" "$MACHINES/$machine/${name:-$(basename "$file")}"
done
"""


def steps() -> list[tuple[str, str]]:
    text = GUIDE.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    found = []
    for block in BLOCK.findall(text[start : end if end > 0 else None]):
        first, _, body = block.partition("\n")
        match = re.fullmatch(r"# on (\w+)", first.strip())
        assert match and match[1] in MACHINES, f"a block of the guide says where it runs: {first}"
        found.append((match[1], body))
    return found


def test_the_guide_says_where_each_block_runs() -> None:
    found = steps()
    assert [m for m, _ in found[:4]] == ["ops", "ops", "hub", "server"]
    assert {m for m, _ in found} == set(MACHINES)


def _kill_all(namespace: str) -> None:
    """Every process the guide left running on that machine: SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
            if not out.stdout.split():
                return
            time.sleep(0.2)


@pytest.fixture
def machines(hosts: list[tuple[str, str]], tmp_path: Path) -> Iterator[dict[str, tuple[str, Path]]]:
    """Each machine: (namespace, working directory); ops holds the app's sources."""
    found = {}
    for name, (namespace, _) in zip(MACHINES, hosts, strict=True):
        (tmp_path / name).mkdir()
        found[name] = (namespace, tmp_path / name)
    sources = tmp_path / "ops" / "smart-home"
    sources.mkdir()
    for source in (REPO / "examples" / "smart-home").glob("*.c"):
        shutil.copy(source, sources)
    try:
        yield found
    finally:
        for namespace, _ in found.values():
            _kill_all(namespace)


def test_the_three_machine_walk_through_runs_as_written(
    machines: dict[str, tuple[str, Path]], hosts: list[tuple[str, str]], tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scp").write_text(SCP)
    (bin_dir / "scp").chmod(0o755)
    addresses = dict(zip(("OPS", "HUB", "SERVER"), (a for _, a in hosts), strict=True))
    env = {
        "PATH": os.pathsep.join(
            [
                str(bin_dir),
                str(Path(sys.executable).parent),
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
        ),
        "HOME": str(tmp_path / "user"),
        "LANG": "C.UTF-8",
        "MACHINES": str(tmp_path),
        **addresses,
    }
    if "PYTHONPATH" in os.environ:  # a tree run from its sources
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    for i, (machine, script) in enumerate(steps()):
        namespace, cwd = machines[machine]
        proc = subprocess.run(
            ["ip", "netns", "exec", namespace, "bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        logs = "".join(f"\n--- {log}\n{log.read_text()[-3000:]}" for log in cwd.glob("*.log"))
        assert proc.returncode == 0, (
            f"block {i + 1} (on {machine}) failed, exit {proc.returncode}\n{script}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}{logs}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr

    # What the walk-through promises: the app runs across the two nodes, over TLS, its
    # modules attested by the verifier on ops, and the press it sent arrives.
    ops = machines["ops"][1]
    state = json.loads((ops / "smart-home.json").read_text())
    assert {m["status"] for m in state["modules"].values()} == {"connected"}
    assert {state["modules"][m]["node"] for m in state["modules"]} == {"home-hub", "home-server"}

    def presses() -> str:
        proc = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                machines["ops"][0],
                "veritee",
                "request",
                "get-presses",
                "--state",
                "smart-home.json",
            ],
            cwd=ops,
            env={**env, "VERITEE_CA": str(ops / "ca.pem")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    deadline = time.monotonic() + 30
    while presses() != "1" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert presses() == "1"
    for module in state["modules"].values():
        assert module["attestation"]["via"] == f"https://{addresses['OPS']}:8443"
