"""A module's attested TLS endpoint, driven from the normal world, which only moves ciphertext.

The endpoint lives in the secure world's TLS TA (``veritee.tee.tls_ta``); this is its TEE
Client API binding (:class:`ModuleEndpoint`) and the two pumps around it:

* :class:`ModuleServer`: accepts TCP connections and pumps each one's bytes through the TA,
  which attests, answers a request by running the module, and reports what happened;
* :func:`module_request`: a module as the client (mutual attestation when its server is a
  module too): the TA attests it, appraises the server, sends the request and runs the module
  over the response; only the module's own output comes back.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from veritee.errors import Error, UsageError
from veritee.evidence.appraisal import ReferenceValues
from veritee.ratls.channel import DEFAULT_TIMEOUT, RECV_BYTES, dial
from veritee.tee import client as teec
from veritee.tee.ta import (
    CMD_TLS_CLOSE,
    CMD_TLS_FEED,
    CMD_TLS_LOAD,
    CMD_TLS_OPEN,
    MAX_TLS_REPLY_BYTES,
    TLS_TA,
)
from veritee.tls import errors as ratls_errors
from veritee.tls.errors import ChannelError, Unreachable
from veritee.tls.wire import Mode

log = logging.getLogger("veritee.ratls")

# A connection is dropped when its peer is silent this long, and in any case after the
# lifetime: a peer that trickles bytes must not hold a thread and a TA slot for ever.
IDLE_TIMEOUT = 30.0
MAX_CONNECTION_SECONDS = 300.0
MAX_CONCURRENT_CONNECTIONS = 64  # more are closed at once (the TA holds 64 per session too)
DEFAULT_INSTANCES = 2


@dataclass(frozen=True)
class PeerPolicy:
    """How a module's endpoint appraises its peer, inside the secure world."""

    anchors_pem: bytes
    refs: dict[str, Any] = field(default_factory=dict)  # reference values, as JSON

    def __post_init__(self) -> None:
        ReferenceValues.from_json(self.refs)  # refuse a malformed one here, not in the TA

    def to_cbor(self) -> dict[str, Any]:
        return {"anchors": self.anchors_pem, "refs": json.loads(json.dumps(self.refs))}


@dataclass(frozen=True)
class Feed:
    """What the TA answered to bytes from the network."""

    out: bytes
    done: bool
    ready: bool
    mode: str | None
    peer: dict[str, Any] | None
    error: tuple[str, str] | None
    result: dict[str, Any] | None
    served: bool = False

    def raise_error(self) -> None:
        if self.error is not None:
            raise ratls_errors.named(*self.error)


