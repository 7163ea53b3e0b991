"""The node agent's HTTP API, for the deployer and for users. Bodies are CBOR both ways.

Deployer (``/v1/apps/APP/...``): configure the node's name and peers, load a module (or
stage one beside it), attest it over a nonce, hand it signed connect statements, activate,
discard, disable, periodic events. Users: ``POST /v1/events`` (a sealed event of a direct
connection or an entry call), ``POST /v1/request`` (a sealed request; the sealed reply
back), ``ANY /v1/public/APP/MODULE/ENDPOINT/...`` (plain HTTP to a public endpoint, e.g.
the demo's web server).

Every request that changes or reads an app's modules, the users' too, is signed with the
app's deployment key (app/auth.py): a stranger who reaches the port gets 401, another app's
owner 403, and neither changes anything. Only ``/v1/info``, the node-level part of
``/v1/status`` and public endpoints (unauthenticated by design) answer anyone. The agent
itself is untrusted: what matters against it, the secure world checks.
"""

from __future__ import annotations

import logging
from typing import Any

import cbor2
from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from veritee.app._host import LoadParams
from veritee.app._tree import NAME
from veritee.app.agent import NodeAgent, UnknownModule
from veritee.app.auth import HEADER, Claims, Gate
from veritee.app.errors import NodeError, NotAppOwner, TransportError, Unauthenticated
from veritee.app.journal import NonceJournal
from veritee.app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from veritee.app.routes import Route
from veritee.errors import Error, UsageError
from veritee.tee import client as teec
from veritee.tee.channels import EventRejected

log = logging.getLogger("veritee.node.api")
NONCES_FILE = "spent-nonces"  # in the agent's directory (app/journal.py)

CBOR = "application/cbor"
# A module binary is at most tens of MiB (the secure world's limit is set by its memory);
# bigger bodies are refused before they are read whole.
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_PUBLIC_BYTES = 1024 * 1024  # an HTTP request to a module's public endpoint
_DEAD = (teec.TEEC_ERROR_TARGET_DEAD, teec.TEEC_ERROR_COMMUNICATION)


def _cbor(value: Any, status: int = 200) -> Response:
    return Response(bytes(cbor2.dumps(value)), status_code=status, media_type=CBOR)


def _problem(exc: BaseException) -> Response:
    status = 422
    code = None
    if isinstance(exc, Unauthenticated | NotAppOwner):
        status = exc.status
    elif isinstance(exc, UnknownModule):
        status = 404
    elif isinstance(exc, UsageError | EventRejected | ValueError):
        status = 400
    elif isinstance(exc, TransportError):
        status = 502
    elif isinstance(exc, teec.TeecError):
        code = exc.code_name
        status = 503 if exc.code in _DEAD else 422
    elif isinstance(exc, NodeError):
        status = 409
    return _cbor({"error": str(exc), "kind": type(exc).__name__, "code": code}, status)


