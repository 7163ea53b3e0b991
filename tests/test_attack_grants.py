"""Attacks on directory grants: the secure world as a confused deputy (issue 18, attack 8).

Adversary: a client of the secure world (whoever can reach a vTEE's socket, or the normal
world's user). It names the host directories a module is granted. The secure world opens
them on its behalf, so without a check ``veritee run --dir HOME/device::/d cat.wasm --
/d/huk.bin`` printed the device's hardware-unique key. Every test below runs the attack
through the real CLI or TEE Client API against a real secure world, asserts it is refused
with its own error, and that the owner's legitimate grant still works afterwards.

(The test itself reads HOME/device/huk.bin to know what must not leak: in the emulation the
normal world's user can; on real hardware the HUK is fused and unreadable.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from veritee.evidence.appraisal import TrustAnchors, verify
from veritee.tee.client import TeecError
from veritee.tee.ta import WasmSession
from veritee.wasm.runtime import measure

from .conftest import Device

NOTE = b"the owner's own data\n"


def _huk(dev: Device) -> bytes:
    return (dev.home / "device" / "huk.bin").read_bytes()


@pytest.fixture
def cat(wasm: Callable[..., Path]) -> Path:
    return wasm("tests/assets/c/cat.c")


@pytest.fixture
def owned(tmp_path: Path) -> Path:
    """A directory of the owner's own data: the legitimate grant."""
    d = tmp_path / "owned"
    d.mkdir()
    (d / "note.txt").write_bytes(NOTE)
    return d


def _legit_still_works(dev: Device, cat: Path, owned: Path) -> None:
    proc = dev.cli("run", "--dir", f"{owned}::/w", cat, "--", "/w/note.txt")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == NOTE


# Each: what the client grants (relative to HOME), the guest file it then asks cat for, and
# whether the refusal is for being inside or for containing the secure world's state.
TARGETS = {
    "device": ("device", "/d/huk.bin", "inside"),
    "manufacturer": ("manufacturer", "/d/ca.pem", "inside"),
    "vtees": ("vtees", "/d/default/vtee.json", "inside"),
    "module-storage": ("vtees/default/storage", "/d", "inside"),
    "aot-cache": ("vtees/default/cache", "/d", "inside"),
    "dotdot-into-device": ("vtees/../device", "/d/huk.bin", "inside"),
    "the-home": (".", "/d/device/huk.bin", "contains"),
    "a-parent-of-the-home": ("..", "/d/" + "{home}/device/huk.bin", "contains"),
}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_grant_never_reaches_the_secure_worlds_state(
    device: Device, cat: Path, owned: Path, target: str
) -> None:
    relative, guest_file, why = TARGETS[target]
    host = os.path.normpath(device.home / relative) if ".." not in relative else None
    host = host or str(device.home) + "/" + relative  # keep the '..' for the secure world
    guest_file = guest_file.replace("{home}", device.home.name)
    proc = device.cli("run", "--dir", f"{host}::/d", cat, "--", guest_file)
    assert proc.returncode != 0
    assert f"{why} the secure world's own state" in proc.stderr.decode(), proc.stderr
    assert _huk(device) not in proc.stdout
    _legit_still_works(device, cat, owned)


def test_a_grant_of_the_root_is_refused(device: Device, cat: Path, owned: Path) -> None:
    proc = device.cli("run", "--dir", "/::/host", cat, "--", f"/host{device.home}/device/huk.bin")
    assert proc.returncode != 0
    assert b"contains the secure world's own state" in proc.stderr
    assert _huk(device) not in proc.stdout
    _legit_still_works(device, cat, owned)


def test_a_symlink_to_the_device_directory_is_judged_by_where_it_leads(
    device: Device, cat: Path, owned: Path, tmp_path: Path
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to(device.home / "device")
    proc = device.cli("run", "--dir", f"{link}::/d", cat, "--", "/d/huk.bin")
    assert proc.returncode != 0
    assert b"inside the secure world's own state" in proc.stderr
    assert _huk(device) not in proc.stdout
    # A client that skips the CLI (which resolves paths) is judged the same in the secure
    # world, as are '..' and a relative path.
    dotdot = f"{owned}/{os.path.relpath(device.home / 'device', owned)}"
    for host in (str(link), dotdot, "device"):
        with device.context() as ctx:
            session = WasmSession(ctx)
            with pytest.raises(TeecError) as refused:
                session.load(cat.read_bytes(), name="cat", dirs=[(host, "/d", False)])
            session.close()
        if host == "device":
            assert "is not an absolute path" in refused.value.message
        else:
            assert "inside the secure world's own state" in refused.value.message
            assert f"(really {device.home / 'device'})" in refused.value.message
    _legit_still_works(device, cat, owned)


def test_a_symlink_inside_a_granted_dir_does_not_lead_out(
    device: Device, cat: Path, owned: Path
) -> None:
    # WASI (wasmtime's cap-std) resolves every path inside its preopen: a symlink leading
    # out of the granted directory, absolute or by '..', is not followed.
    (owned / "huk").symlink_to(device.home / "device" / "huk.bin")
    (owned / "up").symlink_to(os.path.relpath(device.home / "device", owned))
    proc = device.cli("run", "--dir", f"{owned}::/w", cat, "--", "/w/huk", "/w/up/huk.bin")
    assert proc.returncode != 0
    assert _huk(device) not in proc.stdout
    (owned / "huk").unlink()
    (owned / "up").unlink()
    _legit_still_works(device, cat, owned)


def test_a_grant_swapped_for_a_symlink_after_load_is_refused(
    device: Device, cat: Path, owned: Path, tmp_path: Path
) -> None:
    """The normal world owns the disk: it swaps the checked directory between load and run."""
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "note.txt").write_bytes(NOTE)
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(cat.read_bytes(), name="cat", dirs=[(str(granted), "/w", False)])
        assert session.run(["/w/note.txt"]).stdout == NOTE
        granted.rename(tmp_path / "moved")
        granted.symlink_to(device.home / "device")
        with pytest.raises(TeecError) as refused:
            session.run(["/w/huk.bin"])
        assert "is gone or replaced since load" in refused.value.message
        # Put back, the same loaded instance reads its grant again.
        granted.unlink()
        (tmp_path / "moved").rename(granted)
        assert session.run(["/w/note.txt"]).stdout == NOTE
        session.close()


