"""The app package's parts with plain values: spools, routes, transport, checks, state, user end."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_app_deploy import until
from veritee.app import state as state_mod
from veritee.app import transport as tr
from veritee.app.api import http_response
from veritee.app.attest import Expected, check_expected
from veritee.app.errors import (
    AppError,
    AttestationRefused,
    KeyMismatch,
    StateError,
    TransportError,
)
from veritee.app.routes import End, Route, destination
from veritee.app.spool import Spool, SpoolFull
from veritee.app.transport import EventSink, TcpTransport
from veritee.app.user import USER_MEASUREMENT, user_statement
from veritee.evidence import cose
from veritee.evidence.claims import ModuleClaims
from veritee.evidence.deployment import Connect, Peer
from veritee.tee.channels import BACKWARD, FORWARD, EventRejected, establish

# -- spool --------------------------------------------------------------------------------------


def test_spool_keeps_what_is_not_consumed_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    numbers = [spool.append(f"event {i}".encode()) for i in range(5)]
    assert numbers == [1, 2, 3, 4, 5]
    spool.consume(2)
    assert [r for _, r in spool.pending()] == [b"event 2", b"event 3", b"event 4"]
    spool.close()

    again = Spool(tmp_path / "s.spool")
    assert [seq for seq, _ in again.pending()] == [3, 4, 5]
    assert again.append(b"more") == 6  # numbers never go back
    again.consume(6)
    assert len(again) == 0
    again.close()
    assert Spool(tmp_path / "s.spool").pending() == []


def test_a_spool_never_empty_does_not_grow_for_ever(tmp_path: Path) -> None:
    """Under sustained load an inbox may never be empty when it is consumed; its file is
    rewritten with what is pending once that is a quarter of it or less."""
    path = tmp_path / "s.spool"
    spool = Spool(path, compact_bytes=64 * 1024)
    record = bytes(1000)
    for _ in range(200):  # 10 in, 9 out: always something pending
        last = spool.extend([record] * 10)
        spool.consume(last - 1)
    assert len(spool) == 1 and spool.head == 1999
    assert path.stat().st_size < 64 * 1024 + 10 * 1012  # 2 MB went through it
    spool.close()
    again = Spool(path, compact_bytes=64 * 1024)
    assert [seq for seq, _ in again.pending()] == [2000]
    assert again.append(b"more") == 2001
    again.close()


def test_spool_drops_a_record_cut_short_by_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.append(b"whole")
    spool.append(b"cut short")
    spool.close()
    path = tmp_path / "s.spool"
    path.write_bytes(path.read_bytes()[:-3])
    again = Spool(path)
    assert [r for _, r in again.pending()] == [b"whole"]
    assert again.append(b"next") == 2


def test_spool_refuses_more_than_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_pending=2)
    spool.append(b"a")
    spool.append(b"b")
    with pytest.raises(SpoolFull):
        spool.append(b"c")
    spool.consume(1)
    spool.append(b"c")


def test_spool_keeps_a_batch_whole_or_not_at_all(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_pending=3)
    assert spool.extend([b"a", b"b"]) == 2
    with pytest.raises(SpoolFull):
        spool.extend([b"c", b"d"])  # two do not fit: neither is kept
    assert spool.extend([b"c"]) == 3
    spool.close()
    again = Spool(tmp_path / "s.spool")
    assert again.pending() == [(1, b"a"), (2, b"b"), (3, b"c")]
    assert again.pending(1, limit=1) == [(2, b"b")]


def test_spool_wait_wakes_on_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    threading.Timer(0.05, spool.append, args=(b"late",)).start()
    t0 = time.monotonic()
    assert [r for _, r in spool.wait(0, 5.0)] == [b"late"]
    assert time.monotonic() - t0 < 2.0


def test_spool_wait_consumed_wakes_on_consume(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.extend([b"a", b"b"])
    threading.Timer(0.05, spool.consume, args=(2,)).start()
    t0 = time.monotonic()
    spool.wait_consumed(2, 5.0)
    assert spool.head == 2
    assert time.monotonic() - t0 < 2.0


def test_spool_consuming_does_not_wake_a_wait_for_new_records(tmp_path: Path) -> None:
    """The inbox and link threads wait for new records; a consume per event must not wake
    them for nothing (each wake-up is a thread switch on the event path)."""
    spool = Spool(tmp_path / "s.spool")
    spool.append(b"a")
    got: list[list[tuple[int, bytes]]] = []
    waiter = threading.Thread(target=lambda: got.append(spool.wait(1, 5.0)))
    waiter.start()
    time.sleep(0.05)
    spool.consume(1)
    waiter.join(0.2)
    assert waiter.is_alive(), "consume woke a thread waiting for new records"
    spool.append(b"b")
    waiter.join(2.0)
    assert got == [[(2, b"b")]]


def test_spool_close_wakes_every_waiter(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.append(b"a")
    waiters = [
        threading.Thread(target=spool.wait, args=(1, 5.0)),
        threading.Thread(target=spool.wait_consumed, args=(1, 5.0)),
    ]
    for w in waiters:
        w.start()
    time.sleep(0.05)
    spool.close()
    for w in waiters:
        w.join(2.0)
        assert not w.is_alive()


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_spool_survives_any_file_content(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.spool"
        path.write_bytes(data)
        spool = Spool(path)
        spool.append(b"x")
        spool.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_buffered_events_from_a_module_parse_or_fail_clearly(data: bytes) -> None:
    """What a module hands over as one buffer (sdk/veritee_app.h) is hostile input."""
    from veritee.errors import UsageError
    from veritee.tee.app_ta import _pack, _records

    try:
        records = _records(data)
    except UsageError:
        return
    assert _pack(records) == data or any("\ufffd" in n for n, _ in records)


# -- routes -------------------------------------------------------------------------------------


def test_routes_send_forward_to_the_responder_and_replies_back() -> None:
    route = Route("app", bytes(16), "c", End("a", "sender"), End("b", "counter"))
    assert destination(route, FORWARD) == End("b", "counter")
    assert destination(route, BACKWARD) == End("a", "sender")
    assert Route.from_cbor("app", route.to_cbor()) == route


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"conn": b"short", "name": "c", "initiator": ["a", "m"], "responder": ["b", "n"]},
        {"conn": bytes(16), "name": "", "initiator": ["a", "m"], "responder": ["b", "n"]},
        {"conn": bytes(16), "name": "c", "initiator": ["a"], "responder": ["b", "n"]},
        {"conn": bytes(16), "name": "c", "initiator": ["a", "m"], "responder": ["b", None]},
        {"conn": bytes(16), "name": "c", "initiator": ["a", 3], "responder": ["b", "n"]},
    ],
)
def test_malformed_routes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        Route.from_cbor("app", bad)


# -- transport ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _transport(
    directory: Path,
    port: int = 0,
    on_events: EventSink = lambda e: None,
    on_request: Callable[[bytes], bytes] = lambda e: e,
) -> TcpTransport:
    """A node agent's transport on loopback, started: by default it takes events and
    answers a request with the request itself."""
    transport = TcpTransport(directory, "127.0.0.1", port)
    transport.start(on_events, on_request)
    return transport


def test_transport_keeps_events_for_a_node_that_is_down_and_delivers_them_once(
    tmp_path: Path,
) -> None:
    port = _free_port()
    a = _transport(tmp_path / "a")
    for i in range(5):
        a.send(("127.0.0.1", port), f"event {i}".encode())
    time.sleep(0.2)
    assert a.links()[f"127.0.0.1:{port}"] == {"up": False, "queued": 5}

    got: list[bytes] = []
    b = _transport(
        tmp_path / "b", port=port, on_events=got.extend, on_request=lambda e: b"reply to " + e
    )
    _wait(lambda: len(got) == 5)
    _wait(lambda: a.links()[f"127.0.0.1:{port}"]["queued"] == 0)
    assert got == [f"event {i}".encode() for i in range(5)]

    # A sender that restarts with nothing unacknowledged sends nothing twice.
    a.close()
    a2 = _transport(tmp_path / "a")
    a2.resume()
    a2.send(("127.0.0.1", port), b"after restart")
    _wait(lambda: len(got) == 6)
    time.sleep(0.2)
    assert got[-1] == b"after restart" and len(got) == 6
    assert a2.request(("127.0.0.1", port), b"ping") == b"reply to ping"
    a2.close()
    b.close()


def test_transport_resends_what_the_receiver_did_not_take(tmp_path: Path) -> None:
    got: list[bytes] = []
    refuse = {"on": True}

    def take(events: list[bytes]) -> None:
        if refuse["on"]:
            raise AppError("inbox full")
        got.extend(events)

    b = _transport(tmp_path / "b", on_events=take)
    a = _transport(tmp_path / "a")
    a.send(b.address, b"kept")
    time.sleep(0.3)
    assert got == [] and a.links()[f"127.0.0.1:{b.address[1]}"]["queued"] == 1
    refuse["on"] = False
    _wait(lambda: got == [b"kept"])
    a.close()
    b.close()


def test_transport_sends_more_than_a_window_kept_for_a_peer(tmp_path: Path) -> None:
    """A peer back after a long absence gets everything kept, not one window's worth."""
    from veritee.app.transport import WINDOW

    port = _free_port()
    a = _transport(tmp_path / "a")
    events = [i.to_bytes(4, "big") for i in range(WINDOW * 2 + 10)]
    a.send_all(("127.0.0.1", port), events)
    got: list[bytes] = []
    b = _transport(tmp_path / "b", port=port, on_events=got.extend)
    _wait(lambda: len(got) == len(events))
    assert got == events
    _wait(lambda: a.links()[f"127.0.0.1:{port}"]["queued"] == 0)
    a.close()
    b.close()


