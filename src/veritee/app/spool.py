"""An append-only FIFO of sealed events on disk: a node agent's inboxes and outboxes.

Sealed events are safe to store in the clear (only the two secure worlds of a connection
can open them, and a copy replayed later is refused by the counter), so a node agent keeps
what it still owes: events for a module it has not delivered yet, events for a node that is
down. A record is ``seq (8) || length (4) || bytes``; ``head`` holds the last consumed
``seq``. Records are written with ``write(2)`` and survive the agent being killed; they are
not fsync'd, so a power cut may lose the last few (the sender then resends what was not
acknowledged, and the secure world drops anything it already accepted).
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from veritee.app.errors import AppError

_RECORD = struct.Struct(">QI")
# Bounds what a corrupt or hostile file can make us allocate on start-up.
MAX_RECORD_BYTES = 8 * 1024 * 1024
# Compact the data file once it is at least this big and at most a quarter of it is still
# pending: truncated when nothing is, else rewritten with what is (so a spool never empty
# under sustained load does not grow for ever, and a rewrite costs at most a third of the
# bytes consumed since the last one).
COMPACT_BYTES = 4 * 1024 * 1024
# How many events a spool holds before refusing more: a peer down for long must not fill
# the disk. At the demo's event size this is a few tens of MiB.
MAX_PENDING = 100_000


def _encode(records: Iterable[tuple[int, bytes]]) -> bytes:
    """Records as the data file holds them: ``seq (8) || length (4) || bytes`` each."""
    return b"".join(_RECORD.pack(q, len(r)) + r for q, r in records)


class SpoolFull(AppError):
    """A spool holds its maximum of undelivered events; newer ones are refused."""


class Spool:
    """A persistent FIFO of byte records, each numbered; consumed in order."""

    def __init__(
        self, path: Path, *, max_pending: int = MAX_PENDING, compact_bytes: int = COMPACT_BYTES
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self.compact_bytes = compact_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._head_path = path.with_suffix(path.suffix + ".head")
        # Two conditions on one lock: whoever waits for new records is not woken each time
        # one is consumed (a wake-up per event, for a thread that has nothing to do).
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._consumed = threading.Condition(self._lock)
        self._records: deque[tuple[int, bytes]] = deque()
        self._head = self._read_head()
        self._last = self._head
        self._size = self._load()  # of the data file
        self._pending_bytes = sum(_RECORD.size + len(r) for _, r in self._records)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._head_fd = os.open(self._head_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.closed = False

    def _read_head(self) -> int:
        try:
            raw = self._head_path.read_bytes()
        except FileNotFoundError:
            return 0
        return int.from_bytes(raw[:8], "big") if len(raw) >= 8 else 0

    def _load(self) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        i = 0
        while i + _RECORD.size <= len(data):
            seq, size = _RECORD.unpack_from(data, i)
            if size > MAX_RECORD_BYTES or i + _RECORD.size + size > len(data):
                break  # a record cut short when the agent died mid-write
            if seq > self._head:
                self._records.append((seq, data[i + _RECORD.size : i + _RECORD.size + size]))
            self._last = max(self._last, seq)
            i += _RECORD.size + size
        if i < len(data):
            os.truncate(self.path, i)
        return i

    def append(self, record: bytes) -> int:
        """Store ``record``; returns its number. Raises SpoolFull past ``max_pending``."""
        return self.extend([record])

    def extend(self, records: list[bytes], *, wake: bool = True) -> int:
        """Store ``records`` with one write; returns the number of the last.

        All or none: raises SpoolFull if they do not all fit under ``max_pending``.
        ``wake=False``: the caller will hand them on itself, or call :meth:`wake`.
        """
        for record in records:
            if len(record) > MAX_RECORD_BYTES:
                raise AppError(f"record of {len(record)} bytes is over {MAX_RECORD_BYTES}")
        with self._lock:
            if len(self._records) + len(records) > self.max_pending:
                raise SpoolFull(
                    f"{self.path.name} holds {self.max_pending} undelivered events already"
                )
            numbered = []
            for record in records:
                self._last += 1
                numbered.append((self._last, record))
            data = _encode(numbered)
            os.write(self._fd, data)
            self._size += len(data)
            self._pending_bytes += len(data)
            self._records.extend(numbered)
            if wake:
                self._added.notify_all()
            return self._last

    def wake(self) -> None:
        """Wake whoever waits for records."""
        with self._lock:
            self._added.notify_all()

    def pending(self, after: int = 0, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """Unconsumed records numbered above ``after``, oldest first."""
        with self._lock:
            return self._above(after, limit)

    def wait(self, after: int, timeout: float, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """Like :meth:`pending`, waiting up to ``timeout`` s for one to arrive."""
        with self._lock:
            if not (self._records and self._records[-1][0] > after) and not self.closed:
                self._added.wait(timeout)
            return self._above(after, limit)

    def _above(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        out = []
        for r in self._records:
            if r[0] > after:
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    def consume(self, seq: int) -> None:
        """Records up to and including ``seq`` are done with."""
        with self._lock:
            if seq <= self._head:
                return
            while self._records and self._records[0][0] <= seq:
                _, record = self._records.popleft()
                self._pending_bytes -= _RECORD.size + len(record)
            self._head = seq
            os.pwrite(self._head_fd, seq.to_bytes(8, "big"), 0)
            if self._size >= self.compact_bytes and 4 * self._pending_bytes <= self._size:
                self._compact()
            self._consumed.notify_all()

    def _compact(self) -> None:
        """Keep only what is pending in the data file (see COMPACT_BYTES). A rewrite goes
        to a new file that replaces the old at once: a crash leaves one or the other."""
        if not self._records:
            os.ftruncate(self._fd, 0)
            self._size = 0
            return
        data = _encode(self._records)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._size = len(data)

    def wait_consumed(self, upto: int, timeout: float) -> None:
        """Wait up to ``timeout`` s for records up to ``upto`` to be consumed."""
        with self._lock:
            if self._head < upto and not self.closed:
                self._consumed.wait(timeout)

    @property
    def head(self) -> int:
        """The number of the newest record consumed."""
        with self._lock:
            return self._head

    @property
    def last(self) -> int:
        """The number of the newest record ever appended."""
        with self._lock:
            return self._last

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def moved(self, path: Path) -> None:
        """The files were renamed (their directory moved); open descriptors stay valid."""
        with self._lock:
            self.path = path
            self._head_path = path.with_suffix(path.suffix + ".head")

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._added.notify_all()
            self._consumed.notify_all()
            os.close(self._fd)
            os.close(self._head_fd)

    def destroy(self) -> None:
        """Close and delete the files (a module or peer that is gone for good)."""
        self.close()
        self.path.unlink(missing_ok=True)
        self._head_path.unlink(missing_ok=True)