def test_the_private_dir_swapped_for_a_symlink_is_refused(
    device: Device, cat: Path, owned: Path
) -> None:
    """Sibling: the module's own storage, a path in the vTEE the normal world could replace."""
    private = device.home / "vtees" / "default" / "storage" / measure(cat.read_bytes()).hex()
    with device.context() as ctx:
        session = WasmSession(ctx)
        session.load(cat.read_bytes(), name="cat")
        kept = private.with_name(private.name + ".kept")
        private.rename(kept)
        private.symlink_to(device.home / "device")
        try:
            with pytest.raises(TeecError) as refused:
                session.run(["/data/huk.bin"])
            assert "is gone or replaced since load" in refused.value.message
        finally:
            private.unlink()
            kept.rename(private)
        session.run(["/data"])  # its own storage is there again
        session.close()
    _legit_still_works(device, cat, owned)


def test_what_a_module_was_granted_is_attested(device: Device, cat: Path, owned: Path) -> None:
    """The real host path, guest path and mode are in the config digest and a readable claim."""
    anchors = TrustAnchors.from_pem((device.home / "manufacturer" / "ca.pem").read_bytes())
    nonce = os.urandom(32)
    other = owned.parent / "other"
    other.mkdir()
    digests = []
    for host, writable in ((owned, False), (other, False), (owned, True)):
        with device.context() as ctx:
            session = WasmSession(ctx)
            info = session.load(cat.read_bytes(), name="cat", dirs=[(str(host), "/w", writable)])
            evidence = session.attest(nonce)
            verified = verify(evidence, anchors, nonce=nonce)
            session.close()
        assert verified.vtee.grants == ((str(host), "/w", writable),)
        assert verified.module.config == verified.vtee.config
        assert info["grants"] == [[str(host), "/w", writable]]
        digests.append(verified.vtee.config)
    # Readable by whoever inspects the evidence.
    (owned.parent / "ev.cbor").write_bytes(evidence)
    shown = json.loads(device.ok("evidence", "show", "--json", owned.parent / "ev.cbor"))
    assert shown["vtee"]["grants"] == [{"host": str(owned), "guest": "/w", "writable": True}]
    # Same guest name, another host dir or another mode: another configuration.
    assert len(set(digests)) == 3


def test_bad_guest_paths_are_refused(device: Device, cat: Path, owned: Path) -> None:
    for guest in ("w", "/w/../etc", "/data", "/data/x", "/w//x"):
        proc = device.cli("run", "--dir", f"{owned}::{guest}", cat, "--", "/w/note.txt")
        assert proc.returncode != 0, guest
        assert b"guest path" in proc.stderr, proc.stderr
    _legit_still_works(device, cat, owned)


def test_a_private_dir_planted_as_a_symlink_before_load_is_refused(
    device: Device, wasm: Callable[..., Path], owned: Path, cat: Path
) -> None:
    """Sibling: the normal world plants the storage of a module not loaded yet as a symlink."""
    fresh = wasm("tests/assets/c/cat.c", 'CAT_BANNER "planted\\n"')  # a measurement of its own
    private = device.home / "vtees" / "default" / "storage" / measure(fresh.read_bytes()).hex()
    private.symlink_to(device.home / "device")
    try:
        proc = device.cli("run", fresh, "--", "/data/huk.bin")
        assert proc.returncode != 0
        assert b"is not a directory of the vTEE's storage" in proc.stderr
        assert _huk(device) not in proc.stdout
    finally:
        private.unlink()
    assert device.cli("run", fresh, "--", "/data").returncode != 2  # loads again
    _legit_still_works(device, cat, owned)


def test_the_grant_judgement_on_plain_paths(tmp_path: Path) -> None:
    """The decision itself, without a device: inside, equal, containing, and beside."""
    from veritee.tee.grants import GrantRefused, check_grant, protected_paths

    home = tmp_path / "home"
    for d in ("device", "manufacturer", "vtees/default/storage", "secrets", "data"):
        (home / d).mkdir(parents=True)
    protected = protected_paths(home / "vtees" / "default")
    for bad in ("device", "vtees/default/storage", "vtees", ".", "..", "/"):
        with pytest.raises(GrantRefused):
            check_grant(os.path.join(home, bad) if bad != "/" else "/", protected)
    assert check_grant(str(home / "data"), protected) == str(home / "data")
    assert check_grant(str(home / "data" / ".." / "data"), protected) == str(home / "data")
    # A vTEE directory laid out otherwise: itself and its parent are protected whole.
    odd = protected_paths(tmp_path / "elsewhere" / "vtee")
    assert tmp_path / "elsewhere" in odd
