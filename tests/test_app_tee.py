"""The application TA in a real secure world: connections, sealed events, attacks on them.

The test plays the deployer (it holds the app's deployment key) and the node agents (it
carries sealed events between sessions), so each secure-world check is attacked directly.
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

from veritee.evidence.appraisal import TrustAnchors, verify
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.tee import channels
from veritee.tee import client as teec
from veritee.tee.app_ta import app_binding, private_dir
from veritee.tee.ta import AppSession

from ._user import user_channel
from .conftest import Device

APP = "test-app"


@dataclass
class Env:
    dev: Device
    ctx: Any
    key: ec.EllipticCurvePrivateKey
    sender: AppSession
    counter: AppSession
    user: x25519.X25519PrivateKey

    @property
    def raw_key(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )


def _load(ctx: Any, module: Path, name: str, key: bytes, state: bytes | None = None) -> AppSession:
    session = AppSession(ctx)
    session.load(module.read_bytes(), name=name, app=APP, deployment_key=key, state=state)
    return session


def _connect(
    key: ec.EllipticCurvePrivateKey,
    conn: bytes,
    a: AppSession,
    a_kind: str,
    a_ep: str,
    b: AppSession,
    b_kind: str,
    b_ep: str,
) -> None:
    """Connect a's endpoint (the initiator) to b's, as a deployer does: one statement each."""
    for me, kind, ep, peer, peer_ep, initiator in (
        (a, a_kind, a_ep, b, b_ep, True),
        (b, b_kind, b_ep, a, a_ep, False),
    ):
        stmt = Connect(
            app=APP,
            conn_id=conn,
            kind=kind,
            endpoint=ep,
            module_key=me.info["key"],
            peer=Peer(peer.info["measurement"], peer.info["key"], "local", peer_ep),
            initiator=initiator,
        )
        me.connect(sign_connect(stmt, key))


def _user_channel(
    env: Env, conn: bytes, target: AppSession, kind: str, ep: str
) -> channels.Channel:
    """A direct connection from the user's tool to a module endpoint."""
    return user_channel(APP, env.key, env.user, conn, target, kind, ep)


@pytest.fixture
def env(device: Device, wasm: Callable[..., Path]) -> Iterator[Env]:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # One connection per module session, as node agents keep them: a request relayed during
    # one delivery is delivered to its handler on another connection, never nested on one.
    with device.context() as ctx, device.context() as ctx2:
        sender = _load(ctx, wasm("tests/assets/c/app_sender.c"), "sender", raw)
        counter = _load(ctx2, wasm("tests/assets/c/app_counter.c"), "counter", raw)
        e = Env(device, ctx, key, sender, counter, x25519.X25519PrivateKey.generate())
        _connect(key, b"A" * 16, sender, "output", "pressed", counter, "input", "pressed")
        yield e


def test_endpoint_table_comes_from_the_binary(env: Env) -> None:
    assert sorted(map(tuple, env.counter.info["endpoints"])) == [
        ("handler", "count"),
        ("input", "pressed"),
        ("public", "http"),
    ]


def test_events_flow_and_requests_are_answered(env: Env) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    for i in range(5):
        out = env.sender.deliver(press.seal(f"press {i}".encode()))
        assert out.dropped is None and len(out.events) == 1
        assert env.counter.deliver(out.events[0]).dropped is None
    ask = _user_channel(env, b"Q" * 16, env.counter, "handler", "count")
    out = env.counter.deliver(ask.seal(b"?"))
    assert out.reply is not None
    assert ask.open(out.reply) == b"5"
    public = env.counter.public("http", b"GET /")
    assert public.reply is not None and public.reply.startswith(b"count=5")


def test_a_module_request_is_carried_by_the_relay(env: Env) -> None:
    _connect(env.key, b"R" * 16, env.sender, "request", "ask", env.counter, "handler", "count")
    query = _user_channel(env, b"U" * 16, env.sender, "entry", "query")

    def node_agent(rpc: dict[str, Any]) -> dict[str, Any]:
        assert rpc["op"] == "request"
        return {"event": env.counter.deliver(rpc["event"]).reply}

    out = env.sender.deliver(query.seal(b""), node_agent)
    assert "answer: 0" in out.log


