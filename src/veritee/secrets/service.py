"""The secret service over HTTP (FastAPI + uvicorn): a thin layer around the release decision.

:class:`SecretService` holds the state (configuration, signing key, nonce store) and runs a
release: consume the nonce, appraise the evidence, look the secret up, judge it against its
policy, seal. :func:`create_app` puts it behind the protocol's paths; :func:`serve` runs it.
Every refusal is ``{"error": CODE, "detail": ONE_LINE}`` and is logged once; nothing a client
sends takes the service down or reaches a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from veritee import logs, notify
from veritee.errors import Error
from veritee.evidence.provisioning import Envelope, seal
from veritee.secrets import keys, protocol
from veritee.secrets.config import Config
from veritee.secrets.errors import (
    BadRequest,
    BodyTooLarge,
    ConfigError,
    UnknownSecret,
    VerifierUnavailable,
)
from veritee.secrets.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from veritee.secrets.metrics import SecretMetrics
from veritee.secrets.release import Recipient, appraise, check_suite, judge
from veritee.secrets.store import DB_FILE, Challenge, NonceStore
from veritee.servicetls import ServerTls

log = logging.getLogger("veritee.secrets")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8444
# A client that has not sent its whole body by then is holding a connection hostage.
BODY_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Released:
    envelope: Envelope
    recipient: Recipient


class SecretService:
    """The service's state and its two operations, without HTTP."""

    def __init__(self, config: Config, key: ec.EllipticCurvePrivateKey, store: NonceStore) -> None:
        self.config = config
        self.key = key
        self.store = store
        self._verifier_key: ec.EllipticCurvePublicKey | None = None  # fetched once
        self.public_key = keys.public_key_hex(key.public_key())
        self.metrics = SecretMetrics()

    @classmethod
    def open(cls, config: Config, state: Path) -> SecretService:
        """Open (or create) the state directory: service key and nonce store."""
        try:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state directory {state}: {exc.strerror}"
            ) from None
        key, created = keys.service_key(state)
        if created:
            log.info("created the service key", extra={"path": str(state / keys.KEY_FILE)})
        return cls(config, key, NonceStore(state / DB_FILE))

    def challenge(self, client: str = "") -> Challenge:
        """A challenge for ``client`` (see :func:`client_of`), within its own cap."""
        return self.store.issue(
            self.config.nonce_ttl, client, per_client=self.config.challenges_per_client
        )

    def release(self, body: dict[str, Any]) -> Released:
        """Run a release request (its JSON object); raise the refusal's :class:`Error`.

        The nonce is consumed first, whatever happens next: no retry with the same nonce.
        The appraisal uses that issued nonce; the secret is looked up only for evidence
        that verified, so only a genuine device learns which names exist.
        """
        nonce = protocol.parse_nonce(body)
        self.store.consume(nonce)
        request = protocol.parse_release(body, nonce)
        check_suite(request.suite)
        verified = appraise(request.evidence, nonce=nonce, trust=self.config.trust)
        secret = self.config.secrets.get(request.name)
        if secret is None:
            raise UnknownSecret(f"no secret named {request.name[:64]!r}")
        recipient = judge(
            verified,
            secret=secret.name,
            suite=request.suite,
            policy=secret.policy,
            trust=self.config.trust,
            ear_status=self._ear_status(request.evidence, nonce),
        )
        envelope = seal(
            secret.value,
            name=secret.name,
            nonce=nonce,
            suite=recipient.suite,
            recipient=recipient.key,
            signer=self.key,
            # The secure world's own nonce for this request, from the verified module token:
            # signed back, so a relay cannot replay this answer to a later request.
            binding=verified.module.user_data,
        )
        return Released(envelope, recipient)

    def _ear_status(self, evidence: bytes, nonce: bytes) -> str | None:
        """The trusted verifier's verdict on this evidence (its worst submodule status)."""
        if self.config.verifier is None:
            return None
        from veritee.evidence.claims import MEDIA_TYPE
        from veritee.verifier import ear
        from veritee.verifier.client import VerifierClient

        try:
            with VerifierClient(self.config.verifier) as client:
                if self._verifier_key is None:
                    self._verifier_key = client.public_key()
                url, _ = client.new_session(nonce=nonce)
                token = client.submit(url, evidence, MEDIA_TYPE).get("result")
            if not isinstance(token, str):
                raise VerifierUnavailable("the verifier returned no result")
            result = ear.verify(token, self._verifier_key)
        except (Error, OSError) as exc:
            raise VerifierUnavailable(f"the trusted verifier could not appraise: {exc}") from None
        if result.nonce is not None and _unb64(result.nonce) != nonce:
            raise VerifierUnavailable("the verifier's result is for another nonce")
        statuses = [a.status for a in result.submods.values()]
        return max(statuses, key=ear.STATUSES.index)

    def close(self) -> None:
        self.store.close()