class ModuleEndpoint:
    """A module loaded into a vTEE's TLS TA. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        context: teec.Context,
        module: bytes,
        *,
        name: str = "module",
        args: Sequence[str] = (),
        env: Sequence[tuple[str, str]] = (),
        memory_mb: int | None = None,
        timeout: float | None = None,
        peer: PeerPolicy | None = None,
    ) -> None:
        self.session = context.open_session(TLS_TA)
        request: dict[str, Any] = {
            "module": module,
            "name": name,
            "args": list(args),
            "env": [list(kv) for kv in env],
            "peer": None if peer is None else peer.to_cbor(),
        }
        if memory_mb is not None:
            request["memory_mb"] = memory_mb
        if timeout is not None:
            request["timeout"] = timeout
        try:
            self.info = self._call(CMD_TLS_LOAD, request)
        except BaseException:
            self.session.close()
            raise

    @property
    def measurement(self) -> bytes:
        return bytes(self.info["measurement"])

    def open(
        self,
        role: str,
        *,
        mode: Mode = "challenge",
        request: bytes = b"",
        data: bytes = b"",
        eof: bool = False,
        server_name: str | None = None,
    ) -> tuple[int, Feed]:
        """A new connection; ``data``: what already arrived for it (a server's first bytes)."""
        call: dict[str, Any] = {
            "role": role,
            "mode": mode,
            "request": request,
            "data": data,
            "eof": eof,
        }
        if server_name is not None:
            call["server_name"] = server_name
        answer = self._call(CMD_TLS_OPEN, call)
        return int(answer["conn"]), _feed_of(answer)

    def feed(self, conn: int, data: bytes, *, eof: bool = False) -> Feed:
        return _feed_of(self._call(CMD_TLS_FEED, {"conn": conn, "data": data, "eof": eof}))

    def forget(self, conn: int) -> None:
        self._call(CMD_TLS_CLOSE, {"conn": conn})

    def close(self) -> None:
        self.session.close()

    def _call(self, cmd: int, request: dict[str, Any]) -> dict[str, Any]:
        out = teec.memref_out(MAX_TLS_REPLY_BYTES)
        self.session.invoke(cmd, teec.Operation([teec.memref_in(cbor2.dumps(request)), out]))
        value = cbor2.loads(out.buffer)
        if not isinstance(value, dict):
            raise teec.TeecError(
                teec.TEEC_ERROR_BAD_FORMAT, teec.TEEC_ORIGIN_TRUSTED_APP, "reply is not a map"
            )
        return value


def _feed_of(a: dict[str, Any]) -> Feed:
    error = a.get("error")
    return Feed(
        out=bytes(a.get("out", b"")),
        done=bool(a.get("done")),
        ready=bool(a.get("ready")),
        mode=a.get("mode"),
        peer=a.get("peer"),
        error=None if error is None else (str(error["check"]), str(error["reason"])),
        result=a.get("result"),
        served=bool(a.get("served")),
    )


@dataclass(frozen=True)
class ConnectionResult:
    """How one connection to a module server ended, as the normal world saw it."""

    peer_address: str
    mode: str | None
    served: bool
    client: dict[str, Any] | None  # the client's verified claims, if it attested
    error: tuple[str, str] | None
    seconds: float


class ModuleServer:
    """Serves a module over attested TLS on ``address``; a request runs the module once.

    ``instances`` module instances (each a TEEC context and a TLS TA session) share the
    connections, each handling one TA call at a time.
    """

    def __init__(
        self,
        context: Callable[[], teec.Context],
        module: bytes,
        address: tuple[str, int],
        *,
        name: str = "module",
        args: Sequence[str] = (),
        env: Sequence[tuple[str, str]] = (),
        memory_mb: int | None = None,
        timeout: float | None = None,
        peer: PeerPolicy | None = None,
        instances: int = DEFAULT_INSTANCES,
        on_result: Callable[[ConnectionResult], None] | None = None,
    ) -> None:
        self._contexts: list[teec.Context] = []
        self._slots: list[tuple[threading.Lock, ModuleEndpoint]] = []
        try:
            for _ in range(instances):
                ctx = context()
                self._contexts.append(ctx)
                endpoint = ModuleEndpoint(
                    ctx,
                    module,
                    name=name,
                    args=args,
                    env=env,
                    memory_mb=memory_mb,
                    timeout=timeout,
                    peer=peer,
                )
                self._slots.append((threading.Lock(), endpoint))
            server_class = _TcpServer6 if ":" in address[0] else _TcpServer
            try:
                self._server = server_class(address, _Handler)
            except OSError as exc:
                raise UsageError(
                    f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}"
                ) from None
        except BaseException:
            self.close()
            raise
        self._server.owner = self
        self._next = itertools.count()
        self._admission = threading.BoundedSemaphore(MAX_CONCURRENT_CONNECTIONS)
        self.on_result = on_result
        self.info = self._slots[0][1].info

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def measurement(self) -> bytes:
        return bytes(self.info["measurement"])

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Stop serve_forever (from another thread)."""
        self._server.shutdown()

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.server_close()
        for ctx in self._contexts:
            ctx.close()

    def __enter__(self) -> ModuleServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def handle(self, sock: socket.socket, peer_address: str) -> None:
        if not self._admission.acquire(blocking=False):
            log.warning(
                "refused %s: %d connections already", peer_address, MAX_CONCURRENT_CONNECTIONS
            )
            sock.close()
            return
        try:
            lock, endpoint = self._slots[next(self._next) % len(self._slots)]
            result = _pump(sock, peer_address, lock, endpoint)
        finally:
            self._admission.release()
        if result.error:
            log.info("%s: refused (%s: %s)", peer_address, *result.error)
        if self.on_result is not None:
            self.on_result(result)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    owner: ModuleServer


class _TcpServer6(_TcpServer):
    address_family = socket.AF_INET6


class _Handler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host, port = self.client_address[:2]
        self.server.owner.handle(sock, f"{host}:{port}")


def _pump(
    sock: socket.socket, peer_address: str, lock: threading.Lock, endpoint: ModuleEndpoint
) -> ConnectionResult:
    """Move one connection's bytes between its socket and the TA until it ends."""
    start = time.monotonic()
    conn: int | None = None
    last: Feed | None = None
    error: tuple[str, str] | None = None
    try:
        while time.monotonic() - start < MAX_CONNECTION_SECONDS:
            sock.settimeout(IDLE_TIMEOUT)
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                error = ("Unreachable", f"the client sent nothing for {IDLE_TIMEOUT:g} s")
                break
            with lock:
                if conn is None:  # the client speaks first: open with what it said
                    conn, last = endpoint.open("server", data=data, eof=not data)
                else:
                    last = endpoint.feed(conn, data, eof=not data)
            if last.out:
                sock.sendall(last.out)
            if last.done or not data:
                break
        else:
            error = ("Unreachable", f"the connection outlived {MAX_CONNECTION_SECONDS:g} s")
    except OSError as exc:
        error = ("Unreachable", f"the connection broke: {exc.strerror or exc}")
    except Error as exc:  # the TA refused a call (e.g. too many connections)
        error = (type(exc).__name__, str(exc))
    finally:
        if conn is not None and not (last is not None and last.done):
            try:
                with lock:
                    endpoint.forget(conn)
            except Error:
                pass
        sock.close()
    if last is not None and last.error is not None:
        error = last.error
    return ConnectionResult(
        peer_address=peer_address,
        mode=last.mode if last else None,
        served=last is not None and last.served,
        client=last.peer if last else None,
        error=error,
        seconds=time.monotonic() - start,
    )