def test_replayed_altered_and_misrouted_events_are_dropped(env: Env) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    event = env.sender.deliver(press.seal(b"one")).events[0]
    assert env.counter.deliver(event).dropped is None
    assert env.counter.deliver(event).dropped == "replay"  # replayed
    later = env.sender.deliver(press.seal(b"two")).events[0]
    altered = bytearray(later)
    altered[-1] ^= 1
    assert env.counter.deliver(bytes(altered)).dropped == "altered"
    assert env.counter.deliver(later).dropped is None  # the genuine one still arrives
    newest = env.sender.deliver(press.seal(b"three")).events[0]
    older = env.sender.deliver(press.seal(b"four")).events[0]
    assert env.counter.deliver(older).dropped is None
    assert env.counter.deliver(newest).dropped == "replay"  # reordered: refused
    # An event for the sender's entry connection delivered to the counter: misrouted.
    assert env.counter.deliver(press.seal(b"five")).dropped == "misrouted"
    public = env.counter.public("http", b"")
    assert public.reply is not None and public.reply.startswith(b"count=3")
    status = env.counter.status()
    assert status["dropped"] == {"replay": 2, "altered": 1, "misrouted": 1}


def test_statements_not_signed_by_the_app_key_fail_closed(env: Env) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    stmt = Connect(
        app=APP,
        conn_id=b"X" * 16,
        kind="input",
        endpoint="pressed",
        module_key=env.counter.info["key"],
        peer=Peer(
            bytes(32),
            x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(),
            "evil",
            "pressed",
        ),
        initiator=False,
    )
    with pytest.raises(teec.TeecError, match="deployment key"):
        env.counter.connect(sign_connect(stmt, rogue))
    # A node agent swapping the peer key inside a genuine statement breaks its signature.
    genuine = bytearray(sign_connect(stmt, env.key))
    peer_key = stmt.peer.key
    i = bytes(genuine).index(peer_key)
    genuine[i : i + 32] = os.urandom(32)
    with pytest.raises(teec.TeecError, match="deployment key"):
        env.counter.connect(bytes(genuine))


def test_state_survives_a_reload_and_replays_stay_refused(
    env: Env, wasm: Callable[..., Path]
) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    first = env.sender.deliver(press.seal(b"1")).events[0]
    outcome = env.counter.deliver(first)
    state = outcome.state
    key_before = env.counter.info["key"]
    env.counter.close()
    with env.dev.context() as ctx:
        again = _load(ctx, wasm("tests/assets/c/app_counter.c"), "counter", env.raw_key, state)
        assert again.info["key"] == key_before  # same attested key: peers need not reconnect
        assert again.deliver(first).dropped == "replay"
        second = env.sender.deliver(press.seal(b"2")).events[0]
        assert again.deliver(second).dropped is None
        # The state is sealed for this module (its build and its name): another module
        # cannot take it over; its label already says it is another module's.
        with pytest.raises(teec.TeecError, match=r"or module name\), or before states"):
            _load(ctx, wasm("tests/assets/c/app_sender.c"), "sender", env.raw_key, state)


def test_evidence_of_an_app_module_attests_its_deployment_key(env: Env) -> None:
    evidence = env.counter.attest(b"n" * 32)
    anchors = TrustAnchors.from_pem((env.dev.home / "manufacturer" / "ca.pem").read_bytes())
    verified = verify(evidence, anchors, nonce=b"n" * 32)
    assert verified.module.measurement == env.counter.info["measurement"]
    assert verified.module.config == env.counter.info["config_digest"]
    assert cose_key_raw(verified.module.provisioning_key) == env.counter.info["key"]


def cose_key_raw(cose_key: dict[int, Any]) -> bytes:
    value: bytes = cose_key[-2]
    return value


def test_a_plain_wasi_command_is_not_an_app_module(
    device: Device, wasm: Callable[..., Path]
) -> None:
    with device.context() as ctx:
        session = AppSession(ctx)
        with pytest.raises(teec.TeecError, match="not an app module"):
            session.load(
                wasm("examples/hello/hello.c").read_bytes(),
                name="hello",
                app=APP,
                deployment_key=ec.generate_private_key(ec.SECP256R1())
                .public_key()
                .public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                ),
            )


def _with_custom_section(module: bytes) -> bytes:
    """The same code, another measurement (a 'new build')."""
    body = b"\x07rebuild" + b"v2"
    return module + b"\x00" + bytes([len(body)]) + body