def test_transport_takes_events_in_batches(tmp_path: Path) -> None:
    """Events kept for a peer go in batches: fewer custody calls (and ACKs) than events."""
    port = _free_port()
    a = _transport(tmp_path / "a")
    events = [f"event {i}".encode() for i in range(500)]
    a.send_all(("127.0.0.1", port), events)
    calls: list[list[bytes]] = []
    b = _transport(tmp_path / "b", port=port, on_events=calls.append)
    _wait(lambda: sum(len(c) for c in calls) == len(events))
    assert [e for c in calls for e in c] == events and len(calls) < len(events)
    a.close()
    b.close()


def test_a_polling_reader_reads_frames_whole_however_they_arrive() -> None:
    """A reader that polls before it blocks gets the same frames as one that does not,
    sent whole, byte by byte, or split around a pause longer than its poll."""
    frames = [(tr.EVENT, i, os.urandom(n)) for i, n in enumerate((0, 1, 100, 70_000, 5))]
    wire = b"".join(tr._FRAME.pack(k, i, len(p)) + p for k, i, p in frames)
    for poll in (0.0, 0.002):
        for pieces in ([wire], [wire[i : i + 1] for i in range(64)] + [wire[64:]]):
            a, b = socket.socketpair()
            reader = tr._Frames(b, poll)

            def write(chunks: list[bytes] = pieces, sock: socket.socket = a) -> None:
                for n, chunk in enumerate(chunks):
                    sock.sendall(chunk)
                    if n == len(chunks) // 2:
                        time.sleep(0.02)
                sock.close()

            writer = threading.Thread(target=write)
            writer.start()
            got: list[tuple[int, int, bytes]] = []
            with pytest.raises(EOFError):
                while True:
                    got += reader.read()
            writer.join()
            b.close()
            assert got == frames, (poll, len(pieces))