@dataclass(frozen=True)
class ModuleResult:
    """A client module's exchange: the server it verified, and its own run over the response."""

    server: dict[str, Any] | None
    exit_code: int
    stdout: bytes
    stderr: bytes


def module_request(
    context: teec.Context,
    module: bytes,
    host: str,
    port: int,
    request: bytes,
    *,
    mode: Mode = "challenge",
    peer: PeerPolicy | None,
    name: str = "module",
    args: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
    server_name: str | None = None,
) -> ModuleResult:
    """Connect as a module; raise the failed check, or return the module's run on the answer.

    ``peer`` is how the module appraises its server (inside the secure world); None means it
    does not, for a server authenticated in some other way. ``server_name``: as for
    :func:`veritee.ratls.connect`.
    """
    endpoint = ModuleEndpoint(context, module, name=name, args=args, peer=peer)
    try:
        conn, first = endpoint.open("client", mode=mode, request=request, server_name=server_name)
        sock = dial(host, port, timeout)
        try:
            feed = _exchange(sock, endpoint, conn, first.out, timeout)
        finally:
            sock.close()
    finally:
        endpoint.close()
    feed.raise_error()
    if feed.result is None:
        raise ChannelError("the server closed the channel without answering")
    return ModuleResult(
        server=feed.peer,
        exit_code=int(feed.result["exit"]),
        stdout=bytes(feed.result["stdout"]),
        stderr=bytes(feed.result["stderr"]),
    )


def _exchange(
    sock: socket.socket, endpoint: ModuleEndpoint, conn: int, out: bytes, timeout: float
) -> Feed:
    deadline = time.monotonic() + timeout
    sock.sendall(out)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(f"the server did not finish within {timeout:g} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(RECV_BYTES)
        except TimeoutError:
            raise Unreachable(f"the server sent nothing for {timeout:g} s") from None
        except OSError as exc:
            raise Unreachable(f"the connection broke: {exc.strerror or exc}") from None
        feed = endpoint.feed(conn, data, eof=not data)
        if feed.out:
            with contextlib.suppress(OSError):
                sock.sendall(feed.out)
        if feed.done or not data:
            return feed
