"""A user's tool's end of a direct connection to a module, for tests that play the deployer."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x25519

from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.tee import channels

USER = bytes(32)  # a user's tool has no measurement


def user_channel(
    app: str,
    deployment_key: ec.EllipticCurvePrivateKey,
    user: x25519.X25519PrivateKey,
    conn: bytes,
    target: Any,
    kind: str,
    endpoint: str,
) -> channels.Channel:
    """Connect the user's tool to ``target``'s endpoint, as a deployer does: the owner's
    signed statement goes to the module (``target.connect``: an app session or a module
    host); the user's end of the channel comes back."""
    user_pub = user.public_key().public_bytes_raw()
    stmt = Connect(
        app=app,
        conn_id=conn,
        kind=kind,
        endpoint=endpoint,
        module_key=target.info["key"],
        peer=Peer(USER, user_pub, "user", "tool"),
        initiator=False,
    )
    target.connect(sign_connect(stmt, deployment_key))
    mine = Connect(
        app=app,
        conn_id=conn,
        kind="output",
        endpoint="tool",
        module_key=user_pub,
        peer=Peer(target.info["measurement"], target.info["key"], "local", endpoint),
        initiator=True,
    )
    return channels.establish(user, USER, mine)
