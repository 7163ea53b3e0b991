"""How node agents carry sealed events to each other: an interface, and TCP behind it.

The agent needs two things of a transport: **send** an event to another node, in order,
at least once, even if that node is down for a while (the sender keeps it in an outbox
and resends until the receiver acknowledges custody), and **request** an answer from
another node synchronously (a module's request to a handler elsewhere). A message broker
takes TCP's place behind :class:`Transport` for apps that name one (app/transport_nats.py).

Wire format (TCP), one frame per message::

    type (1) || id (8, big-endian) || length (4) || payload

HELLO (sender node address and a link id), EVENT (id = outbox number), ACK (id = highest
number taken into custody, cumulative), REQUEST / REPLY (id = request number). Numbers per
link let the receiver skip a duplicate after a reconnect; that is an optimisation only:
the secure world's counters are what refuse replays. So the receiver may forget a link, and
does when a peer invents more than ``MAX_LINKS`` of them. Events go in batches: the sender
writes what its outbox holds (up to ``SEND_BYTES``) at once, the receiver takes custody of
every event it has read with one write to the inbox and answers with one ACK.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import cbor2

from veritee.app.errors import AppError, TransportError
from veritee.app.spool import Spool
from veritee.errors import Error

log = logging.getLogger("veritee.node.transport")

HELLO, EVENT, ACK, REQUEST, REPLY = 1, 2, 3, 4, 5
_FRAME = struct.Struct(">BQI")
# An event is at most 4 MiB plus its header (tee/channels.py); a frame bigger than this is
# a broken or hostile peer and ends the link.
MAX_FRAME_BYTES = 5 * 1024 * 1024
# Unacknowledged events in flight per link: bounds the resend after a reconnect.
WINDOW = 4096
SEND_BYTES = 1024 * 1024  # events written to a peer in one go (a larger one goes alone)
RECV_BYTES = 256 * 1024  # read from a peer at once
CONNECT_TIMEOUT = 2.0  # seconds; a peer on loopback or a LAN answers in well under this
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # back-off between reconnection attempts, seconds
REQUEST_TIMEOUT = 30.0  # a handler runs within its module's time budget (10 s by default)
REQUEST_WORKERS = 16  # requests answered at once per agent; each may run a module
# Links whose newest event number the receiver keeps (a file each). Anyone who can reach the
# port can invent link ids: past this many, the least recently used idle link is forgotten
# (its sender's next resend is taken again, and the secure world refuses the duplicates).
MAX_LINKS = 1024
# After a batch from a peer, the thread reading its link polls for the next one for up to
# this long before it sleeps in the kernel, as long as the last one came within that time.
# Events that follow each other closely then find the reader running: no wake-up on their
# path, and no idle CPU halted under them (docs/apps.md, "Polling a busy link"). It costs
# CPU while events come that often, and none once they stop coming; one reader of a node
# polls at a time. 0: never poll.
POLL = 0.002
_OK, _FAILED = 0, 1

Address = tuple[str, int]


@dataclass(frozen=True)
class Peer:
    """Where an event goes: a node of an app, by name, and the address of its direct links.

    TCP sends to ``address``; a broker (app/transport_nats.py) by ``app`` and ``node``.
    """

    app: str
    node: str
    address: Address


# Takes custody of events; may return what to do once they are acknowledged (deliver them).
EventSink = Callable[[list[bytes]], Callable[[], None] | None]
RequestSink = Callable[[bytes], bytes]


class Transport(ABC):
    """Carries sealed events between node agents. It never looks inside them."""

    @abstractmethod
    def start(self, on_events: EventSink, on_request: RequestSink) -> Address:
        """Begin receiving; ``on_events`` must have taken custody of them when it returns.

        What it returns, if anything, is called once the events are acknowledged to their
        sender, on the thread that received them (a node agent delivers there).
        """

    @abstractmethod
    def send(self, to: Address | Peer, event: bytes) -> None:
        """Queue ``event`` for the agent at ``to``: delivered in order, kept while it is down."""

    def send_all(self, to: Address | Peer, events: list[bytes]) -> None:
        """Queue ``events``, in order (a transport may store them at once)."""
        for event in events:
            self.send(to, event)

    @abstractmethod
    def request(self, to: Address | Peer, event: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
        """Send a request and wait for the sealed reply; raise TransportError."""

    @abstractmethod
    def links(self) -> dict[str, dict[str, int | bool]]:
        """Per peer address: ``up``, ``queued`` (kept, not yet acknowledged)."""

    @abstractmethod
    def close(self) -> None: ...


def _address(to: Address | Peer) -> Address:
    return to.address if isinstance(to, Peer) else to


def _addr(a: Address) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _send_frame(sock: socket.socket, kind: int, ident: int, payload: bytes = b"") -> None:
    sock.sendall(_FRAME.pack(kind, ident, len(payload)) + payload)


class _Frames:
    """Reads frames from a socket, as many at a time as have arrived.

    With ``poll`` (seconds), a read polls the socket for that long before it blocks, when
    the read before it got its data within that time and no other reader holds
    ``polling`` (see :data:`POLL`).
    """

    def __init__(
        self, sock: socket.socket, poll: float = 0.0, polling: threading.Lock | None = None
    ) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._poll = poll
        self._polling = polling or threading.Lock()
        self._soon = True  # the last read got its data within `poll`
        self._ready: select.poll | None = None
        if poll > 0:
            self._ready = select.poll()
            self._ready.register(sock, select.POLLIN)

    def read(self) -> list[tuple[int, int, bytes]]:
        """Every whole frame received so far; waits for at least one. EOFError at the end."""
        while True:
            frames = self._parse()
            if frames:
                return frames
            chunk = self._recv()
            if not chunk:
                raise EOFError
            self._buf += chunk

    def _recv(self) -> bytes:
        if self._ready is None:
            return self._sock.recv(RECV_BYTES)
        start = time.perf_counter()
        # One poller keeps a CPU from halting as well as several would.
        if self._soon and self._polling.acquire(blocking=False):
            try:
                # Each poll leaves the GIL and each yield the CPU, to this process's other
                # threads and the node's other processes: only an idle CPU is kept busy.
                ready, deadline = self._ready.poll, start + self._poll
                while not ready(0) and time.perf_counter() < deadline:
                    os.sched_yield()
            finally:
                self._polling.release()
        chunk = self._sock.recv(RECV_BYTES)
        self._soon = time.perf_counter() - start < self._poll
        return chunk

    def _parse(self) -> list[tuple[int, int, bytes]]:
        out, i, buf = [], 0, self._buf
        while len(buf) - i >= _FRAME.size:
            kind, ident, size = _FRAME.unpack_from(buf, i)
            if size > MAX_FRAME_BYTES:
                raise EOFError
            if len(buf) - i - _FRAME.size < size:
                break
            out.append((kind, ident, bytes(buf[i + _FRAME.size : i + _FRAME.size + size])))
            i += _FRAME.size + size
        del buf[:i]
        return out


class _Link:
    """Our side of the link to one peer: its outbox, a sender thread, pending requests."""

    def __init__(self, transport: TcpTransport, to: Address) -> None:
        self.transport = transport
        self.to = to
        name = _addr(to).replace(":", "_").replace("[", "").replace("]", "")
        self.outbox = Spool(transport.directory / "outbox" / f"{name}.spool")
        link_file = transport.directory / "outbox" / f"{name}.link"
        if not link_file.exists():
            link_file.write_bytes(os.urandom(16))
        self.link_id = link_file.read_bytes()[:16]
        self.up = False
        self._sock: socket.socket | None = None
        self._write = threading.Lock()  # one writer on the socket; guards _sock and _sent
        self._sent = 0  # the newest event written on the current connection
        self._requests: dict[int, Future[bytes]] = {}
        self._ids = iter(range(1, 1 << 62))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"link {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = RETRY_MIN
        while not self._closed:
            try:
                sock = socket.create_connection(self.to, timeout=CONNECT_TIMEOUT)
            except OSError:
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            try:
                self._serve(sock)
            except (OSError, EOFError) as exc:
                log.info("link to %s lost: %s", _addr(self.to), exc)
            finally:
                self._down(sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        hello = cbor2.dumps({"from": list(self.transport.address), "link": self.link_id})
        _send_frame(sock, HELLO, 0, hello)
        with self._write:
            self._sock = sock
            self._sent = 0  # resend everything not yet acknowledged, oldest first
            self.up = True
        log.info("link to %s up (%d event(s) to resend)", _addr(self.to), len(self.outbox))
        reader = threading.Thread(target=self._read, args=(sock,), daemon=True)
        reader.start()
        while not self._closed and self.up:
            with self._write:
                in_flight = self.outbox.pending(self._sent, WINDOW)
                if in_flight:
                    self._write_events(sock, in_flight)
            if not in_flight:
                self.outbox.wait(self._sent, 0.5)
                continue
            # At most WINDOW sent and not acknowledged: wait for acknowledgements, not for
            # the outbox to drain (it may hold more than WINDOW not sent yet).
            while self.up and not self._closed and self._sent - self.outbox.head >= WINDOW:
                self.outbox.wait_consumed(self._sent - WINDOW + 1, 0.1)

    def _write_events(self, sock: socket.socket, records: list[tuple[int, bytes]]) -> None:
        """Write events to the peer, SEND_BYTES at a time; the caller holds ``_write``."""
        chunk: list[bytes] = []
        size = 0
        for seq, event in records:
            chunk.append(_FRAME.pack(EVENT, seq, len(event)) + event)
            size += len(chunk[-1])
            if size >= SEND_BYTES:
                sock.sendall(b"".join(chunk))
                chunk, size = [], 0
        if chunk:
            sock.sendall(b"".join(chunk))
        self._sent = records[-1][0]

    def push(self, records: list[tuple[int, bytes]]) -> bool:
        """Write just-kept events at once when the link is up and idle and they are next.

        Saves the sender thread's wake-up on the latency path; otherwise (link busy or down,
        events in flight, window full) returns False and the sender thread sends them as
        always, batching what piles up meanwhile.
        """
        if not self.up or not self._write.acquire(blocking=False):
            return False
        try:
            sock = self._sock
            if (
                sock is not None
                and self.up
                and self._sent == records[0][0] - 1
                and self.outbox.head == self._sent  # idle: all sent is acknowledged
                and records[-1][0] - self.outbox.head <= WINDOW
            ):
                self._write_events(sock, records)
                return True
        except OSError:
            pass  # the reader sees the link go down; the sender thread resends
        finally:
            self._write.release()
        return False

    def _read(self, sock: socket.socket) -> None:
        frames = _Frames(sock)
        try:
            while True:
                for kind, ident, payload in frames.read():
                    if kind == ACK:
                        self.outbox.consume(ident)
                    elif kind == REPLY:
                        future = self._requests.pop(ident, None)
                        if future is not None:
                            if payload[:1] == bytes([_OK]):
                                future.set_result(payload[1:])
                            else:
                                reason = payload[1:].decode("utf-8", "replace")[:200]
                                future.set_exception(TransportError(reason))
        except (OSError, EOFError, ValueError):
            pass
        finally:
            self.up = False
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _down(self, sock: socket.socket) -> None:
        self.up = False
        self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        for ident in list(self._requests):
            future = self._requests.pop(ident, None)
            if future is not None and not future.done():
                future.set_exception(TransportError(f"node {_addr(self.to)} went away"))

    def request(self, event: bytes, timeout: float) -> bytes:
        sock = self._sock
        if sock is None or not self.up:
            raise TransportError(f"node {_addr(self.to)} is down")
        ident = next(self._ids)
        future: Future[bytes] = Future()
        self._requests[ident] = future
        try:
            with self._write:
                _send_frame(sock, REQUEST, ident, event)
            return future.result(timeout)
        except FutureTimeout:
            raise TransportError(f"node {_addr(self.to)} did not answer in {timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"node {_addr(self.to)}: {exc}") from None
        finally:
            self._requests.pop(ident, None)

    def close(self) -> None:
        self._closed = True
        self.up = False
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)
        self.outbox.close()


class TcpTransport(Transport):
    """Events over TCP between node agents; outboxes under ``directory``."""

    def __init__(
        self,
        directory: Path,
        host: str,
        port: int,
        *,
        max_links: int = MAX_LINKS,
        poll: float = POLL,
    ) -> None:
        self.directory = directory
        self.max_links = max_links
        self.poll = poll
        self._polling = threading.Lock()  # held by the one reader polling its link
        (directory / "outbox").mkdir(parents=True, exist_ok=True)
        (directory / "links").mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind((host, port))
        except OSError as exc:
            self._server.close()
            raise TransportError(
                f"cannot listen for events on {host}:{port}: {exc.strerror}"
            ) from None
        self._server.listen(128)
        self.address: Address = (host, self._server.getsockname()[1])
        self._links: dict[Address, _Link] = {}
        self._lock = threading.Lock()
        self._seen: dict[bytes, int] = {}  # link id -> highest event number taken
        self._receiving: dict[bytes, int] = {}  # link id -> connections reading it now
        self._links_in = threading.Lock()  # guards _seen's keys, _receiving and links/
        self._pool = ThreadPoolExecutor(REQUEST_WORKERS, thread_name_prefix="request")
        self._closed = False
        self._on_event: EventSink | None = None
        self._on_request: RequestSink | None = None

    def start(self, on_event: EventSink, on_request: RequestSink) -> Address:
        self._on_event, self._on_request = on_event, on_request
        threading.Thread(target=self._accept, name="events", daemon=True).start()
        return self.address

    def _link(self, to: Address) -> _Link:
        with self._lock:
            link = self._links.get(to)
            if link is None:
                link = self._links[to] = _Link(self, to)
            return link

    def resume(self) -> None:
        """Start links for every peer that still has events kept for it (after a restart)."""
        for spool in sorted((self.directory / "outbox").glob("*.spool")):
            host, _, port = spool.stem.rpartition("_")
            if host and port.isdigit() and spool.stat().st_size:
                self._link((host, int(port)))

    def send(self, to: Address | Peer, event: bytes) -> None:
        self.send_all(to, [event])

    def send_all(self, to: Address | Peer, events: list[bytes]) -> None:
        link = self._link(_address(to))
        last = link.outbox.extend(events, wake=False)
        if not link.push(list(zip(range(last - len(events) + 1, last + 1), events, strict=True))):
            link.outbox.wake()

    def request(self, to: Address | Peer, event: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
        link = self._link(_address(to))
        deadline = time.monotonic() + min(timeout, CONNECT_TIMEOUT)
        while not link.up and time.monotonic() < deadline:
            time.sleep(0.01)  # a link just created is connecting
        return link.request(event, timeout)

    def links(self) -> dict[str, dict[str, int | bool]]:
        with self._lock:
            return {
                _addr(a): {"up": link.up, "queued": len(link.outbox)}
                for a, link in self._links.items()
            }

    # -- receiving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._receive, args=(sock,), daemon=True).start()

    def _receive(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        frames = _Frames(sock, self.poll, self._polling)
        write = threading.Lock()
        try:
            first = frames.read()
            kind, _, payload = first[0]
            hello = cbor2.loads(payload) if kind == HELLO else None
            if not isinstance(hello, dict) or not isinstance(hello.get("link"), bytes):
                return
            link_id: bytes = hello["link"][:16]
            fd = self._open_link(link_id)
            if fd is None:
                log.warning("refused a link: %d links are receiving already", self.max_links)
                return
            try:
                batch = first[1:]
                while True:
                    if not self._take(sock, write, link_id, fd, batch):
                        return
                    batch = frames.read()
            finally:
                os.close(fd)
                with self._links_in:
                    self._receiving[link_id] -= 1
                    if not self._receiving[link_id]:
                        del self._receiving[link_id]
        except (OSError, EOFError, ValueError, cbor2.CBORDecodeError):
            pass  # a broken link: the sender reconnects and resends what we did not take
        finally:
            # shutdown, not just close: the reader's file object keeps the socket open.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _open_link(self, link_id: bytes) -> int | None:
        """The file that keeps a link's newest event number, opened, with the number loaded;
        None when the link is new and every one of ``max_links`` is receiving."""
        seen_file = self.directory / "links" / link_id.hex()
        with self._links_in:
            if link_id not in self._seen:
                try:
                    raw = seen_file.read_bytes()
                except FileNotFoundError:
                    if not self._forget_idle_link():
                        return None
                    raw = b""
                self._seen[link_id] = int.from_bytes(raw[:8], "big") if len(raw) >= 8 else 0
            fd = os.open(seen_file, os.O_RDWR | os.O_CREAT, 0o600)
            self._receiving[link_id] = self._receiving.get(link_id, 0) + 1
            return fd

    def _forget_idle_link(self) -> bool:
        """Make room for one more link file (under ``_links_in``); False if all are receiving."""
        files = []
        for path in (self.directory / "links").iterdir():
            with contextlib.suppress(OSError, ValueError):
                files.append((path.stat().st_mtime_ns, bytes.fromhex(path.name), path))
        if len(files) < self.max_links:
            return True
        for _, link_id, path in sorted(files):
            if link_id not in self._receiving:
                path.unlink(missing_ok=True)
                self._seen.pop(link_id, None)
                return True
        return False

    def _take(
        self,
        sock: socket.socket,
        write: threading.Lock,
        link_id: bytes,
        fd: int,
        frames: list[tuple[int, int, bytes]],
    ) -> bool:
        """Take custody of the events among ``frames`` at once, then acknowledge them."""
        events: list[bytes] = []
        seen = newest = self._seen[link_id]
        last = 0
        then = None
        for kind, ident, payload in frames:
            if kind == EVENT:
                if ident > newest:
                    events.append(payload)
                    newest = ident
                last = max(last, ident)
            elif kind == REQUEST:
                self._pool.submit(self._answer, sock, write, ident, payload)
        if events:
            assert self._on_event is not None
            try:
                then = self._on_event(events)
            except AppError as exc:
                # No acknowledgement: the sender keeps the events and retries.
                log.warning("refused custody of %d event(s): %s", len(events), exc)
                return False
            if newest > seen:
                self._seen[link_id] = newest
                os.pwrite(fd, newest.to_bytes(8, "big"), 0)
        try:
            if last:
                with write:
                    _send_frame(sock, ACK, last)
        finally:
            if then is not None:
                then()  # acknowledged first: the sender's next event need not wait for it
        return True

    def _answer(self, sock: socket.socket, write: threading.Lock, ident: int, event: bytes) -> None:
        assert self._on_request is not None
        try:
            payload = bytes([_OK]) + self._on_request(event)
        except Error as exc:
            payload = bytes([_FAILED]) + str(exc).encode()[:200]
        except Exception:
            # A bug of ours: the requester still gets an answer rather than a time-out.
            log.exception("answering a request failed")
            payload = bytes([_FAILED]) + b"the node agent failed to carry the request"
        with contextlib.suppress(OSError), write:
            _send_frame(sock, REPLY, ident, payload)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            links = list(self._links.values())
        for link in links:
            link.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
