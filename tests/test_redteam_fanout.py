"""Red team: attacks on fan-out events (tee/channels.py version 2, the node agent's split and
fan-out routing, the broker's fan-out stream).

Adversaries: a node agent (any bytes between secure worlds), the broker or a hostile NATS
client, a hostile sibling input (it knows the payload key D of every event it gets), the
network. The secure worlds' channel ends are real (real X25519 agreements, as the secure
worlds make them); the secure world's own entry check is app_ta._check, the real code. The
node agent is the real NodeAgent, with transports that record what it sends (where a real
broker matters, a real nats-server).

A test marked ``xfail(strict=True)`` whose docstring starts ``HOLE:`` asserts the secure
behaviour and fails while the hole is open; one that starts ``Was a HOLE`` found one that
is fixed; the others are attacks that are refused, and pass (each also checks the
legitimate flow still works).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests._nats import NatsServer
from veritee.app._host import ModuleHost
from veritee.app._nats_wire import parse_transport
from veritee.app.agent import NodeAgent
from veritee.app.routes import End, Route
from veritee.app.transport import Address, EventSink, Peer, RequestSink, Transport
from veritee.app.transport_nats import (
    NatsTransport,
    fanout_durable,
    fanout_stream_name,
    fanout_subject,
    stream_name,
)
from veritee.evidence.deployment import Connect
from veritee.evidence.deployment import Peer as CPeer
from veritee.home import Home
from veritee.tee import app_ta, channels
from veritee.tee.channels import (
    FANOUT,
    MAX_COUNTER,
    MAX_PAYLOAD,
    MAX_WRAPS,
    TAG_BYTES,
    WRAP_BYTES,
    Channel,
    EventRejected,
)

SOURCE_M = b"s" * 32
APP = "fan"


# == real channel ends ==========================================================================


def _pair(
    source: x25519.X25519PrivateKey,
    n: int,
    *,
    kind: str = "input",
    out_kind: str = "output",
    app: str = APP,
) -> tuple[Channel, Channel]:
    """Both ends of a connection from the source (initiator) to sink ``n`` (responder)."""
    sink = x25519.X25519PrivateKey.generate()
    conn = os.urandom(16)
    spub, kpub = source.public_key().public_bytes_raw(), sink.public_key().public_bytes_raw()
    sink_m = bytes([n]) * 32
    out = channels.establish(
        source,
        SOURCE_M,
        Connect(app, conn, out_kind, "out", spub, CPeer(sink_m, kpub, "n", "in"), True, 1),
    )
    inp = channels.establish(
        sink,
        sink_m,
        Connect(app, conn, kind, "in", kpub, CPeer(SOURCE_M, spub, "n", "out"), False, 1),
    )
    return out, inp


def _ends(k: int = 3) -> tuple[list[Channel], list[Channel]]:
    source = x25519.X25519PrivateKey.generate()
    pairs = [_pair(source, n) for n in range(k)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _parts(event: bytes) -> dict[bytes, bytes]:
    return {conn: one for conn, _, one in channels.split(event)}


def _module(*chans: Channel) -> Any:
    """What app_ta._check reads of a loaded module: its channels and its drop counts."""
    return SimpleNamespace(channels={c.conn_id: c for c in chans}, dropped={})


def _check(loaded: Any, event: bytes) -> bytes | str:
    """The secure world's entry check of one event: its payload, or the drop reason."""
    try:
        return app_ta._check(loaded, event, app_ta.ANSWERS)[1]
    except EventRejected as exc:
        return exc.reason


def _wrap_key(inp: Channel, part: bytes) -> bytes:
    """What a (compromised) input's secure world learns from its part: the payload key D."""
    wrap = part[3 : 3 + WRAP_BYTES]
    counter = int.from_bytes(wrap[16:24], "big")
    ad = bytes([FANOUT]) + wrap[:24] + hashlib.sha256(part[3 + WRAP_BYTES :]).digest()
    return ChaCha20Poly1305(inp.recv_key).decrypt(
        bytes(4) + counter.to_bytes(8, "big"), wrap[24:], ad
    )


# == the secure world: shapes ===================================================================


