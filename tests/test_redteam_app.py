"""Red team: attacks on the hardened app layer (owner-signed agent API, app-bound sealed
state, successions under the recorded key), through the real processes.

A test whose docstring starts ``HOLE:`` asserts the secure behaviour and FAILS while the
hole is open; the others are attacks that are refused, and pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from veritee.app import auth
from veritee.evidence.deployment import Succession, sign_succession
from veritee.tee import channels
from veritee.tee import client as teec
from veritee.tee.app_ta import app_binding
from veritee.tee.ta import AppSession

from ._user import user_channel
from .conftest import Device
from .test_attack_app import (
    APP,
    NODE,
    SECRET,
    Deployed,
    _connect_pressed,
    _owner_still_owns,
    _raw,
    _reveal,
    deployed,  # noqa: F401  (a fixture: the vault app deployed for real)
)

P256 = ec.SECP256R1()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(P256)


def _signed(
    key: ec.EllipticCurvePrivateKey,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    *,
    app: str,
    node: str,
    **kw: Any,
) -> tuple[dict[str, str], bytes]:
    """A request exactly as the owner's tool sends it (headers, body): what a recorder keeps."""
    content = bytes(cbor2.dumps(body)) if body is not None else b""
    header = auth.sign(key, app=app, node=node, method=method, path=path, body=content, **kw)
    return {"content-type": "application/cbor", auth.HEADER: header}, content


def _agent(url: str) -> str:
    """The agent's own id, which a configure request (it names the node) is signed for."""
    return str(cbor2.loads(httpx.get(f"{url}/v1/info", timeout=60).content)["id"])


def _go(url: str, method: str, path: str, req: tuple[dict[str, str], bytes]) -> httpx.Response:
    headers, content = req
    return httpx.request(method, url + path, content=content, headers=headers, timeout=60)


# == the secure world, played as the node agent (TEE Client API) ===============================


@pytest.fixture
def sender_update(device: Device, wasm: Callable[..., Path]) -> Iterator[dict[str, Any]]:
    """The owner's sender -> vault app, and the owner's routine update of the sender with
    its state kept (``veritee update sender NEXT.wasm --keep-state``): the owner signs a
    succession, the agent loads the new build beside the old with the old one's state."""
    owner = _key()
    user = x25519.X25519PrivateKey.generate()
    old_wasm = wasm("tests/assets/c/app_sender.c").read_bytes()
    new_wasm = wasm("tests/assets/c/app_sender_next.c").read_bytes()
    with device.context() as c1, device.context() as c2, device.context() as c3:
        old = AppSession(c1)
        old.load(old_wasm, name="sender", app=APP, deployment_key=_raw(owner))
        vault = AppSession(c2)
        vault.load(
            wasm("tests/assets/c/app_vault.c").read_bytes(),
            name="vault",
            app=APP,
            deployment_key=_raw(owner),
        )
        _connect_pressed(owner, old, vault)
        press = user_channel(APP, owner, user, b"P" * 16, old, "entry", "press")
        out = old.deliver(press.seal(b"0"))
        assert vault.deliver(out.events[0]).dropped is None
        statement = sign_succession(
            Succession(
                APP,
                "sender",
                old.info["measurement"],
                hashlib.sha256(new_wasm).digest(),
            ),
            owner,
        )
        new = AppSession(c3)
        new.load(
            new_wasm,
            name="sender",
            app=APP,
            deployment_key=_raw(owner),
            state=out.state,
            succession=statement,
        )
        yield {"old": old, "new": new, "vault": vault, "press": press, "owner": owner}
        for s in (old, new, vault):
            s.close()


