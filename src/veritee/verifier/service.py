"""The verification service over HTTP (FastAPI): Veraison's challenge-response API v1,
provisioning, discovery, health and metrics.

A thin layer: it bounds and parses requests, asks the store, calls the I/O-free appraisal
(:mod:`veritee.verifier.appraise`) and signs the result. Every refusal is an RFC 7807 problem
(``application/problem+json``) whose ``check`` member names the failed check, so clients and
tests can tell exactly what was wrong; nothing a client sends takes a worker down.

Configuration reaches worker processes through one environment variable holding JSON
(:data:`CONFIG_ENV`), since uvicorn starts them by import string.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from veritee.errors import Error, EvidenceError, UsageError
from veritee.evidence.errors import MalformedToken
from veritee.verifier import appraise as appraisal
from veritee.verifier import cmw, credentials, ear, metrics
from veritee.verifier.endorsements import Endorsements
from veritee.verifier.errors import (
    BadNonceRequest,
    BadQueryParameter,
    BadRequestBody,
    BodyTooLarge,
    NonceAlreadyUsed,
    NotAcceptable,
    NotSessionCreator,
    SessionAlreadyUsed,
    SessionExpired,
    SessionNotFound,
    UnsupportedMediaType,
    VerifierError,
)
from veritee.verifier.jwk import to_jwk
from veritee.verifier.media import ACCEPT_LIST, scheme_of
from veritee.verifier.policy import Policy
from veritee.verifier.sessions import Ticket, Tickets
from veritee.verifier.store import (
    COMPLETE,
    DELETED,
    FAILED,
    MAX_STORED_EVIDENCE_BYTES,
    RECORDED,
    TAKEN,
    WAITING,
    SessionRecord,
    Store,
    StoreError,
)

log = logging.getLogger("veritee.verifier")
_T = TypeVar("_T")

CONFIG_ENV = "VERITEE_VERIFIER_CONFIG"
SESSION_MEDIA_TYPE = "application/vnd.veraison.challenge-response-session+json"
DISCOVERY_MEDIA_TYPE = "application/vnd.veraison.discovery+json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
NEW_SESSION_PATH = "/challenge-response/v1/newSession"
SESSION_PATH = "/challenge-response/v1/session/{session_id}"
WELL_KNOWN_PATH = "/.well-known/veraison/verification"
# newSession's answer carries the session's deletion capability here, to its creator only;
# DELETE asks for it back in the same header (see sessions.Tickets.capability).
CAPABILITY_HEADER = "Veritee-Session-Capability"

# Evidence is a few KiB (Veritee evidence: about 2 KiB; CCA tokens: about 2 KiB); the token
# parsers refuse more than 64 KiB, so nothing larger is read at all: an attacker-sized body
# must not exhaust a worker's memory.
MAX_EVIDENCE_BYTES = 64 * 1024
# Nonces: 8 to 64 bytes, as Veraison and EAT (eat_nonce) allow; 32 unless asked otherwise.
NONCE_MIN_BYTES = 8
NONCE_MAX_BYTES = 64
DEFAULT_NONCE_BYTES = 32
# A numeric query parameter (nonceSize, limit) of more digits than this is refused before it
# is converted: int() of a 5,000-digit string raises, and that was a 500.
MAX_NUMBER_DIGITS = 6
# Veraison's default session lifetime: long enough to produce evidence, short enough that a
# stolen nonce is soon useless.
DEFAULT_SESSION_TTL = 150.0
# A submission appraised while provisioning changed is appraised again, at most this often.
STALE_RETRIES = 3
# Expired sessions are purged at most this often, by whichever worker notices first.
PURGE_INTERVAL_SECONDS = 60.0
# SQLite's write-ahead log is copied back into the database this often, by a thread of each
# worker (the first to come does the work). At 1,000 sessions a second about 9 MB of log
# come in between; past 16 MiB it starts over (Store.checkpoint).
CHECKPOINT_SECONDS = 0.25


@dataclass(frozen=True)
class Config:
    """What a worker needs to serve; JSON-serialisable, passed to workers via the environment."""

    state_dir: str
    database_url: str
    token_file: str | None = None
    session_ttl: float = DEFAULT_SESSION_TTL
    allow_client_nonce: bool = True
    result_validity: int = appraisal.RESULT_VALIDITY_SECONDS
    # PEM public key that signed CoRIMs must verify under (None: signed CoRIMs are refused).
    corim_signer: str | None = None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Config:
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise UsageError(
                f"{CONFIG_ENV} is not set: start workers with 'veritee verifier serve'"
            )
        return cls(**json.loads(raw))


class Verifier:
    """One worker's state: its store, signing key, and cached endorsements and policies."""

    def __init__(self, config: Config) -> None:
        self.config = config
        state = Path(config.state_dir)
        self.store = Store(config.database_url, checkpoint_elsewhere=True)
        self.key = credentials.signing_key(state)
        self.jwk = to_jwk(self.key.public_key())
        self.kid = self.jwk["kid"]
        self.tickets = Tickets(credentials.session_key(state))
        self.token = credentials.token_digest(
            credentials.admin_token(state, _path(config.token_file))
        )
        from importlib.metadata import version

        self.verifier_id = ear.VerifierId(developer="Veritee", build=version("veritee"))
        self._lock = threading.Lock()
        self._generation = -1
        self._endorsements = Endorsements()
        self._policy: Policy | None = None
        self._policies: dict[str, Policy] = {}
        self._next_purge = 0.0
        # One thread: the store keeps a connection per thread, and SQLite has one writer.
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        if self.store.embedded:
            threading.Thread(
                target=_checkpoints, args=(weakref.ref(self),), name="checkpoint", daemon=True
            ).start()

    async def in_store(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)``, a store call made while serving a request.

        With SQLite it runs right here on the event loop: an insert into a local file costs
        tens of microseconds, less than handing it to a thread and back (two wake-ups across
        cores, the GIL passed twice), and the one slow thing SQLite does, a checkpoint that
        fsyncs, is done by this worker's checkpoint thread instead (:func:`_checkpoints`).
        A database server's round trip would stall every request of the worker: those calls
        go to the store thread.
        """
        if self.store.embedded:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, lambda: fn(*args, **kwargs))

    def current(self) -> tuple[int, Endorsements, Policy]:
        """The generation, endorsements and policy this worker holds (loaded on first use).

        What a submission is appraised with: the store then records the result only if the
        generation is still current, so a provisioning change is never missed (see
        :func:`submit`), and the usual case costs no database read.
        """
        with self._lock:
            if self._policy is not None:
                return self._generation, self._endorsements, self._policy
        return self.reload()

    def reload(self) -> tuple[int, Endorsements, Policy]:
        """Read the generation now, and load what it provisioned if this worker has not
        (another worker, or this one, provisioned since the last load)."""
        generation = self.store.generation()
        with self._lock:
            if generation != self._generation or self._policy is None:
                snap = self.store.snapshot()
                self._endorsements = Endorsements.build(
                    snap.cas, snap.keys, snap.revocations, snap.references, snap.tpm
                )
                self._policy = self.policy(snap.policy_name, snap.policy_rego)
                self._generation = snap.generation
                log.info(
                    "endorsements loaded",
                    extra={"generation": snap.generation, "policy": self._policy.id},
                )
            return self._generation, self._endorsements, self._policy

    def policy(self, name: str, rego: str) -> Policy:
        """A compiled policy, compiled once per text in this worker."""
        key = f"{name}\0{rego}"
        found = self._policies.get(key)
        if found is None:
            found = self._policies[key] = Policy(name, rego)
        return found

    def maybe_purge(self, now: float) -> None:
        """Now and then, delete sessions past their retention: on the store thread, while
        the request that noticed goes on."""
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL_SECONDS

        def purge() -> None:
            try:
                purged = self.store.purge_sessions(now)
            except StoreError as err:
                log.error("purging old sessions failed", extra={"detail": str(err)})
                return
            if purged:
                log.info("purged old sessions", extra={"purged": purged})

        self._store_thread.submit(purge)


def _checkpoints(verifier: weakref.ref[Verifier]) -> None:
    """Copy SQLite's write-ahead log back into the database every CHECKPOINT_SECONDS, off
    the event loop (the copy fsyncs: milliseconds to tens of them on a busy disk), for as
    long as the worker's Verifier exists."""
    while True:
        time.sleep(CHECKPOINT_SECONDS)
        v = verifier()
        if v is None:
            return
        try:
            v.store.checkpoint()
        except StoreError as err:
            log.warning("checkpoint failed", extra={"detail": str(err)})
        del v