def test_an_update_takes_over_sealed_state_only_with_the_owners_succession(
    env: Env, wasm: Callable[..., Path], tmp_path: Path
) -> None:
    from veritee.evidence.deployment import Succession, sign_succession

    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    first = env.sender.deliver(press.seal(b"1")).events[0]
    state = env.counter.deliver(first).state
    old = env.counter.info["measurement"]
    storage = env.dev.home / "vtees" / "default" / "storage"
    binding = app_binding(APP, "counter", env.raw_key)
    (private_dir(storage, old, binding) / "note").write_bytes(b"kept across the update")
    # The normal world plants a symlink into the secure world's state among the old files:
    # it must come across as a link (which WASI does not follow out), not as the HUK's bytes.
    (private_dir(storage, old, binding) / "huk").symlink_to(env.dev.home / "device" / "huk.bin")
    env.counter.close()
    v2 = tmp_path / "counter-v2.wasm"
    v2.write_bytes(_with_custom_section(wasm("tests/assets/c/app_counter.c").read_bytes()))
    from veritee.wasm.runtime import measure

    new = measure(v2.read_bytes())
    with env.dev.context() as ctx:
        with pytest.raises(teec.TeecError, match="does not open"):
            _load(ctx, v2, "counter", env.raw_key, state)  # no succession: sealed to v1
        rogue = ec.generate_private_key(ec.SECP256R1())
        for key, stmt, match in (
            (rogue, Succession(APP, "counter", old, new), "deployment key"),
            (env.key, Succession(APP, "counter", old, bytes(32)), "another app, module or build"),
        ):
            session = AppSession(ctx)
            with pytest.raises(teec.TeecError, match=match):
                session.load(
                    v2.read_bytes(),
                    name="counter",
                    app=APP,
                    deployment_key=env.raw_key,
                    state=state,
                    succession=sign_succession(stmt, key),
                )
        session = AppSession(ctx)
        session.load(
            v2.read_bytes(),
            name="counter",
            app=APP,
            deployment_key=env.raw_key,
            state=state,
            succession=sign_succession(Succession(APP, "counter", old, new), env.key),
        )
        assert session.info["measurement"] == new
        assert session.deliver(first).dropped == "replay"  # counters came across
        second = env.sender.deliver(press.seal(b"2")).events[0]
        assert session.deliver(second).dropped is None  # and the connection key
    assert (private_dir(storage, new, binding) / "note").read_bytes() == b"kept across the update"
    assert (private_dir(storage, new, binding) / "huk").is_symlink()


# -- batches ------------------------------------------------------------------------------------


def test_a_batch_checks_each_event_on_its_own_and_seals_the_state_once(
    env: Env, wasm: Callable[..., Path]
) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    # Three presses in one batch: one call into the module, three events out, in order.
    out = env.sender.deliver_batch([press.seal(f"press {i}".encode()) for i in range(3)])
    assert out.dropped == [None, None, None] and len(out.events) == 3
    one, two, three = out.events
    altered = bytearray(three)
    altered[-1] ^= 1
    batch = [one, one, bytes(altered), press.seal(b"misrouted"), three, two]
    got = env.counter.deliver_batch(batch)
    # A bad event is dropped and counted; the others still go through.
    assert got.dropped == [None, "replay", "altered", "misrouted", None, "replay"]
    assert env.counter.status()["dropped"] == {"replay": 2, "altered": 1, "misrouted": 1}
    # The state sealed after the batch carries every counter: after a reload, none of the
    # batch's events is accepted again.
    env.counter.close()
    with env.dev.context() as ctx:
        again = _load(ctx, wasm("tests/assets/c/app_counter.c"), "counter", env.raw_key, got.state)
        assert again.deliver_batch([one, two, three]).dropped == ["replay"] * 3


def test_requests_are_not_taken_in_batches(env: Env) -> None:
    ask = _user_channel(env, b"Q" * 16, env.counter, "handler", "count")
    request = ask.seal(b"?")
    assert env.counter.deliver_batch([request]).dropped == ["misrouted"]
    assert env.counter.deliver(request).reply is not None  # its counter was not used up


def test_a_batch_over_the_limits_is_refused_whole(env: Env) -> None:
    from veritee.tee.app_ta import MAX_BATCH_EVENTS

    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    with pytest.raises(teec.TeecError, match="at most"):
        env.sender.deliver_batch([press.seal(b"x") for _ in range(MAX_BATCH_EVENTS + 1)])
    with pytest.raises(teec.TeecError, match="CBOR list"):
        env.sender.session.invoke(
            0x26, teec.Operation([teec.memref_in(b"\xa0"), teec.memref_out(1024)])
        )


