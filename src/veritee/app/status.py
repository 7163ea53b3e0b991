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


def _map(value: Any) -> dict[Any, Any]:
    """``value`` if it is a map, else an empty one: a node agent's answer is its own to
    shape, and a hostile one must not crash the status (or the dashboard) by a wrong type."""
    return value if isinstance(value, dict) else {}


def _counts(value: Any) -> dict[str, int]:
    """A map of counts from a node agent's answer, keeping only integer counts."""
    return {
        str(k): v for k, v in _map(value).items() if isinstance(v, int) and not isinstance(v, bool)
    }


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
        answer = _map(view)
        app_view = _map(_map(answer.get("apps")).get(dep.app))
        links = {str(k): _map(v) for k, v in _map(answer.get("links")).items()}
        nodes.append(
            {
                "name": name,
                "url": node.url,
                "up": up,
                "error": None if up else view,
                "events": node.events,
                "queued": sum(_counts(v).get("queued", 0) for v in links.values()),
                "links": links,
                "agent_drops": _counts(answer.get("counters")),
            }
        )
        for hosted in _map(app_view.get("modules")).values():
            connections = _map(_map(hosted).get("tee")).get("connections")
            for conn in connections if isinstance(connections, list) else []:
                conn_id = _map(conn).get("conn")
                conn_hex = conn_id.hex() if isinstance(conn_id, bytes) else ""
                per_conn.setdefault(conn_hex, Counter()).update(_counts(_map(conn).get("dropped")))
    for m in dep.modules.values():
        node_view = _map(live.get(m.node))
        mview = _map(
            _map(_map(_map(node_view.get("apps")).get(dep.app)).get("modules")).get(m.name)
        )
        tee = _map(mview.get("tee"))
        log = mview.get("log")
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
                "dropped": _counts(tee.get("dropped")),
                "inbox": mview.get("inbox"),
                "loads": mview.get("loads"),
                "failed": mview.get("failed"),
                "log": log if isinstance(log, list) else [],
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
