"""A client for a node agent's HTTP API (CBOR bodies), used by the deployer and the user tool.

Requests about an app are signed with the app's deployment key (app/auth.py), when the
client is given it: the deployer's and the user's tool's always are.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import cbor2
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.app import auth
from veritee.app.errors import NodeError, NodeUnreachable, NotAppOwner
from veritee.app.routes import Route
from veritee.servicetls import client_verify

CBOR = "application/cbor"
TIMEOUT = 30.0  # a module's time budget per event is 10 s by default
# A node's status is modules' counters and a few log lines each: kilobytes. An answer past
# this, or one still arriving after its timeout (a byte at a time keeps each read in time),
# is a node agent trying to stall or fill whoever watches it (status, the dashboard).
MAX_STATUS_BYTES = 8 * 1024 * 1024
LOAD_TIMEOUT = 180.0  # compiling a large module ahead of time takes a while the first time


class NodeClient:
    """One node agent. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "",
        timeout: float = TIMEOUT,
        app: str | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        """``app`` and ``key`` (its deployment key): sign every request as the app's owner,
        for the node ``name`` (its name in the app)."""
        self.url = url.rstrip("/")
        self.name = name or self.url
        self.app, self._key = app, key
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=client_verify())

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        sign_for: str | None = None,
        max_bytes: int | None = None,
    ) -> dict[str, Any]:
        """The CBOR map a node answers. With ``max_bytes``, an answer bigger than that, or
        not whole within the timeout, is refused (NodeError) rather than read on."""
        content = None if body is None else bytes(cbor2.dumps(body))
        headers = {"Content-Type": CBOR} if content is not None else {}
        if params:
            path = f"{path}?{urlencode(params)}"
        if self._key is not None and self.app is not None:
            headers[auth.HEADER] = auth.sign(
                self._key,
                app=self.app,
                node=sign_for or self.name,
                method=method,
                path=path,
                body=content or b"",
            )
        kwargs: dict[str, Any] = {"content": content, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            if max_bytes is None:
                response = self._http.request(method, path, **kwargs)
                content = response.content
            else:
                response, content = self._bounded(method, path, max_bytes, kwargs)
        except httpx.HTTPError as exc:
            raise NodeUnreachable(
                f"node {self.name} ({self.url}) did not answer: {exc or type(exc).__name__}"
            ) from None
        try:
            value = cbor2.loads(content) if content else {}
        except (cbor2.CBORDecodeError, ValueError):
            value = None
        if not isinstance(value, dict):
            raise NodeError(f"node {self.name} answered {response.status_code} without CBOR")
        if response.status_code >= 400:
            message = f"node {self.name}: {value.get('error', response.reason_phrase)}"
            if value.get("kind") == NotAppOwner.__name__:  # the caller may say what it means
                raise NotAppOwner(message)
            raise NodeError(message)
        return value

    def _bounded(
        self, method: str, path: str, max_bytes: int, kwargs: dict[str, Any]
    ) -> tuple[httpx.Response, bytes]:
        timeout = kwargs.get("timeout", self._http.timeout.read or TIMEOUT)
        deadline = time.monotonic() + float(timeout)
        with self._http.stream(method, path, **kwargs) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise NodeError(f"node {self.name} answered over {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise NodeError(f"node {self.name} took over {timeout:g} s to answer")
        return response, bytes(body)

    # -- deployer -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/v1/info", timeout=5.0)

    def status(self) -> dict[str, Any]:
        """The node's view; with the app's key, of that app too (``["apps"][app]``)."""
        if self._key is not None and self.app is not None:
            return self._call("GET", f"/v1/apps/{self.app}/status", max_bytes=MAX_STATUS_BYTES)
        return self._call("GET", "/v1/status", max_bytes=MAX_STATUS_BYTES)

    def configure(
        self,
        app: str,
        node: str,
        peers: dict[str, tuple[str, int]],
        transport: str | None = None,
    ) -> None:
        """Name this node in ``app``; signed for the agent's own id (from /v1/info), since
        the request names no node yet: recorded, it configures no other agent.
        ``transport``: "direct" or a NATS URL; None: the node's own default."""
        body: dict[str, Any] = {"node": node, "peers": {k: list(v) for k, v in peers.items()}}
        if transport is not None:
            body["transport"] = transport
        agent = self.info().get("id")
        self._call("PUT", f"/v1/apps/{app}", body, sign_for=str(agent) if agent else None)

    def load(
        self,
        app: str,
        name: str,
        wasm: bytes,
        deployment_key: bytes,
        *,
        memory_mb: int | None = None,
        timeout: float | None = None,
        staged: bool = False,
        succession: bytes | None = None,
    ) -> dict[str, Any]:
        body = {
            "wasm": wasm,
            "deployment_key": deployment_key,
            "memory_mb": memory_mb,
            "timeout": timeout,
            "succession": succession,
        }
        return self._call(
            "PUT",
            f"/v1/apps/{app}/modules/{name}",
            body,
            params=_staged(staged),
            timeout=LOAD_TIMEOUT,
        )

    def attest(self, app: str, name: str, nonce: bytes, *, staged: bool = False) -> bytes:
        answer = self._call(
            "POST",
            f"/v1/apps/{app}/modules/{name}/attest",
            {"nonce": nonce},
            params=_staged(staged),
        )
        evidence = answer.get("evidence")
        if not isinstance(evidence, bytes):
            raise NodeError(f"node {self.name} answered an attestation without evidence")
        return evidence

    def connect(
        self, app: str, name: str, statement: bytes, route: Route, *, staged: bool = False
    ) -> None:
        body = {"statement": statement, "route": route.to_cbor()}
        self._call("POST", f"/v1/apps/{app}/modules/{name}/connect", body, params=_staged(staged))

    def activate(self, app: str, name: str, retire: list[bytes]) -> None:
        self._call("POST", f"/v1/apps/{app}/modules/{name}/activate", {"retire": retire})

    def discard(self, app: str, name: str) -> None:
        self._call("POST", f"/v1/apps/{app}/modules/{name}/discard", {})

    def disable(self, app: str, name: str, retire: list[bytes]) -> None:
        self._call("POST", f"/v1/apps/{app}/modules/{name}/disable", {"retire": retire})

    def retire(self, app: str, conns: list[bytes], statement: bytes | None = None) -> list[str]:
        """Connections that ended; with ``statement`` (a signed disconnect), the node's
        modules end them in their secure worlds too. Returns what the node could not do."""
        body: dict[str, Any] = {"retire": conns}
        if statement is not None:
            body["statement"] = statement
        answer = self._call("POST", f"/v1/apps/{app}/retire", body)
        return [str(p) for p in answer.get("problems", [])]

    def periodic(self, app: str, events: list[tuple[str, str, int]]) -> None:
        self._call("PUT", f"/v1/apps/{app}/periodic", {"events": [list(e) for e in events]})

    def inject(self, app: str, name: str, event: bytes) -> dict[str, Any]:
        return self._call("POST", f"/v1/apps/{app}/modules/{name}/inject", {"event": event})

    # -- users ----------------------------------------------------------------------------------

    def submit(self, event: bytes, *, wait: bool = True) -> dict[str, Any]:
        return self._call("POST", "/v1/events", {"event": event, "wait": wait})

    def request(self, event: bytes) -> bytes:
        reply = self._call("POST", "/v1/request", {"event": event}).get("reply")
        if not isinstance(reply, bytes):
            raise NodeError(f"node {self.name} gave no reply")
        return reply

    def mailbox(self, conn: bytes) -> list[bytes]:
        events = self._call("GET", f"/v1/mailbox/{conn.hex()}").get("events", [])
        return [e for e in events if isinstance(e, bytes)]

    def http(self, method: str, path: str, body: bytes = b"") -> httpx.Response:
        """Plain HTTP through the agent, e.g. to a module's public endpoint."""
        try:
            return self._http.request(method, path, content=body)
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {self.name} ({self.url}) did not answer: {exc}") from None


def _staged(staged: bool) -> dict[str, str] | None:
    return {"staged": "true"} if staged else None