def test_an_update_keeping_state_forks_the_channels_one_key_and_nonce_seals_two_events(
    sender_update: dict[str, Any],
) -> None:
    """HOLE: during (and, as the agent likes, after) an update with --keep-state, the old
    build and its successor both run with the same channels: same connection keys, same
    counters. The untrusted agent feeds each a different user event; both are accepted,
    and both seal their output on the same connection, direction and counter under the
    same ChaCha20-Poly1305 key: a nonce reused. The ciphertexts XOR to the plaintexts'
    XOR (whoever knows one reads the other) and Poly1305's one-time key is used twice
    (forgeable). The same user event is also accepted by both instances (taken twice).
    Secure behaviour: the secure world never seals two events under one (connection,
    direction, counter), and never accepts one event in two instances: from the moment the
    successor claims the state, the old instance runs, seals and connects no more."""
    old, new, press = sender_update["old"], sender_update["new"], sender_update["press"]
    e1, e2, e3 = press.seal(b"turn the heating off"), press.seal(b"the alarm"), press.seal(b"1")
    with pytest.raises(teec.TeecError, match="superseded by its successor"):
        old.deliver(e1)
    b = new.deliver(e2)
    assert b.dropped is None and len(b.events) == 1
    with pytest.raises(teec.TeecError, match="superseded by its successor"):
        old.deliver(e3)  # one user event offered to both instances: only one takes it
    c = new.deliver(e3)
    assert c.dropped is None and len(c.events) == 1
    sealed = {channels.parse_header(x.events[0]) for x in (b, c)}
    assert len(sealed) == 2  # every event the successor seals has a (conn, counter) of its own


def test_instances_of_one_build_in_one_app_share_private_files_and_seal_key(
    device: Device, wasm: Callable[..., Path]
) -> None:
    """HOLE: an app module's private storage and its veritee_seal key are bound to (build,
    app, deployment key), not to the module: two modules of one app built from one binary
    (a vault per user, an LED per room) on one node share /data and can unseal each
    other's files. Bob, connected by the owner to vault-b only, reads what Alice stored in
    vault-a. The agent gets the same by loading a fresh instance of a module's build, under
    the owner's public key, beside it. Secure behaviour: vault-b finds no secret."""
    owner = _key()
    vault_wasm = wasm("tests/assets/c/app_vault.c").read_bytes()
    alice, bob = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    with device.context() as c1, device.context() as c2:
        va, vb = AppSession(c1), AppSession(c2)
        va.load(vault_wasm, name="vault-a", app="two-vaults", deployment_key=_raw(owner))
        vb.load(vault_wasm, name="vault-b", app="two-vaults", deployment_key=_raw(owner))
        store = user_channel("two-vaults", owner, alice, os.urandom(16), va, "entry", "store")
        assert va.deliver(store.seal(b"alice's secret")).dropped is None
        ask = user_channel("two-vaults", owner, bob, os.urandom(16), vb, "handler", "reveal")
        out = vb.deliver(ask.seal(b"?"))
        answer = ask.open(out.reply) if out.reply else b""
        va.close()
        vb.close()
    assert answer.startswith(b"no secret"), f"Bob read Alice's secret from vault-b: {answer!r}"


def test_a_state_relabelled_for_another_app_does_not_open(
    device: Device, wasm: Callable[..., Path]
) -> None:
    """Refused: the vault's state (app A) loaded as app B under the same key, as is and with
    its 32-byte binding label rewritten to B's: the label names the sealing key, so the
    rewritten one does not unseal, and the untouched one is refused by the label check
    (DeploymentKeyMismatch); a state whose label is A's loaded under A but another name
    and the owner's key still works (the owner's own)."""
    owner = _key()
    vault_wasm = wasm("tests/assets/c/app_vault.c").read_bytes()
    user = x25519.X25519PrivateKey.generate()
    with device.context() as ctx:
        v = AppSession(ctx)
        v.load(vault_wasm, name="vault", app=APP, deployment_key=_raw(owner))
        store = user_channel(APP, owner, user, os.urandom(16), v, "entry", "store")
        state = v.deliver(store.seal(SECRET)).state
        v.close()
    relabelled = app_binding("vault-app-b", "vault", _raw(owner)) + state[32:]
    for given, refused in ((state, "another deployment key"), (relabelled, None)):
        with device.context() as ctx, pytest.raises(teec.TeecError, match=refused):
            s = AppSession(ctx)
            s.load(
                vault_wasm, name="vault", app="vault-app-b", deployment_key=_raw(owner), state=given
            )
            raise AssertionError(f"the vault's state loaded as app-b: {_reveal(owner, user, s)!r}")
    with device.context() as ctx:  # the owner's state still loads where it belongs
        s = AppSession(ctx)
        s.load(vault_wasm, name="vault", app=APP, deployment_key=_raw(owner), state=state)
        assert _reveal(owner, user, s) == SECRET
        s.close()


