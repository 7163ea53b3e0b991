"""``veritee dashboard``: a deployment, live in the browser, served from the deployer's side.

A small HTTP server serves one static page (``app/static/``: HTML, CSS and plain JS, no build
step, nothing from elsewhere) and one JSON endpoint the page polls. Each poll reads what
``veritee status`` reads (the state file, each node agent's signed ``/v1/apps/APP/status``),
plus each node's ``/health`` and ``/metrics`` (events per connection) and the verifier's
``/health``, ``/metrics`` and, given its provisioning token, its recent sessions.

Who may attack it, and what stops them:

* a node agent (or whoever answers on its port) shapes its answers: every string it sends
  is shown as text, never markup (the page builds its DOM with ``textContent`` only, under a
  Content-Security-Policy that runs no inline script), and its answer is cut to
  :data:`MAX_TEXT` characters per string and :data:`MAX_ITEMS` entries per list or map;
* a web page in the operator's browser, or another local user, reaching the port: the JSON
  needs the random key printed in the URL (``#key=...``, a fragment, so it is in no request
  line or log), and on loopback a request naming another host (DNS rebinding) is refused.

The page shows what node agents say they did; only what a secure world accepted is
guaranteed, as for ``veritee status`` (docs/apps.md).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import httpx

from veritee.app import state as state_mod
from veritee.app.errors import StateError
from veritee.app.status import collect
from veritee.errors import Error, UsageError
from veritee.servicetls import ServerTls, client_verify

log = logging.getLogger("veritee.dashboard")

DEFAULT_PORT = 7300
POLL_SECONDS = 1.0  # how often the page asks for a new view
# Several tabs, or a page polling fast, share one view this fresh: the nodes are asked at
# most this often whatever the browsers do.
MIN_VIEW_SECONDS = 0.5
PROBE_TIMEOUT = 3.0  # a node's or the verifier's /health and /metrics; slower is shown down
# A node agent's answer is attacker-shaped: one string, list or map of it is cut to these, so
# a hostile agent cannot make the page (or this server) hold megabytes per poll.
MAX_TEXT = 2000
MAX_ITEMS = 200
MAX_DEPTH = 16  # the view itself nests 9 deep (a module's trust vector claims)
MAX_PROBE_BYTES = 1024 * 1024  # a /metrics page of a node with thousands of connections
RECENT_SESSIONS = 20  # the verifier's latest sessions shown (with its token)
KEY_BYTES = 32  # the page's key: guessing it is out of reach

# Only these files are served, by exact path: nothing a request names reaches the filesystem.
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# No inline script or style, no other origin, no framing: markup that slipped into the page
# would still run nothing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def bounded(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON-able data no bigger than the limits above (bytes become hex)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, bytes):
        return value[: MAX_TEXT // 2].hex()
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        items = list(value.items())[:MAX_ITEMS]
        return {str(k)[:MAX_TEXT]: bounded(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [bounded(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
    return str(value)[:MAX_TEXT]


def _get(client: httpx.Client, url: str) -> tuple[int, bytes] | str:
    """(status, body) of a GET, at most MAX_PROBE_BYTES of it and whole within PROBE_TIMEOUT
    (a trickle keeps each read in time); or why it failed."""
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        with client.stream("GET", url) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_PROBE_BYTES:
                    return f"{url} answered over {MAX_PROBE_BYTES} bytes"
                if time.monotonic() > deadline:
                    return f"{url} took over {PROBE_TIMEOUT:g} s to answer"
            return response.status_code, bytes(body)
    except httpx.HTTPError as exc:
        return f"{url} did not answer: {exc or type(exc).__name__}"


def _health(client: httpx.Client, base: str) -> dict[str, Any]:
    got = _get(client, f"{base}/health")
    if isinstance(got, str):
        return {"ok": False, "detail": got}
    status, body = got
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    detail = answer.get("status") if isinstance(answer, dict) else None
    if not isinstance(detail, str):
        detail = f"HTTP {status}" + (", not a health answer" if status == 200 else "")
    return {"ok": status == 200 and detail == "ok", "detail": detail}


def _samples(client: httpx.Client, base: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` on ``base``'s /metrics ([] if it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    got = _get(client, f"{base}/metrics")
    if isinstance(got, str) or got[0] != 200:
        return []
    try:
        return [
            (dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(got[1].decode("utf-8", "replace"))
            for s in family.samples
            if s.name == name
        ]
    except (ValueError, TypeError, IndexError):  # not the exposition format: no figures
        return []


def _trust(attestation: dict[str, Any], key: Any) -> dict[str, Any]:
    """The EAR the deploy acted on, checked under the verifier's key at the time it was
    recorded: per submodule its status and the claims it made (code, tier, meaning)."""
    from veritee.verifier import ear

    token = attestation.get("ear")
    if not isinstance(token, str):
        return {}
    if key is None:
        return {"error": "the verifier's key is unknown (verifier down?)"}
    at = attestation.get("at")
    try:
        result = ear.verify(token, key, now=int(at) if isinstance(at, int | float) else None)
    except Error as exc:
        return {"error": str(exc)}
    described = ear.describe(result)  # each submodule's eight claims, in its vector's order
    submods = {}
    for name, a in result.submods.items():
        rows = [r for r in described if r.submod == name]
        claims = [
            {"claim": claim, "code": code, "tier": row.tier, "meaning": row.meaning}
            for (claim, code), row in zip(a.trust_vector.items(), rows, strict=True)
            if code  # 0: no claim made
        ]
        submods[name] = {"status": a.status, "claims": claims}
    return {"appraisal": str(result.extensions.get(ear.APPRAISAL_ID, "")), "submods": submods}


class View:
    """What the page shows, read afresh (at most every MIN_VIEW_SECONDS) from the state file,
    the node agents and the verifier."""

    def __init__(self, state: Path, *, verifier_token: str | None = None) -> None:
        self.state = state
        self.verifier_token = verifier_token
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None
        self._verifier_key: tuple[str, Any] | None = None  # (url, its EAR key)

    def current(self) -> dict[str, Any]:
        """The latest view; raise Error (e.g. StateError) when there is no deployment."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < MIN_VIEW_SECONDS:
                return self._last[1]
            view: dict[str, Any] = bounded(self._read())
            self._last = (time.monotonic(), view)
            return view

    def _read(self) -> dict[str, Any]:
        dep = state_mod.load(self.state)
        try:  # without the app's key, nodes show nothing of its modules
            key = state_mod.load_keys(self.state).deployment
        except StateError:
            key = None
        with (
            httpx.Client(timeout=PROBE_TIMEOUT, verify=client_verify()) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            report = pool.submit(collect, dep, key)
            urls = {n: s.url for n, s in dep.nodes.items()}
            health = {n: pool.submit(_health, client, u) for n, u in urls.items()}
            flows = {
                n: pool.submit(_samples, client, u, "veritee_node_events_total")
                for n, u in urls.items()
            }
            verifier = pool.submit(self._verifier, client, dep.verifier)
            out = report.result()
            events: dict[str, dict[str, float]] = {}
            for node in out["nodes"]:
                node["health"] = health[node["name"]].result()
                for labels, n in flows[node["name"]].result():
                    per = events.setdefault(labels.get("conn", ""), {})
                    direction = labels.get("direction", "")
                    per[direction] = per.get(direction, 0) + n
            out["verifier"] = verifier.result()
        for conn in out["connections"]:
            conn["events"] = events.get(conn["id"], {})
        ear_key = out["verifier"].pop("_key", None)
        for m in out["modules"]:
            attestation = m["attestation"]
            m["trust"] = _trust(attestation, ear_key)
            m["attestation"] = {k: v for k, v in attestation.items() if k != "ear"}
        out["appraisals"] = sorted(
            (
                {"module": m["name"], **m["attestation"]}
                for m in out["modules"]
                if m["attestation"].get("status")
            ),
            key=lambda a: -float(a.get("at") or 0),
        )
        out["at"] = time.time()
        out["poll"] = POLL_SECONDS
        return out

    def _verifier(self, client: httpx.Client, url: str | None) -> dict[str, Any]:
        if not url:
            return {"url": None, "detail": "modules were appraised locally"}
        base = url.rstrip("/")
        out: dict[str, Any] = {"url": base, "health": _health(client, base)}
        counts: dict[str, float] = {}
        for labels, n in _samples(client, base, "veritee_appraisals_total"):
            outcome = labels.get("outcome", "")
            counts[outcome] = counts.get(outcome, 0) + n
        out["appraisals"] = counts
        out["_key"] = self._ear_key(base)
        if self.verifier_token:
            out["sessions"] = self._sessions(base)
        else:
            out["sessions"] = None  # the page says how to see them
        return out

    def _ear_key(self, base: str) -> Any:
        if self._verifier_key is not None and self._verifier_key[0] == base:
            return self._verifier_key[1]
        from veritee.verifier.client import VerifierClient

        try:
            with VerifierClient(base, timeout=PROBE_TIMEOUT) as vc:
                key = vc.public_key()
        except Error as exc:
            log.info("verifier key unavailable: %s", exc)
            return None
        self._verifier_key = (base, key)
        return key

    def _sessions(self, base: str) -> list[dict[str, Any]] | str:
        from veritee.verifier.client import VerifierClient

        try:
            with VerifierClient(base, token=self.verifier_token, timeout=PROBE_TIMEOUT) as vc:
                return vc.sessions(RECENT_SESSIONS)
        except Error as exc:
            return str(exc)


def _asset(name: str) -> bytes:
    return resources.files("veritee.app").joinpath("static", name).read_bytes()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Dashboard(ThreadingHTTPServer):
    """The dashboard's HTTP server; ``url`` is what to open (it carries the page's key)."""

    daemon_threads = True

    def __init__(
        self,
        view: View,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        tls: ServerTls | None = None,
    ) -> None:
        if tls is None and not _loopback(host):
            raise UsageError(
                f"serving the dashboard on {host} over plain HTTP would send its key and the "
                "deployment's view in clear: serve TLS (--tls-cert/--tls-key or "
                "--tls-self-signed), or keep it on loopback and reach it through an SSH tunnel"
            )
        super().__init__((host, port), _Handler)
        if tls is not None:
            # The handshake runs in each request's thread, on its first read: a client that
            # never finishes one holds up only its own thread, not the accept loop.
            self.socket = tls.context().wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.view = view
        self.key = secrets.token_urlsafe(KEY_BYTES)
        bound = self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if tls else 'http'}://{shown}:{bound}/#key={self.key}"
        # On loopback only these names reach us honestly; another one is a page of another
        # site whose name was rebound to 127.0.0.1 (DNS rebinding).
        self.hosts: frozenset[str] | None = (
            frozenset(f"{h}:{bound}" for h in (shown, "localhost", "127.0.0.1", "[::1]"))
            if _loopback(host)
            else None
        )

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up, or spoke plain HTTP to HTTPS: its request fails, and only
        # a debug line says so (socketserver would print a traceback on stderr).
        log.debug("request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: Dashboard
    protocol_version = "HTTP/1.1"
    server_version = "veritee-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:
        hosts = self.server.hosts
        if hosts is not None and self.headers.get("Host", "").lower() not in hosts:
            self._json(HTTPStatus.FORBIDDEN, {"error": "this dashboard answers its own URL only"})
            return
        path = self.path.partition("?")[0]
        if path in STATIC:
            name, media_type = STATIC[path]
            self._send(HTTPStatus.OK, _asset(name), media_type)
        elif path == "/health":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif path == "/api/view":
            self._view()
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "no such page"})

    do_HEAD = do_GET

    def _view(self) -> None:
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or not hmac.compare_digest(given.encode(), self.server.key.encode()):
            self._json(
                HTTPStatus.UNAUTHORIZED,
                {"error": "open the URL 'veritee dashboard' printed: it carries the page's key"},
            )
            return
        try:
            view = self.server.view.current()
        except Error as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        except Exception:  # a bug, or an answer nobody foresaw: this poll fails, not the server
            log.exception("the dashboard's view failed")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see its log)"})
            return
        self._json(HTTPStatus.OK, view)

    def _refuse(self) -> None:
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "the dashboard only reads"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


def serve(
    view: View,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tls: ServerTls | None = None,
    on_ready: Callable[[Dashboard], None] | None = None,
) -> None:
    """Serve until interrupted; ``on_ready`` is called once it listens. Off loopback only
    with ``tls`` (UsageError otherwise)."""
    try:
        server = Dashboard(view, host, port, tls)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with server:
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
