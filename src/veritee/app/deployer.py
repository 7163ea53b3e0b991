"""The deployer: ships modules, has them attested, then connects only what appraised well.

Phases (each timed, each step reported through ``progress``): **build** (or read) every
binary and read its endpoint table; **nodes** (configure each node agent: its name in the
app, its peers); **load** every module with the app's public deployment key; **attest**
each over a fresh nonce (verification service or local appraisal, see :mod:`attest`);
**connect**: for each connection, a statement signed with the deployment key to each end,
naming the attested peer (measurement and the key from its evidence). The deployer never
holds a connection key. A module whose result is not acceptable is not connected, and the
deployment says which and why; so is a connection whose statement a secure world refused.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veritee.app import descriptor as desc_mod
from veritee.app import state as state_mod
from veritee.app.attest import (
    Appraised,
    Expected,
    LocalAppraiser,
    VerifierAppraiser,
    app_config_digest,
    measure,
)
from veritee.app.client import NodeClient
from veritee.app.descriptor import Connection, Descriptor
from veritee.app.errors import AppAlreadyRunning, AppError, DescriptorError, NotAppOwner, StateError
from veritee.app.routes import End, Route
from veritee.app.state import ConnectionState, Deployment, Keys, ModuleState, NodeState
from veritee.app.transport_nats import DIRECT, is_broker
from veritee.errors import Error
from veritee.evidence.deployment import Connect, Peer, sign_connect
from veritee.wasm.endpoints import Endpoint, recorded

log = logging.getLogger("veritee.deploy")

PARALLEL = 8  # modules loaded and attested at once; each is mostly waiting on a node
USER_MEASUREMENT = bytes(32)
USER_NODE = "user"  # where a direct connection's other end is: the user's tool, anywhere


@dataclass(frozen=True)
class Step:
    """A progress report: ``what`` is a module or connection name, ``step`` the phase."""

    what: str
    step: str
    state: str  # start, done, failed
    detail: str = ""


Progress = Callable[[Step], None]


def _quiet(_: Step) -> None:
    pass


@dataclass
class _Module:
    spec: desc_mod.Module
    binary: bytes
    path: Path
    table: list[Endpoint]
    state: ModuleState


class Deployer:
    """Deploys and changes one application, whose state lives at ``state_path``."""

    def __init__(
        self,
        state_path: Path,
        *,
        progress: Progress = _quiet,
        verifier: str | None = None,
        accept: str | None = None,
        trust_homes: Iterable[Path] = (),
    ) -> None:
        self.state_path = state_path
        self.progress = progress
        self.verifier = verifier
        self.accept = accept
        self.trust_homes = list(trust_homes)
        self._clients: dict[str, NodeClient] = {}

    # -- the whole deployment --------------------------------------------------------------

    def deploy(self, descriptor: Descriptor, *, force: bool = False) -> Deployment:
        """Deploy every module and connection of ``descriptor``; write the state file."""
        if self.state_path.exists() and not force:
            raise StateError(
                f"{self.state_path} already holds a deployment of "
                f"{state_mod.load(self.state_path).app!r}: use 'veritee update' or "
                "'veritee add', or deploy again with --force"
            )
        keys_file = state_mod.keys_path(self.state_path)
        new_keys = not keys_file.exists()
        keys = state_mod.new_keys() if new_keys else state_mod.load_keys(self.state_path)
        state_mod.save_keys(self.state_path, keys)
        verifier = self.verifier or descriptor.verifier.url
        dep = Deployment(
            app=descriptor.app,
            descriptor=descriptor.origin,
            verifier=verifier,
            accept=self.accept or descriptor.verifier.accept,
            trust=[str(h.resolve()) for h in self.trust_homes],
            nodes={n.name: NodeState(n.name, n.host, n.port, tls=n.tls) for n in descriptor.nodes},
            periodic=[[p.module, p.entry, p.period_ms] for p in descriptor.periodic],
            transport=descriptor.transport,
        )
        try:
            self._preflight(dep, force=force)
        except BaseException:
            # Nothing was changed anywhere: leave no state (or fresh keys) for a deploy that
            # did not happen.
            self.close()
            if new_keys:
                keys_file.unlink(missing_ok=True)
            raise
        try:
            t0 = time.perf_counter()
            modules = self._prepare(descriptor, dep)
            dep.timings["build"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._configure_nodes(dep)
            dep.timings["nodes"] = time.perf_counter() - t0
            self._load_attest(dep, keys, list(modules.values()))
            t0 = time.perf_counter()
            for conn in _connection_states(descriptor, modules):
                dep.connections[conn.name] = conn
            self._connect_all(dep, keys, list(dep.connections.values()))
            self._periodic(dep)
            dep.timings["connect"] = time.perf_counter() - t0
        finally:
            state_mod.save(self.state_path, dep)
            self.close()
        return dep

    def _preflight(self, dep: Deployment, *, force: bool) -> None:
        """What must hold before any node is configured or any module loaded.

        The verifier answers (one request): else every module would be loaded, then refused
        for want of an appraisal. And no node runs modules of this app already: a deploy
        replaces them (new module keys, new connection keys), and the deployment that runs
        them, with its own state file, would then see every event to them dropped as
        misrouted while its status still said connected. A node whose app is owned by
        another deployment key refuses (NotAppOwner); one owned by this key is replaced
        only with ``force``, and the progress says what is replaced.
        """
        if dep.verifier:
            from veritee.verifier.client import VerifierClient

            with VerifierClient(dep.verifier) as verifier:
                verifier.discovery()  # VerifierUnreachable / VerifierRefused (exit 9)
        running: dict[str, list[str]] = {}
        for name in dep.nodes:
            try:
                view = self._client(dep, name).status()
            except NotAppOwner:
                raise NotAppOwner(
                    f"app {dep.app!r} already runs on node {name} under another deployment "
                    "key (deployed with another state file): nothing was loaded; change it "
                    "with the state file that deployed it, or deploy under another app name"
                ) from None
            app = view.get("apps", {}).get(dep.app) if isinstance(view, dict) else None
            modules = sorted(app.get("modules", {})) if isinstance(app, dict) else []
            if modules:
                running[name] = modules
        if not running:
            return
        listing = "; ".join(f"{n}: {', '.join(m)}" for n, m in sorted(running.items()))
        if not force:
            raise AppAlreadyRunning(
                f"app {dep.app!r} already runs ({listing}); deploying would replace those "
                "modules and cut off the deployment that runs them: use 'veritee update' "
                "with its state file, or deploy with --force to replace them"
            )
        for n, m in sorted(running.items()):
            self.progress(Step(n, "replace", "done", f"replacing running {', '.join(m)}"))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def _client(self, dep: Deployment, node: str) -> NodeClient:
        client = self._clients.get(node)
        if client is None:
            n = dep.nodes[node]
            # Every request about the app is signed with its deployment key: the node
            # agent acts on the app for its owner only (app/auth.py).
            key = state_mod.load_keys(self.state_path).deployment
            client = NodeClient(n.url, name=n.name, app=dep.app, key=key)
            self._clients[node] = client
        return client

    # -- build ------------------------------------------------------------------------------

    def _prepare(self, descriptor: Descriptor, dep: Deployment) -> dict[str, _Module]:
        out: dict[str, _Module] = {}
        build_dir = self.state_path.parent / ".veritee-build" / descriptor.app
        for i, spec in enumerate(descriptor.modules):
            self.progress(Step(spec.name, "build", "start"))
            path, binary = _binary(spec, build_dir, descriptor.where(f"modules[{i}]"))
            try:
                table = recorded(binary)
            except Error as exc:
                raise DescriptorError(str(exc), where=descriptor.where(f"modules[{i}]")) from None
            if table is None:
                raise DescriptorError(
                    f"{path} is not an app module (no endpoint table): build it with "
                    "'veritee build' from a source that includes veritee_app.h",
                    where=descriptor.where(f"modules[{i}]"),
                    field=f"modules[{i}]",
                )
            ms = ModuleState(
                spec.name,
                spec.node,
                str(path),
                memory_mb=spec.memory_mb,
                timeout=spec.timeout,
                endpoints=[[e.kind, e.name] for e in table],
            )
            dep.modules[spec.name] = ms
            out[spec.name] = _Module(spec, binary, path, table, ms)
            self.progress(Step(spec.name, "build", "done", f"{len(binary)} bytes"))
        desc_mod.check_endpoints(descriptor, {m: x.table for m, x in out.items()})
        return out

    # -- nodes ------------------------------------------------------------------------------

    def _configure_nodes(self, dep: Deployment) -> None:
        kinds: dict[str, str] = {}  # node -> "direct" | "nats" (its own default)
        for name, node in dep.nodes.items():
            self.progress(Step(name, "node", "start"))
            info = self._client(dep, name).info()
            events = info.get("events")
            if not (isinstance(events, list) and len(events) == 2):
                raise AppError(f"node {name} did not say where it takes events")
            # The agent may listen on every address; its peers reach it at the descriptor's.
            node.events = [node.host, int(events[1])]
            kinds[name] = "nats" if is_broker(str(info.get("transport", DIRECT))) else DIRECT
        if dep.transport is None and len(set(kinds.values())) > 1:
            # A node's own broker URL may differ (each its nearest server of one cluster),
            # but events cannot cross from direct links to a broker.
            raise AppError(
                "the nodes use different transports ("
                + ", ".join(f"{n}: {k}" for n, k in sorted(kinds.items()))
                + "): start them alike (node start --transport), or name one for the app "
                "in the descriptor ('transport: nats://HOST:PORT' or 'transport: direct')"
            )
        peers = {n: (str(s.events[0]), int(s.events[1])) for n, s in dep.nodes.items()}
        for name in dep.nodes:
            self._client(dep, name).configure(dep.app, name, peers, dep.transport)
            how = (
                f"events on port {peers[name][1]}"
                if (dep.transport or kinds[name]) == DIRECT
                else f"events through {dep.transport or 'its NATS broker'}"
            )
            self.progress(Step(name, "node", "done", how))

    # -- load and attest ----------------------------------------------------------------------

    def _appraiser(self, dep: Deployment) -> LocalAppraiser | VerifierAppraiser:
        if dep.verifier:
            return VerifierAppraiser(dep.verifier, dep.accept)
        from veritee.evidence.appraisal import ReferenceValues, TrustAnchors

        homes = self.trust_homes or [Path(t) for t in dep.trust]
        if not homes:
            raise AppError(
                "no verification service configured and nothing to appraise locally with: "
                "give --verifier URL (or 'verifier: {url: ...}' in the descriptor), or "
                "--trust-home DIR for each node's device (its manufacturer CA and boot "
                "reference values)"
            )
        anchors = TrustAnchors(())
        refs = ReferenceValues()
        for home in homes:
            import json

            # A node's HOME is its host user's, who holds its CA key and can re-mint the CA
            # with any mark: from_pem caps it at emulated, whatever the file says.
            pem = (home / "manufacturer" / "ca.pem").read_bytes()
            anchors = anchors.merge(TrustAnchors.from_pem(pem))
            values = json.loads((home / "manufacturer" / "reference-values.json").read_text())
            refs = refs.merge(ReferenceValues.from_json(values))
        return LocalAppraiser(anchors, refs, dep.accept)

    def _load_attest(self, dep: Deployment, keys: Keys, modules: list[_Module]) -> None:
        appraiser = self._appraiser(dep)
        load_time: list[float] = []
        attest_time: list[float] = []

        def one(m: _Module) -> None:
            t0 = time.perf_counter()
            self._load(dep, keys, m.state, m.binary)
            t1 = time.perf_counter()
            if m.state.status != "refused":
                self._attest(dep, keys, appraiser, m.state, m.binary)
            load_time.append(t1 - t0)
            attest_time.append(time.perf_counter() - t1)

        t0 = time.perf_counter()
        try:
            with ThreadPoolExecutor(PARALLEL) as pool:
                for future in [pool.submit(one, m) for m in modules]:
                    future.result()
        finally:
            if isinstance(appraiser, VerifierAppraiser):
                appraiser.close()
        # Phases overlap across modules: report each phase's share of the wall time.
        wall = time.perf_counter() - t0
        total = (sum(load_time) + sum(attest_time)) or 1.0
        dep.timings["load"] = wall * sum(load_time) / total
        dep.timings["attest"] = wall * sum(attest_time) / total

    def _load(
        self,
        dep: Deployment,
        keys: Keys,
        m: ModuleState,
        binary: bytes,
        *,
        staged: bool = False,
        succession: bytes | None = None,
    ) -> dict[str, Any]:
        self.progress(Step(m.name, "load", "start", m.node))
        try:
            info = self._client(dep, m.node).load(
                dep.app,
                m.name,
                binary,
                keys.deployment_public,
                memory_mb=m.memory_mb,
                timeout=m.timeout,
                staged=staged,
                succession=succession,
            )
        except Error as exc:
            m.status, m.reason = "refused", f"not loaded: {exc}"
            self.progress(Step(m.name, "load", "failed", str(exc)))
            return {}
        m.measurement = ""
        reported = info.get("key", b"")
        m.attestation = {"reported_key": reported.hex() if isinstance(reported, bytes) else ""}
        self.progress(Step(m.name, "load", "done", m.node))
        return info

    def _attest(
        self,
        dep: Deployment,
        keys: Keys,
        appraiser: LocalAppraiser | VerifierAppraiser,
        m: ModuleState,
        binary: bytes,
        *,
        staged: bool = False,
        reported_key: bytes | None = None,
    ) -> Appraised:
        self.progress(Step(m.name, "attest", "start", appraiser.via))
        client = self._client(dep, m.node)
        expected = Expected(
            m.name,
            measure(binary),
            app_config_digest(dep.app, keys.deployment_public, m.memory_mb, m.timeout),
            reported_key
            if reported_key is not None
            else bytes.fromhex(m.attestation.get("reported_key", "")),
        )
        answered: list[bool] = []

        def attester(nonce: bytes) -> bytes:
            evidence = client.attest(dep.app, m.name, nonce, staged=staged)
            answered.append(True)
            return evidence

        result = appraiser.appraise(attester, expected)
        m.attestation = {
            "status": result.status,
            "acceptable": result.acceptable,
            "via": result.via,
            "lifecycle": result.lifecycle,
            "reasons": list(result.reasons),
            "at": time.time(),
            # The node gave evidence: the status is a verdict on the module, not a failure to
            # reach it (continuous attestation cuts a module off on a verdict only).
            "answered": bool(answered),
        }
        appraisal = result.extra.get("appraisal")
        # The verifier's id of this appraisal, as in its log line and in the EAR ("jti").
        shown = f" (appraisal {appraisal})" if appraisal else ""
        if appraisal:
            m.attestation["appraisal"] = appraisal
        if result.ear is not None:  # the signed result the deploy acted on, for an audit
            m.attestation["ear"] = result.ear
        if result.acceptable:
            m.measurement, m.key = result.measurement.hex(), result.key.hex()
            m.config = expected.config.hex()
            m.status, m.reason = "attested", ""
            self.progress(Step(m.name, "attest", "done", result.status + shown))
        else:
            m.status, m.reason = "refused", f"attestation {result.status}: {result.reason}"
            self.progress(Step(m.name, "attest", "failed", m.reason + shown))
        return result

    # -- connect ----------------------------------------------------------------------------

    def _connect_all(self, dep: Deployment, keys: Keys, conns: list[ConnectionState]) -> None:
        for conn in conns:
            self._connect(dep, keys, conn)
        for m in dep.modules.values():
            if m.status == "attested":
                m.status = "connected"

    def _connect(
        self, dep: Deployment, keys: Keys, conn: ConnectionState, *, staged: str | None = None
    ) -> None:
        """Sign and hand out one connection's statements (``staged``: a module being updated)."""
        self.progress(Step(conn.name, "connect", "start"))
        ends = [conn.to_module] + ([conn.from_module] if conn.from_module else [])
        for name in ends:
            m = dep.modules[name]
            if m.status not in ("attested", "connected"):
                conn.status = "refused"
                conn.reason = f"module {name!r} is not connected ({m.reason or m.status})"
                self.progress(Step(conn.name, "connect", "failed", conn.reason))
                return
        target = dep.modules[conn.to_module]
        route = Route(
            dep.app,
            conn.conn,
            conn.name,
            End("", None)
            if conn.from_module is None
            else End(dep.modules[conn.from_module].node, conn.from_module),
            End(target.node, target.name),
            fanout=_fans_out(dep, conn),
        )
        if conn.from_module is None:
            initiator_peer = Peer(USER_MEASUREMENT, keys.user_public, USER_NODE, "user")
        else:
            source = dep.modules[conn.from_module]
            initiator_peer = Peer(
                bytes.fromhex(source.measurement),
                bytes.fromhex(source.key),
                source.node,
                conn.from_endpoint,
            )
        responder_peer = Peer(
            bytes.fromhex(target.measurement),
            bytes.fromhex(target.key),
            target.node,
            conn.to_endpoint,
        )
        statements = [
            (
                target,
                Connect(
                    dep.app,
                    conn.conn,
                    conn.to_kind,
                    conn.to_endpoint,
                    bytes.fromhex(target.key),
                    initiator_peer,
                    False,
                ),
            )
        ]
        if conn.from_module is not None:
            source = dep.modules[conn.from_module]
            statements.append(
                (
                    source,
                    Connect(
                        dep.app,
                        conn.conn,
                        conn.from_kind,
                        conn.from_endpoint,
                        bytes.fromhex(source.key),
                        responder_peer,
                        True,
                    ),
                )
            )
        try:
            for module, statement in statements:
                self._client(dep, module.node).connect(
                    dep.app,
                    module.name,
                    sign_connect(statement, keys.deployment),
                    route,
                    staged=module.name == staged,
                )
        except Error as exc:
            conn.status, conn.reason = "refused", str(exc)
            self.progress(Step(conn.name, "connect", "failed", conn.reason))
            return
        conn.status, conn.reason = "connected", ""
        conn.sent = conn.received = 0
        left = "user" if conn.from_module is None else f"{conn.from_module}.{conn.from_endpoint}"
        path = f"{left}->{conn.to_module}.{conn.to_endpoint}"
        self.progress(Step(conn.name, "connect", "done", "" if path == conn.name else path))

    def _periodic(self, dep: Deployment) -> None:
        by_node: dict[str, list[tuple[str, str, int]]] = {n: [] for n in dep.nodes}
        for module, entry, period in dep.periodic:
            m = dep.modules.get(module)
            if m is not None and m.status == "connected":
                by_node[m.node].append((module, entry, int(period)))
        for node, events in by_node.items():
            if events or dep.periodic:
                self._client(dep, node).periodic(dep.app, events)

    # -- later changes ------------------------------------------------------------------------


