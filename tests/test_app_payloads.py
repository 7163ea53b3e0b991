"""Large payloads end to end: events and answers of 1 MiB and up to the 4 MiB limit, made
in one module and checked byte for byte in another on the other node, sent by the user's
tool, and over the limit refused with a clear error.

Two node agents with their own devices, appraisal local (no verification service).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_app_deploy import SmartHome, deploy_locally, until
from veritee.app import state as state_mod
from veritee.app.cluster import LocalCluster
from veritee.tee.channels import MAX_PAYLOAD

MIB = 1024 * 1024


def pattern(size: int) -> bytes:
    """What app_bulk.c makes: byte i is (7i + i/2048 + 3) mod 256."""
    return bytes((i * 7 + (i >> 11) + 3) & 0xFF for i in range(size))


@pytest.fixture(scope="module")
def bulk(
    tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]
) -> Iterator[SmartHome]:
    workdir = tmp_path_factory.mktemp("bulk")
    binary = wasm("tests/assets/c/app_bulk.c")
    cluster = LocalCluster(workdir / "cluster", verifier=False)
    cluster.start()
    try:
        hub, server = cluster.nodes
        yield deploy_locally(
            cluster,
            workdir,
            "bulk",
            {"maker": (hub, binary), "checker": (server, binary)},
            [
                {"from_module": "maker", "from_output": "out", "to_module": "checker",
                 "to_input": "in"},
                _direct("make", "maker", "to_input"),
                _direct("push", "checker", "to_input", "in"),
                _direct("seen", "checker", "to_handler"),
                _direct("fetch", "checker", "to_handler"),
            ],
        )  # fmt: skip
    finally:
        cluster.stop()


def _direct(name: str, module: str, kind: str, endpoint: str | None = None) -> dict[str, Any]:
    return {"name": name, "direct": True, "to_module": module, kind: endpoint or name}


def seen(home: SmartHome) -> tuple[int, int, bool]:
    events, length, ok = struct.unpack("<III", _request(home, "seen", b""))
    return events, length, bool(ok)


def _request(home: SmartHome, conn: str, payload: bytes) -> bytes:
    dep, tool = home.tool()
    answer = tool.request(dep.connection(conn), payload)
    state_mod.save(home.state, dep)
    return answer


@pytest.mark.parametrize("size", [MIB, MAX_PAYLOAD])
def test_an_event_module_to_module_across_nodes_arrives_whole(bulk: SmartHome, size: int) -> None:
    before = seen(bulk)[0]
    bulk.ok("output", "make", "--hex", struct.pack("<I", size).hex())
    until(lambda: seen(bulk)[0] == before + 1)
    assert seen(bulk) == (before + 1, size, True)


def test_the_users_tool_sends_and_receives_a_mebibyte(bulk: SmartHome) -> None:
    before = seen(bulk)[0]
    payload = bulk.workdir / "one-mib.bin"
    payload.write_bytes(pattern(MIB))
    bulk.ok("output", "push", "--file", payload)
    until(lambda: seen(bulk)[0] == before + 1)
    assert seen(bulk) == (before + 1, MIB, True)
    assert _request(bulk, "fetch", struct.pack("<I", MIB)) == pattern(MIB)


def test_a_payload_over_the_limit_is_one_clear_error(bulk: SmartHome) -> None:
    too_big = bulk.workdir / "too-big.bin"
    too_big.write_bytes(bytes(MAX_PAYLOAD + 1))
    proc = bulk.cli("output", "push", "--file", too_big)
    assert proc.returncode != 0
    assert f"over {MAX_PAYLOAD} bytes" in proc.stderr and "Traceback" not in proc.stderr
    # The module asked to make one is refused its emit; nothing arrives, the app runs on.
    before = seen(bulk)[0]
    bulk.ok("output", "make", "--hex", struct.pack("<I", MAX_PAYLOAD + 1).hex())
    bulk.ok("output", "make", "--hex", struct.pack("<I", 16).hex())
    until(lambda: seen(bulk)[0] == before + 1)
    assert seen(bulk) == (before + 1, 16, True)