def _fan(n: int, body: int, wraps: int | None = None) -> bytes:
    """A fan-out event with header count ``n`` and ``wraps`` wraps of zeros before ``body``."""
    return struct.pack(">BH", FANOUT, n) + bytes(
        WRAP_BYTES * (n if wraps is None else wraps) + body
    )


SHAPES = {
    "one byte": bytes([FANOUT]),
    "two bytes": bytes([FANOUT, 0]),
    "n=0": _fan(0, 32),
    "n=0xffff": _fan(0xFFFF, 100, wraps=1),
    "n over the body": _fan(3, 10, wraps=2),
    "truncated wrap": _fan(1, 0, wraps=1)[:-5],
    "body under a tag": _fan(1, TAG_BYTES - 1),
    "body over the payload bound": _fan(1, MAX_PAYLOAD + TAG_BYTES + 1),
    "n over MAX_WRAPS": _fan(MAX_WRAPS + 1, 16),
    "several wraps at once": _fan(2, 16),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_malformed_fan_outs_are_refused_and_counted_at_every_layer(name: str) -> None:
    """Node agent / broker: n=0, huge n, n larger than the body, truncated wraps, a body
    under one tag or over the payload bound. split and parse_header refuse each with
    EventRejected("malformed") (no other exception), and the secure world counts it."""
    event = SHAPES[name]
    outs, ins = _ends(2)
    loaded = _module(*ins)
    with pytest.raises(EventRejected) as refused:
        channels.parse_header(event)
    assert refused.value.reason == "malformed"
    if name != "several wraps at once":  # whole: the agent splits it, that is legitimate
        with pytest.raises(EventRejected, match=r"truncated|oversized"):
            channels.split(event)
    assert _check(loaded, event) == "malformed"
    assert loaded.dropped == {"malformed": 1}
    good = _parts(channels.seal_fanout(outs, b"still works"))
    assert [_check(loaded, good[i.conn_id]) for i in ins] == [b"still works"] * 2


def test_a_v2_part_and_a_v1_event_share_one_counter_and_neither_replays_the_other() -> None:
    """Node agent: mixing versions on one connection. The sender draws v1 and v2 counters
    from one sequence; the input keeps one highest. Delivered out of order, or a v1
    ciphertext re-dressed as a v2 wrap at its counter, or the reverse: refused, counted."""
    outs, ins = _ends(2)
    a_out, a_in = outs[0], ins[0]
    loaded = _module(a_in)
    e1 = a_out.seal(b"v1 first")  # counter 1
    e2 = _parts(channels.seal_fanout(outs, b"v2 second"))[a_in.conn_id]  # counter 2
    e3 = a_out.seal(b"v1 third".ljust(32))  # counter 3; as long as D: a wrap's size
    assert channels.parse_header(e2)[3] == 2 and channels.parse_header(e3)[3] == 3
    # v1 ciphertext at counter 3, re-dressed as a v2 wrap for the same counter
    body = ChaCha20Poly1305(os.urandom(32)).encrypt(bytes(12), b"x", bytes([FANOUT]))
    redressed = struct.pack(">BH", FANOUT, 1) + e3[1:17] + e3[18:26] + e3[26:74] + body
    assert len(redressed) == 3 + WRAP_BYTES + len(body)
    # a v2 wrap re-dressed as a v1 event at its counter
    v1_from_v2 = bytes([1]) + e2[3:19] + bytes([0]) + e2[19:27] + e2[27:]
    assert _check(loaded, e3) == b"v1 third".ljust(32)
    assert [_check(loaded, e) for e in (e1, e2, e3)] == ["replay"] * 3
    outs2, ins2 = _ends(1)
    loaded2 = _module(ins2[0])
    f1 = outs2[0].seal(b"1")
    f2 = outs2[0].seal(b"2")
    f3 = outs2[0].seal(b"3" * 32)
    assert _check(loaded2, f1) == b"1"
    redressed2 = struct.pack(">BH", FANOUT, 1) + f3[1:17] + f3[18:26] + f3[26:74] + body
    assert _check(loaded2, redressed2) == "altered"
    assert _check(loaded2, f2) == b"2" and _check(loaded2, f3) == b"3" * 32
    assert _check(loaded, redressed) == "replay"  # at a counter already taken
    assert _check(loaded, v1_from_v2) == "replay"
    assert loaded.dropped == {"replay": 5} and loaded2.dropped == {"altered": 1}
    assert ins[1].open(_parts(channels.seal_fanout(outs, b"on"))[ins[1].conn_id]) == b"on"


def test_a_v2_v1_downgrade_at_a_fresh_counter_does_not_authenticate() -> None:
    """Node agent: a fan-out wrap re-dressed as a v1 event at a counter the input has not
    taken (before delivering the genuine part): refused as altered; the genuine part then
    opens (the failed forgery moved no counter)."""
    outs, ins = _ends(2)
    loaded = _module(ins[0])
    part = _parts(channels.seal_fanout(outs, b"genuine"))[ins[0].conn_id]
    as_v1 = bytes([1]) + part[3:19] + bytes([0]) + part[19:27] + part[27:]
    assert _check(loaded, as_v1) == "altered"
    assert _check(loaded, part) == b"genuine"


def test_a_fan_out_part_on_a_backward_direction_or_a_handler_is_refused() -> None:
    """Node agent: a v2 part handed to the output's own end (a reply direction: v2 is
    FORWARD only), to a request's requester as its reply, and a v2 part forged for a
    handler connection (its key differs): refused and counted."""
    source = x25519.X25519PrivateKey.generate()
    out_a, in_a = _pair(source, 0)
    out_b, _ = _pair(source, 1)
    req, handler = _pair(source, 2, kind="handler", out_kind="request")
    part = _parts(channels.seal_fanout([out_a, out_b], b"p"))[in_a.conn_id]
    with pytest.raises(EventRejected, match="another connection or direction"):
        out_a.open(part)  # the initiator's end expects BACKWARD
    # dressed as the handler connection's (its id), at a fresh counter
    forged = part[:3] + handler.conn_id + part[19:]
    loaded = _module(handler)
    assert _check(loaded, forged) == "altered"
    # as the requester's reply: the requester expects BACKWARD
    with pytest.raises(EventRejected, match="direction"):
        req.open(part[:3] + req.conn_id + part[19:])
    # the legitimate request and reply still work
    assert handler.open(req.seal(b"q")) == b"q"
    assert req.open(handler.seal(b"r")) == b"r"
    assert in_a.open(part) == b"p"


def test_a_wrap_of_another_apps_connection_is_misrouted() -> None:
    """Node agent / broker: a part of app X's fan-out handed to a module of app Y (even one
    whose own source shares the X25519 key): no such connection there, counted."""
    source = x25519.X25519PrivateKey.generate()
    xa, _ = _pair(source, 0, app="x")
    xb, _ = _pair(source, 1, app="x")
    ya, y_in = _pair(source, 0, app="y")
    loaded = _module(y_in)
    for part in _parts(channels.seal_fanout([xa, xb], b"for x")).values():
        assert _check(loaded, part) == "misrouted"
        # with the id rewritten to Y's connection: its wrap does not open under Y's key
        assert _check(loaded, part[:3] + y_in.conn_id + part[19:]) == "altered"
    assert loaded.dropped == {"misrouted": 2, "altered": 2}
    assert _check(loaded, ya.seal(b"for y")) == b"for y"


def test_no_other_channel_of_the_source_opens_any_wrap() -> None:
    """Leak: a module connected to another output of the same source (same source key,
    same node) gets the whole fan-out: none of its keys opens a wrap (D stays unknown)."""
    source = x25519.X25519PrivateKey.generate()
    outs, _ = zip(*(_pair(source, n) for n in range(3)), strict=True)
    _, other = _pair(source, 9)
    event = channels.seal_fanout(list(outs), b"secret")
    for part in _parts(event).values():
        dressed = part[:3] + other.conn_id + part[19:]
        with pytest.raises(EventRejected, match="altered"):
            other.open(dressed)
    assert other.dropped == {"altered": 3} and other.received == 0


def test_a_sibling_with_d_cannot_reuse_it_to_alter_anothers_part_or_a_later_event() -> None:
    """Hostile sibling (adversary 3): it knows D of each event it gets. It keeps the other
    input's wrap and makes new payloads under D (same length, other text; the empty
    payload; a body of another event of its own under D), and tries the other's wrap with
    a body it made under its own later D: each refused."""
    outs, ins = _ends(3)
    e1 = _parts(channels.seal_fanout(outs, b"temperature 21"))
    e2 = _parts(channels.seal_fanout(outs, b"temperature 22"))
    me, victim = ins[0], ins[1]
    d1 = _wrap_key(me, e1[me.conn_id])
    d2 = _wrap_key(me, e2[me.conn_id])
    assert d1 != d2  # a fresh D per event
    wrap1 = e1[victim.conn_id][: 3 + WRAP_BYTES]
    aead1 = ChaCha20Poly1305(d1)
    for body in (
        aead1.encrypt(bytes(12), b"temperature 99", bytes([FANOUT])),
        aead1.encrypt(bytes(12), b"", bytes([FANOUT])),
        aead1.encrypt(bytes(12), b"temperature 21", b""),
        e2[me.conn_id][3 + WRAP_BYTES :],
        ChaCha20Poly1305(d2).encrypt(bytes(12), b"temperature 21", bytes([FANOUT])),
    ):
        with pytest.raises(EventRejected, match="altered"):
            victim.open(wrap1 + body)
    assert victim.dropped == {"altered": 5}
    assert victim.open(e1[victim.conn_id]) == b"temperature 21"
    assert victim.open(e2[victim.conn_id]) == b"temperature 22"


def test_counter_overflow_at_2_64_minus_1_ends_the_output_cleanly() -> None:
    """Counter overflow: one connection of the fan-out at 2^64-2. The next event takes
    2^64-1 for it; the one after is refused at the source (no event, no wrap at a counter
    reused, no wrap at 0). The input took 2^64-1 and refuses any event after it."""
    outs, ins = _ends(2)
    outs[1].sent = MAX_COUNTER - 1
    ins[1].received = MAX_COUNTER - 1
    last = _parts(channels.seal_fanout(outs, b"last"))
    assert channels.parse_header(last[ins[1].conn_id])[3] == MAX_COUNTER
    assert ins[1].open(last[ins[1].conn_id]) == b"last"
    with pytest.raises(EventRejected, match="exhausted"):
        channels.seal_fanout(outs, b"one too many")
    assert outs[1].sent == MAX_COUNTER
    with pytest.raises(EventRejected, match="replay"):
        ins[1].open(last[ins[1].conn_id])
    # the other input is unaffected: it got "last" at its own counter
    assert ins[0].open(last[ins[0].conn_id]) == b"last"
    # and a seal on the exhausted connection alone fails too
    with pytest.raises(EventRejected, match="exhausted"):
        outs[1].seal(b"x")


def test_a_whole_fan_out_event_reaches_the_secure_world_as_malformed() -> None:
    """Node agent: a fan-out of three wraps handed whole to the secure world (deliver and
    deliver_batch share _check): refused and counted; each part then opens."""
    outs, ins = _ends(3)
    event = channels.seal_fanout(outs, b"whole")
    loaded = _module(*ins)
    assert _check(loaded, event) == "malformed"
    assert loaded.dropped == {"malformed": 1}
    assert [_check(loaded, p) for p in _parts(event).values()] == [b"whole"] * 3


# -- property: crafted input to split / keep_wraps / parse_header never escapes as a traceback


_LEGIT = channels.seal_fanout(_ends(3)[0], b"payload")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda head, tail: bytes([FANOUT]) + head + tail,
            st.binary(min_size=2, max_size=2),
            st.binary(max_size=400),
        ),
        st.builds(
            lambda at, byte, cut: (
                _LEGIT[: at % len(_LEGIT)] + bytes([byte]) + _LEGIT[at % len(_LEGIT) + 1 :]
            )[: max(1, len(_LEGIT) - cut)],
            st.integers(0, 10_000),
            st.integers(0, 255),
            st.integers(0, 80),
        ),
    ),
    keep=st.sets(st.integers(0, 3)),
)
def test_any_bytes_split_keep_wraps_parse_header_only_refuse(data: bytes, keep: set[int]) -> None:
    """Node agent: split, keep_wraps and parse_header on crafted bytes raise EventRejected
    or give parts that each parse as one connection's event (no other exception)."""
    try:
        parts = channels.split(data)
    except EventRejected:
        return
    for conn, _, one in parts:
        assert channels.parse_header(one)[1] == conn
    if data[:1] == bytes([FANOUT]):
        conns = [c for c, _, _ in parts]
        kept = {conns[i] for i in keep if i < len(conns)}
        if kept:
            assert {c for c, _, _ in channels.split(channels.keep_wraps(data, kept))} == kept