# -- disconnect statements ----------------------------------------------------------------------


def _pressed_statements(env: Env) -> list[bytes]:
    """The connect statements the fixture signed for connection A (sender -> counter)."""
    out = []
    for me, kind, peer, initiator in (
        (env.sender, "output", env.counter, True),
        (env.counter, "input", env.sender, False),
    ):
        stmt = Connect(
            app=APP,
            conn_id=b"A" * 16,
            kind=kind,
            endpoint="pressed",
            module_key=me.info["key"],
            peer=Peer(peer.info["measurement"], peer.info["key"], "local", "pressed"),
            initiator=initiator,
        )
        out.append(sign_connect(stmt, env.key))
    return out


def test_a_replayed_connect_statement_does_not_start_the_counters_over(env: Env) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    event = env.sender.deliver(press.seal(b"1")).events[0]
    assert env.counter.deliver(event).dropped is None
    _, to_counter = _pressed_statements(env)
    env.counter.connect(to_counter)  # a node agent replays the statement
    assert env.counter.deliver(event).dropped == "replay"


def test_a_signed_disconnect_ends_a_connection_in_the_secure_world(
    env: Env, wasm: Callable[..., Path]
) -> None:
    from veritee.evidence.deployment import Disconnect, sign_disconnect

    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    kept = env.sender.deliver(press.seal(b"sealed before the end")).events[0]
    statement = Disconnect(APP, (b"A" * 16,))
    # Not signed with the app's key, or altered on the way: refused, the channel stays.
    rogue = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(teec.TeecError, match="deployment key"):
        env.counter.disconnect(sign_disconnect(statement, rogue))
    other = bytearray(sign_disconnect(statement, env.key))
    i = bytes(other).index(b"A" * 16)
    other[i : i + 16] = b"B" * 16
    with pytest.raises(teec.TeecError, match="deployment key"):
        env.counter.disconnect(bytes(other))
    with pytest.raises(teec.TeecError, match="for app"):
        env.counter.disconnect(sign_disconnect(Disconnect("other-app", (b"A" * 16,)), env.key))
    assert any(c["conn"] == b"A" * 16 for c in env.counter.status()["connections"])

    signed = sign_disconnect(statement, env.key)
    env.sender.disconnect(signed)
    env.counter.disconnect(signed)
    # The sender no longer seals events on it; the counter refuses those sealed before.
    assert env.sender.deliver(press.seal(b"after the end")).events == []
    refused = env.counter.deliver(kept)
    assert refused.dropped == "misrouted"
    state = refused.state
    assert not any(c["conn"] == b"A" * 16 for c in env.counter.status()["connections"])
    # A replayed connect statement does not revive it, not even after a reload.
    to_sender, to_counter = _pressed_statements(env)
    with pytest.raises(teec.TeecError, match="cannot revive"):
        env.counter.connect(to_counter)
    with pytest.raises(teec.TeecError, match="cannot revive"):
        env.sender.connect(to_sender)
    env.counter.close()
    with env.dev.context() as ctx:
        again = _load(ctx, wasm("tests/assets/c/app_counter.c"), "counter", env.raw_key, state)
        with pytest.raises(teec.TeecError, match="cannot revive"):
            again.connect(to_counter)
        assert again.deliver(kept).dropped == "misrouted"


def test_a_base_rolled_back_in_storage_cannot_revive_an_ended_connection(
    env: Env, wasm: Callable[..., Path]
) -> None:
    """The keys and channels a state names live in the vTEE's storage, which the host can
    write: it puts back the counter's base from before the owner ended connection A."""
    from veritee.evidence.deployment import Disconnect, sign_disconnect

    def bases() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in env.dev.home.glob("**/storage/bases/*.sealed")}

    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    kept = env.sender.deliver(press.seal(b"sealed before the end")).events[0]
    before = bases()
    state = env.counter.disconnect(sign_disconnect(Disconnect(APP, (b"A" * 16,)), env.key))
    after = bases()
    (older,) = set(before) - set(after)  # the counter's base from before; deleted now
    (newer,) = set(after) - set(before)
    env.counter.close()
    newer.write_bytes(before[older])
    counter = wasm("tests/assets/c/app_counter.c")
    with env.dev.context() as ctx:
        with pytest.raises(teec.TeecError, match="altered or swapped"):
            _load(ctx, counter, "counter", env.raw_key, state)
        newer.unlink()
        with pytest.raises(teec.TeecError, match="not in this TEE's storage"):
            _load(ctx, counter, "counter", env.raw_key, state)
        newer.write_bytes(after[newer])  # the genuine base: it loads, and A stays ended
        again = _load(ctx, counter, "counter", env.raw_key, state)
        assert again.deliver(kept).dropped == "misrouted"


