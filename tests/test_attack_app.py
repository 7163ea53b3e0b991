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
import re
import shutil
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
from veritee.tee.app_ta import app_binding, private_dir
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
        # Even the owner's sealed file, copied in by a host that can write the storage (the
        # emulation's storage is a directory), does not open: what a module seals itself
        # is sealed under a key bound to the deployment key too.
        storage = owned.dev.home / "vtees" / "default" / "storage"
        theirs = private_dir(
            storage, owned.measurement, app_binding(APP, "vault", _raw(owned.owner))
        )
        mine = private_dir(storage, owned.measurement, app_binding(APP, "vault", _raw(rogue)))
        shutil.copy(theirs / "secret.sealed", mine / "secret.sealed")
        answer = _reveal(rogue, x25519.X25519PrivateKey.generate(), squatter)
        assert answer == b"no secret (-3)", answer  # VERITEE_ERR_UNSEAL
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


# -- 10. the node agent's API takes anyone -------------------------------------------------------

NODE = "n1"


@dataclass
class Deployed:
    """The vault app deployed for real: a node agent process, its secure world, the CLI."""

    home: Any  # tests.test_app_deploy.SmartHome
    url: str
    owner: ec.EllipticCurvePrivateKey
    thief: Path


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, wasm: Callable[..., Path]) -> Iterator[Any]:
    from veritee.app import state as state_mod
    from veritee.app.cluster import LocalCluster

    from .test_app_deploy import deploy_locally

    workdir = tmp_path_factory.mktemp("attack-app")
    cluster = LocalCluster(workdir / "cluster", names=(NODE,), verifier=False)
    cluster.start()
    try:
        home = deploy_locally(
            cluster,
            workdir,
            APP,
            {
                "vault": (NODE, wasm("tests/assets/c/app_vault.c")),
                "sender": (NODE, wasm("tests/assets/c/app_sender.c")),
            },
            [
                {
                    "from_module": "sender",
                    "from_output": "pressed",
                    "to_module": "vault",
                    "to_input": "pressed",
                },
                {"name": "reveal", "direct": True, "to_module": "vault", "to_handler": "reveal"},
            ],
        )
        home.ok("call", "vault", "store", SECRET.decode())
        assert home.ok("request", "reveal").strip() == SECRET.decode()
        yield Deployed(
            home,
            cluster.nodes[NODE].url,
            state_mod.load_keys(home.state).deployment,
            wasm("tests/assets/c/app_vault.c", "THIEF"),
        )
    finally:
        cluster.stop()


def _send(
    url: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    signer: ec.EllipticCurvePrivateKey | None = None,
    app: str = APP,
    **sign: Any,
) -> Any:
    import cbor2
    import httpx

    content = bytes(cbor2.dumps(body)) if body is not None else b""
    headers = {"content-type": "application/cbor"}
    if signer is not None:
        from veritee.app import auth

        if "node" not in sign and method == "PUT" and re.fullmatch(r"/v1/apps/[^/?]+", path):
            # Configuring names the node: it is signed for the agent's own id, as the
            # deployer's client does.
            sign["node"] = cbor2.loads(httpx.get(f"{url}/v1/info", timeout=60).content)["id"]
        headers[auth.HEADER] = auth.sign(
            signer,
            app=app,
            node=sign.pop("node", NODE),
            method=method,
            path=sign.pop("signed_path", path),
            body=sign.pop("signed_body", content),
            **sign,
        )
    return httpx.request(method, url + path, content=content, headers=headers, timeout=60)