# == the node agent =============================================================================


class _Links(Transport):
    """Direct links that record what the agent sends (and never connect)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, list[bytes]]] = []

    def start(self, on_events: EventSink, on_request: RequestSink) -> Address:
        return ("127.0.0.1", 0)

    def send(self, to: Address | Peer, event: bytes) -> None:
        self.send_all(to, [event])

    def send_all(self, to: Address | Peer, events: list[bytes]) -> None:
        self.sent.append((to, list(events)))

    def request(self, to: Address | Peer, event: bytes, timeout: float = 0) -> bytes:
        raise AssertionError("no request here")

    def links(self) -> dict[str, dict[str, int | bool]]:
        return {}

    def close(self) -> None:
        pass


URL = parse_transport("nats://127.0.0.1:1")


class _Broker(NatsTransport):
    """The agent's broker transport, recording where each event would be published."""

    def __init__(self) -> None:  # no client, no loop: only what the agent calls
        self.url = URL
        self.to_fanout: list[tuple[str, str, list[bytes]]] = []
        self.to_node: list[tuple[str, str, list[bytes]]] = []

    def serve(self, app: str, node: str) -> None:
        pass

    def unserve(self, app: str, node: str) -> None:
        pass

    def fanout(self, app: str, node: str, sources: set[str], destinations: set[str]) -> None:
        pass

    def send_fanout(self, app: str, source: str, events: list[bytes]) -> None:
        self.to_fanout.append((app, source, list(events)))

    def send_all(self, to: Address | Peer, events: list[bytes]) -> None:
        assert isinstance(to, Peer)
        self.to_node.append((to.app, to.node, list(events)))

    def links(self) -> dict[str, dict[str, int | bool]]:
        return {}

    def close(self) -> None:
        pass


