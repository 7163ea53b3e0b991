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
  a bounded size and read within a bounded time (app/_dashboard_view.py);
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
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from veritee.app._dashboard_view import View
from veritee.errors import Error, UsageError
from veritee.servicetls import ServerTls

__all__ = ["DEFAULT_PORT", "Dashboard", "View", "serve"]

log = logging.getLogger("veritee.dashboard")

DEFAULT_PORT = 7300  # beside the node agents' 7100 and 7200 (docs/operations.md)
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
