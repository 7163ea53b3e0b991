"""The TLS trusted application: a module's attested TLS endpoint, terminated in the secure world.

One session is one module instance loaded for TLS (measured, limited and keyed as the runtime
TA loads it) and up to ``MAX_CONNECTIONS`` TLS connections. The TLS engine (pyOpenSSL over
memory BIOs, driven by ``veritee.tls.engine``) runs here; the normal world calls FEED with
the bytes that arrived on its socket and sends back what FEED returns. It carries ciphertext
and learns the outcome (who the peer proved to be, or which check failed), never a key or a
plaintext byte of the application.

* The TLS key is the module's **attestation key**, minted at LOAD and never exported: the
  vtee token binds it, so a relying party can tell it from any key the host holds.
* Each connection's certificate carries fresh evidence over the peer's challenge, read from
  the ClientHello's server name while the handshake runs (or over a marked nonce of our own
  when none came), and the module token's user data is SHA-256 of
  the certificate's SubjectPublicKeyInfo.
* Server role: a client's request (one DATA frame) runs the module, a WASI command, with the
  request on stdin; its stdout is the response. With a peer policy, clients must attest too
  and are appraised here, against the trust anchors and reference values given at LOAD.
* Client role: the module is run with the server's response on stdin; only its result leaves.

Limits of the emulation, said plainly: the peer policy comes from the normal world at LOAD
and is not covered by the evidence, and a run is bounded by the module's time budget, not by
the client staying connected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cbor2
from OpenSSL import SSL

from veritee.errors import Error, SecureWorldError, UsageError
from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
from veritee.tee import runtime_ta
from veritee.tee.runtime_ta import LoadedModule
from veritee.tee.ta import CMD_TLS_CLOSE, CMD_TLS_FEED, CMD_TLS_LOAD, CMD_TLS_OPEN
from veritee.tls import certificate, engine, wire
from veritee.tls.appraisers import LocalAppraiser
from veritee.tls.engine import Data, Engine, Identity, PeerClosed, PeerError, Ready, Role
from veritee.tls.errors import ProtocolViolation

if TYPE_CHECKING:
    from veritee.tee.world import SecureWorld

MAX_CONNECTIONS = 64  # per session: a normal world that opens and abandons many is refused
MAX_ARGS = 64


class ModuleFailed(SecureWorldError):
    """The module behind the endpoint did not produce a response."""


@dataclass
class _Connection:
    engine: Engine
    role: Role
    request: bytes = b""
    result: dict[str, Any] | None = None
    error: tuple[str, str] | None = None
    served: bool = False  # a response went out


@dataclass
class _Endpoint:
    world: SecureWorld
    loaded: LoadedModule
    identity: Identity
    args: list[str]
    env: list[list[str]]
    peer: LocalAppraiser | None
    connections: dict[int, _Connection] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


_lock = threading.Lock()
_endpoints: dict[int, _Endpoint] = {}


def invoke(world: SecureWorld, sid: int, cmd: Any, raw: bytes) -> bytes:
    """One command on session ``sid``; returns the CBOR reply or raises a Veritee error."""
    request = _decode(raw)
    if cmd == CMD_TLS_LOAD:
        reply = _load(world, sid, request)
    else:
        with _lock:
            endpoint = _endpoints.get(sid)
        if endpoint is None:
            raise UsageError("no module loaded in this TLS session: LOAD one first")
        if cmd == CMD_TLS_OPEN:
            reply = _open(endpoint, request)
        elif cmd == CMD_TLS_FEED:
            reply = _feed(endpoint, request)
        elif cmd == CMD_TLS_CLOSE:
            endpoint.connections.pop(_conn_id(request), None)
            reply = {}
        else:
            raise UsageError(f"the TLS TA has no command {cmd!r}")
    return bytes(cbor2.dumps(reply))


def close_session(sid: int) -> None:
    """Forget a session's endpoint and its connections (the session closed or its client left)."""
    with _lock:
        _endpoints.pop(sid, None)


