"""The node agent's record of the signed requests it took, kept across its restarts.

A request of an app's owner is taken once: its nonce is remembered for the time window in
which the request is fresh (app/auth.py). Memory alone forgets at a restart, and a request
signed a little ahead of the node's clock would then be fresh again: recorded by whoever
saw it, it could be replayed. So each spent nonce is also appended here, and read back at
start. The file is compacted to the nonces still in their window when it grows.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger("veritee.node")

_HEAD = struct.Struct(">QB")  # expiry (ms), length of the app id; then the app id, the nonce
NONCE_BYTES = 16
# Compact once this many records were appended: the file never holds much more than the
# nonces of one window (bounded by auth.MAX_NONCES_ALL).
COMPACT_EVERY = 65_536


class NonceJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._appended = 0
        # A record torn by a crash is cut off, or every record appended after it would be
        # unreadable too.
        _, whole = self._parse()
        if self.path.exists() and whole < self.path.stat().st_size:
            os.truncate(self.path, whole)

    def read(self) -> list[tuple[str, bytes, int]]:
        """Every record that parses; a torn last record (a crash mid-write) is left out."""
        return self._parse()[0]

    def _parse(self) -> tuple[list[tuple[str, bytes, int]], int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        records, at = [], 0
        while at + _HEAD.size <= len(data):
            expiry, length = _HEAD.unpack_from(data, at)
            end = at + _HEAD.size + length + NONCE_BYTES
            if end > len(data):
                break
            app = data[at + _HEAD.size : at + _HEAD.size + length]
            try:
                records.append((app.decode(), data[end - NONCE_BYTES : end], expiry))
            except UnicodeDecodeError:
                log.warning("nonce journal %s: a record is not readable; skipped", self.path)
            at = end
        return records, at

    def append(self, app: str, nonce: bytes, expiry: int) -> None:
        """Record a spent nonce; past ``COMPACT_EVERY`` records, keep only those still in
        their window (under the same lock, so no record appended meanwhile is lost)."""
        with self._lock:
            with open(self.path, "ab") as f:
                f.write(_record(app, nonce, expiry))
            self._appended += 1
            if self._appended >= COMPACT_EVERY:
                self._compact(int(time.time() * 1000))

    def _compact(self, now_ms: int) -> None:
        live = [r for r in self.read() if r[2] >= now_ms]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(_record(*r) for r in live))
        os.replace(tmp, self.path)
        self._appended = 0


def _record(app: str, nonce: bytes, expiry: int) -> bytes:
    name = app.encode()[:255]
    return _HEAD.pack(expiry, len(name)) + name + nonce
