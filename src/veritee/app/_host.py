"""One module instance as a node agent hosts it: its session with the secure world, its inbox.

The agent never holds a key: it keeps the module's binary, its load parameters (the app's
*public* deployment key, limits), and the sealed state the secure world hands back after
each event, which only that module on that TEE can open. Events for the module wait in an
on-disk inbox and are delivered in order by one thread; what the module emits is routed by
the agent before the event is marked done, so a crash re-delivers rather than loses (and
the secure world refuses whatever it already accepted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from veritee.app.errors import AppError
from veritee.app.spool import Spool
from veritee.errors import Error
from veritee.home import Home
from veritee.tee import client as teec
from veritee.tee.ta import AppSession, BatchOutcome, Outcome

log = logging.getLogger("veritee.node")

# Sealed states appended before the log is compacted: ~1 KiB each, so about 4000 events.
STATE_LOG_BYTES = 4 * 1024 * 1024
LOG_TAIL = 50  # lines of a module's output kept for `status`
# How long a caller waits for a module to be free; above the default time budget per event
# (10 s) so that only a stuck or deadlocked module trips it.
LOCK_TIMEOUT = 30.0
_DEAD = (teec.TEEC_ERROR_TARGET_DEAD, teec.TEEC_ERROR_COMMUNICATION)
# What the inbox hands the secure world in one call: one TEE call, one hop into the module
# and one sealed state per batch instead of per event. A batch takes what is queued, never
# waits for more (a lone event goes at once).
BATCH_EVENTS = 256
BATCH_BYTES = 1024 * 1024  # a larger event goes in a batch of its own

Absorb = Callable[["ModuleHost", list[bytes]], None]
Relay = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class LoadParams:
    """What the module is loaded with; stored beside its binary to reload it after a restart."""

    app: str
    name: str
    deployment_key: bytes  # the app's public key (SEC1)
    memory_mb: int | None = None
    timeout: float | None = None

    def to_cbor(self) -> bytes:
        return bytes(
            cbor2.dumps(
                {
                    "app": self.app,
                    "name": self.name,
                    "deployment_key": self.deployment_key,
                    "memory_mb": self.memory_mb,
                    "timeout": self.timeout,
                }
            )
        )

    @classmethod
    def from_cbor(cls, raw: bytes) -> LoadParams:
        c = cbor2.loads(raw)
        return cls(c["app"], c["name"], c["deployment_key"], c["memory_mb"], c["timeout"])


class ModuleHost:
    """A loaded module instance, its files under ``directory``, and its delivery thread."""

    def __init__(
        self,
        directory: Path,
        params: LoadParams,
        *,
        home: Home,
        vtee: str,
        absorb: Absorb,
        relay: Relay,
        on_call: Callable[[float], None] | None = None,
    ) -> None:
        self.directory = directory
        # Told how long each call into the secure world took (the node's metrics).
        self._on_call = on_call
        self.params = params
        self.home, self.vtee = home, vtee
        self._absorb, self._relay = absorb, relay
        directory.mkdir(parents=True, exist_ok=True)
        self.inbox = Spool(directory / "inbox.spool")
        self._state = StateLog(directory / "state.log")
        self.info: dict[str, Any] = {}
        self.failed: str | None = None
        self.dropped: Counter[str] = Counter()
        self.delivered = 0
        self.loads = 0
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self._lock = threading.Lock()
        self._waiters: dict[int, Future[Outcome | None]] = {}
        self._waiters_lock = threading.Lock()
        self._context: teec.Context | None = None
        self._session: AppSession | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        # Held by whoever hands the inbox to the secure world (the inbox thread, or a
        # network thread delivering at once): one delivery at a time, in order.
        self._baton = threading.Lock()
        self._may_wait = True  # the module makes requests: see deliver_arrived

    # -- files ---------------------------------------------------------------------------------

    @property
    def wasm_path(self) -> Path:
        return self.directory / "module.wasm"

    @property
    def state_path(self) -> Path:
        return self.directory / "state.log"

    @property
    def succession_path(self) -> Path:
        return self.directory / "succession.cose"

    def stored_state(self) -> bytes | None:
        return self._state.latest()

    def store_state(self, state: bytes) -> None:
        self._state.append(state)

    # -- lifecycle -----------------------------------------------------------------------------

    def load(
        self,
        wasm: bytes | None = None,
        *,
        inherit: bytes | None = None,
        succession: bytes | None = None,
    ) -> dict[str, Any]:
        """Load into the secure world (with the stored sealed state, if any); start delivering.

        ``wasm`` None reloads the stored binary (after a restart of the agent or the TEE).
        ``inherit`` and ``succession``: a predecessor's sealed state and the owner's signed
        word that this build may open it (an update that keeps state).
        """
        if wasm is not None:
            self.wasm_path.write_bytes(wasm)
            (self.directory / "load.cbor").write_bytes(self.params.to_cbor())
            self._state.clear()
            self.succession_path.unlink(missing_ok=True)
            if inherit is not None and succession is not None:
                self.succession_path.write_bytes(succession)
                self.store_state(inherit)
        binary = self.wasm_path.read_bytes()
        with self._locked():
            self._open(binary)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"deliver {self.params.name}", daemon=True
            )
            self._thread.start()
        return self.info

    def _open(self, binary: bytes) -> None:
        self._shut_session()
        context = teec.Context(home=self.home, vtee=self.vtee)
        try:
            session = AppSession(context)
            self.info = session.load(
                binary,
                name=self.params.name,
                app=self.params.app,
                deployment_key=self.params.deployment_key,
                memory_mb=self.params.memory_mb,
                timeout=self.params.timeout,
                state=self.stored_state(),
                succession=(
                    self.succession_path.read_bytes() if self.succession_path.exists() else None
                ),
            )
        except BaseException:
            context.close()
            raise
        self._context, self._session = context, session
        recovered = self.info.pop("recovered", None)
        if isinstance(recovered, dict):
            self._take_up(recovered)
        self._may_wait = any(kind == "request" for kind, _ in self.info.get("endpoints", ()))
        self.loads += 1
        self.failed = None

    def _take_up(self, recovered: dict[str, Any]) -> None:
        """The secure world kept the answer this node's agent was killed before taking (the
        module had run a batch): route its events, keep its state, as after the batch."""
        events, state = recovered.get("events"), recovered.get("state")
        if isinstance(events, list):
            self._absorb(self, [e for e in events if isinstance(e, bytes)])
        if isinstance(state, bytes):
            self.store_state(state)
        log.warning(
            "module %s: took up the answer of a call under way when its agent stopped "
            "(%d events sent on)",
            self,
            len(events) if isinstance(events, list) else 0,
        )

    def _shut_session(self) -> None:
        if self._session is not None:
            self._session.close()
        if self._context is not None:
            self._context.close()
        self._session = self._context = None

    def move(self, directory: Path) -> None:
        """Keep running, with files under another directory (a staged module activated)."""
        with self._locked():
            self.directory.rename(directory)
            self.directory = directory
            self.inbox.moved(directory / "inbox.spool")
            self._state.path = directory / "state.log"

    def close(self) -> None:
        with self._baton:  # let a delivery under way store its state and consume first
            self._closed = True
            self.inbox.close()
        self._state.close()
        with self._locked():
            self._shut_session()
        with self._waiters_lock:
            for future in self._waiters.values():
                if not future.done():
                    future.set_result(None)
            self._waiters.clear()

    def destroy(self) -> None:
        """Close, and delete every file (the module is disabled or replaced). The secure
        world discards the instance's state too: its rollback counter, and its bases."""
        state, measurement = self.stored_state(), self.info.get("measurement")
        self.close()
        if state is not None and isinstance(measurement, bytes):
            self._forget(measurement, state)
        self.inbox.destroy()
        for path in self.directory.glob("*"):
            path.unlink(missing_ok=True)
        self.directory.rmdir()

    def _forget(self, measurement: bytes, state: bytes) -> None:
        try:
            with teec.Context(home=self.home, vtee=self.vtee) as context:
                AppSession(context).forget(measurement, state)
        except (Error, OSError) as exc:
            # A successor build runs on this state (an update that kept it), or the secure
            # world is away: what it kept stays, and is harmless.
            log.info("%s: the secure world keeps its state (%s)", self, exc)

    # -- calls into the secure world -------------------------------------------------------

    def _locked(self) -> _Held:
        return _Held(self._lock, self.params.name)

    def _session_or_fail(self) -> AppSession:
        if self._session is None:
            raise AppError(f"module {self.params.name!r} is not loaded: {self.failed or 'closed'}")
        return self._session

    def _call(self, fn: Callable[[AppSession], Any]) -> Any:
        """Call the secure world; reload once if the TEE or the module's instance died."""
        started = time.perf_counter()
        try:
            return fn(self._session_or_fail())
        except teec.TeecError as exc:
            if exc.code not in _DEAD and self._instance_alive():
                raise
            log.warning("module %s lost (%s): reloading it with its sealed state", self, exc)
            self._open(self.wasm_path.read_bytes())
            started = time.perf_counter()
            return fn(self._session_or_fail())
        finally:
            if self._on_call is not None:
                self._on_call(time.perf_counter() - started)

    def _instance_alive(self) -> bool:
        try:
            return bool(self._session_or_fail().status().get("running", False))
        except Error:
            return False

    def attest(self, nonce: bytes, user_data: bytes) -> bytes:
        with self._locked():
            evidence: bytes = self._call(lambda s: s.attest(nonce, user_data))
            return evidence

    def connect(self, statement: bytes) -> None:
        with self._locked():
            # The secure world returns the sealed state with the new connection: keep it at
            # once, so a restart before the first event does not lose the channel.
            state = self._call(lambda s: _connect(s, statement))
            if isinstance(state, bytes):
                self.store_state(state)

    def disconnect(self, statement: bytes) -> None:
        with self._locked():
            state: bytes = self._call(lambda s: s.disconnect(statement))
            self.store_state(state)

    @property
    def state(self) -> str:
        """``failed`` (its last load or reload failed), ``loaded`` or ``stopped``; without
        asking the secure world (a metrics scrape must not wait on it)."""
        if self.failed:
            return "failed"
        return "loaded" if self._session is not None else "stopped"

    def status(self) -> dict[str, Any]:
        with self._locked():
            if self._session is None:
                return {}
            value: dict[str, Any] = self._call(lambda s: s.status())
            return value

    def public(self, endpoint: str, request: bytes) -> Outcome:
        with self._locked():
            outcome: Outcome = self._call(lambda s: s.public(endpoint, request, self._relay))
            self._after(outcome)
            return outcome

    def deliver_now(self, event: bytes) -> Outcome:
        """Deliver at once (a synchronous request); the caller waits for the reply."""
        with self._locked():
            outcome: Outcome = self._call(lambda s: s.deliver(event, self._relay))
            self._after(outcome)
            return outcome

    def deliver_batch(self, events: list[bytes]) -> BatchOutcome:
        """Deliver queued events in one call into the secure world."""
        with self._locked():
            batch: BatchOutcome = self._call(lambda s: s.deliver_batch(events, self._early))
            self._absorb(self, batch.events)  # route what it emitted before anything else
            self.store_state(batch.state)
            for reason in batch.dropped:
                self._count(reason)
            self._log(batch.log)
            return batch

    def _early(self, rpc: dict[str, Any]) -> dict[str, Any]:
        """Mid-batch, the secure world hands out events sealed so far, with the state that
        covers them: route them at once (they travel while the module finishes), keep the
        state; anything else goes to the agent's relay."""
        if rpc.get("op") != "events":
            return self._relay(rpc)
        events, state = rpc.get("events"), rpc.get("state")
        if not isinstance(events, list) or not isinstance(state, bytes):
            return {"error": "malformed events"}
        self._absorb(self, [e for e in events if isinstance(e, bytes)])
        self.store_state(state)
        return {"ok": True}

    def _after(self, outcome: Outcome) -> None:
        self._absorb(self, outcome.events)  # route what it emitted before anything else
        self.store_state(outcome.state)
        self._count(outcome.dropped)
        self._log(outcome.log)

    def _count(self, dropped: str | None) -> None:
        if dropped:
            self.dropped[dropped] += 1
            log.warning("module %s dropped an event: %s", self, dropped)
        else:
            self.delivered += 1

    def _log(self, text: str) -> None:
        for line in text.splitlines():
            self.tail.append(line)
            log.info("[%s] %s", self.params.name, line)

    # -- the inbox -------------------------------------------------------------------------

    def enqueue(self, event: bytes, *, wait: bool = False) -> Future[Outcome | None] | None:
        """Keep ``event`` for delivery in order; optionally a future of its outcome."""
        with self._waiters_lock:
            seq = self.inbox.append(event)
            if not wait:
                return None
            future: Future[Outcome | None] = Future()
            self._waiters[seq] = future
            return future

    def enqueue_all(self, events: list[bytes]) -> None:
        """Keep ``events`` for delivery in order, with one write."""
        self.inbox.extend(events)

    def keep(self, events: list[bytes]) -> int:
        """Keep ``events`` without waking the inbox thread: the caller then calls
        :meth:`deliver_arrived` with the number returned."""
        return self.inbox.extend(events, wake=False) - len(events)

    def deliver_arrived(self, before: int) -> None:
        """Deliver what :meth:`keep` kept after record ``before``, on this thread if the
        inbox is idle (nothing queued before them, no delivery under way); else the inbox
        thread does. The caller must hold no module's lock (a node agent's network thread
        does not). Delivering here saves the inbox thread's wake-up on the latency path.

        A module that makes requests always goes through its inbox thread: its delivery may
        wait on another node, which may be waiting on this very link to read its request.
        """
        if not self._deliver_here(before) or len(self.inbox):
            self.inbox.wake()

    def _deliver_here(self, before: int) -> bool:
        if self._may_wait or not self._baton.acquire(blocking=False):
            return False
        try:
            if self._closed or self.inbox.head != before:
                return False
            self._deliver_pending()
            return True
        except Exception:
            # A bug of ours must not take the network thread down: the events are kept,
            # and the inbox thread delivers them.
            log.exception("module %s: delivering on arrival failed", self)
            return False
        finally:
            self._baton.release()

    def _run(self) -> None:
        while not self._closed:
            if not self.inbox.wait(self.inbox.head, 0.5, 1):
                continue
            with self._baton:
                if not self._closed:
                    self._deliver_pending()

    def _deliver_pending(self) -> None:
        """Deliver one batch of what the inbox holds; the caller holds the baton."""
        queued = self.inbox.pending(self.inbox.head, BATCH_EVENTS)
        if not queued:
            return  # another thread delivered them
        batch: list[tuple[int, bytes]] = []
        size = 0
        for seq, event in queued:
            if batch and size + len(event) > BATCH_BYTES:
                break
            batch.append((seq, event))
            size += len(event)
        outcomes = self._deliver_queued([event for _, event in batch])
        with self._waiters_lock:
            futures = [self._waiters.pop(seq, None) for seq, _ in batch]
        for future, outcome in zip(futures, outcomes, strict=True):
            if future is not None and not future.done():
                future.set_result(outcome)
        # Only now, with the state after the batch stored, are its events done with.
        self.inbox.consume(batch[-1][0])

    def _deliver_queued(self, events: list[bytes]) -> list[Outcome | None]:
        try:
            batch = self.deliver_batch(events)
        except Error as exc:
            # The events are not retried: a module that fails on them would fail again.
            self.dropped["failed"] += len(events)
            self.failed = None if self._session is not None else str(exc)
            log.warning("module %s could not take %d event(s): %s", self, len(events), exc)
            return [None] * len(events)
        return [batch.outcome(i) for i in range(len(events))]

    def __str__(self) -> str:
        return f"{self.params.app}/{self.params.name}"