# == the node agent's HTTP API ==================================================================


def test_another_apps_owner_retires_the_victims_connections_through_its_own_app(
    deployed: Deployed,  # noqa: F811
) -> None:
    """HOLE: any stranger may create an app of its own on the node (documented), and the
    retire lists of its own app's routes (retire, activate, disable) are connection ids of
    ANY app: the agent drops their routes without asking whose they are. Connection ids
    travel in clear in every event header, so a network observer who creates an app
    cuts the victim's connections (its events then dropped as 'retired'), bypassing the
    per-app owner check. Secure behaviour: the owner's request still answers."""
    home = deployed.home
    dep, _ = home.tool()
    victim = [bytes.fromhex(c.id) for c in dep.connections.values()]  # seen on the wire
    evil = _key()
    url = deployed.url
    try:
        made = _go(url, "PUT", "/v1/apps/evil",
                   _signed(evil, "PUT", "/v1/apps/evil", {"node": NODE, "peers": {}},
                           app="evil", node=_agent(url)))  # fmt: skip
        assert made.status_code == 200, made.text
        cut = _go(url, "POST", "/v1/apps/evil/retire",
                  _signed(evil, "POST", "/v1/apps/evil/retire", {"retire": victim},
                          app="evil", node=NODE))  # fmt: skip
        assert cut.status_code == 200, cut.text
        proc = home.cli("request", "reveal")
        assert proc.returncode == 0 and proc.stdout.strip() == SECRET.decode(), (
            f"another app's owner retired the vault's connections: {proc.stderr.strip()}"
        )
    finally:  # heal: the victim's routes are still in its app.cbor
        home.cluster.kill_node(NODE)
        home.cluster.start_node(NODE)
    _owner_still_owns(deployed)


def test_another_apps_owner_hijacks_the_victims_route_with_a_connect_of_its_own(
    deployed: Deployed,  # noqa: F811
    wasm: Callable[..., Path],
) -> None:
    """HOLE: the route a connect request carries is not tied to the connect statement the
    secure world checked: another app's owner loads a module of its own, hands it a valid
    statement of its own, and a route naming the VICTIM's connection id with the user's
    tool at its end. The agent records the route for its app: the vault's answers on that
    connection go to the attacker's mailbox (it fetches and empties them, signing as its
    own app's owner), and the victim's own requests on it are refused as 'not of app'.
    Secure behaviour: the victim's connection stays the victim's."""
    from veritee.evidence.deployment import Connect, Peer, sign_connect

    home = deployed.home
    dep, _ = home.tool()
    conn = dep.connection("reveal")
    url, evil = deployed.url, _key()
    try:
        assert _go(url, "PUT", "/v1/apps/evil2",
                   _signed(evil, "PUT", "/v1/apps/evil2", {"node": NODE, "peers": {}},
                           app="evil2", node=_agent(url))).status_code == 200  # fmt: skip
        mod = wasm("tests/assets/c/app_vault.c").read_bytes()
        path = "/v1/apps/evil2/modules/m"
        loaded = _go(url, "PUT", path,
                     _signed(evil, "PUT", path, {"wasm": mod, "deployment_key": _raw(evil)},
                             app="evil2", node=NODE))  # fmt: skip
        assert loaded.status_code == 200, loaded.text
        key = cbor2.loads(loaded.content)["key"]
        user = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        stmt = Connect(
            app="evil2",
            conn_id=os.urandom(16),
            kind="handler",
            endpoint="reveal",
            module_key=key,
            peer=Peer(bytes(32), user, "user", "tool"),
            initiator=False,
        )
        route = {
            "conn": conn.conn,
            "name": "reveal",
            "initiator": ["", None],
            "responder": [NODE, "m"],
        }
        p = f"{path}/connect"
        body = {"statement": sign_connect(stmt, evil), "route": route}
        hijack = _go(url, "POST", p, _signed(evil, "POST", p, body, app="evil2", node=NODE))
        assert hijack.status_code == 403 and b"NotAppOwner" in hijack.content, hijack.text
        proc = home.cli("request", "reveal")
        assert proc.returncode == 0 and proc.stdout.strip() == SECRET.decode(), (
            f"another app's owner took the vault's connection: {proc.stderr.strip()}"
        )
    finally:
        home.cluster.kill_node(NODE)
        home.cluster.start_node(NODE)
    _owner_still_owns(deployed)


