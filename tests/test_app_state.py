"""A module's sealed state: small after every batch, its base sealed when connections change.

The state after a batch holds the rollback counter and the channels' counters, and names by
its SHA-256 a base (keys, channels, ended connections) that the vTEE keeps in its storage.
These tests follow a module through its history, restore it at each step, attack the base
in storage, and check that old bases go and that states of earlier, unbound formats are
refused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee.errors import SealingError
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.evidence.provisioning import ProvisioningKeys
from veritee.tee import app_ta
from veritee.tee.app_ta import MAX_ENDED, AppModule
from veritee.tee.channels import Channel, EventRejected
from veritee.tee.sealing import Counters, Sealer
from veritee.wasm import endpoints
from veritee.wasm.runtime import Limits

APP = "home"


def _channel(initiator: bool = True) -> Channel:
    return Channel(
        conn_id=os.urandom(16),
        kind="output" if initiator else "input",
        endpoint="pressed",
        initiator=initiator,
        peer=Peer(os.urandom(32), os.urandom(32), "home-server", "pressed"),
        send_key=os.urandom(32),
        recv_key=os.urandom(32),
    )


def _pair() -> tuple[Channel, Channel]:
    """Both ends of one connection."""
    a = _channel()
    b = _channel(initiator=False)
    b.conn_id, b.send_key, b.recv_key = a.conn_id, a.recv_key, a.send_key
    return a, b


@pytest.fixture
def counters(tmp_path: Path) -> Iterator[Counters]:
    fd = os.open(tmp_path / "counters", os.O_RDWR | os.O_CREAT, 0o600)
    yield Counters(fd)
    os.close(fd)


def _module(counters: Counters, bases: Path, **kw: object) -> AppModule:
    seal_key, measurement = os.urandom(32), os.urandom(32)
    fields: dict[str, object] = {
        "name": "counter",
        "app": APP,
        "deployment_key": ec.generate_private_key(ec.SECP256R1()).public_key(),
        "measurement": measurement,
        "config_digest": os.urandom(32),
        "limits": Limits(),
        "table": [endpoints.Endpoint("input", "pressed")],
        "sealer": Sealer(seal_key, measurement),
        "counters": counters,
        "lineage": counters.create(),
        "seal_key": seal_key,
        "attestation_key": ec.generate_private_key(ec.SECP256R1()),
        "provisioning": ProvisioningKeys(),
        "vtee_token": b"",
        "bases": bases,
    }
    fields.update(kw)
    return AppModule(**fields)  # type: ignore[arg-type]


@pytest.fixture
def module(counters: Counters, tmp_path: Path) -> AppModule:
    return _module(counters, tmp_path / "bases")


def _restore(m: AppModule, state: bytes) -> app_ta._Restored:
    assert m.bases is not None
    return app_ta._restore(m.sealer, m.counters, state, m.app, m.name, m.raw_key, m.bases)


def _check(m: AppModule) -> bytes:
    """Seal the state and restore it: the same keys, channels, counters and ended."""
    state = m.state()
    restored = _restore(m, state)
    assert restored.channels == list(m.channels.values())
    assert (restored.ended, restored.ended_before) == (m.ended, m.ended_before)
    assert restored.provisioning.export() == m.provisioning.export()
    assert restored.lineage == m.lineage
    return state


def _bases(m: AppModule) -> list[Path]:
    assert m.bases is not None
    return sorted(m.bases.glob(f"{m.lineage.hex()}-*"))


def test_a_module_restores_as_it_was_at_every_step_of_its_history(module: AppModule) -> None:
    _check(module)  # fresh: no channels, nothing ended
    pairs = [_pair() for _ in range(6)]
    for i, (out, inp) in enumerate(pairs):
        module.add(out if i % 2 == 0 else inp)
    _check(module)
    sender = pairs[0][0]  # the module's end: it sends
    peer, receiver = pairs[1]  # the module's end receives what the peer seals
    for _ in range(3):
        sender.seal(b"out")
    events = [peer.seal(b"in") for _ in range(3)]
    for e in events:
        receiver.open(e)
    _check(module)
    with pytest.raises(EventRejected, match="replayed"):
        receiver.open(events[0])
    assert receiver.dropped == {"replay": 1}
    _check(module)
    assert module.end((pairs[2][0].conn_id, os.urandom(16)), 1_800_000_000) == 1
    _check(module)
    sender.seal(b"after the end")
    _check(module)
    assert len(_bases(module)) == 1  # older bases go once a state names the newest


@settings(max_examples=100, deadline=None)
@given(
    counts=st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.integers(0, 2**64 - 1),
            st.dictionaries(st.sampled_from(["replay", "altered", "misrouted"]), st.integers(1)),
        ),
        max_size=8,
    )
)
def test_any_counters_restore_exactly(counts: list[tuple[int, int, dict[str, int]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(Path(tmp) / "counters", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            m = _module(Counters(fd), Path(tmp) / "bases")
            for sent, received, dropped in counts:
                ch = _channel()
                ch.sent, ch.received, ch.dropped = sent, received, dropped
                m.add(ch)
            _check(m)
        finally:
            os.close(fd)


def test_the_state_after_a_batch_does_not_grow_with_history(module: AppModule) -> None:
    module.add(_channel())
    small = len(module.state())
    for _ in range(MAX_ENDED // 1024):
        module.end(tuple(os.urandom(16) for _ in range(1024)), 1_800_000_000)
    for _ in range(99):
        module.add(_channel())
    module.state()
    # 99 more channels cost 16 bytes each in the state; the 4096 ended connections and
    # every channel's keys and peer are in the base.
    assert len(module.state()) <= small + 99 * 16 + 16
    assert len(_bases(module)[0].read_bytes()) > 4096 * 16


def _stored_base(m: AppModule) -> bytes:
    (path,) = _bases(m)
    return path.read_bytes()


def test_a_base_swapped_for_an_older_one_is_refused(module: AppModule) -> None:
    out, _ = _pair()
    module.add(out)
    module.state()
    older = _stored_base(module)  # from before the owner ended that connection
    module.end((out.conn_id,), 1_800_000_000)
    state = module.state()
    (path,) = _bases(module)
    path.write_bytes(older)  # the host would have the connection back
    with pytest.raises(SealingError, match="altered or swapped"):
        _restore(module, state)
    # A base altered in place is refused the same way.
    altered = bytearray(older)
    altered[-1] ^= 1
    path.write_bytes(bytes(altered))
    with pytest.raises(SealingError, match="altered or swapped"):
        _restore(module, state)


def test_a_missing_base_is_refused_saying_so(module: AppModule) -> None:
    module.add(_channel())
    state = module.state()
    for path in _bases(module):
        path.unlink()
    with pytest.raises(SealingError, match="not in this TEE's storage"):
        _restore(module, state)


def test_a_base_of_another_instance_is_refused(counters: Counters, tmp_path: Path) -> None:
    """Two instances of one module (one sealing key): a state cannot borrow the other's
    base, even copied in under the name it asks for."""
    first = _module(counters, tmp_path / "bases")
    second = _module(
        counters,
        tmp_path / "bases",
        sealer=first.sealer,
        measurement=first.measurement,
        seal_key=first.seal_key,
    )
    first.add(_channel())
    second.add(_channel())
    first.state()
    state = second.state()
    (mine,) = _bases(second)
    (theirs,) = _bases(first)
    mine.write_bytes(theirs.read_bytes())
    with pytest.raises(SealingError, match="altered or swapped"):
        _restore(second, state)


def test_while_two_instances_share_a_lineage_each_forgets_only_its_own_bases(
    counters: Counters, tmp_path: Path
) -> None:
    old = _module(counters, tmp_path / "bases")
    counters.claim(old.lineage, old.measurement, succession=False)
    old.add(_channel())
    old.state()
    # An update that keeps state: the new build runs beside the old one while they swap.
    new = _module(counters, tmp_path / "bases", lineage=old.lineage)
    counters.claim(old.lineage, new.measurement, succession=True)
    new.add(_channel())
    new.state()
    new.add(_channel())
    new.state()
    assert len(_bases(old)) == 2  # the old one's, and the new one's newest
    _check(old)  # the old one seals on, naming its own base, until the swap
    # Swapped: the old one is gone, and the next base the new one writes is the only one.
    counters.release(old.lineage, old.measurement)
    new.add(_channel())
    new.state()
    assert len(_bases(new)) == 1


def test_a_state_of_an_earlier_format_is_refused(module: AppModule) -> None:
    """Formats 2 and 3 recorded no deployment key, and their sealing key was bound to the
    measurement only: a node agent could load one under a key of its own (issue 18,
    attack 1). Such a state is refused, saying why, even sealed with this module's key."""
    ch = _channel()
    body = {
        "v": 2,
        "app": APP,
        "lineage": module.lineage,
        "counter": module.counters.advance(module.lineage),
        "provisioning": module.provisioning.export(),
        "channels": [{**ch.to_cbor(), "counters": [7, 9], "dropped": {"replay": 2}}],
        "ended": [[b"E" * 16, 1_800_000_000]],
        "ended_before": 5,
    }
    with pytest.raises(app_ta.DeploymentKeyMismatch, match="another deployment key"):
        _restore(module, module.sealer.seal(cbor2.dumps(body)))
    with pytest.raises(SealingError, match="another version"):  # bound, but format 2
        _restore(module, module.binding + module.sealer.seal(cbor2.dumps(body)))


