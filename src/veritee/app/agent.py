"""The node agent (Authentic Execution's "event manager"): untrusted, and built to be.

It loads modules into its secure world through the TEE Client API, routes sealed events by
connection id (to a local module's inbox, or to another node through a :class:`Transport`),
carries synchronous requests, runs periodic events, and keeps what it owes on disk: each
module's binary and sealed state, its inbox, the outboxes of nodes that are down. It holds
no key: a misbehaving agent can drop or delay events, never read, forge or replay them.

State under ``directory`` (``HOME/node`` by default)::

    apps/APP/app.cbor              this node's name in APP, its peers, routes, periodic events
    apps/APP/modules/NAME/         module.wasm, load.cbor, state.sealed, inbox.spool
    outbox/HOST_PORT.spool         events kept for another node
    links/LINK                     highest event number taken from a sending node
    nats/BROKER/                   an app's broker (app/transport_nats.py): outbox, custody
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from veritee.app._host import LoadParams, ModuleHost
from veritee.app.errors import AppError, NodeError, NotAppOwner, TransportError
from veritee.app.metrics import NodeMetrics
from veritee.app.routes import STAGED, End, Route, destination, keep_staged, restage
from veritee.app.transport import Address, Peer, Transport
from veritee.app.transport_nats import (
    DIRECT,
    MAX_BROKERS,
    NatsTransport,
    broker_directory,
    is_broker,
    parse_transport,
)
from veritee.errors import Error
from veritee.home import DEFAULT_VTEE, Home
from veritee.tee import channels
from veritee.tee.channels import EventRejected
from veritee.tee.ta import Outcome

log = logging.getLogger("veritee.node")

# Events kept for a module, and the number of the record before them (see route_all).
Arrival = tuple[ModuleHost, int]

# Events a user's tool has not fetched yet, per connection (a module's answer to the user).
MAILBOX = 1024
# Retired connection ids the agent remembers, to tell events on them from unrouted ones.
MAX_RETIRED = 65536
# Connections /metrics counts events of one by one: anyone who reaches the API may create an
# app and its routes, and each id would be a series of its own; past this, "other".
MAX_FLOW_SERIES = 4096
# Apps a node holds: anyone who reaches the API may create an app (it is theirs, see
# app/auth.py), but not without end, each with its files and its nonces.
MAX_APPS = 1024


@dataclass
class MetricsSnapshot:
    """What ``/metrics`` reads of the agent (see app/metrics.py for what it may show)."""

    flows: dict[tuple[str, str], int]
    dropped: dict[tuple[str, str], int]
    links: dict[str, dict[str, int | bool]]
    inbox: int
    modules: dict[str, int]
    apps: int


class UnknownModule(NodeError):
    """No such module (or app) on this node."""


@dataclass
class _App:
    name: str
    node: str = ""
    peers: dict[str, Address] = field(default_factory=dict)
    periodic: list[tuple[str, str, int]] = field(default_factory=list)
    # The deployment public key (SEC1) of whoever created the app on this node: only
    # requests it signs act on the app (app/auth.py), and only under it do modules load.
    owner: bytes | None = None
    # How its events travel between nodes: DIRECT (TCP links) or a NATS broker's URL.
    transport: str = DIRECT

    def to_cbor(self, routes: Iterable[Route]) -> bytes:
        return bytes(
            cbor2.dumps(
                {
                    "owner": self.owner,
                    "node": self.node,
                    "transport": self.transport,
                    "peers": {k: list(v) for k, v in self.peers.items()},
                    "periodic": [list(p) for p in self.periodic],
                    "routes": [r.to_cbor() for r in routes if r.app == self.name],
                }
            )
        )


class NodeAgent:
    """One node's agent. Thread-safe; its HTTP face is :mod:`veritee.app.api`."""

    def __init__(
        self,
        home: Home,
        directory: Path,
        transport: Transport,
        *,
        vtee: str = DEFAULT_VTEE,
        default_transport: str = DIRECT,
    ) -> None:
        """``transport``: the direct links; ``default_transport``: what an app configured
        without naming one uses (DIRECT, or a NATS URL: ``node start --transport``)."""
        self.home, self.vtee = home, vtee
        self.directory = directory
        self.agent_id = _agent_id(directory)
        self.transport = transport
        self.default_transport = parse_transport(default_transport)
        self._brokers: dict[str, NatsTransport] = {}
        self._apps: dict[str, _App] = {}
        self._hosts: dict[tuple[str, str], ModuleHost] = {}
        self._routes: dict[bytes, Route] = {}
        # Connections retired lately, newest last: events on them count as "retired", not
        # "unrouted". Only that: bounded, as anyone who reaches the API may retire ids.
        self._retired: dict[bytes, None] = {}
        self._mailboxes: dict[bytes, deque[bytes]] = {}
        self.counters: Counter[str] = Counter()  # agent-level drops: unrouted, retired, ...
        self.others = 0  # fan-out events taken from a broker that were all for other nodes
        # Events per (connection id hex, "in" | "out"): what /metrics counts per connection.
        self.flows: Counter[tuple[str, str]] = Counter()
        self._lock = threading.RLock()
        self._periodic_stop = threading.Event()
        self._periodic_threads: list[threading.Thread] = []
        self.started = time.time()
        self.address: Address = ("", 0)
        self.metrics = NodeMetrics()
        self.metrics.watch(self)

    # -- start-up and shut-down -------------------------------------------------------------

    def start(self) -> list[str]:
        """Start receiving events, then reload every module this node hosted; returns problems."""
        self.address = self.transport.start(self._from_network, self._request_from_network)
        problems = []
        for app_dir in sorted((self.directory / "apps").glob("*")):
            if not (app_dir / "app.cbor").is_file():
                continue
            app = self._restore_app(app_dir)
            for module_dir in sorted((app_dir / "modules").glob("*")):
                if module_dir.name.endswith(STAGED) or not (module_dir / "load.cbor").is_file():
                    shutil.rmtree(module_dir, ignore_errors=True)  # an update that never finished
                    continue
                params = LoadParams.from_cbor((module_dir / "load.cbor").read_bytes())
                if app.owner is None:  # kept before owners were recorded: its modules' key
                    app.owner = params.deployment_key
                    self._save(app.name)
                host = self._new_host(module_dir, params)
                self._hosts[(app.name, params.name)] = host
                try:
                    host.load()
                    log.info("reloaded %s with its sealed state", host)
                except Error as exc:
                    host.failed = str(exc)
                    problems.append(f"{host}: {exc}")
        for app in list(self._apps.values()):
            if is_broker(app.transport) and app.node:
                try:
                    self._broker(app.transport).serve(app.name, app.node)
                    self._serve_fanout(app.name)
                except Error as exc:
                    problems.append(f"app {app.name}: {exc}")
        resume = getattr(self.transport, "resume", None)
        if callable(resume):
            resume()
        self._start_periodic()
        return problems

    def _restore_app(self, app_dir: Path) -> _App:
        raw = cbor2.loads((app_dir / "app.cbor").read_bytes())
        app = _App(
            app_dir.name,
            raw.get("node", ""),
            {k: (str(v[0]), int(v[1])) for k, v in raw.get("peers", {}).items()},
            [(str(m), str(e), int(p)) for m, e, p in raw.get("periodic", [])],
            raw.get("owner") if isinstance(raw.get("owner"), bytes) else None,
            str(raw.get("transport", DIRECT)),
        )
        self._apps[app.name] = app
        for r in raw.get("routes", []):
            route = Route.from_cbor(app.name, r)
            self._routes[route.conn] = route
        return app

    def close(self) -> None:
        self._periodic_stop.set()
        self.transport.close()
        with self._lock:
            brokers = list(self._brokers.values())
        for broker in brokers:
            broker.close()
        with self._lock:
            hosts = list(self._hosts.values())
        for host in hosts:
            host.close()

    # -- what the deployer asks --------------------------------------------------------------

    def owner_of(self, app: str) -> bytes | None:
        """The deployment key that owns ``app`` here; None if this node holds no such app."""
        with self._lock:
            a = self._apps.get(app)
            return a.owner if a is not None else None

    def node_of(self, app: str) -> str:
        """This node's name in ``app``; "" before the owner configured it."""
        with self._lock:
            a = self._apps.get(app)
            return a.node if a is not None else ""

    def configure(
        self,
        app: str,
        node: str,
        peers: Mapping[str, Address],
        *,
        owner: bytes,
        transport: str | None = None,
    ) -> None:
        """This node's name in ``app`` and where the app's other nodes take events.

        ``owner``: the deployment key that signed the request. A new app becomes its own
        (anyone may create an app: it is theirs); an existing one must be owned by it.
        ``transport``: DIRECT or a NATS URL; None: this node's default."""
        chosen = self.default_transport if transport is None else parse_transport(transport)
        with self._lock:
            if app not in self._apps and len(self._apps) >= MAX_APPS:
                raise NodeError(f"this node holds its maximum of {MAX_APPS} apps")
            a = self._apps.setdefault(app, _App(app, owner=owner))
            if a.owner is None:
                a.owner = owner
            elif a.owner != owner:
                raise NotAppOwner(f"app {app!r} on this node belongs to another deployment key")
            before = (a.transport, a.node)
            broker = self._broker(chosen) if is_broker(chosen) else None
            a.node = node
            a.peers = dict(peers)
            a.transport = chosen
            self._save(app)
        if is_broker(before[0]) and before != (chosen, node) and before[0] in self._brokers:
            self._brokers[before[0]].unserve(app, before[1])
        if broker is not None:
            broker.serve(app, node)
            self._serve_fanout(app)

    def _broker(self, url: str) -> NatsTransport:
        """The transport through the broker at ``url``, connected once per agent."""
        with self._lock:
            broker = self._brokers.get(url)
            if broker is None:
                if len(self._brokers) >= MAX_BROKERS:
                    raise NodeError(f"this node uses its maximum of {MAX_BROKERS} brokers")
                broker = NatsTransport(broker_directory(self.directory, url), url)
                broker.start(self._from_network, self._request_from_network)
                broker.on_published = self._from_fanout
                self._brokers[url] = broker
            return broker

    def _transport_for(self, app: str) -> Transport:
        a = self._apps.get(app)
        if a is not None and is_broker(a.transport):
            return self._broker(a.transport)
        return self.transport

    def links(self) -> dict[str, dict[str, int | bool]]:
        """Per peer address or broker URL: ``up``, ``queued``."""
        out = dict(self.transport.links())
        with self._lock:
            brokers = list(self._brokers.values())
        for broker in brokers:
            out.update(broker.links())
        return out

    def load(
        self,
        params: LoadParams,
        wasm: bytes,
        *,
        staged: bool = False,
        succession: bytes | None = None,
        owner: bytes | None = None,
    ) -> dict[str, Any]:
        """Load a module (``staged``: beside the running one, to replace it on ``activate``).

        With ``succession`` (staged only), the new build starts from the running one's
        sealed state, if the secure world accepts the owner's signed statement. ``owner``:
        the key that signed the request; it owns an app that has no owner yet (kept from
        before owners were recorded). Modules load under the app owner's key only.
        """
        app = self._app(params.app)
        with self._lock:
            if app.owner is None and owner is not None:
                app.owner = owner
                self._save(params.app)
            if owner is not None and owner != app.owner:
                raise NotAppOwner(f"app {params.app!r} belongs to another deployment key")
            if app.owner is not None and params.deployment_key != app.owner:
                raise NotAppOwner(
                    f"modules of app {params.app!r} load under its owner's deployment key only"
                )
        key = (params.app, params.name + (STAGED if staged else ""))
        with self._lock:
            running = self._hosts.get((params.app, params.name)) if staged else None
            old = self._hosts.pop(key, None)
        if old is not None:
            old.destroy()
        directory = self._module_dir(params.app, key[1])
        if directory.exists():
            shutil.rmtree(directory)
        host = self._new_host(directory, params)
        inherit = running.stored_state() if running is not None and succession else None
        try:
            info = host.load(wasm, inherit=inherit, succession=succession)
        except BaseException:
            host.destroy()
            raise
        with self._lock:
            self._hosts[key] = host
        log.info("loaded %s on %s (%s)", host, app.node, info["measurement"].hex()[:16])
        return info

    def activate(self, app: str, name: str, retire: Iterable[bytes]) -> None:
        """Swap a staged instance in for the running one; events on ``retire`` stop."""
        with self._lock:
            staged = self._hosts.pop((app, name + STAGED), None)
            if staged is None:
                raise UnknownModule(f"no staged instance of {app}/{name} to activate")
            old = self._hosts.pop((app, name), None)
            self._retire(app, retire)
            node = self._apps[app].node
            for conn, route in list(self._routes.items()):
                if route.app == app:  # node and module names are each app's own
                    self._routes[conn] = restage(route, node, name + STAGED, name)
        if old is not None:
            old.destroy()
        staged.move(self._module_dir(app, name))  # the instance runs on, keys and channels
        with self._lock:
            self._hosts[(app, name)] = staged
            self._save(app)

    def discard(self, app: str, name: str) -> None:
        """Drop a staged instance (its update was refused)."""
        with self._lock:
            staged = self._hosts.pop((app, name + STAGED), None)
        if staged is not None:
            staged.destroy()

    def disable(self, app: str, name: str, retire: Iterable[bytes]) -> None:
        """Unload a module for good: its files go, events on its connections are dropped."""
        a = self._app(app)
        with self._lock:
            host = self._hosts.pop((app, name), None)
            self._retire(app, retire)
            a.periodic = [p for p in a.periodic if p[0] != name]
            self._save(app)
        if host is None:
            raise UnknownModule(f"no module {app}/{name} on this node")
        host.destroy()

    def retire(self, app: str, conns: Iterable[bytes], statement: bytes | None = None) -> list[str]:
        """Connections that ended (a module disabled or replaced): their events are dropped.

        With ``statement`` (the owner's signed disconnect), every module of ``app`` here ends
        them in its secure world. Returns, per module that could not, why.
        """
        with self._lock:
            self._app(app)
            self._retire(app, conns)
            self._save(app)
            hosts = [h for (a, _), h in self._hosts.items() if a == app]
        problems = []
        if statement is not None:
            for host in hosts:
                try:
                    host.disconnect(statement)
                except Error as exc:
                    log.warning("%s did not take the disconnect statement: %s", host, exc)
                    problems.append(f"{host}: {exc}")
        return problems

    def _retire(self, app: str, conns: Iterable[bytes]) -> None:
        """Retire ``app``'s own connections among ``conns``; another app's are left alone
        (connection ids are in every event header: any owner could name them)."""
        for conn in conns:
            route = self._routes.get(conn)
            if route is not None and route.app != app:
                continue
            self._routes.pop(conn, None)
            self._retired.pop(conn, None)
            self._retired[conn] = None
        while len(self._retired) > MAX_RETIRED:
            del self._retired[next(iter(self._retired))]

    def attest(self, app: str, name: str, nonce: bytes, user_data: bytes, staged: bool) -> bytes:
        return self._host(app, name, staged).attest(nonce, user_data)

    def connect(self, app: str, name: str, statement: bytes, route: Route, staged: bool) -> None:
        """Hand a signed statement to the module; the route is ours to know, not a secret."""
        self._host(app, name, staged).connect(statement)
        with self._lock:
            if staged:  # events for the module on this connection go to the new instance
                route = restage(route, self._apps[app].node, name, name + STAGED)
            old = self._own_route(route)
            if old is not None:  # both ends on this node: keep a staged end already recorded
                route = Route(
                    route.app,
                    route.conn,
                    route.name,
                    keep_staged(old.initiator, route.initiator),
                    keep_staged(old.responder, route.responder),
                    route.fanout,
                )
            self._routes[route.conn] = route
            self._retired.pop(route.conn, None)
            self._save(app)
        self._serve_fanout(app)

    def _serve_fanout(self, app: str) -> None:
        """Tell the app's broker whose fan-out events this node takes and where its own go
        (a receiving end is made before the sending end: its consumer is there first)."""
        with self._lock:
            a = self._apps.get(app)
            if a is None or not is_broker(a.transport) or not a.node:
                return
            sources, destinations = set(), set()
            for r in self._routes.values():
                if r.app != app or not r.fanout:
                    continue
                if r.responder.node == a.node:
                    sources.add(r.initiator.node)
                if r.initiator.node == a.node:
                    destinations.add(r.responder.node)
            url = a.transport
        if sources or destinations:
            self._broker(url).fanout(app, a.node, sources, destinations)

    def _own_route(self, route: Route) -> Route | None:
        """The route already known for ``route``'s connection, which must be of the same app:
        one app's owner never takes over another app's connection. Call with the lock."""
        old = self._routes.get(route.conn)
        if old is not None and old.app != route.app:
            raise NotAppOwner(f"connection {route.conn.hex()} is not of app {route.app!r}")
        return old

    def add_route(self, route: Route) -> None:
        with self._lock:
            self._own_route(route)
            self._routes[route.conn] = route
            self._retired.pop(route.conn, None)
            self._save(route.app)
        self._serve_fanout(route.app)

    def set_periodic(self, app: str, events: list[tuple[str, str, int]]) -> None:
        with self._lock:
            self._app(app).periodic = list(events)
            self._save(app)
        self._start_periodic()

    # -- events ------------------------------------------------------------------------------

    def route(self, event: bytes, *, origin: str = "module") -> tuple[str, ModuleHost | None]:
        """Send an event for one connection on its way (a user's: never a fan-out).
        Returns where to ("local", "remote", "user", "dropped")."""
        try:
            conn, direction = _header(event)
        except EventRejected:
            self.counters["malformed"] += 1
            return "dropped", None
        where, target, _ = self._where(conn, direction, event)
        if where == "local":
            assert isinstance(target, ModuleHost)
            target.enqueue(event)
            return "local", target
        if where == "remote":
            assert isinstance(target, Peer)
            self._transport_for(target.app).send(target, event)
        return where, None

    def route_all(
        self,
        events: list[bytes],
        *,
        arrived: list[Arrival] | None = None,
        published: bool = False,
    ) -> int:
        """Send events on their way, in order, with one write per inbox or outbox.
        Returns how many had no route here (each counted by why). With ``arrived``, local
        inboxes are not woken: what was kept for each is added to it, for the caller to
        deliver (:meth:`ModuleHost.deliver_arrived`).

        A fan-out event (one output's, for several connections) is split: a module here
        gets the part for its connection; another node gets one event with the parts of
        its connections; on a broker, the parts for connections routed as fan-outs go as
        one event, published once for all their nodes. Parts for connections this node
        does not know are another node's (a fan-out published once reaches every node it
        is for): they are dropped uncounted, unless no part of the event is for here.
        ``published``: the events came from a broker's fan-out subject, which every node
        with a fan-out input of the source takes; an event for one connection there that
        is not this node's is another node's too (counted "foreign", not dropped).

        A connection routed as a fan-out keeps the fan-out path for its whole life, also
        when its output has one input left (the source then seals version 1 events): its
        events so stay in one stream, in order."""
        local: dict[ModuleHost, list[bytes]] = {}
        remote: dict[Peer, list[bytes]] = {}
        dropped = 0
        for event in events:
            try:
                # A fan-out's parts are built only for where they go: one message of 1024
                # wraps for no one here must not cost 1024 copies of its payload.
                fanout = event[:1] == bytes([channels.FANOUT])
                conns = channels.fanout_conns(event) if fanout else []
                parts = channels.split(event) if len(conns) <= 1 else []
            except EventRejected:
                self.counters["malformed"] += 1
                dropped += 1
                continue
            if len(conns) > 1:
                dropped += self._fan_out(event, conns, local, remote)
                continue
            conn, direction, one = parts[0]
            where, target, route = self._where(conn, direction, one, foreign=published)
            if where == "local":
                assert isinstance(target, ModuleHost)
                local.setdefault(target, []).append(one)
            elif where == "remote":
                assert isinstance(target, Peer) and route is not None
                remote.setdefault(self._fan_path(route, target), []).append(one)
            elif where == "foreign":
                self.others += 1
                self.counters["foreign"] += 1
            elif where == "dropped":
                dropped += 1
        for host, batch in local.items():
            if arrived is None:
                host.enqueue_all(batch)
            else:
                arrived.append((host, host.keep(batch)))
        for peer, batch in remote.items():
            if isinstance(peer, _FanOut):
                broker = self._transport_for(peer.app)
                assert isinstance(broker, NatsTransport)
                broker.send_fanout(peer.app, peer.node, batch)
            else:
                self._transport_for(peer.app).send_all(peer, batch)
        return dropped

    def _fan_out(
        self,
        event: bytes,
        conns: list[bytes],
        local: dict[ModuleHost, list[bytes]],
        remote: dict[Peer, list[bytes]],
    ) -> int:
        """Where the parts of a fan-out event go (see :meth:`route_all`); returns 1 if it
        was dropped as a whole."""
        by_peer: dict[Peer, set[bytes]] = {}
        seen: set[str] = set()
        for i, conn in enumerate(conns):
            part = functools.partial(channels.fanout_part, event, i)
            where, target, route = self._where(conn, channels.FORWARD, part, foreign=True)
            seen.add(where)
            if where == "local":
                assert isinstance(target, ModuleHost)
                local.setdefault(target, []).append(part())
            elif where == "remote":
                assert isinstance(target, Peer) and route is not None
                by_peer.setdefault(self._fan_path(route, target), set()).add(conn)
        for peer, kept in by_peer.items():
            remote.setdefault(peer, []).append(channels.keep_wraps(event, kept))
        if seen == {"foreign"}:
            # All of it for other nodes: what a fan-out published once for several nodes
            # is to the nodes it does not reach through this one.
            self.others += 1
            self.counters["foreign"] += 1  # shown: a forged flood of them would be too
            return 0
        return 0 if seen & {"local", "remote", "user"} else 1

    def _fan_path(self, route: Route, peer: Peer) -> Peer:
        """Where an event of ``route`` for ``peer`` goes: a connection routed as a fan-out,
        on a broker, to the source's fan-out subject (one publish for all its nodes)."""
        app = self._apps.get(route.app)
        if route.fanout and app is not None and is_broker(app.transport):
            return _FanOut(route.app, app.node, ("", 0))
        return peer

    def _where(
        self,
        conn: bytes,
        direction: int,
        event: bytes | Callable[[], bytes],
        *,
        foreign: bool = False,
    ) -> tuple[str, ModuleHost | Peer | None, Route | None]:
        """Where an event for one connection goes; events for a user's tool go to its
        mailbox at once. ``foreign``: a part of a fan-out, which may be another node's:
        if it has no route here it is "foreign", counted nowhere."""
        with self._lock:
            route = self._routes.get(conn)
            retired = conn in self._retired
        if route is None:
            if foreign and not retired:
                return "foreign", None, None
            self.counters["retired" if retired else "unrouted"] += 1
            return "dropped", None, None
        end = destination(route, direction)
        app = self._apps.get(route.app)
        if end.module is None:
            box = self._mailboxes.setdefault(conn, deque(maxlen=MAILBOX))
            box.append(event() if callable(event) else event)
            self._flow(conn, "out")
            return "user", None, route
        if app is not None and end.node == app.node:
            host = self._hosts.get((route.app, end.module))
            if host is None:
                self.counters["no-module"] += 1
                return "dropped", None, route
            self._flow(conn, "in")
            return "local", host, route
        address = app.peers.get(end.node) if app is not None else None
        if address is None:
            self.counters["no-peer"] += 1
            return "dropped", None, route
        self._flow(conn, "out")
        return "remote", Peer(route.app, end.node, address), route

    def _flow(self, conn: bytes, direction: str) -> None:
        key = (conn.hex(), direction)
        if key not in self.flows and len(self.flows) >= MAX_FLOW_SERIES:
            key = ("other", direction)
        self.flows[key] += 1

    def _owned_route(self, conn: bytes, app: str | None) -> Route | None:
        """The route of ``conn``; with ``app`` (the app a signed request names), only if
        the connection is of that app: one app's owner never reaches another's modules."""
        with self._lock:
            route = self._routes.get(conn)
        if route is not None and app is not None and route.app != app:
            raise NotAppOwner(f"that connection is not of app {app!r}")
        return route

    def submit(
        self, event: bytes, *, wait: bool, timeout: float = 30.0, of_app: str | None = None
    ) -> dict[str, Any]:
        """A user's sealed event (a direct connection, or an entry call); ``of_app``: the
        app whose owner signed the request (see _owned_route)."""
        try:
            conn, direction = _header(event)
        except EventRejected as exc:
            raise NodeError(f"not an event: {exc}") from None
        route = self._owned_route(conn, of_app)
        if route is None:
            self.counters["unrouted"] += 1
            raise NodeError("no connection with that id on this node")
        end = destination(route, direction)
        app = self._apps.get(route.app)
        if not wait or end.module is None or app is None or end.node != app.node:
            where, _ = self.route(event, origin="user")
            return {"routed": where}
        host = self._hosts.get((route.app, end.module))
        if host is None:
            raise UnknownModule(f"module {route.app}/{end.module} is not loaded here")
        self._flow(conn, "in")
        future = host.enqueue(event, wait=True)
        assert future is not None
        outcome = future.result(timeout)
        if outcome is None:
            return {"routed": "local", "failed": True}
        return {"routed": "local", "dropped": outcome.dropped, "log": outcome.log}

    def request(self, event: bytes, *, of_app: str | None = None) -> bytes:
        """Carry a request to its handler and bring back the sealed reply."""
        conn, direction = _header(event)
        route = self._owned_route(conn, of_app)
        if route is None:
            self.counters["unrouted"] += 1
            raise NodeError("no connection with that id")
        end = destination(route, direction)
        app = self._app(route.app)
        if end.module is None:
            raise NodeError("a request goes to a handler, not to a user")
        if end.node == app.node:
            host = self._host(route.app, end.module, False)
            self._flow(conn, "in")
            outcome = host.deliver_now(event)
            if outcome.dropped:
                raise NodeError(
                    f"the handler's secure world dropped the request: {outcome.dropped}"
                )
            if outcome.reply is None:
                raise NodeError("the handler gave no answer")
            return outcome.reply
        address = app.peers.get(end.node)
        if address is None:
            raise NodeError(f"node {end.node!r} of app {route.app!r} has no known address")
        self._flow(conn, "out")
        return self._transport_for(route.app).request(Peer(route.app, end.node, address), event)

    def mailbox(self, conn: bytes, *, of_app: str | None = None) -> list[bytes]:
        if of_app is not None and self._owned_route(conn, of_app) is None:
            return []  # a connection of no app here: nothing to fetch
        box = self._mailboxes.get(conn)
        out = list(box) if box else []
        if box:
            box.clear()
        return out

    def public(self, app: str, name: str, endpoint: str, request: bytes) -> Outcome:
        return self._host(app, name, False).public(endpoint, request)

    def inject(self, app: str, name: str, event: bytes) -> Outcome:
        """Deliver an event straight to a module, bypassing routing: what a malicious host
        could do. Exposed so that tests and the demo can play that host."""
        return self._host(app, name, False).deliver_now(event)

    def _from_network(self, events: list[bytes], published: bool = False) -> Callable[[], None]:
        """Take custody of events from another node; then, once the transport has
        acknowledged them, deliver them on its thread to modules that are idle."""
        arrived: list[Arrival] = []
        dropped = self.route_all(events, arrived=arrived, published=published)
        if dropped:
            log.warning("dropped %d event(s) from the network: no route for them here", dropped)

        def deliver() -> None:
            for host, before in arrived:
                host.deliver_arrived(before)

        return deliver

    def _from_fanout(self, events: list[bytes]) -> Callable[[], None]:
        """Events of a broker's fan-out subject (see :meth:`route_all`)."""
        return self._from_network(events, published=True)

    def _request_from_network(self, event: bytes) -> bytes:
        return self.request(event)

    def _relay(self, rpc: dict[str, Any]) -> dict[str, Any]:
        """What a module's secure world asks of us mid-event: carry a request."""
        if rpc.get("op") != "request" or not isinstance(rpc.get("event"), bytes):
            return {"error": f"operation {rpc.get('op')!r} is not offered by the node agent"}
        try:
            return {"event": self.request(rpc["event"])}
        except (Error, TransportError, EventRejected) as exc:
            return {"error": str(exc)}

    def _absorb(self, host: ModuleHost, events: list[bytes]) -> None:
        self.route_all(events)

    # -- periodic events ---------------------------------------------------------------------

    def _start_periodic(self) -> None:
        self._periodic_stop.set()
        for t in self._periodic_threads:
            t.join(2)
        self._periodic_stop = threading.Event()
        self._periodic_threads = []
        with self._lock:
            jobs = [(a.name, *p) for a in self._apps.values() for p in a.periodic]
        for app, module, endpoint, period in jobs:
            t = threading.Thread(
                target=self._tick,
                args=(self._periodic_stop, app, module, endpoint, period / 1000),
                name=f"periodic {app}/{module}.{endpoint}",
                daemon=True,
            )
            t.start()
            self._periodic_threads.append(t)

    def _tick(self, stop: threading.Event, app: str, module: str, ep: str, period: float) -> None:
        while not stop.wait(period):
            try:
                self.public(app, module, ep, b"")
            except Error as exc:
                log.warning("periodic event %s/%s.%s failed: %s", app, module, ep, exc)

    # -- status ------------------------------------------------------------------------------

    def metrics_snapshot(self) -> MetricsSnapshot:
        """The node-wide figures of ``/metrics``; never asks the secure world."""
        with self._lock:
            hosts = list(self._hosts.values())
            apps = len(self._apps)
        dropped: Counter[tuple[str, str]] = Counter()
        for reason, n in list(self.counters.items()):
            dropped[("agent", reason)] += n
        modules: Counter[str] = Counter()
        inbox = 0
        for host in hosts:
            for reason, n in list(host.dropped.items()):
                dropped[("secure-world", reason)] += n
            modules[host.state] += 1
            inbox += len(host.inbox)
        return MetricsSnapshot(
            flows=dict(self.flows),
            dropped=dict(dropped),
            links=self.links(),
            inbox=inbox,
            modules=dict(modules),
            apps=apps,
        )

    def status(self, only: str | None = None) -> dict[str, Any]:
        """The node's view; ``only``: of that app alone (what its owner may see)."""
        with self._lock:
            hosts = dict(self._hosts)
            apps = {n: a for n, a in self._apps.items() if only is None or n == only}
            routes = list(self._routes.values())
        out: dict[str, Any] = {
            "address": list(self.address),
            "uptime": time.time() - self.started,
            "counters": dict(self.counters),
            "links": self.links(),
            "apps": {},
        }
        for name, app in apps.items():
            modules = {}
            for (a, m), host in hosts.items():
                if a != name:
                    continue
                try:
                    tee = host.status()
                except Error as exc:
                    tee = {}
                    host.failed = host.failed or str(exc)
                modules[m] = {
                    "tee": tee,
                    "failed": host.failed,
                    "inbox": len(host.inbox),
                    "delivered": host.delivered,
                    "dropped": dict(host.dropped),
                    "loads": host.loads,
                    "log": list(host.tail)[-10:],
                }
            out["apps"][name] = {
                "node": app.node,
                "peers": {k: list(v) for k, v in app.peers.items()},
                "transport": app.transport,
                "modules": modules,
                "routes": len([r for r in routes if r.app == name]),
                "periodic": [list(p) for p in app.periodic],
            }
        return out

    # -- plumbing ----------------------------------------------------------------------------

    def _app(self, app: str) -> _App:
        with self._lock:
            a = self._apps.get(app)
        if a is None:
            raise UnknownModule(f"app {app!r} is not deployed on this node")
        return a

    def _host(self, app: str, name: str, staged: bool) -> ModuleHost:
        with self._lock:
            host = self._hosts.get((app, name + (STAGED if staged else "")))
        if host is None:
            raise UnknownModule(f"no module {app}/{name}{' (staged)' if staged else ''} here")
        return host

    def _module_dir(self, app: str, name: str) -> Path:
        return self.directory / "apps" / app / "modules" / name

    def _new_host(self, directory: Path, params: LoadParams) -> ModuleHost:
        return ModuleHost(
            directory,
            params,
            home=self.home,
            vtee=self.vtee,
            absorb=self._absorb,
            relay=self._relay,
            on_call=self.metrics.observe_call,
        )

    def _save(self, app: str) -> None:
        a = self._apps.get(app)
        if a is None:
            return
        path = self.directory / "apps" / app / "app.cbor"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(a.to_cbor(self._routes.values()))
        tmp.replace(path)


@dataclass(frozen=True)
class _FanOut(Peer):
    """Every node that this node's fan-out connections of an app go to, through a broker:
    one destination, published to once (``node`` is this node, the events' source)."""


def _header(event: bytes) -> tuple[bytes, int]:
    from veritee.tee.channels import parse_header

    _, conn, direction, _ = parse_header(event)
    return conn, direction


__all__ = ["AppError", "End", "NodeAgent", "Route", "UnknownModule"]


AGENT_ID_FILE = "agent-id"


def _agent_id(directory: Path) -> str:
    """This agent's own random id, kept across restarts: what its owner's configure request
    is signed for, so a recorded one cannot configure another node (it names no node yet)."""
    path = directory / AGENT_ID_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        directory.mkdir(parents=True, exist_ok=True)
        value = os.urandom(16).hex()
        path.write_text(value + "\n")
    return value