def test_a_polling_reader_stops_polling_once_events_stop_coming() -> None:
    """It polls only while frames come within its poll: a link that falls quiet costs one
    poll's CPU, then none, however long it stays quiet."""
    a, b = socket.socketpair()
    reader = tr._Frames(b, 0.05)
    one = tr._FRAME.pack(tr.EVENT, 1, 0)
    spent: list[float] = []

    def read() -> None:
        for _ in range(4):
            start = time.thread_time()
            reader.read()
            spent.append(time.thread_time() - start)

    thread = threading.Thread(target=read)
    thread.start()
    a.sendall(one)  # soon: the reader was polling for it
    for _ in range(3):  # then each after a quiet spell of 0.4 s
        time.sleep(0.4)
        a.sendall(one)
    thread.join(10)
    a.close()
    b.close()
    assert len(spent) == 4
    # The second read polled for 0.05 s at most (yielding the CPU as it did), then slept;
    # the two after it, following a long wait, did not poll at all.
    assert spent[1] < 0.2
    assert spent[2] < 0.02 and spent[3] < 0.02, spent


def test_only_one_reader_of_a_node_polls_at_a_time() -> None:
    """Readers of a node's links share one right to poll: while one polls, another that
    would poll sleeps on its socket instead, so a node spends one CPU at most on polling."""
    a, b = socket.socketpair()
    polling = threading.Lock()
    reader = tr._Frames(b, 0.3, polling)
    spent: list[float] = []

    def read() -> None:
        start = time.thread_time()
        reader.read()
        spent.append(time.thread_time() - start)

    for other_is_polling in (True, False):
        if other_is_polling:
            polling.acquire()
        thread = threading.Thread(target=read)
        thread.start()
        time.sleep(0.2)
        a.sendall(tr._FRAME.pack(tr.EVENT, 1, 0))
        thread.join(10)
        if other_is_polling:
            polling.release()
    a.close()
    b.close()
    # Waiting 0.2 s: asleep while the other polled, polling (within 0.3 s) once it did not.
    assert spent[0] < 0.02 < spent[1], spent


