"""Provisioning over HTTP, behind the operator's bearer token: ``/provisioning/v1/...``.

Bodies are JSON (a policy may also be sent as ``text/plain`` Rego); each is parsed by
:mod:`veritee.verifier.endorsements` before anything is stored. A new policy is compiled in a
child process first: regopy aborts the process on some malformed modules, and a policy must
never take a worker down.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, Request, Response

from veritee.servicetls import carried_privately
from veritee.verifier import corim, credentials
from veritee.verifier import endorsements as parse
from veritee.verifier.errors import (
    BadRequestBody,
    NotFound,
    PolicyCompileError,
    ProvisioningError,
    TokenInClear,
    Unauthorized,
    VerifierError,
)
from veritee.verifier.policy import BUILTIN, Policy

if TYPE_CHECKING:
    from veritee.verifier.service import Verifier

log = logging.getLogger("veritee.verifier.provisioning")

PREFIX = "/provisioning/v1"
# Veraison's endorsement-provisioning API: CoRIM in, a provisioning session out.
SUBMIT_PATH = "/endorsement-provisioning/v1/submit"
WELL_KNOWN_PATH = "/.well-known/veraison/provisioning"
PROVISIONING_SESSION_MEDIA_TYPE = "application/vnd.veraison.provisioning-session+json"
# The provisioning session's "expiry": Veraison's synchronous sessions are done at once, and
# a client only reads the status; this is how long the answer may be quoted.
SESSION_EXPIRY_SECONDS = 60
# A deployment with hundreds of reference values, CAs and a few policies is well under this;
# anything bigger is refused before it is read.
MAX_PROVISIONING_BYTES = 1024 * 1024
# The operator's listing of sessions holds at most this many: one request must not read a
# whole week of sessions into memory.
MAX_SESSIONS_LISTED = 1000
# Compiling a policy takes well under a second; a child that takes longer is stuck.
POLICY_CHECK_TIMEOUT = 30.0


def install(app: FastAPI, v: Verifier) -> None:
    def authorise(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("provisioning needs 'Authorization: Bearer TOKEN'")
        # Refused before it is compared: whoever sent it must learn its token is exposed,
        # whether it was right or not (and the answer says nothing of which).
        peer = request.client.host if request.client else None
        if not carried_privately(request.url.scheme, peer):
            log.warning("provisioning refused: token in clear", extra={"client": _client(request)})
            raise TokenInClear(
                "the provisioning token came over plain HTTP from another host, where the "
                "network could read it: serve with --tls-cert/--tls-key (or --tls-self-signed), "
                "use an https:// URL, and replace the token (it must be taken as exposed)"
            )
        if not credentials.token_matches(token.strip(), v.token):
            log.warning("provisioning refused: wrong token", extra={"client": _client(request)})
            raise Unauthorized("the bearer token is not the provisioning token")

    def changed(request: Request, what: str, **fields: Any) -> None:
        log.info("provisioned", extra={"what": what, "client": _client(request), **fields})

    @app.get(f"{PREFIX}/state")
    async def state(request: Request) -> Response:
        authorise(request)
        return _json(v.store.listing())

    @app.post(f"{PREFIX}/trust-anchors")
    async def add_anchors(request: Request) -> Response:
        authorise(request)
        body = await _json_body(request)
        entries = body if isinstance(body, list) else [body]
        anchors = [a for entry in entries for a in parse.trust_anchors(entry)]
        ids = v.store.add_anchors(anchors)
        changed(request, "trust-anchors", ids=ids)
        return _json({"ids": ids}, 201)

    @app.post(f"{PREFIX}/revocations")
    async def revoke(request: Request) -> Response:
        authorise(request)
        revocation = parse.revocation(await _json_body(request))
        rid = v.store.add_revocation(revocation)
        changed(request, "revocation", id=rid)
        return _json({"id": rid}, 201)

    @app.post(f"{PREFIX}/reference-values")
    async def add_references(request: Request) -> Response:
        authorise(request)
        refs = parse.reference_values(await _json_body(request))
        ids = v.store.add_references(refs)
        changed(request, "reference-values", count=len(ids))
        return _json({"ids": ids}, 201)

    @app.put(f"{PREFIX}/policies/{{name:path}}")
    async def put_policy(name: str, request: Request) -> Response:
        authorise(request)
        raw = await _raw_body(request)
        activate = request.query_params.get("activate", "").lower() in ("1", "true", "yes")
        if request.headers.get("content-type", "").startswith("application/json"):
            body = _loads(raw)
            if isinstance(body, dict):
                activate = activate or bool(body.get("activate"))
                body = {**body, "name": name}
            checked_name, rego = parse.policy_source(body)
        else:
            try:
                rego = raw.decode()
            except UnicodeDecodeError:
                raise ProvisioningError("a policy must be UTF-8 Rego text") from None
            checked_name, rego = parse.policy_source({"name": name, "rego": rego})
        policy = _checked_policy(v, checked_name, rego)
        v.store.put_policy(checked_name, rego, policy.digest, activate=activate)
        changed(request, "policy", policy=policy.id, activated=activate)
        return _json({"name": checked_name, "id": policy.id, "active": activate}, 201)

    @app.get(f"{PREFIX}/policies/{{name:path}}")
    async def get_policy(name: str, request: Request) -> Response:
        authorise(request)
        rego = BUILTIN.get(name)
        if rego is None:
            snapshot = v.store.listing()
            if name not in {p["name"] for p in snapshot["policies"]}:
                raise NotFound(f"no policy named {name[:80]!r}")
            rego = v.store.policy_text(name)
        return Response(rego, media_type="text/plain")

    @app.post(f"{PREFIX}/active-policy")
    async def activate(request: Request) -> Response:
        authorise(request)
        body = await _json_body(request)
        name = parse.policy_name(body.get("name") if isinstance(body, dict) else None)
        v.store.activate_policy(name)
        changed(request, "active-policy", policy=name)
        return _json({"active-policy": name})

    @app.post(f"{PREFIX}/deployment")
    async def deploy(request: Request) -> Response:
        authorise(request)
        deployment = parse.Deployment.parse(await _json_body(request))
        digests = {
            name: _checked_policy(v, name, rego).digest for name, rego in deployment.policies
        }
        counts = v.store.apply(deployment, digests)
        changed(request, "deployment", **counts)
        return _json({"applied": counts, "active-policy": deployment.active_policy})

    @app.delete(f"{PREFIX}/{{what}}/{{item_id:path}}")
    async def remove(what: str, item_id: str, request: Request) -> Response:
        authorise(request)
        if what not in ("trust-anchors", "revocations", "reference-values", "policies"):
            raise NotFound(f"nothing to delete under {PREFIX}/{what[:40]}")
        v.store.remove(what, item_id)
        changed(request, f"removed {what}", id=item_id)
        return Response(status_code=204)

    @app.post(SUBMIT_PATH)
    async def submit_corim(request: Request) -> Response:
        authorise(request)
        raw = await _raw_body(request)
        try:
            if not raw:
                raise BadRequestBody("the body is empty: send a CoRIM")
            decoded = corim.decode(
                raw, media_type=request.headers.get("content-type") or None, signer=_signer(v)
            )
            counts = v.store.apply(decoded.deployment, {})
        except VerifierError as err:
            log.warning("CoRIM refused", extra={"client": _client(request), "check": str(err)})
            return _failed_session(err)
        changed(request, "corim", **decoded.summary())
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=SESSION_EXPIRY_SECONDS)
        body = {
            "status": "success",
            "expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "veritee": {**decoded.summary(), "applied": counts},
        }
        return _json(body, 200, PROVISIONING_SESSION_MEDIA_TYPE)

    @app.get(WELL_KNOWN_PATH)
    async def provisioning_discovery() -> Response:
        body = {
            "media-types": [f'{corim.UNSIGNED_MEDIA_TYPE}; profile="{p}"' for p in corim.PROFILES]
            + [corim.LEGACY_MEDIA_TYPE, corim.SIGNED_MEDIA_TYPE],
            "version": v.verifier_id.build,
            "service-state": "READY",
            "api-endpoints": {"provisioningSubmit": SUBMIT_PATH},
        }
        from veritee.verifier.service import DISCOVERY_MEDIA_TYPE

        return _json(body, 200, DISCOVERY_MEDIA_TYPE)

    @app.get(f"{PREFIX}/sessions")
    async def sessions(request: Request) -> Response:
        authorise(request)
        from veritee.verifier.service import bounded_number

        limit = request.query_params.get("limit")
        n = 50 if limit is None else bounded_number("limit", limit, 1, MAX_SESSIONS_LISTED)
        return _json({"sessions": v.store.recent_sessions(n)})


def _failed_session(err: VerifierError) -> Response:
    """The problem (RFC 7807) for a refused CoRIM, with Veraison's failed-session
    ``failure-reason`` as an extension member, so a Veraison client reads why."""
    from veritee.verifier.service import problem_for

    response = problem_for(err, SUBMIT_PATH)
    body = {**json.loads(bytes(response.body)), "failure-reason": str(err)}
    headers = (
        {"WWW-Authenticate": response.headers["www-authenticate"]}
        if ("www-authenticate" in response.headers)
        else {}
    )
    if err.http_status == 415:
        headers["Accept"] = ", ".join(corim.MEDIA_TYPES)
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=response.status_code,
        media_type=response.media_type,
        headers=headers,
    )


def _signer(v: Verifier) -> ec.EllipticCurvePublicKey | None:
    """The configured CoRIM signer's public key, or None (signed CoRIMs are then refused)."""
    path = v.config.corim_signer
    if path is None:
        return None
    try:
        pem = Path(path).read_text()
    except OSError as exc:
        raise ProvisioningError(f"the CoRIM signer key cannot be read: {exc.strerror}") from None
    return parse.ec_public_key_pem(pem)