def _load(world: SecureWorld, sid: int, request: dict[str, Any]) -> dict[str, Any]:
    with _lock:
        if sid in _endpoints:
            raise UsageError("this TLS session already holds a module")
    module = request.get("module")
    if not isinstance(module, bytes):
        raise UsageError("LOAD needs the module's bytes")
    args, env = request.get("args", []), request.get("env", [])
    if not (
        isinstance(args, list) and len(args) <= MAX_ARGS and all(isinstance(a, str) for a in args)
    ):
        raise UsageError(f"args must be a list of at most {MAX_ARGS} strings")
    if not isinstance(env, list) or not all(
        isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv) for kv in env
    ):
        raise UsageError("env must be a list of [name, value] strings")
    config = {k: request[k] for k in ("name", "memory_mb", "timeout") if k in request}
    loaded = runtime_ta.load(
        world.compiler, world.identity, world.storage, module, bytes(cbor2.dumps(config))
    )
    peer = _peer_policy(request.get("peer"))
    # Counted with the other TAs' modules: they share the vTEE's module and memory caps.
    world.admit(sid, loaded)
    endpoint = _Endpoint(world, loaded, _identity(world, loaded), list(args), list(env), peer)
    with _lock:
        _endpoints[sid] = endpoint
    return {
        **loaded.info(),
        "key_sha256": hashlib.sha256(
            certificate.spki_of(loaded.attestation_key.public_key())
        ).digest(),
    }


def _identity(world: SecureWorld, loaded: LoadedModule) -> Identity:
    """The module's TLS identity: its attestation key, certificates with fresh evidence."""
    key = loaded.attestation_key
    binding = hashlib.sha256(certificate.spki_of(key.public_key())).digest()

    def evidence(nonce: bytes) -> bytes:
        return runtime_ta.attest(world.identity, loaded, nonce, user_data=binding)

    def certify(nonce: bytes) -> bytes:
        now = dt.datetime.now(dt.UTC)
        return certificate.build(key, evidence(nonce), name=loaded.name, now=now)

    return Identity(key=key, certify=certify, evidence=evidence)


def _peer_policy(value: Any) -> LocalAppraiser | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UsageError("peer policy must be a map of anchors (PEM) and refs")
    anchors, refs = value.get("anchors"), value.get("refs", {})
    if not isinstance(anchors, bytes):
        raise UsageError("peer policy needs trust anchors (PEM bytes)")
    return LocalAppraiser(TrustAnchors.from_pem(anchors), ReferenceValues.from_json(refs))


def _open(endpoint: _Endpoint, request: dict[str, Any]) -> dict[str, Any]:
    if len(endpoint.connections) >= MAX_CONNECTIONS:
        raise SecureWorldError(
            f"this TLS session already holds {MAX_CONNECTIONS} connections: close some"
        )
    role = request.get("role")
    if role == "server":
        conn = _Connection(Engine("server", endpoint.identity, endpoint.peer), "server")
    elif role == "client":
        mode = request.get("mode", "challenge")
        payload = request.get("request", b"")
        if mode not in wire.MODES:
            raise UsageError(f"mode must be one of {', '.join(wire.MODES)}")
        if not isinstance(payload, bytes) or len(payload) > wire.MAX_DATA_BYTES:
            raise UsageError(f"the request must be at most {wire.MAX_DATA_BYTES} bytes")
        server_name = request.get("server_name")
        if server_name is not None:
            if not isinstance(server_name, str):
                raise UsageError("server_name must be a host name")
            try:
                wire.check_routing_name(server_name)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        client = Engine(
            "client", endpoint.identity, endpoint.peer, mode=mode, server_name=server_name
        )
        conn = _Connection(client, "client", request=payload)
    else:
        raise UsageError("role must be 'server' or 'client'")
    conn_id = next(endpoint.ids)
    endpoint.connections[conn_id] = conn
    try:
        conn.engine.start()
    except Error as err:
        endpoint.connections.pop(conn_id, None)
        raise SecureWorldError(f"could not start the connection: {err}") from None
    # What already arrived may come with the OPEN: one world crossing less per connection.
    return {"conn": conn_id, **_step(endpoint, conn_id, conn, request)}