def create_app(config: Config) -> HotPaths:
    """The ASGI application for one worker: FastAPI, with the attestation calls in front."""
    verifier = Verifier(config)
    app = FastAPI(
        title="Veritee verifier",
        description="Remote-attestation verification service (Veraison challenge-response v1).",
        version=verifier.verifier_id.build,
        docs_url=None,
        redoc_url=None,
    )
    app.state.verifier = verifier
    _install_problem_handlers(app)
    _install_verification_routes(app, verifier)
    from veritee.verifier._provisioning_api import install

    install(app, verifier)
    return HotPaths(app, verifier)


def app_from_environment() -> HotPaths:
    """uvicorn's factory (``veritee.verifier.service:app_from_environment``)."""
    return create_app(Config.from_env())


# -- verification -------------------------------------------------------------------------------


async def new_session(v: Verifier, request: Request) -> Response:
    """POST newSession: a session with a fresh (or the client's) nonce. Nothing is stored:
    the session id carries the nonce and expiry, authenticated (see ``sessions``)."""
    _accepts(request, SESSION_MEDIA_TYPE)
    nonce, chosen = _nonce(request, v.config.allow_client_nonce)
    now = time.time()
    ticket = v.tickets.issue(nonce, now, now + v.config.session_ttl)
    # A nonce the client chose may have served a session already: refuse it now, before the
    # attester makes evidence for it, and reserve it so no concurrent session takes it too.
    # (A server-minted nonce is fresh: its session is still stored nowhere until submitted.)
    if chosen and not await v.in_store(
        v.store.reserve_nonce, ticket.key, nonce, ticket.created, ticket.expiry
    ):
        raise NonceAlreadyUsed(
            "this nonce was used by an earlier session; pick a fresh one (or let the verifier "
            "mint it with nonceSize)"
        )
    metrics.SESSIONS.inc()
    v.maybe_purge(now)
    record = SessionRecord(ticket.id, nonce, ticket.created, ticket.expiry, WAITING)
    headers = {"Location": f"session/{ticket.id}", CAPABILITY_HEADER: v.tickets.capability(ticket)}
    return _session_response(record, 201, headers)


