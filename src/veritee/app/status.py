"""A deployment's status: the state file's record joined with each node agent's live view.

The live view comes from node agents, which are untrusted: they could lie about counts.
What they cannot fake is an event accepted by a secure world; the counts are for operators.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from veritee.app.client import NodeClient
from veritee.app.state import Deployment
from veritee.errors import Error

STATUS_TIMEOUT = 5.0  # a node that takes longer is shown as down


def _node_status(
    url: str, name: str, app: str, key: ec.EllipticCurvePrivateKey | None
) -> dict[str, Any] | str:
    try:
        with NodeClient(url, name=name, timeout=STATUS_TIMEOUT, app=app, key=key) as client:
            return client.status()
    except Error as exc:
        return str(exc)


def collect(dep: Deployment, key: ec.EllipticCurvePrivateKey | None = None) -> dict[str, Any]:
    """Everything ``veritee status`` shows, as plain JSON-able values. ``key``: the app's
    deployment key, without which a node shows nothing of the app's modules."""
    with ThreadPoolExecutor(8) as pool:
        futures = {
            n: pool.submit(_node_status, s.url, n, dep.app, key) for n, s in dep.nodes.items()
        }
        live = {n: f.result() for n, f in futures.items()}
    nodes = []
    per_conn: dict[str, Counter[str]] = {}
    modules = []
    for name, node in dep.nodes.items():
        view = live[name]
        up = isinstance(view, dict)
        app_view = view.get("apps", {}).get(dep.app, {}) if isinstance(view, dict) else {}
        links = view.get("links", {}) if isinstance(view, dict) else {}
        nodes.append(
            {
                "name": name,
                "url": node.url,
                "up": up,
                "error": None if up else view,
                "events": node.events,
                "queued": sum(int(v.get("queued", 0)) for v in links.values()),
                "links": links,
                "agent_drops": view.get("counters", {}) if isinstance(view, dict) else {},
            }
        )
        for hosted in app_view.get("modules", {}).values():
            for conn in hosted.get("tee", {}).get("connections", []):
                conn_hex = conn["conn"].hex() if isinstance(conn["conn"], bytes) else ""
                per_conn.setdefault(conn_hex, Counter()).update(conn.get("dropped", {}))
    for m in dep.modules.values():
        node_view = live.get(m.node)
        mview = (
            node_view.get("apps", {}).get(dep.app, {}).get("modules", {}).get(m.name, {})
            if isinstance(node_view, dict)
            else {}
        )
        tee = mview.get("tee", {})
        modules.append(
            {
                "name": m.name,
                "node": m.node,
                "status": m.status,
                "reason": m.reason,
                "measurement": m.measurement,
                "attestation": m.attestation,
                "running": bool(tee.get("running")) if mview else None,
                # Events and public calls the module took since its agent (re)started.
                "delivered": mview.get("delivered"),
                "dropped": tee.get("dropped", {}),
                "inbox": mview.get("inbox"),
                "loads": mview.get("loads"),
                "failed": mview.get("failed"),
                "log": mview.get("log", []),
            }
        )
    connections = []
    for c in dep.connections.values():
        connections.append(
            {
                "name": c.name,
                "id": c.id,
                "from": "user" if c.from_module is None else f"{c.from_module}.{c.from_endpoint}",
                "to": f"{c.to_module}.{c.to_endpoint}",
                "kind": f"{c.from_kind}->{c.to_kind}",
                "status": c.status,
                "reason": c.reason,
                "implicit": c.implicit,
                "dropped": dict(per_conn.get(c.id, {})),
            }
        )
    return {
        "app": dep.app,
        "verifier": dep.verifier or "local appraisal",
        "nodes": nodes,
        "modules": modules,
        "connections": connections,
        "timings": dep.timings,
    }