def _stranger_takes_the_vault(d: Deployed, signer: ec.EllipticCurvePrivateKey | None) -> Any:
    """What the stranger of attack 10 did: its own build as the vault's "successor", under
    its own key, activated, then asked for the secret on a public endpoint. Returns the
    first response that refused; raises if the secret came out."""
    from veritee.evidence.deployment import Succession, sign_succession

    rogue = signer or ec.generate_private_key(ec.SECP256R1())
    thief = d.thief.read_bytes()
    vault = measure(d.home.binaries["vault"].read_bytes())
    statement = sign_succession(Succession(APP, "vault", vault, measure(thief)), rogue)
    body = {"wasm": thief, "deployment_key": _raw(rogue), "succession": statement}
    path = f"/v1/apps/{APP}/modules/vault"
    for method, p, b in (
        ("PUT", f"{path}?staged=true", body),
        ("POST", f"{path}/activate", {"retire": []}),
    ):
        response = _send(d.url, method, p, b, signer)
        if response.status_code != 200:
            return response
    import httpx

    stolen = httpx.get(f"{d.url}/v1/public/{APP}/vault/steal", timeout=30).content
    raise AssertionError(f"a stranger replaced the vault with its own build and read {stolen!r}")


def _owner_still_owns(d: Deployed) -> None:
    assert d.home.ok("request", "reveal").strip() == SECRET.decode()
    dep = d.home.status()
    assert {m["name"]: m["running"] for m in dep["modules"]} == {"vault": True, "sender": True}
    vault = next(m for m in dep["modules"] if m["name"] == "vault")
    assert vault["measurement"] == measure(d.home.binaries["vault"].read_bytes()).hex()


def test_a_stranger_cannot_replace_a_module_through_the_agents_api(deployed: Deployed) -> None:
    refused = _stranger_takes_the_vault(deployed, None)
    assert refused.status_code == 401, refused.text
    # Signing with a key of its own makes it no owner of the app.
    refused = _stranger_takes_the_vault(deployed, ec.generate_private_key(ec.SECP256R1()))
    assert refused.status_code == 403, refused.text
    _owner_still_owns(deployed)


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "/v1/apps/{app}", {"node": NODE, "peers": {}}),
    ("GET", "/v1/apps/{app}/status", None),
    ("PUT", "/v1/apps/{app}/modules/vault", {"wasm": b"\0asm", "deployment_key": b"k"}),
    ("POST", "/v1/apps/{app}/modules/vault/attest", {"nonce": b"n" * 32}),
    ("POST", "/v1/apps/{app}/modules/vault/connect", {"statement": b"s", "route": {}}),
    ("POST", "/v1/apps/{app}/modules/vault/activate", {"retire": []}),
    ("POST", "/v1/apps/{app}/modules/vault/discard", {}),
    ("POST", "/v1/apps/{app}/modules/vault/disable", {"retire": []}),
    ("POST", "/v1/apps/{app}/retire", {"retire": [b"\1" * 16]}),
    ("PUT", "/v1/apps/{app}/periodic", {"events": []}),
    ("POST", "/v1/apps/{app}/modules/vault/inject", {"event": b"e"}),
]


def test_every_route_about_an_app_refuses_strangers_and_other_apps_owners(
    deployed: Deployed,
) -> None:
    """On every route: unsigned 401; signed by another app's owner (a real one, with its
    own app on this node), 403; nothing of the owner's changed."""
    other = ec.generate_private_key(ec.SECP256R1())
    created = _send(deployed.url, "PUT", "/v1/apps/other-app", {"node": NODE, "peers": {}},
                    other, app="other-app")  # fmt: skip
    assert created.status_code == 200, created.text  # a new app is anyone's own
    for method, path, body in ROUTES:
        p = path.format(app=APP)
        assert _send(deployed.url, method, p, body).status_code == 401, p
        assert _send(deployed.url, method, p, body, other).status_code == 403, p
        # Nor can it sign as its own app a request about the vault's.
        mixed = _send(deployed.url, method, p, body, other, app="other-app")
        assert mixed.status_code == 401, (p, mixed.text)
    _owner_still_owns(deployed)