async def submit(v: Verifier, session_id: str, request: Request) -> Response:
    """POST to a session: appraise the evidence against its nonce; the session with its EAR.

    The result is recorded only if provisioning did not move on while it was appraised
    (else it is appraised again with the new endorsements), and only once per session and
    per nonce: the database's unique keys decide every race.
    """
    started = time.perf_counter()
    _accepts(request, SESSION_MEDIA_TYPE)
    media_type = request.headers.get("content-type", "")
    try:
        # A CMW names its evidence's type inside: its scheme is known once it is unwrapped.
        scheme: str = "cmw" if cmw.is_cmw(media_type) else scheme_of(media_type)
    except UnsupportedMediaType:
        metrics.PROBLEMS.labels("UnsupportedMediaType").inc()
        raise
    evidence = await read_body(request, MAX_EVIDENCE_BYTES)
    ticket = _ticket(v, session_id)
    if time.time() > ticket.expiry:
        raise SessionExpired(
            f"session {session_id[:80]} expired at {_rfc3339(ticket.expiry)}; start a new session"
        )
    # The appraisal id: in the EAR (its "jti", RFC 7519), in this service's log line, and in
    # the deployer's output, so an operator ties the three together. Random, not secret.
    appraisal_id = uuid.uuid4().hex
    generation, endorsements, policy = v.current()
    for _ in range(STALE_RETRIES):
        context = appraisal.Context(
            endorsements=endorsements,
            policy=policy,
            verifier_id=v.verifier_id,
            now=dt.datetime.now(dt.UTC),
            result_validity=v.config.result_validity,
        )
        refused: MalformedToken | None = None
        verdict: dict[str, str] | None = None
        # Only evidence that a trusted device signed is kept with its session: the body of a
        # refused or forged submission is anybody's bytes, and was stored for a week (300
        # garbage submissions grew the database by 18 MB).
        kept: bytes | None = None
        try:
            outcome = appraisal.appraise(evidence, media_type, ticket.nonce, context)
        except MalformedToken as err:
            refused = err
            verdict = {"check": type(err).__name__, "reason": str(err)}
            record = {"status": FAILED, "result": None, "outcome": "malformed"}
        else:
            result = dataclasses.replace(
                outcome.result,
                extensions={**outcome.result.extensions, ear.APPRAISAL_ID: appraisal_id},
            )
            token = ear.sign(result, v.key, kid=v.kid)
            if outcome.failure is not None:
                verdict = {"check": outcome.failure.check, "reason": outcome.failure.reason}
            elif len(evidence) <= MAX_STORED_EVIDENCE_BYTES:
                kept = evidence
            record = {"status": COMPLETE, "result": token, "outcome": outcome.status}
        recorded = await v.in_store(
            _record,
            v,
            ticket,
            generation,
            media_type=media_type,
            evidence=kept,
            failure=verdict,
            **record,
        )
        if recorded == RECORDED:
            break
        generation, endorsements, policy = v.reload()
    else:
        raise StoreError("provisioning kept changing while the evidence was appraised; retry")
    if refused is None:
        scheme = str(outcome.scheme)  # a CMW's, once unwrapped
    if refused is not None:
        metrics.APPRAISALS.labels(scheme, "malformed").inc()
        log.info(
            "evidence refused",
            extra={
                "appraisal": appraisal_id,
                "session": ticket.key,
                "scheme": scheme,
                "outcome": "malformed",
                **(verdict or {}),
            },
        )
        raise refused
    elapsed = time.perf_counter() - started
    metrics.APPRAISALS.labels(scheme, outcome.status).inc()
    metrics.LATENCY.observe(elapsed)
    log.info(
        "evidence appraised",
        extra={
            "appraisal": appraisal_id,
            "session": ticket.key,
            "scheme": scheme,
            "outcome": outcome.status,
            "policy": policy.id,
            "ms": round(elapsed * 1000, 3),
            **(verdict or {}),
            **({"reasons": outcome.reasons} if outcome.reasons else {}),
        },
    )
    done = SessionRecord(
        ticket.id,
        ticket.nonce,
        ticket.created,
        ticket.expiry,
        COMPLETE,
        media_type,
        evidence,
        token,
    )
    return _session_response(done, 200)