class _Host(ModuleHost):
    """A module's inbox as the agent fills it (no secure world behind it)."""

    def __init__(self) -> None:  # the agent only enqueues
        self.got: list[bytes] = []
        self.dropped: Counter[str] = Counter()
        self.inbox: list[bytes] = []

    def enqueue_all(self, events: list[bytes]) -> None:
        self.got.extend(events)

    def keep(self, events: list[bytes]) -> int:
        self.got.extend(events)
        return 0

    def deliver_arrived(self, before: int) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NodeAgent]:
    a = NodeAgent(Home(tmp_path / "home"), tmp_path / "agent", _Links())
    a._brokers[URL] = _Broker()
    try:
        yield a
    finally:
        a.close()


def _route(conn: bytes, src: str, dst: str, module: str, *, fanout: bool, app: str = APP) -> Route:
    return Route(app, conn, f"a.out->{module}.in", End(src, "a"), End(dst, module), fanout)


def _total(agent: NodeAgent) -> int:
    """Every drop the agent reports (its status' node-wide counters)."""
    return sum(agent.status(only="")["counters"].values())


def test_the_agent_drops_crafted_fan_outs_as_counted_malformed(agent: NodeAgent) -> None:
    """Node agent from the network (adversaries 2, 4): garbage fan-outs reach route_all
    (the transports' sink): each counted malformed, none a traceback."""
    agent.configure(APP, "n2", {"n1": ("127.0.0.1", 1)}, owner=b"o")
    bad = [e for name, e in SHAPES.items() if name != "several wraps at once"]
    for event in bad:
        agent._from_network([event])
    assert agent.status()["counters"] == {"malformed": len(bad)}