def _checked_policy(v: Verifier, name: str, rego: str) -> Policy:
    """Compile-check ``rego`` in a child process, then compile it here."""
    try:
        child = subprocess.run(
            [sys.executable, "-m", "veritee.verifier.policy", name],
            input=rego.encode(),
            capture_output=True,
            timeout=POLICY_CHECK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PolicyCompileError(f"policy {name!r} did not compile in time") from None
    if child.returncode != 0:
        reason = child.stderr.decode(errors="replace").strip().splitlines()
        shown = reason[-1] if reason else f"the compiler crashed (exit {child.returncode})"
        raise PolicyCompileError(shown[:300])
    return v.policy(name, rego)


async def _raw_body(request: Request) -> bytes:
    from veritee.verifier.service import read_body

    return await read_body(request, MAX_PROVISIONING_BYTES)


async def _json_body(request: Request) -> Any:
    raw = await _raw_body(request)
    essence = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if essence in corim.MEDIA_TYPES or raw[:3] == b"\xd9\x01\xf5":  # tag 501: a CoRIM
        raise BadRequestBody(
            f"this is a CoRIM; POST it to {SUBMIT_PATH} (veritee verifier provision corim FILE)"
        )
    return _loads(raw)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequestBody("the body is not JSON (or nests too deeply)") from None


def _json(body: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type=media_type,
    )


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"