def _ticket(v: Verifier, session_id: str) -> Ticket:
    ticket = v.tickets.open(session_id)
    if ticket is None:
        raise SessionNotFound(f"no session {session_id[:80]!r}")
    return ticket


def _record(v: Verifier, ticket: Ticket, generation: int, **fields: Any) -> str:
    """Record the session's submission: RECORDED or STALE; raise if it cannot take one."""
    recorded = v.store.record_session(
        ticket.key,
        nonce=ticket.nonce,
        created=ticket.created,
        expiry=ticket.expiry,
        generation=generation,
        **fields,
    )
    if recorded != TAKEN:
        return recorded
    stored = v.store.session(ticket.key)
    if stored is None:
        raise NonceAlreadyUsed(
            "this nonce was used by an earlier session; pick a fresh one (or let the verifier "
            "mint it with nonceSize)"
        )
    if stored.status == DELETED:
        raise SessionNotFound(f"session {ticket.id[:80]} was deleted")
    raise SessionAlreadyUsed(
        f"session {ticket.id[:80]} already took its one submission (it is {stored.status}): "
        "a nonce is good for one submission; start a new session"
    )


def _install_verification_routes(app: FastAPI, v: Verifier) -> None:
    @app.post(NEW_SESSION_PATH)
    async def new_session_route(request: Request) -> Response:
        return await new_session(v, request)

    @app.post(SESSION_PATH)
    async def submit_route(session_id: str, request: Request) -> Response:
        return await submit(v, session_id, request)

    @app.get(SESSION_PATH)
    async def get_session(session_id: str, request: Request) -> Response:
        _accepts(request, SESSION_MEDIA_TYPE)
        ticket = _ticket(v, session_id)
        stored = await v.in_store(v.store.session, ticket.key)
        if stored is None:  # still waiting for its evidence (or expired waiting)
            waiting = SessionRecord(ticket.id, ticket.nonce, ticket.created, ticket.expiry, WAITING)
            return _session_response(waiting, 200)
        if stored.status == DELETED:
            raise SessionNotFound(f"session {session_id[:80]} was deleted")
        return _session_response(dataclasses.replace(stored, id=ticket.id), 200)

    @app.delete(SESSION_PATH)
    async def delete_session(session_id: str, request: Request) -> Response:
        ticket = _ticket(v, session_id)
        # Whoever saw the id could delete the session (and so void its creator's result): only
        # the capability newSession gave its creator deletes it.
        if not v.tickets.holds(ticket, request.headers.get(CAPABILITY_HEADER)):
            raise NotSessionCreator(
                f"only the creator of session {session_id[:80]} may delete it: send the "
                f"{CAPABILITY_HEADER} header its newSession answer carried"
            )
        deleted = await v.in_store(
            v.store.delete_session, ticket.key, ticket.nonce, ticket.created, ticket.expiry
        )
        if not deleted:
            raise SessionNotFound(f"session {session_id[:80]} was deleted")
        return Response(status_code=204)

    @app.get(WELL_KNOWN_PATH)
    async def discovery(request: Request) -> Response:
        _accepts(request, DISCOVERY_MEDIA_TYPE)
        body = {
            "ear-verification-key": v.jwk,
            "media-types": list(ACCEPT_LIST),
            "version": v.verifier_id.build,
            "service-state": "READY",
            "api-endpoints": {
                "newChallengeResponseSession": NEW_SESSION_PATH,
                "provisioning": "/provisioning/v1",
            },
        }
        return _json(body, 200, DISCOVERY_MEDIA_TYPE)

    @app.get("/health")
    async def health() -> Response:
        try:
            generation = await v.in_store(v.store.generation)
        except StoreError as err:
            return _json({"status": "unavailable", "detail": str(err)}, 503)
        # The provisioning generation grows with every provisioning change (a revocation, a
        # withdrawn reference value, a policy): watchers re-attest when it moves.
        body = {"status": "ok", "pid": os.getpid(), "version": v.verifier_id.build}
        return _json({**body, "provisioning_generation": generation}, 200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


def _nonce(request: Request, allow_client_nonce: bool) -> tuple[bytes, bool]:
    """The session's nonce, and whether the client chose it."""
    given = request.query_params.get("nonce")
    size = request.query_params.get("nonceSize")
    if given is not None and size is not None:
        raise BadNonceRequest("nonce and nonceSize are mutually exclusive")
    if given is not None:
        if not allow_client_nonce:
            raise BadNonceRequest("this verifier mints its own nonces: ask with nonceSize")
        nonce = _b64decode(given)
        if not NONCE_MIN_BYTES <= len(nonce) <= NONCE_MAX_BYTES:
            raise BadNonceRequest(
                f"nonce must be {NONCE_MIN_BYTES} to {NONCE_MAX_BYTES} bytes; got {len(nonce)}"
            )
        return nonce, True
    if size is None:
        return os.urandom(DEFAULT_NONCE_BYTES), False
    n = number(size)
    if n is None or not NONCE_MIN_BYTES <= n <= NONCE_MAX_BYTES:
        raise BadNonceRequest(
            f"nonceSize must be a decimal number in range {NONCE_MIN_BYTES}..{NONCE_MAX_BYTES}"
        )
    return os.urandom(n), False


def number(text: str) -> int | None:
    """``text`` as a non-negative decimal number, or None if it is not one of at most
    MAX_NUMBER_DIGITS ASCII digits (not "1e3", "-1", "٣", nor thousands of digits)."""
    if not 0 < len(text) <= MAX_NUMBER_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def bounded_number(name: str, text: str, low: int, high: int) -> int:
    """The query parameter ``name`` as a number in ``low..high``; raise BadQueryParameter."""
    n = number(text)
    if n is None or not low <= n <= high:
        raise BadQueryParameter(f"{name} must be a decimal number in range {low}..{high}")
    return n


def _b64decode(text: str) -> bytes:
    # base64url per the session media type; standard base64 and padding accepted too, as
    # Veraison clients have sent both.
    if len(text) > 2 * NONCE_MAX_BYTES:
        raise BadNonceRequest("nonce is too long")
    cleaned = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadNonceRequest("nonce must be base64url") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    # A length of more digits than the limit's is over it: never int() thousands of digits.
    if (
        declared is not None
        and declared.isascii()
        and declared.isdigit()
        and (len(declared.lstrip("0")) > len(str(limit)) or int(declared) > limit)
    ):
        raise BodyTooLarge(f"the body is {declared[:20]} bytes, over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is over the {limit}-byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise BadRequestBody("the request has no body: send the evidence")
    return body


def _accepts(request: Request, media_type: str) -> None:
    accept = request.headers.get("accept")
    if not accept:
        return
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if offered & {media_type, "application/json", "application/*", "*/*"}:
        return
    raise NotAcceptable(f"the only representation offered is {media_type}")


def _session_response(
    s: SessionRecord, status: int, headers: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {
        "status": s.status,
        "nonce": base64.urlsafe_b64encode(s.nonce).rstrip(b"=").decode(),
        "expiry": _rfc3339(s.expiry),
        "accept": ACCEPT_LIST,
    }
    if s.result is not None:
        body["result"] = s.result
    if s.failure is not None and s.status == FAILED:
        body["failure"] = s.failure
    text = json.dumps(body, separators=(",", ":"))
    if s.evidence is not None and s.media_type is not None:
        # The evidence comes back base64-encoded, as Veraison's API has it: a few KB that
        # need no JSON escaping, so they are appended as they are rather than scanned by the
        # encoder character by character (every submission's answer carries them).
        value = base64.b64encode(s.evidence).decode()
        text = f'{text[:-1]},"evidence":{{"type":{json.dumps(s.media_type)},"value":"{value}"}}}}'
    return Response(text.encode(), status, headers, SESSION_MEDIA_TYPE)


def _rfc3339(t: float) -> str:
    """``t`` (seconds since the epoch) as RFC 3339 UTC with milliseconds, truncated."""
    ms = round(t * 1_000_000) // 1000  # as datetime does: to the microsecond, then truncated
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _json(
    body: Any,
    status: int,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


# -- problems ----------------------------------------------------------------------------------

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(
    status: int, check: str, detail: str, headers: dict[str, str] | None = None
) -> Response:
    """An RFC 7807 problem; ``check`` names the failed check (an error class name)."""
    slug = "".join(f"-{c.lower()}" if c.isupper() else c for c in check).lstrip("-")
    body = {
        "type": f"tag:veritee.dev,2026:problem:{slug}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "check": check,
    }
    return _json(body, status, PROBLEM_MEDIA_TYPE, headers)


def problem_for(err: Exception, path: str = "") -> Response:
    """The problem response for an error raised while serving a request (one mapping for the
    FastAPI routes and the hot paths alike)."""
    if isinstance(err, VerifierError):
        metrics.PROBLEMS.labels(type(err).__name__).inc()
        headers = {}
        if err.http_status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="veritee-provisioning"'
        if err.http_status == 415:
            headers["Accept"] = ", ".join(ACCEPT_LIST)
        return problem(err.http_status, type(err).__name__, str(err), headers)
    if isinstance(err, EvidenceError):
        metrics.PROBLEMS.labels(type(err).__name__).inc()
        return problem(400, type(err).__name__, str(err))
    if isinstance(err, StoreError):
        log.error("store unavailable", extra={"detail": str(err)})
        return problem(503, "StoreError", "the verifier's database is unavailable; retry")
    if isinstance(err, Error):
        metrics.PROBLEMS.labels(type(err).__name__).inc()
        return problem(400, type(err).__name__, str(err))
    if isinstance(err, StarletteHTTPException):
        check = {404: "NotFound", 405: "MethodNotAllowed"}.get(err.status_code, "HTTPError")
        return problem(err.status_code, check, str(err.detail))
    if isinstance(err, RequestValidationError):
        return problem(400, "BadRequest", "the request does not have the expected shape")
    log.error("unexpected error", exc_info=err, extra={"path": path})
    return problem(500, "InternalError", "the verifier failed unexpectedly; see its log")


def _install_problem_handlers(app: FastAPI) -> None:
    async def handle(request: Request, err: Exception) -> Response:
        return problem_for(err, request.url.path)

    for kind in (
        VerifierError,
        EvidenceError,
        StoreError,
        Error,
        StarletteHTTPException,
        RequestValidationError,
        Exception,
    ):
        app.add_exception_handler(kind, handle)


# -- the hot paths -------------------------------------------------------------------------------

SESSION_PREFIX = SESSION_PATH.removesuffix("{session_id}")


class HotPaths:
    """The two requests every attestation makes, served without the web framework's layers.

    newSession and the evidence submission are dispatched from the ASGI scope straight to
    the same handlers the FastAPI routes call, and errors become the same problem responses
    (:func:`problem_for`); every other request, and the lifespan, goes to FastAPI. Its
    routing, dependency and middleware layers cost more CPU per request than an appraisal
    whose links and decision are cached (bench/attestation.py shows the difference).
    """

    def __init__(self, app: FastAPI, verifier: Verifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == NEW_SESSION_PATH:
                await self._serve(scope, receive, send, None)
                return
            if path.startswith(SESSION_PREFIX):
                session_id = path[len(SESSION_PREFIX) :]
                if session_id and "/" not in session_id:
                    await self._serve(scope, receive, send, session_id)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, session_id: str | None
    ) -> None:
        request = Request(scope, receive)
        try:
            if session_id is None:
                response = await new_session(self.verifier, request)
            else:
                response = await submit(self.verifier, session_id, request)
        except Exception as err:  # every error becomes a problem; nothing takes the worker down
            response = problem_for(err, scope["path"])
        await response(scope, receive, send)