def test_a_fan_out_whose_parts_are_here_and_elsewhere_delivers_only_this_nodes(
    agent: NodeAgent,
) -> None:
    """Broker: a fan-out from node n1 with parts for n2 (here) and n3: n2's module gets its
    part alone; n3's part is passed over (another node's), nothing is sent on."""
    outs, ins = _ends(2)
    agent.configure(APP, "n2", {"n1": ("h", 1), "n3": ("h", 3)}, owner=b"o", transport=URL)
    agent.add_route(_route(outs[0].conn_id, "n1", "n2", "b", fanout=True))
    host = _Host()
    agent._hosts[(APP, "b")] = host
    event = channels.seal_fanout(outs, b"to n2 and n3")
    agent._from_network([event])
    assert len(host.got) == 1 and ins[0].open(host.got[0]) == b"to n2 and n3"
    broker = agent._brokers[URL]
    assert isinstance(broker, _Broker) and not broker.to_fanout and not broker.to_node
    assert _total(agent) == 0


def test_messages_on_app_xs_fan_out_subject_reach_app_ys_module_only_to_be_refused(
    agent: NodeAgent,
) -> None:
    """Broker / hostile NATS client publishing on app X's fan-out subject an event with
    wraps of app Y's connections: the agent routes by connection id, whatever subject (or
    app's consumer) it came from, so Y's module gets it; Y's secure world then refuses it
    unless it is Y's own genuine next event (which the agent could deliver anyway). Noted
    as by design (routes are not secrets, the secure world is the check): counted there."""
    outs, ins = _ends(2)
    agent.configure("x", "n2", {}, owner=b"o", transport=URL)
    agent.configure("y", "n2", {}, owner=b"o", transport=URL)
    agent.add_route(_route(outs[0].conn_id, "n1", "n2", "b", fanout=True, app="y"))
    agent.add_route(_route(outs[1].conn_id, "n1", "n2", "c", fanout=True, app="y"))
    hb, hc = _Host(), _Host()
    agent._hosts[("y", "b")], agent._hosts[("y", "c")] = hb, hc
    genuine = channels.seal_fanout(outs, b"y's")
    agent._from_network([genuine, genuine])  # e.g. taken from x's consumer: the same sink
    loaded = _module(ins[0])
    assert [_check(loaded, e) for e in hb.got] == [b"y's", "replay"]
    assert loaded.dropped == {"replay": 1}