def create_app(service: SecretService) -> FastAPI:
    app = FastAPI(
        title="Veritee secret service",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    key_body = {"alg": keys.ALG, "public_key": service.public_key}

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            protocol.error_body(code, f"{request.method} {request.url.path}: {exc.detail}"),
            status_code=exc.status_code,
        )

    @app.get(protocol.KEY_PATH)
    async def get_key() -> dict[str, str]:
        return key_body

    @app.get(protocol.HEALTH_PATH)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "secrets": len(service.config.secrets)}

    @app.get("/metrics")
    async def metrics() -> Response:
        # Outcomes and timings only (secrets/metrics.py says why no secret's name).
        return Response(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post(protocol.CHALLENGE_PATH)
    async def challenge(request: Request) -> JSONResponse:
        try:
            issued = await run_in_threadpool(service.challenge, client_of(request))
        except Error as err:
            service.metrics.challenges.labels(protocol.error_status(err)[1]).inc()
            return _refusal(request, "challenge", err, {})
        except Exception:
            service.metrics.challenges.labels("internal_error").inc()
            log.exception("challenge failed")
            return _internal()
        service.metrics.challenges.labels("issued").inc()
        return JSONResponse({"nonce": issued.nonce.hex(), "expires": int(issued.expires)}, 201)

    @app.post(protocol.RELEASE_PATH)
    async def release(request: Request) -> JSONResponse:
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            body = protocol.parse_body(await _read_body(request, protocol.MAX_BODY_BYTES))
            if isinstance(body.get("name"), str):
                fields["secret"] = body["name"][:64]
            released = await run_in_threadpool(service.release, body)
        except Error as err:
            elapsed = time.perf_counter() - started
            fields["ms"] = round(1000 * elapsed, 2)
            service.metrics.releases.labels(protocol.error_status(err)[1]).inc()
            service.metrics.release_seconds.observe(elapsed)
            return _refusal(request, "release", err, fields)
        except Exception:
            service.metrics.releases.labels("internal_error").inc()
            log.exception("release failed", extra=fields)
            return _internal()
        service.metrics.releases.labels("released").inc()
        service.metrics.release_seconds.observe(time.perf_counter() - started)
        log.info(
            "secret released",
            extra={
                **fields,
                "event": "release",
                "outcome": "released",
                "suite": released.envelope.suite,
                "measurement": released.recipient.measurement.hex(),
                "ueid": released.recipient.ueid.hex(),
                "client": _client(request),
                "ms": round(1000 * (time.perf_counter() - started), 2),
            },
        )
        return JSONResponse(protocol.envelope_body(released.envelope))

    return app


def _refusal(request: Request, event: str, err: Error, fields: dict[str, Any]) -> JSONResponse:
    status, code = protocol.error_status(err)
    body = protocol.error_body(code, str(err))
    log.log(
        logging.ERROR if status >= 500 else logging.INFO,
        f"{event} refused",
        extra={
            **fields,
            "event": event,
            "outcome": "refused",
            "status": status,
            "error": code,
            "detail": body["detail"],
            "client": _client(request),
        },
    )
    return JSONResponse(body, status_code=status)


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return b""


def _internal() -> JSONResponse:
    return JSONResponse(
        protocol.error_body("internal_error", "the service failed; see its log"), status_code=500
    )


def client_of(request: Request) -> str:
    """Whom a challenge is counted against: the source address; for IPv6, its /64, since a
    single host is commonly given a whole /64 and could otherwise cycle through it."""
    host = _client(request)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes, over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(f"the body is over the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {BODY_TIMEOUT_SECONDS:g} s") from None
    return b"".join(chunks)


def serve(
    config: Config,
    *,
    state: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    log_level: str = "info",
    on_listening: Callable[[str], None] = lambda url: None,
    tls: ServerTls | None = None,
) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM); call ``on_listening(url)`` once up.
    ``tls``: serve HTTPS (TLS 1.3) with these settings.

    Raises :class:`ConfigError` if the state cannot be opened or the address not bound.
    """
    import logging.config

    import uvicorn

    logging.config.dictConfig(logs.log_config(log_level))
    service = SecretService.open(config, state)
    sock = _listen(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    url = f"{'https' if tls else 'http'}://{shown}:{bound[1]}"

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                log.info(
                    "secret service listening",
                    extra={
                        "url": url,
                        "secrets": sorted(config.secrets),
                        "nonce_ttl": config.nonce_ttl,
                        "challenges_per_client": config.challenges_per_client,
                        "public_key": service.public_key,
                    },
                )
                on_listening(url)
                notify.ready()  # Type=notify (packaging/systemd/veritee-secrets.service)

    server = _Server(
        uvicorn.Config(
            create_app(service),
            log_config=None,
            access_log=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ssl_context_factory=tls,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        service.close()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
