"""Where a sealed event goes: routes by connection id, decided from its header alone (I/O-free).

A connection has an initiator (an output, a request, or the user's tool) and a responder
(an input, a handler, an entry). Its events carry a direction (tee/channels.py): FORWARD
goes to the responder, BACKWARD (a handler's reply) to the initiator. A route says which
node and module each end is; ``module`` None is the user's tool. Routes are not secrets:
a node agent that routes wrongly only gets its events dropped by the secure world.

``fanout``: the connection is one of several from one output. Its events then travel, on a
broker, as the output's fan-out events do (published once for all the output's nodes), for
as long as it lives: the path of a connection never changes, so its events keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veritee.tee.channels import FORWARD

CONN_ID_BYTES = 16
STAGED = ".next"  # suffix of a module instance loaded to replace another (veritee update)


@dataclass(frozen=True)
class End:
    node: str  # "" for the user's tool
    module: str | None  # None: the user's tool


@dataclass(frozen=True)
class Route:
    app: str
    conn: bytes
    name: str
    initiator: End
    responder: End
    fanout: bool = False

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "conn": self.conn,
            "name": self.name,
            "initiator": [self.initiator.node, self.initiator.module],
            "responder": [self.responder.node, self.responder.module],
        }
        if self.fanout:
            out["fanout"] = True
        return out

    @classmethod
    def from_cbor(cls, app: str, c: Any) -> Route:
        """Parse a route (from the deployer, or our own file); raise ValueError if malformed."""
        if not isinstance(c, dict):
            raise ValueError("a route is a map")
        conn, name = c.get("conn"), c.get("name")
        if not isinstance(conn, bytes) or len(conn) != CONN_ID_BYTES:
            raise ValueError(f"a route's connection id is {CONN_ID_BYTES} bytes")
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ValueError("a route's name is 1 to 128 characters")
        ends = []
        for key in ("initiator", "responder"):
            end = c.get(key)
            if not (
                isinstance(end, list)
                and len(end) == 2
                and isinstance(end[0], str)
                and len(end[0]) <= 64
                and (end[1] is None or (isinstance(end[1], str) and 0 < len(end[1]) <= 64))
            ):
                raise ValueError(f"a route's {key} is [node, module or null]")
            ends.append(End(end[0], end[1]))
        if ends[1].module is None:
            raise ValueError("a route's responder is a module")
        fanout = c.get("fanout", False)
        if not isinstance(fanout, bool):
            raise ValueError("a route's fanout is true or false")
        return cls(app, conn, name, ends[0], ends[1], fanout)


def destination(route: Route, direction: int) -> End:
    """The end an event travelling in ``direction`` on ``route`` is for."""
    return route.responder if direction == FORWARD else route.initiator


def restage(route: Route, node: str, old: str, new: str) -> Route:
    """The route with this node's end ``old`` renamed ``new`` (a module being replaced)."""

    def swap(end: End) -> End:
        return End(end.node, new) if end.node == node and end.module == old else end

    return Route(
        route.app,
        route.conn,
        route.name,
        swap(route.initiator),
        swap(route.responder),
        route.fanout,
    )


def keep_staged(old: End, new: End) -> End:
    """When both ends of a connection are on one node, keep the end already made staged."""
    if old.module and new.module and old.module == new.module + STAGED and old.node == new.node:
        return old
    return new
