"""Attacks on the app layer's ownership (issue 18: 1, 2 and 10), through the real processes.

1. The node agent re-keys a module: it ends the module's session and loads the same sealed
   state again under a deployment key of its own, then signs connect statements with it.
2. A forged succession: the agent loads its own build as the "successor" of a running
   module, with a succession statement signed by a key of its own.
10. A stranger who reaches a node agent's port drives its API.

The secure world is the real protection of 1 and 2 (the agent is untrusted: these tests
play it through the TEE Client API and its own files, all it has); the API's
authentication stops strangers (10). After each attack the owner's module works on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from veritee.evidence.deployment import Connect, Peer, Succession, sign_connect, sign_succession
from veritee.tee import channels
from veritee.tee import client as teec
from veritee.tee.ta import AppSession
from veritee.wasm.runtime import measure

from ._user import user_channel
from .conftest import Device

APP = "vault-app"
SECRET = b"the owner's secret"


def _raw(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@dataclass
class Owned:
    """A vault module with the owner's secret, fed by a sender: what the owner deployed."""

    dev: Device
    owner: ec.EllipticCurvePrivateKey
    user: x25519.X25519PrivateKey
    vault_wasm: Path
    thief_wasm: Path
    sender: AppSession
    vault: AppSession
    press: channels.Channel  # the owner's tool -> sender.press
    state: bytes  # the vault's newest sealed state
    measurement: bytes

    def reload(self, ctx: Any, *, key: bytes | None = None) -> AppSession:
        """The vault again, from its sealed state (what a node agent does after a restart)."""
        session = AppSession(ctx)
        session.load(
            self.vault_wasm.read_bytes(),
            name="vault",
            app=APP,
            deployment_key=key or _raw(self.owner),
            state=self.state,
        )
        return session


def _connect_pressed(key: ec.EllipticCurvePrivateKey, a: AppSession, b: AppSession) -> None:
    for me, kind, peer, initiator in ((a, "output", b, True), (b, "input", a, False)):
        stmt = Connect(
            app=APP,
            conn_id=b"A" * 16,
            kind=kind,
            endpoint="pressed",
            module_key=me.info["key"],
            peer=Peer(peer.info["measurement"], peer.info["key"], "local", "pressed"),
            initiator=initiator,
        )
        me.connect(sign_connect(stmt, key))


def _reveal(
    key: ec.EllipticCurvePrivateKey, user: x25519.X25519PrivateKey, vault: AppSession
) -> bytes:
    """Connect ``user`` to the vault's handler on ``key``'s word, and ask for the secret."""
    ask = user_channel(APP, key, user, os.urandom(16), vault, "handler", "reveal")
    out = vault.deliver(ask.seal(b"?"))
    assert out.dropped is None and out.reply is not None
    return ask.open(out.reply)


@pytest.fixture
def owned(device: Device, wasm: Callable[..., Path]) -> Iterator[Owned]:
    owner = ec.generate_private_key(ec.SECP256R1())
    user = x25519.X25519PrivateKey.generate()
    vault_wasm = wasm("tests/assets/c/app_vault.c")
    with device.context() as c1, device.context() as c2:
        sender = AppSession(c1)
        sender.load(
            wasm("tests/assets/c/app_sender.c").read_bytes(),
            name="sender",
            app=APP,
            deployment_key=_raw(owner),
        )
        vault = AppSession(c2)
        vault.load(vault_wasm.read_bytes(), name="vault", app=APP, deployment_key=_raw(owner))
        _connect_pressed(owner, sender, vault)
        store = user_channel(APP, owner, user, b"S" * 16, vault, "entry", "store")
        assert vault.deliver(store.seal(SECRET)).dropped is None
        assert _reveal(owner, user, vault) == SECRET
        press = user_channel(APP, owner, user, b"P" * 16, sender, "entry", "press")
        state = vault.deliver(sender.deliver(press.seal(b"1")).events[0]).state
        yield Owned(
            device,
            owner,
            user,
            vault_wasm,
            wasm("tests/assets/c/app_vault.c", "THIEF"),
            sender,
            vault,
            press,
            state,
            vault.info["measurement"],
        )


def _owner_carries_on(o: Owned) -> None:
    """Nothing of the owner's was lost: the vault reloads from its state under the owner's
    key, with its attested key, its secret and its channel from the sender."""
    with o.dev.context() as ctx:
        again = o.reload(ctx)
        assert again.info["key"] == o.vault.info["key"]
        event = o.sender.deliver(o.press.seal(b"2")).events[0]
        assert again.deliver(event).dropped is None  # the sender's channel delivers
        public = again.public("http", b"")
        assert public.reply == b"count=1"  # its count is in memory: one since the reload
        assert _reveal(o.owner, o.user, again) == SECRET
        again.close()


