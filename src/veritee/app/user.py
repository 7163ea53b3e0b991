"""The user's end of direct connections: its own X25519 key, its own channel keys.

A direct connection (and the connection to each entry point) has the user's tool at one end
and a module at the other. The deployer told the module, in a signed statement, to trust
the tool's public key; the tool derives the connection's keys itself with
:func:`~veritee.tee.channels.establish` (its "measurement" is 32 zero bytes) and seals and
opens events like a secure world would. The node agent in between sees sealed bytes only.
"""

from __future__ import annotations

import time

from veritee.app.client import NodeClient
from veritee.app.errors import EventDropped, StateError
from veritee.app.state import ConnectionState, Deployment, Keys
from veritee.evidence.deployment import Connect, Peer
from veritee.tee.channels import Channel, EventRejected, establish

USER_MEASUREMENT = bytes(32)


def user_statement(deployment: Deployment, keys: Keys, conn: ConnectionState) -> Connect:
    """The tool's own view of a direct connection (it signs nothing: it is the owner)."""
    module = deployment.module(conn.to_module)
    if not module.key or not module.measurement:
        raise StateError(f"module {module.name!r} was never attested: it has no connection")
    return Connect(
        app=deployment.app,
        conn_id=conn.conn,
        kind="request" if conn.to_kind == "handler" else "output",
        endpoint="user",
        module_key=keys.user_public,
        peer=Peer(
            bytes.fromhex(module.measurement),
            bytes.fromhex(module.key),
            module.node,
            conn.to_endpoint,
        ),
        initiator=True,
    )


class UserTool:
    """Seal, send and open on the user's side; counters live in the deployment state."""

    def __init__(self, deployment: Deployment, keys: Keys) -> None:
        self.deployment, self.keys = deployment, keys

    def _channel(self, conn: ConnectionState) -> Channel:
        if conn.status != "connected":
            raise StateError(
                f"connection {conn.name!r} is {conn.status}"
                + (f": {conn.reason}" if conn.reason else "")
            )
        channel = establish(
            self.keys.user, USER_MEASUREMENT, user_statement(self.deployment, self.keys, conn)
        )
        # Counters only have to increase strictly; starting from the clock (microseconds)
        # keeps them increasing even if this state file is lost or restored from a backup.
        channel.sent = max(conn.sent, int(time.time() * 1_000_000))
        channel.received = conn.received
        return channel

    def _node(self, conn: ConnectionState) -> NodeClient:
        module = self.deployment.module(conn.to_module)
        node = self.deployment.nodes[module.node]
        return NodeClient(
            node.url, name=node.name, app=self.deployment.app, key=self.keys.deployment
        )

    def seal(self, conn: ConnectionState, payload: bytes) -> bytes:
        """A sealed event on ``conn`` (counter taken); the caller sends it."""
        channel = self._channel(conn)
        event = channel.seal(payload)
        conn.sent = channel.sent
        return event

    def send(self, conn: ConnectionState, payload: bytes) -> dict[str, object]:
        """An event to an input or an entry; waits for its delivery when it is local."""
        if conn.to_kind == "handler":
            raise StateError(f"{conn.name!r} goes to a handler: use 'veritee request'")
        event = self.seal(conn, payload)
        with self._node(conn) as node:
            answer = node.submit(event, wait=True)
        dropped = answer.get("dropped")
        if isinstance(dropped, str):
            raise EventDropped(dropped, f"the module's secure world dropped the event: {dropped}")
        return answer

    def request(self, conn: ConnectionState, payload: bytes) -> bytes:
        """A request to a handler; returns its answer, checked and opened."""
        if conn.to_kind != "handler":
            raise StateError(f"{conn.name!r} goes to an {conn.to_kind}: use 'veritee output'")
        channel = self._channel(conn)
        event = channel.seal(payload)
        conn.sent = channel.sent
        with self._node(conn) as node:
            reply = node.request(event)
        try:
            answer = channel.open(reply)
        except EventRejected as exc:
            raise EventDropped(exc.reason, f"the answer does not authenticate: {exc}") from None
        conn.received = channel.received
        return answer