def test_a_discarded_state_frees_what_the_secure_world_kept_for_it(
    env: Env, wasm: Callable[..., Path]
) -> None:
    """A node agent that disables a module tells its secure world, with the module's newest
    state: the state's rollback counter is freed and its bases deleted. Nothing else does."""
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    first = env.sender.deliver(press.seal(b"1")).events[0]
    older = env.counter.deliver(first).state
    newest = env.counter.deliver(env.sender.deliver(press.seal(b"2")).events[0]).state
    measurement = env.counter.info["measurement"]
    bases = lambda: set(env.dev.home.glob("**/storage/bases/*.sealed"))  # noqa: E731
    before = bases()
    with env.dev.context() as ctx:
        session = AppSession(ctx)
        with pytest.raises(teec.TeecError, match="in use"):
            session.forget(measurement, newest)  # the counter module still runs it
        env.counter.close()
        with pytest.raises(teec.TeecError, match="stale"):
            session.forget(measurement, older)
        with pytest.raises(teec.TeecError, match="does not open"):
            session.forget(env.sender.info["measurement"], newest)
        session.forget(measurement, newest)
        assert len(bases()) == len(before) - 1  # the sender's stays
        with pytest.raises(teec.TeecError, match="no rollback counter"):
            _load(ctx, wasm("tests/assets/c/app_counter.c"), "counter", env.raw_key, newest)


# -- rollback of sealed state -------------------------------------------------------------------


def test_a_rolled_back_state_is_refused_and_nothing_is_accepted_twice(
    env: Env, wasm: Callable[..., Path]
) -> None:
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    first = env.sender.deliver(press.seal(b"1")).events[0]
    older = env.counter.deliver(first).state
    second = env.sender.deliver(press.seal(b"2")).events[0]
    newest = env.counter.deliver(second).state
    env.counter.close()
    counter = wasm("tests/assets/c/app_counter.c")
    with env.dev.context() as ctx:
        # The host hands back the state from before `second`: its counters would take
        # `second` again. Refused, saying why.
        with pytest.raises(teec.TeecError, match="rolled back: it carries counter"):
            _load(ctx, counter, "counter", env.raw_key, older)
        again = _load(ctx, counter, "counter", env.raw_key, newest)
        assert again.deliver_batch([first, second]).dropped == ["replay", "replay"]
        # One state runs in one instance: a second from the same state would take the
        # same events again.
        with env.dev.context() as ctx2, pytest.raises(teec.TeecError, match="already in use"):
            _load(ctx2, counter, "counter", env.raw_key, again.deliver_batch([]).state)


