"""Fan-out events (tee/channels.py): one output connected to several inputs seals its payload
once, with one wrap per connection. What an input, a node agent or a broker could do with
one is refused by the input's secure world and counted, as for an event of one connection.

The adversaries here hold real channel keys made by real X25519 agreements, as the secure
worlds make them: a sibling input knows the event's payload key (it opens its own wrap) but
not the other inputs' connection keys.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from veritee.evidence.deployment import Connect, Peer
from veritee.tee import channels
from veritee.tee.channels import FANOUT, WRAP_BYTES, Channel, EventRejected

SOURCE = b"s" * 32
INPUTS = 3


def _pair(source: x25519.X25519PrivateKey, n: int) -> tuple[Channel, Channel]:
    """Both ends of connection ``n`` from the source's output to input ``n``."""
    sink = x25519.X25519PrivateKey.generate()
    conn = os.urandom(16)
    spub, kpub = source.public_key().public_bytes_raw(), sink.public_key().public_bytes_raw()
    sink_m = bytes([n]) * 32
    out = channels.establish(
        source,
        SOURCE,
        Connect("app", conn, "output", "out", spub, Peer(sink_m, kpub, "n", "in"), True, 1),
    )
    inp = channels.establish(
        sink,
        sink_m,
        Connect("app", conn, "input", "in", kpub, Peer(SOURCE, spub, "n", "out"), False, 1),
    )
    return out, inp


Ends = tuple[list[Channel], list[Channel]]


@pytest.fixture
def ends() -> Ends:
    source = x25519.X25519PrivateKey.generate()
    pairs = [_pair(source, n) for n in range(INPUTS)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _parts(event: bytes) -> dict[bytes, bytes]:
    return {conn: one for conn, _, one in channels.split(event)}


def test_one_event_reaches_every_input_each_at_its_own_counter(ends: Ends) -> None:
    outs, ins = ends
    outs[0].seal(b"before the others were connected")  # counters differ between connections
    ins[0].received = 1
    event = channels.seal_fanout(outs, b"hello")
    assert event[0] == FANOUT and len(channels.split(event)) == INPUTS
    # The payload is in it once: its size grows by one wrap per input, not one payload.
    assert len(event) == 3 + INPUTS * WRAP_BYTES + len(b"hello") + 16
    parts = _parts(event)
    for inp in ins:
        assert inp.open(parts[inp.conn_id]) == b"hello"
    assert [i.received for i in ins] == [2, 1, 1]
    second = _parts(channels.seal_fanout(outs, b"again"))
    assert [i.open(second[i.conn_id]) for i in ins] == [b"again"] * INPUTS


def test_a_sibling_input_that_knows_the_payload_key_cannot_forge_for_the_others(ends: Ends) -> None:
    """Input 0's secure world (compromised) opens its wrap: it has the event's payload key.
    It makes a new payload under that key and sends it on with input 1's wrap: refused."""
    outs, ins = ends
    event = channels.seal_fanout(outs, b"turn the heating off")
    parts = _parts(event)
    mine = parts[ins[0].conn_id]
    wrap = mine[3 : 3 + WRAP_BYTES]
    counter = int.from_bytes(wrap[16:24], "big")
    body = mine[3 + WRAP_BYTES :]
    ad = bytes([FANOUT]) + wrap[:24] + hashlib.sha256(body).digest()
    key = ChaCha20Poly1305(ins[0].recv_key).decrypt(
        bytes(4) + counter.to_bytes(8, "big"), wrap[24:], ad
    )
    forged_body = ChaCha20Poly1305(key).encrypt(bytes(12), b"open the door", bytes([FANOUT]))
    theirs = parts[ins[1].conn_id]
    forged = theirs[: 3 + WRAP_BYTES] + forged_body
    with pytest.raises(EventRejected) as refused:
        ins[1].open(forged)
    assert refused.value.reason == "altered" and ins[1].dropped == {"altered": 1}
    assert ins[1].open(theirs) == b"turn the heating off"  # the genuine one still opens


def test_a_wrap_moved_onto_another_events_payload_is_refused(ends: Ends) -> None:
    outs, ins = ends
    first, second = (_parts(channels.seal_fanout(outs, p)) for p in (b"one", b"two"))
    c = ins[2].conn_id
    spliced = second[c][: 3 + WRAP_BYTES] + first[c][3 + WRAP_BYTES :]
    with pytest.raises(EventRejected, match="altered"):
        ins[2].open(spliced)
    assert ins[2].open(second[c]) == b"two"


def test_replayed_reordered_and_misrouted_parts_are_refused_and_counted(ends: Ends) -> None:
    outs, ins = ends
    e1, e2 = (_parts(channels.seal_fanout(outs, p)) for p in (b"1", b"2"))
    a, b = ins[0], ins[1]
    assert a.open(e2[a.conn_id]) == b"2"
    with pytest.raises(EventRejected, match="replay"):
        a.open(e1[a.conn_id])  # older, delivered after a newer one
    with pytest.raises(EventRejected, match="replay"):
        a.open(e2[a.conn_id])  # the same again
    with pytest.raises(EventRejected, match="another connection"):
        b.open(e1[a.conn_id])  # another input's part
    assert a.dropped == {"replay": 2} and b.dropped == {"misrouted": 1}
    assert b.open(e1[b.conn_id]) == b"1"


def test_a_fan_out_event_whole_does_not_reach_a_module(ends: Ends) -> None:
    """A secure world takes one wrap at a time (the node agent splits): a whole fan-out
    event, or one cut short, is malformed, never a crash."""
    outs, ins = ends
    event = channels.seal_fanout(outs, b"x")
    for bad in (event, event[:40], bytes([FANOUT]) + b"\x00\x00" + bytes(40), bytes([FANOUT])):
        with pytest.raises(EventRejected) as refused:
            ins[0].open(bad)
        assert refused.value.reason == "malformed"


@pytest.mark.parametrize(
    "event",
    [
        bytes([FANOUT]),
        bytes([FANOUT, 0, 0]) + bytes(16),  # no wraps
        bytes([FANOUT, 0xFF, 0xFF]) + bytes(100),  # more wraps than bytes
        bytes([FANOUT, 0, 2]) + bytes(WRAP_BYTES * 2),  # no payload
        bytes([7]) + bytes(60),  # a version nobody makes
    ],
)
def test_a_node_agent_splitting_garbage_gets_a_clear_refusal(event: bytes) -> None:
    with pytest.raises(EventRejected) as refused:
        channels.split(event)
    assert refused.value.reason == "malformed"


def test_keeping_some_wraps_keeps_what_each_kept_input_needs(ends: Ends) -> None:
    outs, ins = ends
    event = channels.seal_fanout(outs, b"for two of three")
    kept = channels.keep_wraps(event, {ins[0].conn_id, ins[2].conn_id})
    assert len(kept) == len(event) - WRAP_BYTES
    parts = _parts(kept)
    assert set(parts) == {ins[0].conn_id, ins[2].conn_id}
    assert ins[2].open(parts[ins[2].conn_id]) == b"for two of three"


def test_only_an_outputs_own_end_seals_a_fan_out(ends: Ends) -> None:
    _, ins = ends
    with pytest.raises(EventRejected, match="fan-out"):
        channels.seal_fanout(ins, b"an input does not send")
    with pytest.raises(EventRejected, match="fan-out"):
        channels.seal_fanout([], b"to nobody")
