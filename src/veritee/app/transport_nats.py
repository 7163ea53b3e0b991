"""Sealed events through a NATS JetStream broker: the second :class:`Transport`.

The broker is as untrusted as a node agent: events are sealed end to end and counted by the
secure worlds, so it only stores and forwards bytes. What it does wrong (replay, reorder,
duplicate, inject, redirect) the secure worlds refuse and count; what it drops is lost as a
node agent's drop would be.

Layout on the broker, per app ``APP`` (names are descriptor names: ``[A-Za-z0-9_-]``)::

    stream   veritee-APP               subjects veritee.APP.events.*, file storage, work queue
    consumer NODE (durable)            filter   veritee.APP.events.NODE: events for that node
    requests veritee.APP.requests.NODE core NATS request/reply (not stored)
    stream   veritee_fanout-APP        subjects veritee.APP.fanout.*, file storage, interest
    consumer F<hash>-g<N> (durable)    filter   veritee.APP.fanout.SOURCE: one per node that
                                                SOURCE's fan-out connections go to

**Fan-out**: an output connected to inputs on several nodes emits one event for all of
them (tee/channels.py); its node publishes it once, to its own fan-out subject, and every
node with an input on it takes it from a consumer of its own (taking its part, passing over
the rest). The stream keeps a message until every such consumer has acknowledged it; so
that none is dropped for want of interest, the receiving node makes its consumer when its
end of the connection is made (before the sending end is), and the sending node makes any
that is still missing before it publishes. A connection takes the fan-out path for its
whole life or never (app/routes.py), so its events keep their order.

**Sending**: events go to an outbox on disk first (as with direct links), and a sender
publishes them one by one, in order, each with a message id (the broker drops a resend it
already stored) and waits for the stream's acknowledgement before the next: the outbox
keeps what the broker has not acknowledged, across a broker or agent restart.

**Receiving**: the agent fetches from its durable consumer, takes the events into custody
(its inboxes), records the highest stream sequence taken, and only then acknowledges them.
The secure world accepts a counter only above the last one, so an event the broker
redelivers *after* a newer one would be lost; the consumer's view is therefore realigned
with the agent's own record whenever the agent (re)connects: what it holds already is purged
from the stream, the consumer is made afresh from what follows, and anything at or below the
record is acknowledged and skipped. Redeliveries that still come through are duplicates,
refused by the secure world. A fan-out consumer is shared by no one but cannot be purged
(its messages are other nodes' too): it is realigned by making its next generation start
after the record, then deleting the ones before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from veritee.app._nats_wire import DIRECT as DIRECT
from veritee.app._nats_wire import BadTransport as BadTransport
from veritee.app._nats_wire import events_subject as events_subject
from veritee.app._nats_wire import (
    fanout_durable,
    fanout_stream_name,
    fanout_subject,
    outbox_record,
    read_outbox_record,
)
from veritee.app._nats_wire import is_broker as is_broker
from veritee.app._nats_wire import pack as pack
from veritee.app._nats_wire import parse_transport as parse_transport
from veritee.app._nats_wire import requests_subject as requests_subject
from veritee.app._nats_wire import stream_name as stream_name
from veritee.app._nats_wire import unpack as unpack
from veritee.app.errors import TransportError
from veritee.app.spool import Spool
from veritee.app.transport import (
    MAX_FRAME_BYTES,
    REQUEST_TIMEOUT,
    REQUEST_WORKERS,
    Address,
    EventSink,
    Peer,
    RequestSink,
    Transport,
)
from veritee.errors import Error

log = logging.getLogger("veritee.node.transport")

# Brokers one agent connects to at once: anyone who reaches its API may create an app and
# name one, and each is a connection, a thread and an outbox.
MAX_BROKERS = 16
FETCH_BATCH = 256  # messages taken into custody with one write per inbox
SEND_EVENTS = 256  # events of the outbox published as one message, at most
# Bytes of events batched into one message at most (or the broker's own limit, max_payload,
# 1 MiB by default, if lower). An event goes alone when bigger; over max_payload it cannot
# go through this broker at all (see docs/apps.md).
SEND_BYTES = 1024 * 1024
FETCH_WAIT = 1.0  # seconds a fetch lingers on the broker when there is nothing
# Unacknowledged events the broker has out to one agent: bounds what a redelivery resends.
MAX_ACK_PENDING = 4096
# How long the broker waits for an acknowledgement before it redelivers: far above the
# milliseconds custody takes, so that it redelivers only what a dead agent never took.
ACK_WAIT = 30.0
PUBLISH_TIMEOUT = 5.0  # seconds for the stream's acknowledgement of one publish
RETRY_MIN, RETRY_MAX = 0.05, 1.0  # back-off while the broker is away, seconds
REPLICAS = 3  # copies of an app's stream on a cluster
DUPLICATE_WINDOW = 120.0  # seconds the broker remembers message ids of resends
_OK, _FAILED = 0, 1

T = TypeVar("T")


@dataclass
class _Consumer:
    """What this agent takes from the broker for one (app, node)."""

    app: str
    node: str
    seen_file: Path
    source: str = ""  # a fan-out consumer: the node whose fan-out events it takes
    seen: int = 0  # the highest stream sequence taken into custody
    created: str = ""  # the stream's creation time when ``seen`` was recorded
    task: asyncio.Task[None] | None = None  # the one task taking them
    requests: Any = None  # the request subscription
    realign: bool = False  # set when the broker came back: its task realigns
    ready: asyncio.Event | None = None  # set once its consumer is made on the broker

    fd: int = -1

    def load(self) -> None:
        self.fd = os.open(self.seen_file, os.O_RDWR | os.O_CREAT, 0o600)
        raw = os.pread(self.fd, 8, 0)
        self.seen = int.from_bytes(raw, "big") if len(raw) == 8 else 0
        with contextlib.suppress(FileNotFoundError):
            self.created = self._created_file.read_text("ascii", "replace")

    @property
    def _created_file(self) -> Path:
        return self.seen_file.with_suffix(".stream")

    def save(self) -> None:
        """The newest sequence taken: one write in place (a rename would cost ~1 ms)."""
        os.pwrite(self.fd, self.seen.to_bytes(8, "big"), 0)

    def restart(self, created: str) -> None:
        """The stream was made afresh: its sequences start over."""
        self.seen, self.created = 0, created
        self.save()
        tmp = self._created_file.with_suffix(".tmp")
        tmp.write_text(created, "ascii")
        tmp.replace(self._created_file)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class NatsTransport(Transport):
    """Events through one NATS JetStream broker (or cluster); state under ``directory``.

    The agent says which (app, node) it is with :meth:`serve`; events and requests go to a
    :class:`Peer`, by its app and node name. Thread-safe: the client runs on an asyncio loop
    of its own thread.
    """

    def __init__(self, directory: Path, url: str) -> None:
        self.url = parse_transport(url)
        if not is_broker(self.url):
            raise BadTransport(f"{url!r} is not a NATS URL")
        self.directory = directory
        (directory / "seen").mkdir(parents=True, exist_ok=True)
        self.outbox = Spool(directory / "outbox.spool")
        id_file = directory / "outbox.id"
        if not id_file.exists():
            id_file.write_text(os.urandom(8).hex())
        self._outbox_id = id_file.read_text().strip()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self._nc: Any = None
        self._js: Any = None
        self.up = False
        self._closed = False
        self._consumers: dict[tuple[str, str, str], _Consumer] = {}
        # (app, source) -> nodes its fan-out events go to; (app, source, node) made sure of
        self._fanout_to: dict[tuple[str, str], set[str]] = {}
        self._fanout_ready: set[tuple[str, str, str]] = set()
        self._wake: asyncio.Event | None = None
        self._on_events: EventSink | None = None
        # Where the events of fan-out consumers go, if not to on_events: a node takes a
        # source's whole fan-out subject, also events for other nodes' connections.
        self.on_published: EventSink | None = None
        self._on_request: RequestSink | None = None
        # Custody and delivery run off the loop (disk writes, modules run): one at a time,
        # in the order fetched.
        self._custody = ThreadPoolExecutor(1, thread_name_prefix="nats-custody")
        self._pool = ThreadPoolExecutor(REQUEST_WORKERS, thread_name_prefix="nats-request")
        self._tasks: list[asyncio.Task[None]] = []
        self.too_big = 0  # events dropped for being over the broker's max_payload

    # -- the seam ----------------------------------------------------------------------------

    def start(self, on_events: EventSink, on_request: RequestSink) -> Address:
        self._on_events, self._on_request = on_events, on_request
        self._thread.start()
        self._call(self._start())
        return (self.url, 0)

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._connect()))
        self._tasks.append(asyncio.create_task(self._send_loop()))

    def serve(self, app: str, node: str) -> None:
        """Take events and requests for ``node`` of ``app`` from the broker (now, or once
        it is reachable); idempotent."""
        self._call(self._add_consumer(app, node))

    def unserve(self, app: str, node: str) -> None:
        """Stop taking them (the events stay on the broker for whoever serves them next)."""
        for key in [k for k in self._consumers if k[:2] == (app, node)]:
            self._call(self._drop_consumer(*key))

    def fanout(self, app: str, node: str, sources: set[str], destinations: set[str]) -> None:
        """``node`` of ``app`` takes the fan-out events of ``sources`` and sends its own to
        ``destinations`` (from its routes, app/routes.py); idempotent, only adds."""
        for source in sources - {node}:
            self._call(self._add_consumer(app, node, source))
        if destinations - {node}:
            self._call(self._expect(app, node, destinations - {node}))

    def send_fanout(self, app: str, source: str, events: list[bytes]) -> None:
        """Events of ``source``'s fan-out connections: published once for all their nodes."""
        self.outbox.extend([outbox_record(fanout_subject(app, source), e) for e in events])
        wake = self._wake
        if wake is not None:
            self._loop.call_soon_threadsafe(wake.set)

    def send(self, to: Address | Peer, event: bytes) -> None:
        self.send_all(to, [event])

    def send_all(self, to: Address | Peer, events: list[bytes]) -> None:
        if not isinstance(to, Peer):
            raise TransportError("an event through a broker goes to an app's node, by name")
        subject = events_subject(to.app, to.node)
        self.outbox.extend([outbox_record(subject, e) for e in events])
        wake = self._wake
        if wake is not None:
            self._loop.call_soon_threadsafe(wake.set)

    def request(self, to: Address | Peer, event: bytes, timeout: float = REQUEST_TIMEOUT) -> bytes:
        if not isinstance(to, Peer):
            raise TransportError("a request through a broker goes to an app's node, by name")
        if not self.up:
            raise TransportError(f"the broker {self.url} is not reachable")
        try:
            reply = self._call(self._request(requests_subject(to.app, to.node), event, timeout))
        except TimeoutError:
            raise TransportError(f"node {to.node!r} did not answer in {timeout:g} s") from None
        if reply[:1] == bytes([_OK]):
            return reply[1:]
        raise TransportError(reply[1:].decode("utf-8", "replace")[:200] or "no answer")

    def links(self) -> dict[str, dict[str, int | bool]]:
        # "dropped": events over the broker's max_payload, which it would never take.
        return {self.url: {"up": self.up, "queued": len(self.outbox), "dropped": self.too_big}}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(), timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        for consumer in self._consumers.values():
            consumer.close()
        self._custody.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.outbox.close()

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _shutdown(self) -> None:
        tasks = self._tasks + [c.task for c in self._consumers.values() if c.task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc = self._nc
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self) -> None:
        import nats

        delay = RETRY_MIN
        while not self._closed:
            try:
                self._nc = await nats.connect(
                    servers=self.url.split(","),
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RETRY_MAX,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
                break
            except Exception as exc:  # the client raises several kinds; all mean "not yet"
                log.debug("broker %s not reachable: %s", self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        if self._closed:
            return
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self.up = True
        log.info("broker %s connected", self.url)
        await self._realign_all()

    async def _disconnected(self) -> None:
        self.up = False
        log.info("broker %s lost", self.url)

    async def _reconnected(self) -> None:
        log.info("broker %s reconnected", self.url)
        self.up = True
        self._fanout_ready.clear()  # the broker may have lost its state meanwhile
        # What was in flight from the broker when it went away is redelivered only after
        # ACK_WAIT, behind newer events: realign first (see the module docstring).
        await self._realign_all()

    async def _error(self, exc: Exception) -> None:
        log.debug("broker %s: %s", self.url, exc)

    async def _request(self, subject: str, event: bytes, timeout: float) -> bytes:
        import nats.errors

        try:
            msg = await self._nc.request(subject, event, timeout=timeout)
        except nats.errors.NoRespondersError:
            return bytes([_FAILED]) + b"no node agent serves that node on the broker"
        except nats.errors.TimeoutError:
            raise TimeoutError from None
        return bytes(msg.data)

    # -- sending ----------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        """Publish the outbox in order: what is kept for one node, as one message, one
        acknowledged publish at a time. A message that failed is sent again the same (its
        id the same), so the broker drops it if it had stored it after all."""
        import nats.errors
        import nats.js.errors

        assert self._wake is not None
        delay = RETRY_MIN
        again = 0  # the last record of a message to send again, 0: none
        while not self._closed:
            self._wake.clear()
            records = self.outbox.pending(self.outbox.head, SEND_EVENTS)
            if not records or not self.up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            limit = int(getattr(self._nc, "max_payload", SEND_BYTES))  # the broker's
            subject = read_outbox_record(records[0][1])[0]
            batch: list[bytes] = []
            size, last = 0, records[0][0]
            for seq, record in records:
                to, event = read_outbox_record(record)
                if to != subject or (batch and size + 4 + len(event) > min(limit, SEND_BYTES)):
                    break
                if again and seq > again:
                    break
                batch.append(event)
                size += 4 + len(event)
                last = seq
            if size > limit:
                # One event over what the broker takes: it would block every event behind it.
                log.error(
                    "an event of %d bytes is over what the broker %s takes (%d): dropped",
                    size - 4,
                    self.url,
                    limit,
                )
                self.too_big += 1
                self.outbox.consume(last)
                continue
            headers = {"Nats-Msg-Id": f"{self._outbox_id}-{records[0][0]}-{last}"}
            _, app, kind, node = subject.split(".")
            try:
                if kind == "fanout":
                    await self._ensure_receivers(app, node)
                await self._js.publish(subject, pack(batch), headers=headers)
            except nats.js.errors.NoStreamResponseError:
                again = last
                self._fanout_ready.clear()
                with contextlib.suppress(Exception):
                    await (self._ensure_fanout_stream if kind == "fanout" else self._ensure_stream)(
                        app
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as exc:  # NATS, OS, or anything a hostile broker provokes:
                # this task carries every app's events through the broker, it must go on.
                again = last
                log.info("broker %s did not take events (%r); retrying", self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay, again = RETRY_MIN, 0
            self.outbox.consume(last)

    # -- receiving --------------------------------------------------------------------------

    async def _ensure_stream(self, app: str) -> Any:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        name = stream_name(app)
        jsm = self._js
        try:
            return await jsm.stream_info(name)
        except NotFoundError:
            pass
        servers = len(getattr(self._nc, "servers", ()))
        # On a cluster (three servers or more known), kept on three: one may fail. A
        # broker that is not clustered refuses that: then on one.
        for replicas in (REPLICAS, 1) if servers >= REPLICAS else (1,):
            config = StreamConfig(
                name=name,
                subjects=[f"veritee.{app}.events.*"],
                storage=StorageType.FILE,
                retention=RetentionPolicy.WORK_QUEUE,
                max_msg_size=MAX_FRAME_BYTES,
                duplicate_window=DUPLICATE_WINDOW,
                num_replicas=replicas,
            )
            try:
                return await jsm.add_stream(config)
            except Exception as exc:
                log.debug("stream %s on %d replica(s) not made: %s", name, replicas, exc)
        return await jsm.stream_info(name)  # another agent of the app made it meanwhile

    async def _ensure_fanout_stream(self, app: str) -> Any:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        name = fanout_stream_name(app)
        try:
            return await self._js.stream_info(name)
        except NotFoundError:
            pass
        servers = len(getattr(self._nc, "servers", ()))
        for replicas in (REPLICAS, 1) if servers >= REPLICAS else (1,):
            config = StreamConfig(
                name=name,
                subjects=[fanout_subject(app, "*")],
                storage=StorageType.FILE,
                retention=RetentionPolicy.INTEREST,
                max_msg_size=MAX_FRAME_BYTES,
                duplicate_window=DUPLICATE_WINDOW,
                num_replicas=replicas,
            )
            try:
                return await self._js.add_stream(config)
            except Exception as exc:
                log.debug("stream %s on %d replica(s) not made: %s", name, replicas, exc)
        return await self._js.stream_info(name)

    async def _expect(self, app: str, source: str, nodes: set[str]) -> None:
        self._fanout_to.setdefault((app, source), set()).update(nodes)

    async def _ensure_receivers(self, app: str, source: str) -> None:
        """Before ``source`` publishes fan-out events: a consumer for each node they go to
        (one that never came up would otherwise have no interest, and the stream would not
        keep its events). Made once per connection to the broker."""
        missing = [
            n
            for n in sorted(self._fanout_to.get((app, source), ()))
            if (app, source, n) not in self._fanout_ready
        ]
        if not missing:
            return
        stream = fanout_stream_name(app)
        await self._ensure_fanout_stream(app)
        names = {c.name for c in await self._js.consumers_info(stream)}
        for node in missing:
            base = fanout_durable(node, source)
            if not any(_generation(n, base) is not None for n in names):
                await self._js.add_consumer(
                    stream,
                    _fanout_config(f"{base}-g0", app, node, source, 0),
                )
            self._fanout_ready.add((app, source, node))

    async def _add_consumer(self, app: str, node: str, source: str = "") -> None:
        key = (app, node, source)
        if key in self._consumers:
            return
        name = f"{app}.{node}" + (f".from.{source}" if source else "")
        consumer = _Consumer(app, node, self.directory / "seen" / name, source)
        consumer.load()
        consumer.ready = asyncio.Event()
        self._consumers[key] = consumer
        if self.up:
            await self._realign(consumer)
        if self.up and source:
            # A fan-out consumer is there before the sending end is connected: the stream
            # keeps what is published for this node from the first event on.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(consumer.ready.wait(), PUBLISH_TIMEOUT)

    async def _drop_consumer(self, app: str, node: str, source: str = "") -> None:
        consumer = self._consumers.pop((app, node, source), None)
        if consumer is not None:
            await self._stop(consumer)
            consumer.close()

    async def _stop(self, consumer: _Consumer) -> None:
        task, consumer.task = consumer.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _realign_all(self) -> None:
        for consumer in list(self._consumers.values()):
            await self._realign(consumer)

    async def _realign(self, consumer: _Consumer) -> None:
        """(Re)make the durable consumer from what this agent took last, and take from it."""
        if consumer.task is None or consumer.task.done():
            consumer.task = asyncio.create_task(self._consume(consumer))
        else:
            consumer.realign = True  # its task does, after the fetch under way

    async def _prepare(self, consumer: _Consumer) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        app, node = consumer.app, consumer.node
        if consumer.source:
            return await self._prepare_fanout(consumer)
        await self._restart_if_new(consumer, await self._ensure_stream(app))
        subject = events_subject(app, node)
        if consumer.seen:
            # Held in custody already, maybe never acknowledged: not to be delivered again.
            await self._js.purge_stream(stream_name(app), seq=consumer.seen + 1, subject=subject)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(stream_name(app), node)
        await self._js.add_consumer(
            stream_name(app),
            ConsumerConfig(
                durable_name=node,
                filter_subject=subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )
        consumer.requests = await self._nc.subscribe(requests_subject(app, node), cb=self._answer)
        return await self._js.pull_subscribe_bind(durable=node, stream=stream_name(app))

    async def _restart_if_new(self, consumer: _Consumer, info: Any) -> None:
        created = info.created.isoformat() if info.created else ""
        if created != consumer.created:
            # A stream made afresh numbers from 1 again: what we recorded no longer applies
            # (a resent event the secure world has already taken is refused there).
            await asyncio.get_running_loop().run_in_executor(
                self._custody, consumer.restart, created
            )

    async def _prepare_fanout(self, consumer: _Consumer) -> Any:
        """The next generation of a fan-out consumer, from what this agent took last; the
        ones before it deleted after (so that the stream's interest never lapses)."""
        app, node, source = consumer.app, consumer.node, consumer.source
        stream = fanout_stream_name(app)
        await self._restart_if_new(consumer, await self._ensure_fanout_stream(app))
        base = fanout_durable(node, source)
        names = [c.name for c in await self._js.consumers_info(stream)]
        gens = {n: g for n in names if (g := _generation(n, base)) is not None}
        durable = f"{base}-g{max(gens.values(), default=0) + 1}"
        await self._js.add_consumer(
            stream, _fanout_config(durable, app, node, source, consumer.seen + 1)
        )
        for old in gens:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(stream, old)
        return await self._js.pull_subscribe_bind(durable=durable, stream=stream)

    async def _consume(self, consumer: _Consumer) -> None:
        """The one task taking events for ``consumer``: realigns, then fetches, until told
        to realign again (or the broker fails it), for as long as the transport runs."""
        delay = RETRY_MIN
        while not self._closed:
            consumer.realign = False
            sub = None
            try:
                sub = await self._prepare(consumer)
                if consumer.ready is not None:
                    consumer.ready.set()
                log.info(
                    "taking events of %s/%s from %s after %d",
                    consumer.app,
                    consumer.node,
                    self.url,
                    consumer.seen,
                )
                delay = RETRY_MIN
                await self._fetch(consumer, sub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the consumer deleted, the broker away, custody refused
                log.info(
                    "taking %s/%s from %s: %r; realigning",
                    consumer.app,
                    consumer.node,
                    self.url,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            finally:
                for each in (sub, consumer.requests):
                    if each is not None:
                        with contextlib.suppress(Exception):
                            await each.unsubscribe()
                consumer.requests = None

    async def _fetch(self, consumer: _Consumer, sub: Any) -> None:
        import nats.errors

        loop = asyncio.get_running_loop()
        while not self._closed and not consumer.realign:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing came
            fresh = []
            newest = consumer.seen
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > newest:
                    fresh.extend(unpack(bytes(msg.data)))
                    newest = seq
            then = None
            if fresh:
                # Refused (AppError): not acknowledged, and realigned after a pause, so
                # that they come again in order.
                then = await loop.run_in_executor(
                    self._custody, self._take, consumer, fresh, newest
                )
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.ack()
            if then is not None:
                loop.run_in_executor(self._custody, then)

    def _take(self, consumer: _Consumer, events: list[bytes], newest: int) -> Any:
        """Custody first, then the record of it (a crash between: a duplicate, refused)."""
        sink = self.on_published if consumer.source and self.on_published else self._on_events
        assert sink is not None
        then = sink(events)
        consumer.seen = newest
        consumer.save()
        return then

    async def _answer(self, msg: Any) -> None:
        loop = asyncio.get_running_loop()
        payload = await loop.run_in_executor(self._pool, self._handle, bytes(msg.data))
        with contextlib.suppress(Exception):
            await msg.respond(payload)

    def _handle(self, event: bytes) -> bytes:
        assert self._on_request is not None
        try:
            return bytes([_OK]) + self._on_request(event)
        except Error as exc:
            return bytes([_FAILED]) + str(exc).encode()[:200]
        except Exception:
            log.exception("answering a request failed")
            return bytes([_FAILED]) + b"the node agent failed to carry the request"


def _generation(name: str, base: str) -> int | None:
    """N of a consumer named ``base-gN``; None for another's."""
    head, _, gen = name.rpartition("-g")
    # ASCII digits only: str.isdigit() holds for "²", which int() refuses (anyone who may
    # make a consumer on the stream names it).
    return int(gen) if head == base and gen.isascii() and gen.isdigit() else None


def _fanout_config(durable: str, app: str, node: str, source: str, start: int) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    return ConsumerConfig(
        durable_name=durable,
        description=f"fan-out events of {app} from node {source} for node {node}",
        filter_subject=fanout_subject(app, source),
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start > 1 else DeliverPolicy.ALL,
        opt_start_seq=start if start > 1 else None,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_ack_pending=MAX_ACK_PENDING,
    )


def broker_directory(root: Path, url: str) -> Path:
    """Where an agent keeps its state for the broker at ``url`` (outbox, custody records)."""
    return root / "nats" / hashlib.sha256(url.encode()).hexdigest()[:16]
