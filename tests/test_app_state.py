"""A module's sealed state, as the secure world encodes it after every batch.

The state is put together from parts encoded when they last changed (tee/encoding.py);
these tests hold it to the bytes cbor2 gives for the whole value, so that what is sealed
reads back as the state it is, whatever the counters and the history of ended connections.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from veritee.errors import SealingError
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.evidence.provisioning import ProvisioningKeys
from veritee.tee import app_ta, encoding
from veritee.tee.app_ta import MAX_ENDED, AppModule
from veritee.tee.channels import Channel
from veritee.tee.sealing import Counters, Sealer
from veritee.wasm import endpoints
from veritee.wasm.runtime import Limits

COUNTERS = st.integers(min_value=0, max_value=2**64 - 1)
DROPPED = st.dictionaries(
    st.sampled_from(["replay", "altered", "misrouted", "malformed"]), COUNTERS
)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_heads_are_the_shortest_cbor_encoding(n: int) -> None:
    assert encoding.uint(n) == cbor2.dumps(n)
    as_map = encoding.head(encoding.MAP, n)
    assert as_map == bytes([encoding.uint(n)[0] | 0xA0]) + encoding.uint(n)[1:]


@pytest.mark.parametrize("k", [0, 23, 24, 300])
def test_an_array_head_is_what_cbor2_writes_for_the_array(k: int) -> None:
    assert encoding.head(encoding.ARRAY, k) + b"\x00" * k == cbor2.dumps([0] * k)


def test_a_head_out_of_range_is_refused() -> None:
    for n in (-1, 2**64):
        with pytest.raises(ValueError, match="out of range"):
            encoding.uint(n)


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


@settings(max_examples=200)
@given(sent=COUNTERS, received=COUNTERS, dropped=DROPPED, initiator=st.booleans())
def test_a_channel_encodes_as_cbor2_would(
    sent: int, received: int, dropped: dict[str, int], initiator: bool
) -> None:
    ch = _channel(initiator)
    ch.encoded()  # the fixed part is kept from here on
    ch.sent, ch.received, ch.dropped = sent, received, dropped
    assert ch.encoded() == cbor2.dumps(ch.to_cbor())
    assert Channel.from_cbor(cbor2.loads(ch.encoded())) == ch


def test_a_channel_still_encodes_as_cbor2_would_after_sealing_and_opening() -> None:
    a, b = _channel(), _channel()
    b.conn_id, b.kind, b.initiator = a.conn_id, "input", False
    b.send_key, b.recv_key = a.recv_key, a.send_key
    a.encoded(), b.encoded()
    events = [a.seal(b"x") for _ in range(300)]
    for e in events:
        b.open(e)
    with pytest.raises(Exception, match="replayed"):
        b.open(events[0])
    assert b.dropped == {"replay": 1}
    for ch in (a, b):
        assert ch.encoded() == cbor2.dumps(ch.to_cbor())
    assert (a.sent, b.received) == (300, 300)


@pytest.fixture
def module(tmp_path: Path) -> Iterator[AppModule]:
    fd = os.open(tmp_path / "counters", os.O_RDWR | os.O_CREAT, 0o600)
    counters = Counters(fd)
    seal_key, measurement = os.urandom(32), os.urandom(32)
    yield AppModule(
        name="counter",
        app="home",
        deployment_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        measurement=measurement,
        config_digest=os.urandom(32),
        limits=Limits(),
        table=[endpoints.Endpoint("input", "pressed")],
        sealer=Sealer(seal_key, measurement),
        counters=counters,
        lineage=counters.create(),
        seal_key=seal_key,
        attestation_key=ec.generate_private_key(ec.SECP256R1()),
        provisioning=ProvisioningKeys(),
        vtee_token=b"",
    )
    os.close(fd)


def _as_cbor2_would(m: AppModule, counter: int) -> bytes:
    """The state's plaintext, encoded whole: the format _restore reads."""
    body: dict[str, Any] = {
        "v": app_ta.STATE_VERSION,
        "app": m.app,
        "lineage": m.lineage,
        "counter": counter,
        "provisioning": m.provisioning.export(),
        "channels": [c.to_cbor() for c in m.channels.values()],
        "ended": [[conn, at] for conn, at in m.ended.items()],
        "ended_before": m.ended_before,
    }
    return bytes(cbor2.dumps(body))


def _check(m: AppModule) -> None:
    sealed = m.state()
    assert m.sealer.unseal(sealed) == _as_cbor2_would(m, m.counters.current(m.lineage))
    restored = app_ta._restore(m.sealer, m.counters, sealed, m.app)
    assert restored.channels == list(m.channels.values())
    assert (restored.ended, restored.ended_before) == (m.ended, m.ended_before)


def test_the_state_is_what_cbor2_would_seal_through_a_module_history(module: AppModule) -> None:
    _check(module)  # fresh: no channels, nothing ended
    channels = [_channel(i % 2 == 0) for i in range(6)]
    for ch in channels:
        module.channels[ch.conn_id] = ch
    _check(module)
    channels[0].seal(b"event")
    channels[1].dropped["altered"] = 3
    _check(module)
    assert module.end((channels[2].conn_id, os.urandom(16)), 1_800_000_000) == 1
    _check(module)
    channels[0].seal(b"after the end")  # counters move, the ended part is kept encoded
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
            app="home",
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