# -- 1. the node agent re-keys a module ----------------------------------------------------------


def _rekey(o: Owned, ctx: Any) -> None:
    """The agent's attack: the vault's sealed state under its own key, then its own word."""
    rogue = ec.generate_private_key(ec.SECP256R1())
    hijacked = o.reload(ctx, key=_raw(rogue))
    # Had the load passed: the same X25519 key, channels and counters, on the agent's word.
    assert hijacked.info["key"] == o.vault.info["key"]
    stolen = _reveal(rogue, x25519.X25519PrivateKey.generate(), hijacked)
    event = o.sender.deliver(o.press.seal(b"into the hijacked instance")).events[0]
    assert hijacked.deliver(event).dropped is None
    raise AssertionError(f"the agent re-keyed the vault and read {stolen!r}")


def test_a_sealed_state_does_not_load_under_another_deployment_key(owned: Owned) -> None:
    owned.vault.close()  # the agent ends the module's session
    with owned.dev.context() as ctx, pytest.raises(teec.TeecError, match="another deployment key"):
        _rekey(owned, ctx)
    _owner_carries_on(owned)


def test_a_fresh_instance_under_another_key_gets_none_of_the_modules_private_files(
    owned: Owned,
) -> None:
    """The sibling of 1 without any state: the same binary loaded afresh under the agent's
    key, connected on its own word, must find an empty private storage, not the owner's."""
    rogue = ec.generate_private_key(ec.SECP256R1())
    with owned.dev.context() as ctx:
        squatter = AppSession(ctx)
        squatter.load(
            owned.vault_wasm.read_bytes(), name="vault", app=APP, deployment_key=_raw(rogue)
        )
        answer = _reveal(rogue, x25519.X25519PrivateKey.generate(), squatter)
        assert answer.startswith(b"no secret"), answer
        squatter.close()
    owned.vault.close()
    _owner_carries_on(owned)


# -- 2. a forged succession ----------------------------------------------------------------------


def _succeed(
    o: Owned,
    ctx: Any,
    signer: ec.EllipticCurvePrivateKey,
    key: bytes,
    *,
    state: bytes | None,
) -> AppSession:
    thief = o.thief_wasm.read_bytes()
    statement = sign_succession(Succession(APP, "vault", o.measurement, measure(thief)), signer)
    session = AppSession(ctx)
    session.load(
        thief, name="vault", app=APP, deployment_key=key, state=state, succession=statement
    )
    return session


def _steal(session: AppSession) -> None:
    reply = session.public("steal", b"").reply
    raise AssertionError(f"the agent's build took over the vault and read {reply!r}")


@pytest.mark.parametrize("loaded_under", ["its own key", "the owner's public key"])
def test_a_succession_verifies_under_the_key_recorded_in_the_predecessors_state(
    owned: Owned, loaded_under: str
) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    key = _raw(rogue) if loaded_under == "its own key" else _raw(owned.owner)
    refused = "recorded in the predecessor's sealed state"
    with owned.dev.context() as ctx, pytest.raises(teec.TeecError, match=refused):
        _steal(_succeed(owned, ctx, rogue, key, state=owned.state))
    owned.vault.close()
    _owner_carries_on(owned)


def test_a_succession_without_the_predecessors_state_opens_nothing(owned: Owned) -> None:
    """Without a state there is no recorded key to check the statement against: refused,
    so a succession alone can never hand the predecessor's private files over."""
    rogue = ec.generate_private_key(ec.SECP256R1())
    with owned.dev.context() as ctx:
        with pytest.raises(teec.TeecError, match="needs the predecessor's sealed state"):
            _steal(_succeed(owned, ctx, rogue, _raw(rogue), state=None))
        with pytest.raises(teec.TeecError, match="needs the predecessor's sealed state"):
            _steal(_succeed(owned, ctx, owned.owner, _raw(owned.owner), state=None))
    owned.vault.close()
    _owner_carries_on(owned)


def test_the_owners_succession_still_carries_the_state_and_secret_across(owned: Owned) -> None:
    with owned.dev.context() as ctx:
        heir = _succeed(owned, ctx, owned.owner, _raw(owned.owner), state=owned.state)
        assert heir.public("steal", b"").reply == SECRET  # the owner allowed this build
        assert heir.info["key"] == owned.vault.info["key"]
        heir.close()