async def _raw(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise UsageError(f"request body over {limit} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise UsageError(f"request body over {limit} bytes")
    return bytes(raw)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = cbor2.loads(bytes(raw)) if raw else {}
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        raise UsageError("request body is not CBOR") from None
    if not isinstance(value, dict):
        raise UsageError("request body must be a CBOR map")
    return value


def _get(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"field {name!r} must be {kind.__name__}")
    return value


def _names(request: Request) -> None:
    """App and module names become directory names here: only plain names pass."""
    for key in ("app", "name", "module"):
        value = request.path_params.get(key)
        if value is not None and not NAME.match(value):
            raise UsageError(f"{key} {value[:70]!r} is not a name")


def create(agent: NodeAgent) -> FastAPI:
    api = FastAPI(
        title="Veritee node agent",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(_names)],
    )

    @api.exception_handler(Error)
    async def _error(_: Request, exc: Error) -> Response:
        return _problem(exc)

    @api.exception_handler(EventRejected)
    async def _rejected(_: Request, exc: EventRejected) -> Response:
        return _problem(exc)

    @api.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> Response:
        return _problem(exc)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # A query parameter of the wrong type (e.g. ?staged=maybe): one line, as CBOR.
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return _problem(UsageError(where or "invalid request"))

    journal = NonceJournal(agent.directory / NONCES_FILE)
    gate = Gate(
        agent.owner_of,
        agent.node_of,
        agent_id=agent.agent_id,
        spent=journal.read(),
        on_spend=journal.append,
    )

    async def owned(
        request: Request, app: str | None, *, naming_node: bool = True
    ) -> tuple[dict[str, Any], Claims]:
        """The body of a request about ``app`` (None: the app its signature names), once
        the gate has found it signed by the app's owner for exactly this request."""
        query = request.url.query
        claims = gate.check(
            request.headers.get(HEADER),
            method=request.method,
            path=request.url.path + (f"?{query}" if query else ""),
            app=app,
            naming_node=naming_node,
        )
        raw = await _raw(request)  # only the owner's body is read
        gate.admit(claims, raw)
        return _parse(raw), claims

    @api.get("/v1/info")
    async def info() -> Response:
        return _cbor(
            {
                "events": list(agent.address),
                "apps": sorted(agent.status()["apps"]),
                "id": agent.agent_id,  # what a configure request is signed for
                # What an app configured without naming a transport uses here.
                "transport": agent.default_transport,
            }
        )

    @api.get("/health")
    async def health() -> Response:
        # Liveness for a load balancer or systemd: the agent answers and its transport
        # listens. Plain JSON, as the verifier's and the secret service's /health.
        return Response(
            b'{"status":"ok"}' if agent.address[1] else b'{"status":"starting"}',
            status_code=200 if agent.address[1] else 503,
            media_type="application/json",
        )

    @api.get("/metrics")
    async def metrics() -> Response:
        # Node-wide figures only (app/metrics.py says what and why); anyone who reaches the
        # API reads them, so bind it where only the operator's scraper does.
        body = await run_in_threadpool(agent.metrics.render)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    @api.get("/v1/status")
    async def status() -> Response:
        # Anyone: the node's own view, no app's (each app's owner asks for its own).
        return _cbor(await run_in_threadpool(agent.status, ""))

    @api.get("/v1/apps/{app}/status")
    async def app_status(app: str, request: Request) -> Response:
        await owned(request, app)
        return _cbor(await run_in_threadpool(agent.status, app))

    @api.put("/v1/apps/{app}")
    async def configure(app: str, request: Request) -> Response:
        # The request that creates an app here makes its signer the owner; it names this
        # node, so the name it had (if any) is not checked.
        body, claims = await owned(request, app, naming_node=False)
        peers = _get(body, "peers", dict)
        parsed = {}
        for name, addr in peers.items():
            if not (isinstance(addr, list) and len(addr) == 2 and isinstance(addr[1], int)):
                raise UsageError(f"peer {name!r} must be [host, port]")
            parsed[str(name)] = (str(addr[0]), addr[1])
        transport = _get(body, "transport", str, optional=True)
        await run_in_threadpool(
            agent.configure,
            app,
            _get(body, "node", str),
            parsed,
            owner=claims.key,
            transport=transport,
        )
        return _cbor({})

    @api.put("/v1/apps/{app}/modules/{name}")
    async def load(app: str, name: str, request: Request, staged: bool = False) -> Response:
        body, claims = await owned(request, app)
        params = LoadParams(
            app,
            name,
            _get(body, "deployment_key", bytes),
            _get(body, "memory_mb", int, optional=True),
            _get(body, "timeout", float, optional=True),
        )
        wasm = _get(body, "wasm", bytes)
        succession = _get(body, "succession", bytes, optional=True)
        return _cbor(
            await run_in_threadpool(
                agent.load, params, wasm, staged=staged, succession=succession, owner=claims.key
            )
        )

    @api.post("/v1/apps/{app}/modules/{name}/attest")
    async def attest(app: str, name: str, request: Request, staged: bool = False) -> Response:
        body, _ = await owned(request, app)
        nonce = _get(body, "nonce", bytes)
        user_data = _get(body, "user_data", bytes, optional=True) or b""
        evidence = await run_in_threadpool(agent.attest, app, name, nonce, user_data, staged)
        return _cbor({"evidence": evidence})

    @api.post("/v1/apps/{app}/modules/{name}/connect")
    async def connect(app: str, name: str, request: Request, staged: bool = False) -> Response:
        body, _ = await owned(request, app)
        route = Route.from_cbor(app, body.get("route"))
        statement = _get(body, "statement", bytes)
        await run_in_threadpool(agent.connect, app, name, statement, route, staged)
        return _cbor({})

    @api.post("/v1/apps/{app}/modules/{name}/activate")
    async def activate(app: str, name: str, request: Request) -> Response:
        body, _ = await owned(request, app)
        retire = [c for c in _get(body, "retire", list) if isinstance(c, bytes)]
        await run_in_threadpool(agent.activate, app, name, retire)
        return _cbor({})

    @api.post("/v1/apps/{app}/modules/{name}/discard")
    async def discard(app: str, name: str, request: Request) -> Response:
        await owned(request, app)
        await run_in_threadpool(agent.discard, app, name)
        return _cbor({})

    @api.post("/v1/apps/{app}/modules/{name}/disable")
    async def disable(app: str, name: str, request: Request) -> Response:
        body, _ = await owned(request, app)
        retire = [c for c in _get(body, "retire", list) if isinstance(c, bytes)]
        await run_in_threadpool(agent.disable, app, name, retire)
        return _cbor({})

    @api.post("/v1/apps/{app}/retire")
    async def retire(app: str, request: Request) -> Response:
        body, _ = await owned(request, app)
        conns = [c for c in _get(body, "retire", list) if isinstance(c, bytes)]
        statement = body.get("statement")
        if statement is not None and not isinstance(statement, bytes):
            raise UsageError("statement must be a signed disconnect statement (bytes)")
        problems = await run_in_threadpool(agent.retire, app, conns, statement)
        return _cbor({"problems": problems})

    @api.put("/v1/apps/{app}/periodic")
    async def periodic(app: str, request: Request) -> Response:
        body, _ = await owned(request, app)
        events = []
        for e in _get(body, "events", list):
            if not (isinstance(e, list) and len(e) == 3 and isinstance(e[2], int)):
                raise UsageError("each periodic event is [module, endpoint, period_ms]")
            events.append((str(e[0]), str(e[1]), e[2]))
        await run_in_threadpool(agent.set_periodic, app, events)
        return _cbor({})

    @api.post("/v1/apps/{app}/modules/{name}/inject")
    async def inject(app: str, name: str, request: Request) -> Response:
        body, _ = await owned(request, app)
        outcome = await run_in_threadpool(agent.inject, app, name, _get(body, "event", bytes))
        return _cbor({"dropped": outcome.dropped, "events": len(outcome.events)})

    # A user's requests name no app in their path: the app is the one the signature names,
    # and the connection must be of it (NodeAgent._owned_route).

    @api.post("/v1/events")
    async def events(request: Request) -> Response:
        body, claims = await owned(request, None)
        event = _get(body, "event", bytes)
        wait = bool(body.get("wait", False))
        return _cbor(await run_in_threadpool(agent.submit, event, wait=wait, of_app=claims.app))

    @api.post("/v1/request")
    async def request_(request: Request) -> Response:
        body, claims = await owned(request, None)
        event = _get(body, "event", bytes)
        reply = await run_in_threadpool(agent.request, event, of_app=claims.app)
        return _cbor({"reply": reply})

    @api.get("/v1/mailbox/{conn}")
    async def mailbox(conn: str, request: Request) -> Response:
        _, claims = await owned(request, None)
        try:
            raw = bytes.fromhex(conn)
        except ValueError:
            raise UsageError("connection id must be hex") from None
        return _cbor({"events": agent.mailbox(raw, of_app=claims.app)})

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]

    @api.api_route("/v1/public/{app}/{module}/{endpoint}", methods=methods)
    async def public_root(app: str, module: str, endpoint: str, request: Request) -> Response:
        return await public(app, module, endpoint, "", request)

    @api.api_route("/v1/public/{app}/{module}/{endpoint}/{path:path}", methods=methods)
    async def public(app: str, module: str, endpoint: str, path: str, request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PUBLIC_BYTES:
                return Response("request too large\n", status_code=413)
        target = "/" + path + (f"?{request.url.query}" if request.url.query else "")
        raw = f"{request.method} {target} HTTP/1.1\r\n\r\n".encode() + bytes(body)
        try:
            outcome = await run_in_threadpool(agent.public, app, module, endpoint, raw)
        except Error as exc:
            status = 404 if isinstance(exc, UnknownModule) else 502
            return Response(f"{exc}\n", status_code=status, media_type="text/plain")
        return http_response(outcome.reply or b"")

    return api


MAX_HEADERS = 32  # headers a module may set on an HTTP answer


def http_response(reply: bytes) -> Response:
    """A module's answer as HTTP: a full ``HTTP/1.1`` response it wrote, or a plain body."""
    if not reply.startswith(b"HTTP/1."):
        return Response(reply, media_type="application/octet-stream")
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return Response(b"module answered malformed HTTP\n", status_code=502)
    if not 100 <= status <= 599:
        return Response(b"module answered malformed HTTP\n", status_code=502)
    media_type = "application/octet-stream"
    headers: dict[str, str] = {}
    for line in lines[1 : 1 + MAX_HEADERS]:
        name, sep, value = line.partition(":")
        key = name.strip().lower()
        if not sep or not key:
            continue
        if key == "content-type":
            media_type = value.strip()
        elif key not in ("content-length", "transfer-encoding", "connection"):
            headers[name.strip()] = value.strip()
    return Response(body, status_code=status, media_type=media_type, headers=headers)
