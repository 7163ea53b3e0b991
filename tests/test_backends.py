"""Roots of trust behind one interface (tee/backends): the registry, the record, the boundary."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from veritee.errors import DeviceError, UsageError
from veritee.home import Home
from veritee.tee import backends

from .conftest import Device

REPO = Path(__file__).resolve().parent.parent
TEE = REPO / "src" / "veritee" / "tee"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veritee", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_init_records_the_backend_and_status_names_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _cli(home, "device", "init", "--backend", "emulated")
    assert proc.returncode == 0, proc.stderr
    assert "(backend emulated)" in proc.stdout
    assert json.loads((home / "device" / backends.RECORD).read_text()) == {
        "backend": "emulated",
        "options": {},
    }
    assert backends.recorded(Home(home)) == backends.Choice("emulated", {})
    dev = Device(home)
    dev.start()
    try:
        status = json.loads(dev.ok("tee", "status", "--json"))
        described = status["monitor"]["backend"]
        assert described["name"] == "emulated"
        assert described["rollback_protection"] == "host-file"
        assert "backend emulated" in dev.ok("tee", "status")
    finally:
        dev.stop()


def test_a_home_from_before_backends_boots_as_emulated(fresh_device: Device) -> None:
    """Devices provisioned before the record existed have none: they are emulated devices."""
    fresh_device.stop()
    (fresh_device.home / "device" / backends.RECORD).unlink()
    fresh_device.start()
    status = json.loads(fresh_device.ok("tee", "status", "--json"))
    assert status["monitor"]["backend"]["name"] == "emulated"


def test_unknown_backend_and_foreign_options_are_usage_errors(tmp_path: Path) -> None:
    proc = _cli(tmp_path / "a", "device", "init", "--backend", "sgx")
    assert proc.returncode == 2
    assert "Invalid value for '--backend': 'sgx'" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(tmp_path / "b", "device", "init", "--tpm", "/dev/tpmrm0")
    assert proc.returncode == 2, proc.stderr
    assert "the emulated backend takes no options (got tpm)" in proc.stderr
    assert not (tmp_path / "b" / "device" / backends.RECORD).exists()
    with pytest.raises(UsageError, match="unknown TEE backend 'sgx'"):
        backends.factory("sgx")


def test_a_backend_whose_library_is_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injected: a registered backend whose module cannot import (its library absent)."""
    monkeypatch.setitem(backends.BACKENDS, "absent", "veritee_no_such_backend_module:Backend")
    with pytest.raises(DeviceError, match="needs veritee_no_such_backend_module") as err:
        backends.factory("absent")
    assert err.value.exit_code == 3


def test_a_corrupt_backend_record_is_a_device_error(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.device.mkdir(parents=True)
    (home.device / backends.RECORD).write_text('{"backend": 7}')
    with pytest.raises(DeviceError, match="must hold an object with a 'backend' name"):
        backends.recorded(home)


def _reads_device_secrets(path: Path) -> list[str]:
    """Where a module names the device's secret files (device.HUK, device.DAK_KEY)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in ("HUK", "DAK_KEY"):
            found.append(f"{path.name}:{node.lineno}: {node.attr}")
    return found


def test_only_the_backend_and_the_factory_read_device_secrets() -> None:
    """The monitor, vTEEs and sealing reach the device's secrets through the interface only."""
    readers = {}
    for path in sorted(TEE.rglob("*.py")):
        if found := _reads_device_secrets(path):
            readers[path.relative_to(TEE).as_posix()] = found
    # device.py is the emulated factory (provisioning); emulated.py the backend that boots.
    assert set(readers) <= {"device.py", "backends/emulated.py"}, readers
    assert "backends/emulated.py" in readers
    monitor = (TEE / "monitor.py").read_text()
    assert "self.huk" not in monitor and "self.dak" not in monitor


def test_a_backend_library_outside_its_backend_fails_the_layer_check(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_layers
    finally:
        sys.path.pop(0)
    src = tmp_path / "veritee"
    (src / "tee" / "backends").mkdir(parents=True)
    (src / "tee" / "monitor.py").write_text("import tpm2_pytss\n")
    (src / "tee" / "backends" / "tpm.py").write_text("from tpm2_pytss import ESAPI\n")
    problems = check_layers.check(src)
    assert len(problems) == 1, problems
    assert "veritee/tee/monitor.py:1: imports tpm2_pytss" in problems[0]
    assert check_layers.check() == [], "the tree itself follows the layers"