# -- helpers ------------------------------------------------------------------------------------


def _read_binary(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DescriptorError(f"cannot read {path}: {exc.strerror}") from None


def _binary(spec: desc_mod.Module, build_dir: Path, where: str) -> tuple[Path, bytes]:
    if spec.binary is not None:
        try:
            return spec.binary, spec.binary.read_bytes()
        except OSError as exc:
            raise DescriptorError(
                f"cannot read {spec.binary}: {exc.strerror}", where=where
            ) from None
    assert spec.source is not None
    from veritee.app import sources
    from veritee.wasm.build import build

    out = build_dir / f"{spec.name}.wasm"
    build(sources.find(spec.source, spec.name, where=where), out)
    return out, out.read_bytes()


def _entry_connection(module: str, entry: str) -> ConnectionState:
    return ConnectionState(
        name=f"{module}.{entry}",
        id=os.urandom(16).hex(),
        to_module=module,
        to_kind="entry",
        to_endpoint=entry,
        implicit=True,
    )


def _connection_states(
    descriptor: Descriptor, modules: dict[str, _Module]
) -> list[ConnectionState]:
    out = [_state_of(c) for c in descriptor.connections]
    for name, m in modules.items():
        for e in m.table:
            if e.kind == "entry":
                out.append(_entry_connection(name, e.name))
    return out


def _state_of(c: Connection) -> ConnectionState:
    return ConnectionState(
        name=c.name,
        id=os.urandom(16).hex(),
        to_module=c.to_module,
        to_kind=c.target.kind,
        to_endpoint=c.target.name,
        from_module=c.from_module,
        from_kind=c.source.kind if c.source else "output",
        from_endpoint=c.source.name if c.source else "user",
    )


def _fans_out(dep: Deployment, conn: ConnectionState) -> bool:
    """Whether ``conn`` is one of several from one output (fixed for the connection's life:
    it decides the path its events take on a broker, see app/routes.py)."""
    if conn.from_module is None or conn.from_kind != "output":
        return False
    siblings = [
        c
        for c in dep.connections.values()
        if (c.from_module, c.from_kind, c.from_endpoint)
        == (conn.from_module, conn.from_kind, conn.from_endpoint)
    ]
    return len(siblings) > 1
