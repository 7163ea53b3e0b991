"""Sealed storage: data only the same module, in the same (v)TEE of the same device, can open.

The key is derived from the vTEE's sealing root (itself HKDF(HUK, vTEE id, vTEE config)) and
the module's measurement, so another module, the same module modified, the same module in
another vTEE or on another device all derive a different key. AES-256-GCM with a random
96-bit nonce; the format version and measurement are authenticated as associated data.

Blob: ``version (1) || nonce (12) || ciphertext || tag (16)``.

Sealing alone does not stop a host from handing back an *older* blob. What must not roll
back (an app module's state: its channels' counters) embeds a value of a monotonic counter
kept in the device's replay-protected storage (:class:`Counters`); a blob behind it is
refused (:class:`StateRolledBack`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veritee.errors import SealingError
from veritee.tee.keys import derive

VERSION = 1
NONCE_BYTES = 12
OVERHEAD = 1 + NONCE_BYTES + 16  # = VERITEE_SEAL_OVERHEAD in sdk/veritee.h


def module_key(seal_root: bytes, measurement: bytes) -> bytes:
    """The sealing key of one module in one vTEE."""
    return derive(seal_root, "seal", measurement)


class Sealer:
    """Seals for one module instance with its key (see :func:`module_key`).

    ``predecessors``: (key, measurement) of earlier builds whose sealed data this one may
    open, because the app owner signed a succession (see evidence/deployment.py). New data
    is always sealed for this build.
    """

    def __init__(
        self, key: bytes, measurement: bytes, predecessors: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.measurement = measurement
        self._aead = AESGCM(key)
        self._aad = bytes([VERSION]) + measurement
        self._openers = [(self._aead, self._aad)] + [
            (AESGCM(k), bytes([VERSION]) + m) for k, m in predecessors or []
        ]

    def seal(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return bytes([VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, self._aad)

    def unseal(self, blob: bytes) -> bytes:
        if len(blob) < OVERHEAD or blob[0] != VERSION:
            raise SealingError("sealed blob is truncated or of an unknown format version")
        for aead, aad in self._openers:
            try:
                return aead.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], aad)
            except InvalidTag:
                continue
        raise SealingError(
            "sealed blob does not open: it was altered, or sealed by another module or TEE"
        )


class StateRolledBack(SealingError):
    """A sealed state older than the newest one sealed: the host handed back a stale copy."""


class CounterAnchor(Protocol):
    """A monotonic counter the host cannot roll back (a TPM NV counter), which the counters
    file of a vTEE is bound to: every change of the file increments it, and the file records
    the value, so an older copy of the file (restored with older sealed state) is refused."""

    def read(self) -> int: ...

    def increment(self) -> int: ...


class Counters:
    """Monotonic counters of one vTEE, one per sealed-state lineage, kept in the device's
    replay-protected storage (the emulation's stand-in for RPMB: a file in the device
    monitor's storage, ``device/counters/VTEE-ID.ctr``, which the monitor opens and hands
    to the vTEE as a descriptor; the host's copies of sealed states never live there).

    Slot: ``lineage id (16) || value (8, big-endian)``. A value is written before the
    sealed blob that carries it leaves the secure world (one ``pwrite`` of 8 bytes, which
    the file system applies whole), so the newest blob is never behind its counter.
    """

    _SLOT = struct.Struct(">16sQ")
    ID_BYTES = 16
    # Lineages a vTEE can hold at once (each fresh app module instance starts one, and the
    # node agent frees it when it discards that state, see forget): 1.5 MiB of storage; a
    # host loading modules without end must not grow it without end.
    MAX_SLOTS = 65536
    _FREE = bytes(ID_BYTES)  # the id of a free slot

    # With an anchor, the file starts with a header: magic, the anchor's value at the file's
    # last change, and a MAC (under a key of the vTEE's) over both and the slots, so that the
    # header of a newer file cannot be put on older slots.
    _HEADER = struct.Struct(">8sQ32s")
    _MAGIC = b"VTNVCTR2"

    def __init__(
        self, fd: int, anchor: CounterAnchor | None = None, mac_key: bytes | None = None
    ) -> None:
        if anchor is not None and mac_key is None:
            raise ValueError("counters anchored in hardware need the vTEE's MAC key")
        self._fd = fd
        self._lock = threading.Lock()
        self._slots: dict[bytes, tuple[int, int]] = {}  # id -> (slot index, value)
        self._anchor = anchor
        self._mac_key = mac_key or b""
        self._base = 0 if anchor is None else self._HEADER.size
        # Why every use of these counters is refused (the file is older than its anchor).
        self._refused: str | None = None
        data = b""
        while chunk := os.pread(fd, 1 << 20, self._base + len(data)):
            data += chunk
        # The slots as the file holds them (what the header's MAC covers).
        self._image = bytearray(data)
        if anchor is not None:
            self._refused = self._check_anchor(anchor)
        self._free: list[int] = []  # slot indexes to use again
        for i in range(len(data) // self._SLOT.size):
            lineage, value = self._SLOT.unpack_from(data, i * self._SLOT.size)
            if lineage == self._FREE:
                self._free.append(i)
            else:
                self._slots[lineage] = (i, value)
        self._next = len(data) // self._SLOT.size
        self._live: dict[bytes, list[bytes]] = {}  # lineage -> measurements loaded now
        # lineage -> instances a successor took the state over from: their channel counters
        # are stale from that moment, so they never run or seal again (see superseded()).
        self._superseded: dict[bytes, set[bytes]] = {}

    def _mac(self, value: int) -> bytes:
        body = self._MAGIC + value.to_bytes(8, "big") + hashlib.sha256(self._image).digest()
        return hmac.new(self._mac_key, body, hashlib.sha256).digest()

    def _check_anchor(self, anchor: CounterAnchor) -> str | None:
        header = os.pread(self._fd, self._HEADER.size, 0)
        now = anchor.read()
        if not header:  # a new vTEE's file (or one deleted: then no state has a counter)
            os.pwrite(self._fd, self._HEADER.pack(self._MAGIC, now, self._mac(now)), 0)
            return None
        if len(header) != self._HEADER.size or header[:8] != self._MAGIC:
            return "this TEE's counters file was altered: it is not one bound to its TPM counter"
        _, recorded, mac = self._HEADER.unpack(header)
        if not hmac.compare_digest(mac, self._mac(recorded)):
            return (
                "this TEE's counters file was altered: its slots are not those its header "
                "was written with; no sealed state is accepted against it"
            )
        if recorded != now:
            return (
                f"this TEE's counters file was rolled back: it records TPM counter {recorded}, "
                f"the TPM's NV counter is at {now} (an older copy of the file was restored); "
                "no sealed state is accepted against it"
            )
        return None

    def _write(self, data: bytes, offset: int) -> None:
        """Write into the slots (``offset`` from their start), in the file and its image."""
        os.pwrite(self._fd, data, self._base + offset)
        end = offset + len(data)
        if end > len(self._image):
            self._image.extend(bytes(end - len(self._image)))
        self._image[offset:end] = data

    def _changed(self) -> None:
        """After every change of the file: the anchor moves on, and the file records it."""
        if self._anchor is not None:
            value = self._anchor.increment()
            os.pwrite(self._fd, self._HEADER.pack(self._MAGIC, value, self._mac(value)), 0)

    def _usable(self) -> None:
        if self._refused is not None:
            raise StateRolledBack(self._refused)

    def claim(self, lineage: bytes, measurement: bytes, *, succession: bool) -> None:
        """Mark a lineage as loaded; a state may run in one instance only (two instances
        from one state would accept the same events twice). A successor build, on the
        owner's word, may join its predecessor while an update swaps them."""
        with self._lock:
            live = self._live.setdefault(lineage, [])
            if live and not (succession and len(live) == 1 and live[0] != measurement):
                raise SealingError(
                    "this sealed state is already in use by a module instance loaded in "
                    "this TEE; a state runs in one instance at a time"
                )
            if live:
                # Two instances on one set of channel keys and counters would seal two
                # events under one key and nonce: the predecessor stops here, for good.
                self._superseded.setdefault(lineage, set()).update(live)
            live.append(measurement)

    def superseded(self, lineage: bytes, measurement: bytes) -> bool:
        """Whether a successor has taken this instance's state over (it must not run)."""
        with self._lock:
            return measurement in self._superseded.get(lineage, ())

    def alone(self, lineage: bytes) -> bool:
        """Whether at most one instance holds ``lineage`` now (two while an update swaps)."""
        with self._lock:
            return len(self._live.get(lineage, ())) <= 1

    def release(self, lineage: bytes, measurement: bytes) -> None:
        with self._lock:
            live = self._live.get(lineage, [])
            if measurement in live:
                live.remove(measurement)
            gone = self._superseded.get(lineage)
            if gone is not None:
                gone.discard(measurement)
                if not gone:
                    self._superseded.pop(lineage, None)
            if not live:
                self._live.pop(lineage, None)

    def create(self) -> bytes:
        """A new lineage, its counter at 0; returns its id."""
        lineage = os.urandom(self.ID_BYTES)
        self._usable()
        with self._lock:
            if self._free:
                index = self._free.pop()
            elif self._next < self.MAX_SLOTS:
                index, self._next = self._next, self._next + 1
            else:
                raise SealingError(
                    f"this TEE holds its maximum of {self.MAX_SLOTS} rollback counters"
                )
            self._write(self._SLOT.pack(lineage, 0), index * self._SLOT.size)
            self._slots[lineage] = (index, 0)
            self._changed()
        return lineage

    def forget(self, lineage: bytes, value: int) -> None:
        """Free ``lineage``'s counter, on being shown its newest sealed ``value``: whoever
        holds that state is discarding it. No state of the lineage loads again (random
        ids are never reused). Refused while an instance runs it."""
        self._usable()
        with self._lock:
            if lineage in self._live:
                raise SealingError("this sealed state is in use by a loaded module instance")
            index, now = self._slots.get(lineage, (-1, -1))
            if value != now:
                raise SealingError(
                    "only the newest sealed state of a module instance can discard it; this "
                    "one is stale or from elsewhere"
                )
            del self._slots[lineage]
            self._write(self._SLOT.pack(self._FREE, 0), index * self._SLOT.size)
            self._free.append(index)
            self._changed()

    def current(self, lineage: bytes) -> int:
        """The newest value sealed for ``lineage``; SealingError if it has no counter here."""
        self._usable()
        with self._lock:
            slot = self._slots.get(lineage)
        if slot is None:
            raise SealingError(
                "sealed state has no rollback counter in this TEE (the device's counters "
                "were reset, or the state is from elsewhere)"
            )
        return slot[1]

    def check(self, lineage: bytes, value: int) -> None:
        """Raise StateRolledBack unless ``value`` is the newest sealed for ``lineage``."""
        now = self.current(lineage)
        if value > now:
            raise SealingError(
                f"sealed state carries counter {value}, ahead of this TEE's {now}: the "
                "device's counters were reset"
            )
        if value < now:
            raise StateRolledBack(
                f"sealed state is rolled back: it carries counter {value}, the newest sealed "
                f"is {now}; the host handed back a stale copy, refusing it"
            )

    def advance(self, lineage: bytes) -> int:
        """Count one more sealing of ``lineage``; returns the value to seal with it."""
        self._usable()
        with self._lock:
            index, value = self._slots[lineage]
            value += 1
            self._write(value.to_bytes(8, "big"), index * self._SLOT.size + 16)
            self._slots[lineage] = (index, value)
            self._changed()
            return value
