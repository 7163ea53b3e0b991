"""Run a node agent: the event transport and the HTTP API, over a secure world that runs.

The agent is untrusted: it reaches the secure world only through the TEE Client API, and never
provisions a device, boots or stops a secure world, or holds a device secret. Whoever operates
the node does that (``veritee node start`` boots a provisioned device's secure world first).
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

from veritee import notify
from veritee.app.agent import NodeAgent
from veritee.app.errors import AppError, NodeError, TransportError
from veritee.app.transport import POLL, TcpTransport
from veritee.app.transport_nats import DIRECT
from veritee.home import DEFAULT_VTEE, Home
from veritee.servicetls import ServerTls

log = logging.getLogger("veritee.node")

# Where a node takes events from its peers unless told otherwise (``--events-port``; 0: any
# free port). Fixed, so an operator can open it in a firewall and peers find it again after
# a restart; the port last used is kept (HOME/node/events-port) and wins over this default.
DEFAULT_EVENTS_PORT = 7200


def serve(
    home: Home,
    *,
    host: str,
    port: int,
    events_port: int | None = None,
    directory: Path | None = None,
    vtee: str = DEFAULT_VTEE,
    ready_file: Path | None = None,
    log_level: str = "info",
    poll: float = POLL,
    tls: ServerTls | None = None,
    transport_url: str = DIRECT,
) -> None:
    """Serve until SIGINT/SIGTERM; ``tls``: the API over HTTPS (TLS 1.3) with these;
    ``transport_url``: what apps use unless their deployer names one (DIRECT or a NATS URL)."""
    import uvicorn

    from veritee.app import api

    state = directory or home.root / "node"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = _listen(host, port)
    # Peers keep events for us at this port while we are down: keep it across restarts.
    port_file = state / "events-port"
    chosen = events_port is not None
    if events_port is None:
        saved = port_file.read_text().strip() if port_file.exists() else ""
        events_port = int(saved) if saved.isdigit() else DEFAULT_EVENTS_PORT
    try:
        transport = TcpTransport(state, host, events_port, poll=poll)
    except TransportError as exc:
        sock.close()
        if chosen:
            raise
        raise AppError(
            f"{exc} (the default; another node agent here? give each its own --events-port)"
        ) from None
    except BaseException:
        sock.close()
        raise
    port_file.write_text(f"{transport.address[1]}\n")
    agent = NodeAgent(home, state, transport, vtee=vtee, default_transport=transport_url)
    try:
        for problem in agent.start():
            log.error("not reloaded: %s", problem)
        url_host = f"[{host}]" if ":" in host else host
        info = {
            "url": f"{'https' if tls else 'http'}://{url_host}:{sock.getsockname()[1]}",
            "events": list(agent.address),
            "transport": agent.default_transport,
        }
        log.info(
            "node agent on %s, events on %s:%d; %s",
            info["url"],
            *agent.address,
            f"polls busy links up to {transport.poll * 1e6:.0f} µs"
            if transport.poll > 0
            else "never polls its links",
        )
        # The API (and its gate's clock of when this agent started) exists before anyone is
        # told the agent is ready: a request signed right after would otherwise predate it.
        app = api.create(agent)
        if ready_file is not None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(ready_file)
        notify.ready()  # Type=notify under systemd (packaging/systemd/veritee-node@.service)
        config = uvicorn.Config(
            app,
            log_level=log_level,
            log_config=None,  # node start set the JSON lines of veritee.logs up
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=3,
            ssl_context_factory=tls,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        agent.close()
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise NodeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    return sock
