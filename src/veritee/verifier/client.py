"""A client for a Veritee (or Veraison) verifier: challenge-response, discovery, provisioning.

Used by the CLI, the tests and the benchmark. Problems the service answers with become
:class:`~veritee.verifier.errors.VerifierRefused` carrying the problem's ``check``; a service
that does not answer is :class:`~veritee.verifier.errors.VerifierUnreachable`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.servicetls import client_verify, require_private
from veritee.verifier import ear
from veritee.verifier.errors import VerifierRefused, VerifierUnreachable

SESSION_MEDIA_TYPE = "application/vnd.veraison.challenge-response-session+json"
NEW_SESSION = "/challenge-response/v1/newSession"
WELL_KNOWN = "/.well-known/veraison/verification"
PROVISIONING = "/provisioning/v1"
# The header in which newSession hands its creator the session's deletion capability.
CAPABILITY_HEADER = "Veritee-Session-Capability"
# Capabilities this client remembers for the sessions it created (the oldest are forgotten).
MAX_CAPABILITIES = 1024
# Loopback answers in milliseconds; a verifier that takes this long is not coming back.
DEFAULT_TIMEOUT = 30.0

EvidenceBuilder = Callable[[bytes, list[str]], tuple[bytes, str]]


class VerifierClient:
    """One verifier, one connection pool. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ca: Path | str | None = None,
    ) -> None:
        """``ca``: the CA file an https:// verifier's certificate must chain to (default
        $VERITEE_CA, else the system's CAs). A ``token`` is never sent over plain HTTP to a
        host other than loopback (PlainTransport, before any request)."""
        self.base_url = base_url.rstrip("/")
        if token:
            require_private(self.base_url, "the provisioning token")
        self._token = token
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=client_verify(ca))
        self._capabilities: dict[str, str] = {}

    def __enter__(self) -> VerifierClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- verification --------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return dict(self._request("GET", WELL_KNOWN).json())

    def provisioning_generation(self) -> int | None:
        """The verifier's provisioning generation (grows with every change), from /health;
        None from a verifier that does not say (Veraison's own)."""
        try:
            value = self._request("GET", "/health").json().get("provisioning_generation")
        except (ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The verifier's EAR key, from its discovery document."""
        return ear.public_key_from_jwk(self.discovery()["ear-verification-key"])

    def new_session(
        self, *, nonce: bytes | None = None, nonce_size: int | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Open a session; returns its absolute URL and its JSON (``nonce`` still base64url)."""
        params = {}
        if nonce is not None:
            params["nonce"] = base64.urlsafe_b64encode(nonce).rstrip(b"=").decode()
        if nonce_size is not None:
            params["nonceSize"] = str(nonce_size)
        response = self._request(
            "POST", NEW_SESSION, params=params, headers={"Accept": SESSION_MEDIA_TYPE}
        )
        location = response.headers.get("location", "")
        url = urljoin(f"{self.base_url}{NEW_SESSION}", location)
        capability = response.headers.get(CAPABILITY_HEADER)
        if capability is not None:
            self._capabilities[url] = capability
            while len(self._capabilities) > MAX_CAPABILITIES:
                del self._capabilities[next(iter(self._capabilities))]
        return url, dict(response.json())

    def capability(self, session_url: str) -> str | None:
        """The deletion capability of a session this client created (None otherwise)."""
        return self._capabilities.get(session_url)

    def submit(self, session_url: str, evidence: bytes, media_type: str) -> dict[str, Any]:
        """Submit evidence; returns the completed session (``result`` holds the EAR)."""
        response = self._request(
            "POST",
            session_url,
            content=evidence,
            headers={"Content-Type": media_type, "Accept": SESSION_MEDIA_TYPE},
        )
        return dict(response.json())

    def session(self, session_url: str) -> dict[str, Any]:
        return dict(self._request("GET", session_url).json())

    def delete(self, session_url: str, *, capability: str | None = None) -> None:
        """Delete a session: one this client created, or with the ``capability`` its creator
        received (the verifier refuses anyone else, 403 NotSessionCreator)."""
        given = capability or self._capabilities.get(session_url)
        headers = {CAPABILITY_HEADER: given} if given else {}
        self._request("DELETE", session_url, headers=headers)

    def attest(self, build: EvidenceBuilder, *, nonce_size: int = 32) -> str:
        """The whole exchange: new session, evidence over its nonce, the EAR back (a JWT)."""
        url, session = self.new_session(nonce_size=nonce_size)
        evidence, media_type = build(nonce_of(session), list(session.get("accept", [])))
        done = self.submit(url, evidence, media_type)
        result = done.get("result")
        if not isinstance(result, str):
            raise VerifierRefused(
                f"session ended {done.get('status')!r} without a result", status=200
            )
        return result

    # -- provisioning --------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return dict(self._admin("GET", "/state").json())

    def add_trust_anchors(self, entries: list[Mapping[str, Any]]) -> list[str]:
        return list(self._admin("POST", "/trust-anchors", entries).json()["ids"])

    def revoke(self, entry: Mapping[str, Any]) -> str:
        return str(self._admin("POST", "/revocations", entry).json()["id"])

    def add_reference_values(self, value: Any) -> list[str]:
        return list(self._admin("POST", "/reference-values", value).json()["ids"])

    def put_policy(self, name: str, rego: str, *, activate: bool = False) -> dict[str, Any]:
        body = {"rego": rego, "activate": activate}
        return dict(self._admin("PUT", f"/policies/{name}", body).json())

    def activate_policy(self, name: str) -> None:
        self._admin("POST", "/active-policy", {"name": name})

    def deploy(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._admin("POST", "/deployment", document).json())

    def remove(self, what: str, item_id: str) -> None:
        self._admin("DELETE", f"/{what}/{item_id}")

    def submit_corim(self, corim: bytes, media_type: str | None = None) -> dict[str, Any]:
        """Veraison's ``POST /endorsement-provisioning/v1/submit``: the provisioning session.

        ``media_type`` defaults by the bytes: a signed CoRIM (COSE_Sign1, 0xd2) is sent as
        ``application/rim+cose``, an unsigned one as ``application/corim-unsigned+cbor``."""
        if media_type is None:
            signed = corim[:1] == b"\xd2"
            media_type = "application/rim+cose" if signed else "application/corim-unsigned+cbor"
        headers = {"Content-Type": media_type}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        response = self._request(
            "POST", "/endorsement-provisioning/v1/submit", content=corim, headers=headers
        )
        return dict(response.json())

    def sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        response = self._admin("GET", f"/sessions?limit={limit}")
        return list(response.json()["sessions"])

    # -- plumbing ------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            return self._request(method, f"{PROVISIONING}{path}", content=content, headers=headers)
        except VerifierRefused as exc:
            if exc.status != 401 or self._token:
                raise
            raise VerifierRefused(
                f"{exc}; give the token 'veritee verifier serve' wrote into its state directory"
                " (--token-file STATE/admin-token, or $VERITEE_VERIFIER_TOKEN)",
                status=exc.status,
                check=exc.check,
            ) from None

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise VerifierUnreachable(f"verifier {self.base_url} did not answer: {exc}") from None
        if response.status_code >= 400:
            raise _refused(response)
        return response


def nonce_of(session: Mapping[str, Any]) -> bytes:
    """The nonce of a session resource (base64url, padded or not)."""
    text = str(session.get("nonce", ""))
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refused(response: httpx.Response) -> VerifierRefused:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = problem.get("detail") or response.reason_phrase
    check = problem.get("check")
    return VerifierRefused(
        f"verifier refused ({response.status_code} {check or response.reason_phrase}): {detail}",
        status=response.status_code,
        check=check if isinstance(check, str) else None,
    )