def test_head_percent_encoding_and_mac0_do_not_pass_the_gate(deployed: Deployed) -> None:  # noqa: F811
    """Refused: an owner's GET signature sent as HEAD (405/401), a COSE_Mac0 'signed' with
    the owner's PUBLIC key bytes as the HMAC key (alg confusion), a COSE header that names
    another key (the claims' key is what verifies), a percent-encoded path (the signed path
    is the decoded one, routed the same: only a replay, refused by its nonce)."""
    path = f"/v1/apps/{APP}/status"
    req = _signed(deployed.owner, "GET", path, None, app=APP, node=NODE)
    assert _go(deployed.url, "HEAD", path, req).status_code in (401, 405)
    # Mac0 over the owner's claims with its public key as the MAC key.
    claims = {
        "profile": auth.PROFILE,
        "app": APP,
        "node": NODE,
        "method": "GET",
        "path": path,
        "body": hashlib.sha256(b"").digest(),
        "iat": int(time.time() * 1000),
        "nonce": os.urandom(16),
        "key": _raw(deployed.owner),
    }
    protected = cbor2.dumps({1: 5})  # HMAC 256/256
    payload = cbor2.dumps(claims)
    tbs = cbor2.dumps(["MAC0", protected, b"", payload])
    tag = hmac.new(_raw(deployed.owner), tbs, hashlib.sha256).digest()
    mac0 = cbor2.dumps(cbor2.CBORTag(17, [protected, {}, payload, tag]))
    header = base64.urlsafe_b64encode(mac0).decode().rstrip("=")
    forged = httpx.get(deployed.url + path, headers={auth.HEADER: header}, timeout=30)
    assert forged.status_code == 401, forged.text
    ok = _go(deployed.url, "GET", path, req)
    assert ok.status_code == 200
    encoded = path.replace("status", "%73tatus")
    again = _go(deployed.url, "GET", encoded, req)
    assert again.status_code == 401 and "nonce is spent" in again.text
    _owner_still_owns(deployed)


# -- two bare nodes, one app on both -----------------------------------------------------------


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from veritee.app.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("rt2") / "c", names=("n1", "n2"),
                           verifier=False)  # fmt: skip
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _configure(cluster: Any, key: ec.EllipticCurvePrivateKey, app: str) -> dict[str, Any]:
    peers = {n: [c.host, c.port] for n, c in cluster.nodes.items()}
    for name, node in cluster.nodes.items():
        body = {"node": name, "peers": peers}
        r = _go(node.url, "PUT", f"/v1/apps/{app}",
                _signed(key, "PUT", f"/v1/apps/{app}", body, app=app,
                        node=_agent(node.url)))  # fmt: skip
        assert r.status_code == 200, r.text
    return peers