def test_rollback_counters_survive_a_restart_of_the_secure_world(
    fresh_device: Device, wasm: Callable[..., Path]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    counter = wasm("tests/assets/c/app_counter.c")
    with fresh_device.context() as ctx:
        session = _load(ctx, counter, "counter", raw)
        older = session.deliver_batch([]).state
        newest = session.deliver_batch([]).state
    fresh_device.stop()
    fresh_device.start()
    with fresh_device.context() as ctx:
        with pytest.raises(teec.TeecError, match="rolled back"):
            _load(ctx, counter, "counter", raw, older)
        _load(ctx, counter, "counter", raw, newest)


def test_events_leave_with_the_state_that_covers_them(env: Env, wasm: Callable[..., Path]) -> None:
    """Mid-batch, sealed events go to the node agent together with a state sealed after
    them: a host that keeps that state can never reload one whose send counters are behind
    events it already holds."""
    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    handed: list[dict[str, Any]] = []

    def node_agent(rpc: dict[str, Any]) -> dict[str, Any]:
        assert rpc["op"] == "events"
        handed.append(rpc)
        return {"ok": True}

    out = env.sender.deliver_batch([press.seal(b"1"), press.seal(b"2")], node_agent)
    assert out.events == [] and len(handed) == 1 and len(handed[0]["events"]) == 2
    assert out.state == handed[0]["state"]  # nothing moved since: the same state
    env.sender.close()
    with env.dev.context() as ctx:
        again = _load(ctx, wasm("tests/assets/c/app_sender.c"), "sender", env.raw_key, out.state)
        resealed = again.deliver(press.seal(b"3")).events[0]
        assert channels.parse_header(resealed)[3] == 3  # counters went on after the two


def test_the_answer_a_killed_node_agent_never_took_is_kept_and_taken_up(
    env: Env, wasm: Callable[..., Path]
) -> None:
    """The node agent is killed mid-call, the module running a batch: its work (counters,
    private files, events) must be neither lost nor done twice. The secure world seals the
    state all the same, and keeps the answer the agent never took in its storage; the next
    load with the state the agent held takes it up (the newest state, the events sealed
    with it), and the batch, handed in again from the agent's inbox, is done, not run
    again. A state older than the one the agent held stays refused as rolled back."""
    import socket
    import time

    _connect(env.key, b"R" * 16, env.sender, "request", "ask", env.counter, "handler", "count")
    query = _user_channel(env, b"U" * 16, env.sender, "entry", "query")
    older = env.sender.deliver_batch([]).state
    kept = env.sender.deliver_batch([]).state  # the newest the agent holds
    event = query.seal(b"")

    def dying_agent(rpc: dict[str, Any]) -> dict[str, Any]:
        env.ctx._sock.shutdown(socket.SHUT_RDWR)  # the node agent is killed mid-call
        return {"error": "gone"}

    with pytest.raises(teec.TeecError):
        env.sender.deliver_batch([event], dying_agent)
    sender = wasm("tests/assets/c/app_sender.c")

    def load(ctx: Any, state: bytes) -> AppSession:
        deadline = time.monotonic() + 10
        while True:  # the secure world lets the dead agent's session go
            try:
                return _load(ctx, sender, "sender", env.raw_key, state)
            except teec.TeecError as exc:
                if "already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    with env.dev.context() as ctx:
        with pytest.raises(teec.TeecError, match="rolled back"):
            load(ctx, older)  # older than what the agent held: the kept answer is not for it
        again = load(ctx, kept)
        recovered = again.info["recovered"]
        assert recovered["state"] != kept and recovered["events"] == []
        redone = again.deliver_batch([event])
        assert redone.dropped == [None] and "ask" not in redone.log  # done, not run again
        assert again.deliver_batch([event]).dropped == ["replay"]  # and only once
        fresh = again.deliver_batch([query.seal(b"")])
        assert fresh.dropped == [None] and "ask failed" in fresh.log  # new events run
        again.close()
        for stale in (older, kept):  # what the agent held is behind now: refused
            with pytest.raises(teec.TeecError, match="rolled back"):
                _load(ctx, sender, "sender", env.raw_key, stale)
        _load(ctx, sender, "sender", env.raw_key, fresh.state).close()


def test_events_sealed_for_a_killed_node_agent_are_handed_to_the_next(
    env: Env, wasm: Callable[..., Path]
) -> None:
    """The agent dies as the module hands out the events it emitted mid-batch: they never
    left. The next load hands them over, sealed as they were, once; the receiver takes
    them in order."""
    import socket
    import time

    press = _user_channel(env, b"P" * 16, env.sender, "entry", "press")
    kept = env.sender.deliver_batch([]).state

    def dying_agent(rpc: dict[str, Any]) -> dict[str, Any]:
        env.ctx._sock.shutdown(socket.SHUT_RDWR)  # killed as the events come out
        return {"error": "gone"}

    presses = [press.seal(b"1"), press.seal(b"2")]
    with pytest.raises(teec.TeecError):
        env.sender.deliver_batch(presses, dying_agent)
    sender = wasm("tests/assets/c/app_sender.c")
    with env.dev.context() as ctx:
        deadline = time.monotonic() + 10
        while True:
            try:
                again = _load(ctx, sender, "sender", env.raw_key, kept)
                break
            except teec.TeecError as exc:
                if "already in use" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        events = again.info["recovered"]["events"]
        assert len(events) == 2
        assert env.counter.deliver_batch(events).dropped == [None, None]
        assert again.deliver_batch(presses).dropped == [None, None]  # done: nothing new
        assert again.deliver_batch(presses).events == []
        assert env.counter.deliver_batch(events).dropped == ["replay", "replay"]