def test_transport_acknowledges_events_before_the_receiver_delivers_them(tmp_path: Path) -> None:
    """What the receiver does once it holds the events (a node agent delivers them there)
    runs after the ACK: the sender's outbox is free while the delivery runs."""
    a = _transport(tmp_path / "a")
    seen_acknowledged: list[bool] = []

    def take(events: list[bytes]) -> Callable[[], None]:
        def deliver() -> None:
            link = f"127.0.0.1:{b.address[1]}"
            deadline = time.monotonic() + 5
            while a.links()[link]["queued"] and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_acknowledged.append(a.links()[link]["queued"] == 0)

        return deliver

    b = _transport(tmp_path / "b", on_events=take)
    a.send(b.address, b"event")
    _wait(lambda: seen_acknowledged)
    assert seen_acknowledged == [True]
    a.close()
    b.close()


def test_transport_requests_fail_clearly(tmp_path: Path) -> None:
    def refuse(_: bytes) -> bytes:
        raise AppError("no such handler")

    b = _transport(tmp_path / "b", on_request=refuse)
    a = _transport(tmp_path / "a")
    with pytest.raises(TransportError, match="no such handler"):
        a.request(b.address, b"q")
    with pytest.raises(TransportError, match="is down"):
        a.request(("127.0.0.1", _free_port()), b"q", timeout=0.5)
    a.close()
    b.close()


def test_transport_drops_a_peer_that_sends_garbage(tmp_path: Path) -> None:
    got: list[bytes] = []
    b = _transport(tmp_path / "b", on_events=got.extend)
    with socket.create_connection(b.address) as s:
        s.sendall(os.urandom(64) + b"\xff" * 64)
        s.settimeout(5)
        assert s.recv(10) == b""  # the agent hangs up on it
    assert got == []
    b.close()


def _raw_link(address: tuple[str, int], link_id: bytes) -> socket.socket:
    """A peer speaking the wire format by hand: HELLO with ``link_id``, then one event,
    acknowledged. Returns the socket, still open; raises EOFError if the agent hangs up."""
    sock = socket.create_connection(address, timeout=5)
    tr._send_frame(sock, tr.HELLO, 0, cbor2.dumps({"link": link_id}))
    tr._send_frame(sock, tr.EVENT, 1, b"x")
    head = sock.recv(tr._FRAME.size)
    if not head:
        sock.close()
        raise EOFError
    assert tr._FRAME.unpack(head)[:2] == (tr.ACK, 1)
    return sock


def _room_for_a_new_link(address: tuple[str, int]) -> bool:
    try:
        _raw_link(address, b"\xfe" * 16).close()
    except EOFError:
        return False
    return True