def test_a_state_restores_only_under_the_deployment_key_it_records(module: AppModule) -> None:
    module.add(_channel())
    state = module.state()
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert module.bases is not None
    with pytest.raises(app_ta.DeploymentKeyMismatch, match="another deployment key"):
        app_ta._restore(
            module.sealer,
            module.counters,
            state,
            module.app,
            module.name,
            app_ta._sec1(other),
            module.bases,
        )
    # A host that relabels the state with the other key's binding: the key recorded inside
    # refuses it (in the secure world, the sealing key derived from the binding does too).
    relabelled = (
        app_ta.app_binding(APP, module.name, app_ta._sec1(other)) + state[app_ta.BINDING_BYTES :]
    )
    with pytest.raises(SealingError):
        app_ta._restore(
            module.sealer,
            module.counters,
            relabelled,
            module.app,
            module.name,
            app_ta._sec1(other),
            module.bases,
        )
    _check(module)


def test_past_max_ended_the_oldest_are_forgotten_and_earlier_statements_refused(
    module: AppModule,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    module.deployment_key = key.public_key()
    first = tuple(os.urandom(16) for _ in range(1024))
    module.end(first, 1_800_000_000)
    for i in range(MAX_ENDED // 1024):
        module.end(tuple(os.urandom(16) for _ in range(1024)), 1_800_000_001 + i)
    assert len(module.ended) == MAX_ENDED
    assert not any(conn in module.ended for conn in first)
    assert module.ended_before == 1_800_000_000
    _check(module)

    mine = module.provisioning.x25519.public_key().public_bytes_raw()
    peer_key = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()

    def statement(conn: bytes, iat: int) -> bytes:
        stmt = Connect(
            app=APP,
            conn_id=conn,
            kind="input",
            endpoint="pressed",
            module_key=mine,
            peer=Peer(os.urandom(32), peer_key, "home-hub", "pressed"),
            initiator=False,
            iat=iat,
        )
        return sign_connect(stmt, key)

    # A forgotten connection cannot come back either: its statement is from before.
    with pytest.raises(SealingError, match="cannot revive"):
        app_ta.connect(module, statement(first[0], 1_800_000_000))
    # A statement issued later than every end connects.
    fresh = os.urandom(16)
    app_ta.connect(module, statement(fresh, 1_800_000_100))
    assert fresh in module.channels
    _check(module)


def test_the_channels_of_an_endpoint_follow_connects_and_ends(module: AppModule) -> None:
    """Emitting looks the output's channels up by endpoint rather than scanning them all."""
    a, b, c = _channel(), _channel(), _channel(initiator=False)
    b.endpoint = "other"
    for ch in (a, b, c):
        module.add(ch)
    assert module.bound("output", "pressed") == [a]
    assert module.bound("input", "pressed") == [c]
    d = _channel()
    module.add(d)
    assert module.bound("output", "pressed") == [a, d]
    module.end((a.conn_id,), 1_800_000_000)
    assert module.bound("output", "pressed") == [d]
    assert module.bound("output", "other") == [b]
    assert module.bound("request", "pressed") == []


def test_a_discarded_lineage_frees_its_counter_for_another(tmp_path: Path) -> None:
    path = tmp_path / "counters"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    counters = Counters(fd)
    first, second = counters.create(), counters.create()
    counters.advance(first)
    newest = counters.advance(first)
    with pytest.raises(SealingError, match="stale or from elsewhere"):
        counters.forget(first, newest - 1)  # only the holder of the newest state
    with pytest.raises(SealingError, match="stale or from elsewhere"):
        counters.forget(os.urandom(16), 0)
    counters.claim(first, b"m" * 32, succession=False)
    with pytest.raises(SealingError, match="in use"):
        counters.forget(first, newest)
    counters.release(first, b"m" * 32)
    counters.forget(first, newest)
    with pytest.raises(SealingError, match="no rollback counter"):
        counters.check(first, newest)  # nothing of that lineage loads again
    os.close(fd)
    # The slot is free in the file too: the next lineage takes it, the file does not grow.
    fd = os.open(path, os.O_RDWR, 0o600)
    again = Counters(fd)
    size = path.stat().st_size
    third = again.create()
    assert path.stat().st_size == size and third not in (first, second)
    assert again.current(second) == 0 and again.current(third) == 0
    os.close(fd)


def test_a_crash_between_a_new_base_and_its_state_leaves_the_last_state_loadable(
    module: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older bases go only once a state names the newest: if the secure world dies after
    writing a base but before sealing the state that names it, the state the agent holds
    still finds its own."""
    module.add(_channel())
    held = module.state()
    module.add(_channel())

    def dies(lineage: bytes) -> int:
        raise SystemExit("the vTEE is killed")

    monkeypatch.setattr(module.counters, "advance", dies)
    with pytest.raises(SystemExit):
        module.state()
    assert len(_bases(module)) == 2  # the new base, and the one the held state names
    monkeypatch.undo()
    assert len(_restore(module, held).channels) == 1