def test_a_forged_fan_out_for_no_connection_here_is_counted(agent: NodeAgent) -> None:
    """Was a HOLE (fixed: counted "foreign"): a hostile NATS client (or anyone on a direct
    link) sends fan-out events of
    two or more wraps for connections this node does not know. route_all drops each
    (NodeAgent._fan_out: ``seen == {"foreign"}``) and adds 1 to ``agent.others``, which
    neither status() nor /metrics shows: a flood of forged events is invisible. The same
    event with one wrap is counted ("unrouted"). route_all's docstring says such an event
    is counted ("dropped uncounted, unless no part of the event is for here")."""
    agent.configure(APP, "n2", {}, owner=b"o", transport=URL)
    one_wrap = struct.pack(">BH", FANOUT, 1) + os.urandom(WRAP_BYTES + 32)
    agent._from_network([one_wrap])
    assert agent.status()["counters"] == {"unrouted": 1}  # counted
    before = _total(agent)
    forged = struct.pack(">BH", FANOUT, 2) + os.urandom(2 * WRAP_BYTES + 32)
    agent._from_network([forged] * 10)
    assert agent.others == 10  # the agent knows...
    assert _total(agent) - before == 10  # ...but says nothing


def test_a_fan_out_connection_keeps_its_broker_path_when_its_output_has_one_left(
    agent: NodeAgent,
) -> None:
    """Was a HOLE (fixed: route_all sends every event of a fan-out route on the broker's
    fan-out path, and a node takes one-connection events there that are not its own as
    another node's). routes.py and transport_nats.py promise that a fan-out connection takes the
    fan-out path "for its whole life ... so its events keep their order". Source node n1,
    output a.out to b (node n2) and c (node n3), both routed fanout=True. The deployer
    disables c (changes.disable: a signed disconnect; the source's secure world drops the
    channel): a.out now has one channel, so _Call._output seals v1 events
    (``bound[0].seal``). route_all sends a single-connection event by _where, which never
    looks at route.fanout: the v1 events go to veritee.APP.events.n2 while the earlier
    ones still sit in veritee_fanout-APP. n2 takes the two streams with two independent
    consumers (no order between them): a v1 event taken first makes each earlier fan-out
    event for b a "replay" in b's secure world. Events the source emitted are lost (and
    counted as if replayed by an attacker), with no adversary at all; a broker that delays
    one consumer makes it certain. Fix: in route_all's single-part branch, send an event
    of a route with ``fanout`` through the app's broker as _fan_out does (_FanOut), and
    have receiving nodes treat a single-connection event that is not theirs on a fan-out
    consumer as foreign."""
    outs, ins = _ends(2)
    b_out, c_out = outs
    b_in = ins[0]
    agent.configure(APP, "n1", {"n2": ("h", 2), "n3": ("h", 3)}, owner=b"o", transport=URL)
    agent.add_route(_route(b_out.conn_id, "n1", "n2", "b", fanout=True))
    agent.add_route(_route(c_out.conn_id, "n1", "n3", "c", fanout=True))
    broker = agent._brokers[URL]
    assert isinstance(broker, _Broker)
    e1 = channels.seal_fanout([b_out, c_out], b"first")  # what _Call._output seals for two
    agent.route_all([e1])
    assert [(a, s) for a, s, _ in broker.to_fanout] == [(APP, "n1")]
    agent.retire(APP, [c_out.conn_id])  # the deployer disables c
    e2 = b_out.seal(b"second")  # one channel left: _Call._output seals version 1
    agent.route_all([e2])
    # The consequence, if n2 takes the node subject before the fan-out subject:
    part1 = _parts(broker.to_fanout[0][2][0])[b_in.conn_id]
    assert b_in.open(e2) == b"second"
    with pytest.raises(EventRejected, match="replay"):
        b_in.open(part1)  # "first", emitted by the source, lost
    # The path: the second event must follow the first on the fan-out subject.
    assert not broker.to_node, f"published to node subjects: {broker.to_node}"
    assert [e for _, _, es in broker.to_fanout for e in es][1] == e2