def _node_name(cluster: Any, key: ec.EllipticCurvePrivateKey, app: str, node: str) -> str:
    url = cluster.nodes[node].url
    path = f"/v1/apps/{app}/status"
    r = _go(url, "GET", path, _signed(key, "GET", path, None, app=app, node=node))
    return str(cbor2.loads(r.content)["apps"][app]["node"]) if r.status_code == 200 else r.text


def test_a_recorded_configure_for_one_node_replays_on_another(two_nodes: Any) -> None:
    """HOLE: the configure route checks no node name (it sets it), so the owner's recorded
    configure of n1 replays on n2 within the window (each node keeps its own nonces): n2
    now believes it is n1 in the app, every later request the owner signs for n2 is
    refused, and requests the owner signed for n1 (loads, connects, retires) replay on n2
    too. The threat model says a signature cannot be carried to another node. Secure
    behaviour: the replay is refused, n2 keeps its name."""
    owner, app = _key(), "replayed-app"
    peers = _configure(two_nodes, owner, app)
    path = f"/v1/apps/{app}"
    n1 = _agent(two_nodes.nodes["n1"].url)  # the owner's tool signs configure for n1's agent
    recorded = _signed(owner, "PUT", path, {"node": "n1", "peers": peers}, app=app, node=n1)
    assert _go(two_nodes.nodes["n1"].url, "PUT", path, recorded).status_code == 200
    replayed = _go(two_nodes.nodes["n2"].url, "PUT", path, recorded)
    name = _node_name(two_nodes, owner, app, "n2")
    assert replayed.status_code in (401, 403) and name == "n2", (
        f"n1's configure replayed on n2 ({replayed.status_code}); n2's name now {name!r}"
    )


def test_a_request_signed_ahead_of_the_nodes_clock_replays_after_a_restart(
    two_nodes: Any,
) -> None:
    """HOLE: the agent accepts times up to 120 s AHEAD of its clock (skew) and, after a
    restart, refuses only requests signed before it started. A request from an owner whose
    clock runs 60 s ahead, taken just before a restart (nonces lost with it), replays
    after it: a recorder re-runs the owner's load (a fresh instance: state lost), disable
    or retire. Secure behaviour: refused as taken before (e.g. a floor of start + window
    for times ahead, or nonces kept across restarts)."""
    owner, app = _key(), "skewed-app"
    _configure(two_nodes, owner, app)
    path = f"/v1/apps/{app}/status"
    ahead = int(time.time() * 1000) + 60_000
    recorded = _signed(owner, "GET", path, None, app=app, node="n1", now_ms=ahead)
    url = two_nodes.nodes["n1"].url
    assert _go(url, "GET", path, recorded).status_code == 200
    assert _go(url, "GET", path, recorded).status_code == 401  # spent, while it lives
    two_nodes.kill_node("n1")
    two_nodes.start_node("n1")
    url = two_nodes.nodes["n1"].url
    replayed = _go(url, "GET", path, recorded)
    assert replayed.status_code == 401, "a request taken before the restart replayed after it"


def test_strangers_grow_the_nonce_store_without_end_with_apps_that_do_not_exist(
    two_nodes: Any,
) -> None:
    """HOLE: a request about an app the node does not hold is accepted from any key (its
    creator would own it) and its nonce kept in a per-app map; MAX_APPS bounds apps made,
    not the names nonces are kept under, and an app's stale nonces are dropped only when
    that app is asked about again. A stranger naming a new app per request grows the
    agent's memory for good. Shown on the real agent (each such request is taken: 200) and
    on its Gate. Secure behaviour: nothing kept for an app that does not exist, or stale
    entries of every app dropped."""
    url = two_nodes.nodes["n2"].url
    stranger = _key()
    for _ in range(5):
        app = f"ghost-{os.urandom(6).hex()}"
        path = f"/v1/apps/{app}/status"
        r = _go(url, "GET", path, _signed(stranger, "GET", path, None, app=app, node="n2"))
        assert r.status_code == 200, r.text  # taken, its nonce kept
    now = [10_000_000]
    gate = auth.Gate(lambda app: None, lambda app: "", started_ms=0, clock=lambda: now[0])
    for i in range(2000):
        app = f"ghost-{i}"
        header = auth.sign(stranger, app=app, node="x", method="GET", path="/p", body=b"",
                           now_ms=now[0])  # fmt: skip
        gate.admit(gate.check(header, method="GET", path="/p", app=app), b"")
    now[0] += 10 * auth.WINDOW_MS  # long stale
    one = auth.sign(stranger, app="ghost-0", node="x", method="GET", path="/p", body=b"",
                    now_ms=now[0])  # fmt: skip
    gate.admit(gate.check(one, method="GET", path="/p", app="ghost-0"), b"")
    kept = sum(len(v) for v in gate._seen.values())
    assert len(gate._seen) <= 1 and kept <= 1, (
        f"{len(gate._seen)} nonexistent apps and {kept} stale nonces kept for strangers"
    )