def test_links_invented_by_a_peer_do_not_fill_the_disk(tmp_path: Path) -> None:
    got: list[bytes] = []
    b = TcpTransport(tmp_path / "b", "127.0.0.1", 0, max_links=4)
    b.start(got.extend, lambda e: e)
    try:
        for i in range(10):  # ten invented links, one after the other
            _raw_link(b.address, bytes([i]) * 16).close()
        assert len(list((tmp_path / "b" / "links").iterdir())) <= 4
        assert len(got) == 10  # each was taken: only the oldest idle links were forgotten

        # Four held open: a fifth new link is refused, not one in use forgotten.
        held = [_raw_link(b.address, bytes([0x80 + i]) * 16) for i in range(4)]
        assert not _room_for_a_new_link(b.address)
        for sock in held:
            tr._send_frame(sock, tr.EVENT, 2, b"y")
            assert sock.recv(tr._FRAME.size)  # each still acknowledged
            sock.close()
        until(lambda: _room_for_a_new_link(b.address), timeout=10)  # once it sees them gone
    finally:
        b.close()


# -- the deployer's own checks --------------------------------------------------------------


def _claims(measurement: bytes, config: bytes, key: bytes) -> ModuleClaims:
    return ModuleClaims(
        nonce=bytes(32),
        measurement=measurement,
        config=config,
        name="m",
        provisioning_key=cose.x25519_key_to_cose(x25519.X25519PublicKey.from_public_bytes(key)),
        iat=0,
    )


def test_check_expected_refuses_another_binary_config_or_key() -> None:
    key = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    other = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    good = Expected("m", b"\x01" * 32, b"\x02" * 32, key)
    assert check_expected(_claims(b"\x01" * 32, b"\x02" * 32, key), good) == key
    with pytest.raises(AttestationRefused, match="not the binary that was shipped"):
        check_expected(_claims(b"\x09" * 32, b"\x02" * 32, key), good)
    with pytest.raises(AttestationRefused, match="another configuration"):
        check_expected(_claims(b"\x01" * 32, b"\x09" * 32, key), good)
    with pytest.raises(KeyMismatch, match="a swapped key"):
        check_expected(_claims(b"\x01" * 32, b"\x02" * 32, other), good)


# -- the user's end of a direct connection -------------------------------------------------------


def _deployment(module_key: bytes) -> state_mod.Deployment:
    dep = state_mod.Deployment(app="demo", descriptor="app.yaml")
    dep.nodes["n"] = state_mod.NodeState("n", "127.0.0.1", 7000)
    dep.modules["db"] = state_mod.ModuleState(
        "db", "n", "db.wasm", measurement="ab" * 32, key=module_key.hex(), status="connected"
    )
    dep.connections["ask"] = state_mod.ConnectionState(
        "ask", "cd" * 16, "db", "handler", "get", status="connected"
    )
    return dep


def test_the_user_end_and_the_module_end_agree_on_keys() -> None:
    module = x25519.X25519PrivateKey.generate()
    keys = state_mod.new_keys()
    dep = _deployment(module.public_key().public_bytes_raw())
    conn = dep.connection("ask")
    user = establish(keys.user, USER_MEASUREMENT, user_statement(dep, keys, conn))
    mine = establish(
        module,
        bytes.fromhex("ab" * 32),
        Connect(
            "demo",
            conn.conn,
            "handler",
            "get",
            module.public_key().public_bytes_raw(),
            Peer(USER_MEASUREMENT, keys.user_public, "user", "user"),
            False,
        ),
    )
    assert mine.open(user.seal(b"how many?")) == b"how many?"
    assert user.open(mine.seal(b"7")) == b"7"
    event = user.seal(b"again")
    mine.open(event)
    with pytest.raises(EventRejected, match="replayed"):
        mine.open(event)


# -- state file ---------------------------------------------------------------------------------