def test_users_requests_reach_only_their_own_apps_connections(deployed: Deployed) -> None:
    """The user's routes name no app: the signature does, and the connection must be its."""
    from veritee.app import state as state_mod

    dep, tool = deployed.home.tool()
    conn = dep.connection("reveal")
    event = tool.seal(conn, b"?")
    state_mod.save(deployed.home.state, dep)  # the counter it took
    other = ec.generate_private_key(ec.SECP256R1())
    assert _send(deployed.url, "PUT", "/v1/apps/users-app", {"node": NODE, "peers": {}},
                 other, app="users-app").status_code == 200  # fmt: skip
    for method, path, body in (
        ("POST", "/v1/request", {"event": event}),
        ("POST", "/v1/events", {"event": event, "wait": True}),
        ("GET", f"/v1/mailbox/{conn.conn.hex()}", None),
    ):
        assert _send(deployed.url, method, path, body).status_code == 401, path
        refused = _send(deployed.url, method, path, body, other, app="users-app")
        assert refused.status_code == 403, (path, refused.text)
    assert _send(deployed.url, "GET", "/v1/status", None).status_code == 200
    status = _send(deployed.url, "GET", "/v1/status", None)
    import cbor2

    assert cbor2.loads(status.content)["apps"] == {}  # anyone sees the node, no app
    _owner_still_owns(deployed)


def test_a_recorded_owners_request_cannot_be_replayed_or_reused(deployed: Deployed) -> None:
    path = f"/v1/apps/{APP}/status"
    nonce = os.urandom(16)
    first = _send(deployed.url, "GET", path, None, deployed.owner, nonce=nonce)
    assert first.status_code == 200, first.text
    again = _send(deployed.url, "GET", path, None, deployed.owner, nonce=nonce)
    assert again.status_code == 401 and "nonce is spent" in again.text
    import time

    from veritee.app.auth import WINDOW_MS

    late = int(time.time() * 1000) - WINDOW_MS - 1000
    stale = _send(deployed.url, "GET", path, None, deployed.owner, now_ms=late)
    assert stale.status_code == 401 and "not fresh" in stale.text
    # The owner's signature over one request does not carry another.
    p = f"/v1/apps/{APP}/modules/vault/disable"
    for sign in (
        {"signed_path": f"/v1/apps/{APP}/modules/sender/disable"},
        {"signed_body": b"\xa0"},
        {"node": "another-node"},
    ):
        reused = _send(deployed.url, "POST", p, {"retire": []}, deployed.owner, **sign)
        assert reused.status_code == 401, (sign, reused.text)
    _owner_still_owns(deployed)


def test_after_a_restart_the_owner_is_remembered_and_old_requests_stay_refused(
    deployed: Deployed,
) -> None:
    """A request signed before the agent (re)started may have been taken by its previous
    life, whose nonces are gone: refused. The owner it recorded survives the restart, and
    so does the owner of an app kept from before owners were recorded (its modules' key)."""
    import cbor2

    cluster = deployed.home.cluster
    path = f"/v1/apps/{APP}/status"
    nonce = os.urandom(16)
    assert _send(deployed.url, "GET", path, None, deployed.owner, nonce=nonce).status_code == 200
    cluster.kill_node(NODE)
    app_file = cluster.nodes[NODE].home / "node" / "apps" / APP / "app.cbor"
    kept = cbor2.loads(app_file.read_bytes())
    assert kept["owner"] == _raw(deployed.owner)
    app_file.write_bytes(cbor2.dumps({k: v for k, v in kept.items() if k != "owner"}))
    cluster.start_node(NODE)
    # The nonces it spent survive the restart (its journal): even re-signed, one is spent.
    respent = _send(deployed.url, "GET", path, None, deployed.owner, nonce=nonce)
    assert respent.status_code == 401 and "nonce is spent" in respent.text
    again = _send(deployed.url, "GET", path, None, deployed.owner)
    assert again.status_code == 200  # a fresh request: the owner is known
    import time

    before = int(time.time() * 1000) - 60_000  # signed a minute ago, before the restart
    replayed = _send(deployed.url, "GET", path, None, deployed.owner, now_ms=before)
    assert replayed.status_code == 401 and "before this agent started" in replayed.text
    stranger = _send(deployed.url, "GET", path, None, ec.generate_private_key(ec.SECP256R1()))
    assert stranger.status_code == 403  # the owner came back from the modules' load key
    _owner_still_owns(deployed)