def test_splitting_a_fan_out_from_the_network_costs_memory_of_its_size(agent: NodeAgent) -> None:
    """Was a HOLE (fixed: route_all builds a part only for a module here; denial of service,
    adversaries 2 and 4): channels.split built every part
    (``one + wrap + body``) up front, copying the payload once per wrap, for every
    fan-out event the agent takes (route_all, before looking at any route). A frame of
    5 MiB (MAX_FRAME_BYTES: anyone reaching a direct link's port, or publishing on a
    fan-out subject) with 1024 wraps of random connection ids makes the agent allocate
    ~5 GiB: one message brings the node agent down (OOM). Shown here at 128 wraps of a
    256 KiB payload (a 265 KiB event: ~32 MiB). Fix: split lazily, yield (conn, wrap)
    and build the one-wrap event only for a part routed to a module here (or pass a
    memoryview of the body); keep_wraps already copies once per peer."""
    agent.configure(APP, "n2", {}, owner=b"o", transport=URL)
    n, body = 128, 256 * 1024
    event = struct.pack(">BH", FANOUT, n) + os.urandom(n * WRAP_BYTES + body)
    tracemalloc.start()
    try:
        agent._from_network([event])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert agent.others == 1
    assert peak < 4 * len(event), f"peak {peak >> 20} MiB for an event of {len(event) >> 10} KiB"


# == the broker's fan-out consumers, against a real nats-server ===============================


def _js(url: str, work: Any) -> Any:
    import nats

    async def main() -> Any:
        nc = await nats.connect(url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())


def _count(url: str, stream: str) -> int:
    async def work(js: Any) -> int:
        try:
            return int((await js.stream_info(stream)).state.messages)
        except Exception:
            return 0

    result: int = _js(url, work)
    return result