def test_a_squatter_of_an_app_name_gains_no_acceptance_from_the_owners_requests(
    two_nodes: Any,
) -> None:
    """Refused (beyond the documented denial): a stranger configures the owner's app name
    first on n2. The owner's signed requests there get 403 and change nothing; the
    squatter's modules cannot load under the owner's public key (they would attest as the
    owner's), and the owner's recorded requests replayed there are refused too."""
    squatter, owner, app = _key(), _key(), "squatted-app"
    url = two_nodes.nodes["n2"].url
    path = f"/v1/apps/{app}"
    assert _go(url, "PUT", path,
               _signed(squatter, "PUT", path, {"node": "n2", "peers": {}}, app=app,
                       node=_agent(url))).status_code == 200  # fmt: skip
    mine = _go(
        url,
        "PUT",
        path,
        _signed(owner, "PUT", path, {"node": "n2", "peers": {}}, app=app, node=_agent(url)),
    )
    assert mine.status_code == 403
    load = f"{path}/modules/m"
    as_owner = _go(url, "PUT", load,
                   _signed(squatter, "PUT", load, {"wasm": b"\0asm", "deployment_key": _raw(owner)},
                           app=app, node="n2"))  # fmt: skip
    assert as_owner.status_code == 403 and "owner's deployment key only" in as_owner.text


def test_an_owners_statements_for_one_app_do_not_act_on_its_other_app(
    device: Device, wasm: Callable[..., Path]
) -> None:
    """Refused: one owner, one deployment key, two apps on one node. The agent hands the
    connect and disconnect statements of app A to the same build's instance in app B (and
    the state of A to B): the statements name their app, the state its binding."""
    from veritee.evidence.deployment import Disconnect, sign_disconnect

    owner = _key()
    vault_wasm = wasm("tests/assets/c/app_vault.c").read_bytes()
    user = x25519.X25519PrivateKey.generate()
    with device.context() as c1, device.context() as c2:
        a, b = AppSession(c1), AppSession(c2)
        a.load(vault_wasm, name="vault", app=APP, deployment_key=_raw(owner))
        b.load(vault_wasm, name="vault", app="second-app", deployment_key=_raw(owner))
        conn = os.urandom(16)
        user_channel(APP, owner, user, conn, a, "handler", "reveal")
        with pytest.raises(teec.TeecError, match="is for app"):
            user_channel(APP, owner, user, conn, b, "handler", "reveal")
        with pytest.raises(teec.TeecError, match="app"):
            b.disconnect(sign_disconnect(Disconnect(APP, (conn,)), owner))
        state = a.deliver(user_channel(APP, owner, user, os.urandom(16), a, "entry", "store")
                          .seal(SECRET)).state  # fmt: skip
        a.close()
        b.close()
    with device.context() as ctx, pytest.raises(teec.TeecError, match="another deployment key"):
        AppSession(ctx).load(
            vault_wasm, name="vault", app="second-app", deployment_key=_raw(owner), state=state
        )