def _feed(endpoint: _Endpoint, request: dict[str, Any]) -> dict[str, Any]:
    conn_id = _conn_id(request)
    conn = endpoint.connections.get(conn_id)
    if conn is None:
        raise UsageError(f"no open connection {conn_id}")
    return _step(endpoint, conn_id, conn, request)


def _step(
    endpoint: _Endpoint, conn_id: int, conn: _Connection, request: dict[str, Any]
) -> dict[str, Any]:
    data, eof = request.get("data", b""), bool(request.get("eof", False))
    if not isinstance(data, bytes):
        raise UsageError("data must be bytes")
    eng = conn.engine
    try:
        try:
            events = eng.receive(data) if data else []
            if eof and not eng.closed:
                events += eng.eof()
            for event in events:
                _on_event(endpoint, conn, event)
        except SSL.Error as exc:  # an engine call outside its own guards: still the peer's doing
            raise ProtocolViolation(f"TLS error: {exc}") from None
    except Error as err:
        conn.error = (type(err).__name__, str(err))
        eng.abort(err)
    done = eng.closed
    if done:
        endpoint.connections.pop(conn_id, None)
    peer = eng.peer.claims() if eng.peer is not None else None
    error = {"check": conn.error[0], "reason": conn.error[1]} if conn.error else None
    return {
        "out": eng.outgoing(),
        "done": done,
        "ready": eng.ready,
        "mode": eng.mode,
        "peer": peer,
        "error": error,
        "result": conn.result,
        "served": conn.served,
    }


def _on_event(endpoint: _Endpoint, conn: _Connection, event: engine.Event) -> None:
    eng = conn.engine
    if isinstance(event, Ready):
        if conn.role == "client":
            eng.send(conn.request)
    elif isinstance(event, Data):
        code, stdout, stderr = _run(endpoint, event.payload)
        if conn.role == "client":
            conn.result = {"exit": code, "stdout": stdout, "stderr": stderr}
        elif code != 0:
            raise ModuleFailed(f"the module exited with code {code}")
        elif len(stdout) > wire.MAX_DATA_BYTES:
            raise ModuleFailed(f"the module's response is over {wire.MAX_DATA_BYTES} bytes")
        else:
            eng.send(stdout)
            conn.served = True
        eng.close()
    elif isinstance(event, PeerError):
        conn.error = ("PeerRefused", f"the peer refused: {event.check}: {event.reason}")
    elif isinstance(event, PeerClosed):
        eng.close()


def _run(endpoint: _Endpoint, stdin: bytes) -> tuple[int, bytes, bytes]:
    world = endpoint.world
    request = {"args": endpoint.args, "env": endpoint.env, "stdin": stdin, "relay": False}
    code, body = runtime_ta.run(
        world.compiler,
        world.pool,
        world.identity,
        endpoint.loaded,
        bytes(cbor2.dumps(request)),
        lambda: False,  # bounded by the module's time budget (see the module docstring)
        world.scratch,
    )
    result = cbor2.loads(body)
    return code, bytes(result["stdout"]), bytes(result["stderr"])


def _conn_id(request: dict[str, Any]) -> int:
    conn = request.get("conn")
    if not isinstance(conn, int) or isinstance(conn, bool):
        raise UsageError("conn must be a connection id")
    return conn


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        value = cbor2.loads(raw) if raw else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise UsageError("TLS TA request is not valid CBOR") from None
    if not isinstance(value, dict):
        raise UsageError("TLS TA request must be a CBOR map")
    return value


__all__ = ["MAX_CONNECTIONS", "ModuleFailed", "close_session", "invoke"]