def test_state_round_trips_and_keys_are_private(tmp_path: Path) -> None:
    path = tmp_path / "dep.json"
    dep = _deployment(bytes(32))
    state_mod.save(path, dep)
    assert state_mod.load(path).connection("ask").to_endpoint == "get"
    keys = state_mod.new_keys()
    state_mod.save_keys(path, keys)
    mode = stat.S_IMODE(state_mod.keys_path(path).stat().st_mode)
    assert mode == 0o600
    assert state_mod.load_keys(path).deployment_public == keys.deployment_public


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no deployment state at"),
        ("{", "is not JSON"),
        ("[]", "not a Veritee deployment state file"),
        ('{"version": 1, "app": "a"}', "damaged"),
    ],
)
def test_a_bad_state_file_is_one_clear_error(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "dep.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StateError, match=expected):
        state_mod.load(path)


def test_unknown_names_in_a_deployment_are_listed() -> None:
    dep = _deployment(bytes(32))
    with pytest.raises(StateError, match=r"no connection 'nope'.*connections: ask"):
        dep.connection("nope")
    with pytest.raises(StateError, match=r"no module 'x'.*modules: db"):
        dep.module("x")


# -- HTTP answers from modules ------------------------------------------------------------------


def test_a_module_written_http_answer_is_passed_on() -> None:
    response = http_response(
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Seen: yes\r\n"
        b"Content-Length: 999\r\n\r\nhello"
    )
    assert response.status_code == 201
    assert response.body == b"hello"
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["x-seen"] == "yes"
    assert response.headers["content-length"] == "5"  # never the module's word for it


@pytest.mark.parametrize("reply", [b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 999 No\r\n\r\n", b"HTTP/1."])
def test_malformed_http_from_a_module_is_a_bad_gateway(reply: bytes) -> None:
    assert http_response(reply).status_code == 502


def test_a_plain_answer_is_octets() -> None:
    response = http_response(b"\x00\x01")
    assert (response.status_code, response.body) == (200, b"\x00\x01")


def test_a_state_log_keeps_the_newest_state_and_writes_a_repeat_once(tmp_path: Path) -> None:
    from veritee.app._host import StateLog

    log = StateLog(tmp_path / "state.log")
    log.append(b"first")
    log.append(b"second")
    size = (tmp_path / "state.log").stat().st_size
    log.append(b"second")  # sealed mid-call, handed back again at the end of the batch
    assert (tmp_path / "state.log").stat().st_size == size
    assert log.latest() == b"second"
    log.append(b"first")  # an older value sealed again is a new state: kept as newest
    assert log.latest() == b"first"
    log.clear()
    log.append(b"first")
    assert log.latest() == b"first"
    log.close()
    assert StateLog(tmp_path / "state.log").latest() == b"first"


def test_retired_connections_are_remembered_within_a_bound(tmp_path: Path) -> None:
    """Anyone who reaches a node agent's API may retire connection ids; the agent keeps the
    newest MAX_RETIRED, only to count events on them as retired rather than unrouted."""
    from veritee.app.agent import MAX_RETIRED, NodeAgent
    from veritee.home import Home

    agent = NodeAgent(Home(tmp_path / "home"), tmp_path / "node", TcpTransport(tmp_path, "", 0))
    ids = [i.to_bytes(16, "big") for i in range(MAX_RETIRED + 1000)]
    for i in range(0, len(ids), 4096):
        agent._retire("an-app", ids[i : i + 4096])
    assert len(agent._retired) == MAX_RETIRED

    def event(conn: bytes) -> bytes:
        return bytes([1]) + conn + bytes([0]) + (1).to_bytes(8, "big") + bytes(16)

    assert agent.route_all([event(ids[-1]), event(ids[0])]) == 2
    assert (agent.counters["retired"], agent.counters["unrouted"]) == (1, 1)


def test_the_nonce_journal_survives_a_restart_a_torn_record_and_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the node agent spent is read back at start (a restart must not make a recorded
    request fresh again); a record torn by a crash is skipped; compaction keeps exactly the
    records still in their window, including one appended as it compacts."""
    import time

    from veritee.app import journal as journal_mod
    from veritee.app.journal import NonceJournal

    now = int(time.time() * 1000)
    j = NonceJournal(tmp_path / "spent")
    j.append("app-a", b"A" * 16, now + 60_000)
    j.append("app-b", b"B" * 16, now - 1)  # past its window
    assert NonceJournal(tmp_path / "spent").read() == [
        ("app-a", b"A" * 16, now + 60_000),
        ("app-b", b"B" * 16, now - 1),
    ]
    with open(tmp_path / "spent", "ab") as f:
        f.write(b"\x00\x00\x01")  # a crash mid-record
    assert len(NonceJournal(tmp_path / "spent").read()) == 2
    monkeypatch.setattr(journal_mod, "COMPACT_EVERY", 1)
    j2 = NonceJournal(tmp_path / "spent")
    j2.append("app-c", b"C" * 16, now + 60_000)  # this append compacts
    assert j2.read() == [("app-a", b"A" * 16, now + 60_000), ("app-c", b"C" * 16, now + 60_000)]