# -- the gate on its own (I/O-free) --------------------------------------------------------------


def _gate(owner: bytes | None, now: list[int]) -> Any:
    from veritee.app.auth import Gate

    return Gate(lambda app: owner, lambda app: NODE, started_ms=0, clock=lambda: now[0])


def test_the_gate_checks_each_part_of_a_signed_request_with_its_own_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from veritee.app import auth, errors

    key = ec.generate_private_key(ec.SECP256R1())
    now = [10_000_000]
    gate = _gate(_raw(key), now)

    def signed(**kw: Any) -> str:
        args: dict[str, Any] = {"app": APP, "node": NODE, "method": "POST", "path": "/p",
                                "body": b"b", "now_ms": now[0], **kw}  # fmt: skip
        signer = args.pop("key", key)
        return auth.sign(signer, **args)

    def check(header: str | None, body: bytes = b"b", **kw: Any) -> None:
        claims = gate.check(header, method="POST", path="/p", app=kw.get("app", APP))
        gate.admit(claims, body)

    check(signed())
    for header, error in (
        (None, errors.Unauthenticated),
        ("not base64 !", errors.Unauthenticated),
        ("A" * (auth.MAX_HEADER_BYTES + 1), errors.Unauthenticated),
        (signed(path="/q"), errors.BadRequestSignature),
        (signed(node="n2"), errors.BadRequestSignature),
        (signed(app="other"), errors.BadRequestSignature),
        (signed(key=ec.generate_private_key(ec.SECP256R1())), errors.NotAppOwner),
        (signed(now_ms=now[0] - auth.WINDOW_MS - 1), errors.StaleRequest),
        (signed(now_ms=now[0] + auth.WINDOW_MS + 1), errors.StaleRequest),
    ):
        with pytest.raises(error):
            check(header)
    with pytest.raises(errors.BadRequestSignature, match="another body"):
        check(signed(), body=b"c")
    once = signed()
    check(once)
    with pytest.raises(errors.ReplayedRequest):
        check(once)
    now[0] += auth.WINDOW_MS + 1
    with pytest.raises(errors.StaleRequest):  # and later, stale: never taken twice
        check(once)
    # An owner spending more nonces than the window holds is told to wait, not served by
    # forgetting one early.
    monkeypatch.setattr(auth, "MAX_NONCES", 3)
    for _ in range(3):
        check(signed(now_ms=now[0]))
    with pytest.raises(errors.TooManyRequests):
        check(signed(now_ms=now[0]))
    now[0] += auth.WINDOW_MS + 1  # their window passed: room again
    check(signed(now_ms=now[0]))


def test_strangers_may_create_apps_of_their_own_but_not_without_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veritee.app import agent as agent_mod
    from veritee.app.errors import NodeError, NotAppOwner
    from veritee.home import Home

    monkeypatch.setattr(agent_mod, "MAX_APPS", 2)
    node = agent_mod.NodeAgent(Home(tmp_path / "home"), tmp_path / "node", transport=None)  # type: ignore[arg-type]
    first, second = os.urandom(65), os.urandom(65)
    node.configure("a", NODE, {}, owner=first)
    node.configure("b", NODE, {}, owner=second)
    node.configure("a", NODE, {}, owner=first)  # its owner again: fine
    with pytest.raises(NotAppOwner):
        node.configure("a", NODE, {}, owner=second)
    with pytest.raises(NodeError, match="maximum of 2 apps"):
        node.configure("c", NODE, {}, owner=second)
    assert (node.owner_of("a"), node.owner_of("b"), node.owner_of("c")) == (first, second, None)