class StateLog:
    """A module's sealed state, newest last: appended after every event, read at reload.

    Appending costs a write(2); replacing a file costs a rename, which ext4 turns into a
    flush (~0.9 ms measured here, more than the event itself). Each record carries a CRC so
    a record cut short by a crash is skipped; the log is compacted when it grows.
    """

    _HEAD = struct.Struct(">II")  # length, CRC-32

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._last: bytes | None = None  # what this object appended last

    def latest(self) -> bytes | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        i, last = 0, None
        while i + self._HEAD.size <= len(data):
            size, crc = self._HEAD.unpack_from(data, i)
            body = data[i + self._HEAD.size : i + self._HEAD.size + size]
            if len(body) < size or zlib.crc32(body) != crc:
                break
            last = body
            i += self._HEAD.size + size
        return last

    def append(self, state: bytes) -> None:
        """Keep ``state`` as the newest. The same sealed bytes again (a batch whose events
        all left with the state sealed for them mid-call) are already the newest."""
        if state == self._last:
            return
        self._last = state
        record = self._HEAD.pack(len(state), zlib.crc32(state)) + state
        if self._size + len(record) > STATE_LOG_BYTES:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(record)
            os.replace(tmp, self.path)
            os.close(self._fd)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
            self._size = len(record)
            return
        os.write(self._fd, record)
        self._size += len(record)

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0
        self._last = None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def _connect(session: AppSession, statement: bytes) -> Any:
    return session.connect(statement)


class _Held:
    """A module's lock, taken with a time limit so a stuck module is reported, not waited on."""

    def __init__(self, lock: threading.Lock, name: str) -> None:
        self._lock, self._name = lock, name

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            raise AppError(f"module {self._name!r} is busy (held for over {LOCK_TIMEOUT:g} s)")

    def __exit__(self, *_: object) -> None:
        self._lock.release()