def test_a_hostile_consumer_name_does_not_stop_the_agents_broker(tmp_path: Path) -> None:
    """Was a HOLE (fixed: ASCII digits only, and the send loop survives any exception;
    adversary 2: a NATS client that may create a consumer in app X's fan-out
    stream; nats-server takes the name): a consumer named fanout_durable(n2, n1) + "-g²".
    transport_nats._generation tests ``gen.isdigit()`` ("²" is a digit to str.isdigit)
    and then int("²") raises ValueError. On the sending node, _ensure_receivers raises it
    inside _send_loop, which catches only NATS and OS errors: the agent's one send task
    for that broker ends, and no event of ANY app through that broker leaves the node
    (its outbox grows, links() still says up). On a receiving node, _prepare_fanout raises
    it on each realign: its fan-out consumer never takes an event. Fix: accept ASCII
    digits only (``gen.isascii() and gen.isdigit()``), and let _send_loop survive any
    exception of one publish (log, back off, retry)."""
    server = NatsServer(tmp_path / "store").start()
    sender = receiver = None
    try:
        from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

        hostile = fanout_durable("n2", "n1") + "-g\u00b2"

        async def plant(js: Any) -> None:
            await js.add_stream(
                StreamConfig(
                    name=fanout_stream_name("x"),
                    subjects=[fanout_subject("x", "*")],
                    retention=RetentionPolicy.INTEREST,
                )
            )
            await js.add_consumer(
                fanout_stream_name("x"),
                ConsumerConfig(durable_name=hostile, filter_subject=fanout_subject("x", "n1")),
            )

        _js(server.url, plant)
        got: list[bytes] = []
        lock = threading.Lock()

        def sink(events: list[bytes]) -> None:
            with lock:
                got.extend(events)

        def no_request(event: bytes) -> bytes:
            return b""

        sender = NatsTransport(tmp_path / "sender", server.url)
        sender.start(sink, no_request)
        receiver = NatsTransport(tmp_path / "receiver", server.url)
        receiver.start(sink, no_request)
        deadline = time.monotonic() + 10
        while not (sender.up and receiver.up) and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.fanout("x", "n1", set(), {"n2"})
        sender.send_fanout("x", "n1", [b"fan-out of x"])
        sender.send_all(Peer("y", "n9", ("", 0)), [b"another app's event"])
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and _count(server.url, stream_name("y")) == 0:
            time.sleep(0.2)
        send_loop = sender._tasks[1]
        assert _count(server.url, stream_name("y")) == 1, (
            "app y's event never left the node; the send loop: "
            + repr(send_loop.done() and send_loop.exception())
        )
        assert _count(server.url, fanout_stream_name("x")) == 1
        receiver.fanout("x", "n2", {"n1"}, set())
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not got:
            time.sleep(0.2)
        assert got == [b"fan-out of x"]
    finally:
        for t in (sender, receiver):
            if t is not None:
                t.close()
        server.stop()


def test_one_connection_events_on_a_fan_out_subject_reach_their_node_and_only_it(
    agent: NodeAgent,
) -> None:
    """The receiving end of the path above: a node takes the whole fan-out subject of a
    source (its other nodes' events too). A version 1 event there for a connection of this
    node is delivered; one for a connection it does not know is another node's, counted
    "foreign" (a hostile NATS client's flood of them shows), never "unrouted"; the same
    event off a node's own subject is still counted unrouted."""
    outs, ins = _ends(2)
    agent.configure(APP, "n2", {}, owner=b"o", transport=URL)
    agent.add_route(_route(outs[0].conn_id, "n1", "n2", "b", fanout=True))
    host = _Host()
    agent._hosts[(APP, "b")] = host
    mine, theirs = outs[0].seal(b"for b"), outs[1].seal(b"for c, on n3")
    agent._from_fanout([mine, theirs])
    assert [ins[0].open(e) for e in host.got] == [b"for b"]
    assert agent.status(only="")["counters"] == {"foreign": 1}
    agent._from_network([theirs])
    assert agent.status(only="")["counters"] == {"foreign": 1, "unrouted": 1}
