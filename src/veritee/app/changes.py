"""Changes to a running deployment: update a module, add modules and connections, disable a
module, re-attest everything (and reconnect a module that came back without its state).

Each loads the state file, acts through the same steps as a deployment (load, attest,
signed statements), and writes the state back whatever happened.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from veritee.app import descriptor as desc_mod
from veritee.app import state as state_mod
from veritee.app.attest import Appraised, VerifierAppraiser
from veritee.app.deployer import (
    Deployer,
    Step,
    _connection_states,
    _entry_connection,
    _read_binary,
)
from veritee.app.descriptor import Descriptor
from veritee.app.errors import AttestationRefused, DescriptorError, StateError
from veritee.app.state import ConnectionState, Deployment, Keys, ModuleState, NodeState
from veritee.errors import Error
from veritee.evidence.deployment import (
    MAX_DISCONNECT,
    Disconnect,
    Succession,
    sign_disconnect,
    sign_succession,
)
from veritee.wasm.endpoints import Endpoint, recorded

__all__ = ["add", "disable", "reattest", "update"]


def _open(d: Deployer) -> tuple[Deployment, Keys]:
    return state_mod.load(d.state_path), state_mod.load_keys(d.state_path)


def _touching(dep: Deployment, module: str) -> list[ConnectionState]:
    return [
        c
        for c in dep.connections.values()
        if module in (c.to_module, c.from_module) and c.status == "connected"
    ]


def _reconnect(
    d: Deployer, dep: Deployment, keys: Keys, module: str, table: list[Endpoint], staged: bool
) -> list[bytes]:
    """New connection ids (and statements to both ends) for everything touching ``module``.

    Returns the ids that retire. Entry points get their implicit connections anew.
    """
    touching = [c for c in _touching(dep, module) if not c.implicit]
    implicit = [c for c in dep.connections.values() if c.implicit and c.to_module == module]
    retired = [c.conn for c in [*touching, *implicit]]
    for c in implicit:
        del dep.connections[c.name]
    fresh = [_entry_connection(module, e.name) for e in table if e.kind == "entry"]
    for c in fresh:
        dep.connections[c.name] = c
    for c in touching:
        c.id = os.urandom(16).hex()
    for c in [*touching, *fresh]:
        d._connect(dep, keys, c, staged=module if staged else None)
    return retired


def _disconnect(
    d: Deployer,
    dep: Deployment,
    keys: Keys,
    retired: list[bytes],
    conns: list[ConnectionState],
) -> None:
    """Tell every node at an end of ``conns`` that ``retired`` ended: their agents stop
    routing them, and their modules' secure worlds end them on the owner's signed word."""
    nodes = {dep.modules[c.from_module].node for c in conns if c.from_module} | {
        dep.modules[c.to_module].node for c in conns if c.to_module in dep.modules
    }
    statements: list[bytes | None] = [
        sign_disconnect(
            Disconnect(dep.app, tuple(retired[i : i + MAX_DISCONNECT])), keys.deployment
        )
        for i in range(0, len(retired), MAX_DISCONNECT)
    ] or [None]
    for node in sorted(nodes):
        client = d._client(dep, node)
        for i, statement in enumerate(statements):
            chunk = retired[i * MAX_DISCONNECT : (i + 1) * MAX_DISCONNECT]
            for problem in client.retire(dep.app, chunk, statement):
                d.progress(Step(node, "disconnect", "failed", problem))


def update(
    d: Deployer, module: str, binary_path: Path, *, keep_state: bool = False
) -> tuple[Deployment, Appraised]:
    """Replace a module by a new binary: load beside the old, attest, reconnect, swap.

    If the new one does not appraise well, it is discarded and the old one runs on.
    Sealing keys are bound to the measurement; with ``keep_state`` the deployer signs a
    succession (old build -> new build) and the new build opens the old one's state.
    """
    dep, keys = _open(d)
    try:
        m = dep.module(module)
        if m.status != "connected":
            raise StateError(f"module {module!r} is {m.status}: only a connected module updates")
        binary = _read_binary(binary_path)
        table = recorded(binary)
        if table is None:
            raise DescriptorError(f"{binary_path} is not an app module (no endpoint table)")
        touching = [c for c in _touching(dep, module) if not c.implicit]
        for c in touching:
            mine = c.to_module == module
            endpoint = Endpoint(
                c.to_kind if mine else c.from_kind, c.to_endpoint if mine else c.from_endpoint
            )
            if endpoint not in table:
                raise DescriptorError(
                    f"{binary_path} does not export {endpoint.kind} {endpoint.name!r}, which "
                    f"connection {c.name!r} uses"
                )
        new = ModuleState(
            m.name,
            m.node,
            str(binary_path.resolve()),
            memory_mb=m.memory_mb,
            timeout=m.timeout,
            endpoints=[[e.kind, e.name] for e in table],
        )
        succession = None
        if keep_state:
            succession = sign_succession(
                Succession(
                    dep.app, module, bytes.fromhex(m.measurement), hashlib.sha256(binary).digest()
                ),
                keys.deployment,
            )
        t0 = time.perf_counter()
        info = d._load(dep, keys, new, binary, staged=True, succession=succession)
        if new.status == "refused":
            raise AttestationRefused(f"module {module!r}: {new.reason}")
        client = d._client(dep, m.node)
        appraiser = d._appraiser(dep)
        try:
            result = d._attest(
                dep, keys, appraiser, new, binary, staged=True, reported_key=info.get("key", b"")
            )
        finally:
            if isinstance(appraiser, VerifierAppraiser):
                appraiser.close()
        if not result.acceptable:
            client.discard(dep.app, module)
            raise AttestationRefused(
                f"the new {module!r} is not connected ({new.reason}); the old one runs on"
            )
        dep.modules[module] = new
        retired = _reconnect(d, dep, keys, module, table, staged=True)
        client.activate(dep.app, module, retired)
        _disconnect(d, dep, keys, retired, touching)
        new.status = "connected"
        dep.timings["update"] = time.perf_counter() - t0
        return dep, result
    finally:
        state_mod.save(d.state_path, dep)
        d.close()


def disable(d: Deployer, module: str) -> Deployment:
    """Unload a module; its connections retire (their events are dropped and counted)."""
    dep, keys = _open(d)
    try:
        m = dep.module(module)
        touching = [c for c in dep.connections.values() if module in (c.to_module, c.from_module)]
        retired = [c.conn for c in touching]
        if m.status not in ("refused", "disabled"):
            d._client(dep, m.node).disable(dep.app, module, retired)
        _disconnect(d, dep, keys, retired, touching)
        for c in touching:
            c.status, c.reason = "retired", f"module {module!r} was disabled"
        m.status, m.reason = "disabled", "disabled by the deployer"
        return dep
    finally:
        state_mod.save(d.state_path, dep)
        d.close()


def add(d: Deployer, fragment: Path) -> Deployment:
    """Deploy more modules and connections (a descriptor that may name existing ones)."""
    dep, keys = _open(d)
    try:
        descriptor = _merged(dep, fragment)
        new_nodes = [n for n in descriptor.nodes if n.name not in dep.nodes]
        for n in new_nodes:
            dep.nodes[n.name] = NodeState(n.name, n.host, n.port, tls=n.tls)
        new_modules = [m for m in descriptor.modules if m.name not in dep.modules]
        only_new = Descriptor(
            descriptor.app,
            descriptor.nodes,
            tuple(new_modules),
            verifier=descriptor.verifier,
            origin=descriptor.origin,
            lines=descriptor.lines,
        )
        prepared = d._prepare(only_new, dep) if new_modules else {}
        tables = {n: [Endpoint(k, e) for k, e in m.endpoints] for n, m in dep.modules.items()}
        desc_mod.check_endpoints(descriptor, tables)
        if new_nodes:
            d._configure_nodes(dep)
        d._load_attest(dep, keys, list(prepared.values()))
        conns = [
            c for c in _connection_states(descriptor, prepared) if c.name not in dep.connections
        ]
        for c in conns:
            dep.connections[c.name] = c
        d._connect_all(dep, keys, conns)
        dep.periodic = [[p.module, p.entry, p.period_ms] for p in descriptor.periodic]
        d._periodic(dep)
        return dep
    finally:
        state_mod.save(d.state_path, dep)
        d.close()


def _cut_off(d: Deployer, dep: Deployment, keys: Keys, m: ModuleState) -> None:
    """A module whose fresh evidence is no longer acceptable: every connection it has ends,
    on the owner's signed disconnect statement to the nodes at both ends, so its peers'
    secure worlds stop sending to it and take nothing more from it."""
    conns = [c for c in _touching(dep, m.name) if c.status == "connected"]
    if conns:
        _disconnect(d, dep, keys, [c.conn for c in conns], conns)
    for c in conns:
        c.status, c.reason = "refused", f"module {m.name!r} cut off: {m.reason}"
    d.progress(Step(m.name, "disconnect", "done", f"cut off ({len(conns)} connection(s))"))


def reattest(d: Deployer) -> Deployment:
    """Attest every connected module again over fresh nonces.

    A module that its node reloaded without its sealed state (a new key, no channels) is
    connected anew, once its fresh evidence is acceptable: new connection ids, statements
    to both ends, the old ids retired. A module whose fresh evidence the appraisal no longer
    accepts (its device revoked, its reference value withdrawn, a new policy) is cut off:
    its connections end on a signed disconnect statement (status ``refused``). A module
    that gave no evidence (its node down) is marked ``lost`` and tried again next time.
    """
    dep, keys = _open(d)
    try:
        live: dict[str, Any] = {}
        for node in dep.nodes:
            try:
                live[node] = d._client(dep, node).status().get("apps", {}).get(dep.app, {})
            except Error as exc:
                live[node] = {"error": str(exc)}
        appraiser = d._appraiser(dep)
        try:
            for m in list(dep.modules.values()):
                if m.status not in ("connected", "lost"):
                    continue
                view = live[m.node]
                if "error" in view:
                    m.status, m.reason = "lost", f"node {m.node} did not answer: {view['error']}"
                    d.progress(Step(m.name, "attest", "failed", m.reason))
                    continue
                tee = view.get("modules", {}).get(m.name, {}).get("tee", {})
                reported = tee.get("key", b"")
                old_key = m.key
                result = d._attest(
                    dep, keys, appraiser, m, _read_binary(Path(m.binary)), reported_key=reported
                )
                if not result.acceptable:
                    if m.attestation.get("answered"):
                        _cut_off(d, dep, keys, m)
                    else:  # no evidence came: the node or module is unwell, not judged
                        m.status = "lost"
                    continue
                if result.key.hex() == old_key:
                    m.status = "connected"
                    continue
                # Same binary, fresh evidence, another key: reloaded without its state.
                d.progress(Step(m.name, "connect", "start", "reloaded without its state"))
                m.status = "connected"
                table = [Endpoint(k, e) for k, e in m.endpoints]
                conns = [c for c in _touching(dep, m.name) if not c.implicit]
                retired = _reconnect(d, dep, keys, m.name, table, staged=False)
                _disconnect(d, dep, keys, retired, conns)
        finally:
            if isinstance(appraiser, VerifierAppraiser):
                appraiser.close()
        return dep
    finally:
        state_mod.save(d.state_path, dep)
        d.close()


def _merged(dep: Deployment, fragment: Path) -> Descriptor:
    """The deployment as it is, plus a fragment descriptor; errors point into the fragment."""
    raw, lines = desc_mod.read_tree(_read_binary(fragment), str(fragment))
    if not isinstance(raw, dict):
        raise DescriptorError("a descriptor is a mapping", where=str(fragment))
    if raw.get("app", dep.app) != dep.app:
        raise DescriptorError(
            f"this deployment is of app {dep.app!r}", where=str(fragment), field="app"
        )
    base = fragment.parent.resolve()
    for section, existing in (("modules", dep.modules), ("nodes", dep.nodes)):
        for i, item in enumerate(raw.get(section) or []):
            if isinstance(item, dict) and item.get("name") in existing and section == "modules":
                path = f"{section}[{i}].name"
                where = f"{fragment}:{lines[path]}" if path in lines else str(fragment)
                raise DescriptorError(
                    f"module {item['name']!r} is already deployed (use 'veritee update')",
                    where=where,
                    field=path,
                )
    # Fragment items first, so that their indices (and lines) are the ones errors name.
    nodes = list(raw.get("nodes") or [])
    names = {n.get("name") for n in nodes if isinstance(n, dict)}
    nodes += [
        {"name": n.name, "host": n.host, "port": n.port}
        for n in dep.nodes.values()
        if n.name not in names
    ]
    modules = [
        {
            **m,
            **({"source": str((base / m["source"]).resolve())} if "source" in m else {}),
            **({"binary": str((base / m["binary"]).resolve())} if "binary" in m else {}),
        }
        if isinstance(m, dict)
        else m
        for m in raw.get("modules") or []
    ]
    modules += [
        {"name": m.name, "node": m.node, "binary": m.binary}
        for m in dep.modules.values()
        if m.status != "disabled"
    ]
    connections = list(raw.get("connections") or [])
    for c in dep.connections.values():
        if c.implicit or c.status == "retired":
            continue
        entry: dict[str, Any] = {
            "name": c.name,
            "to_module": c.to_module,
            f"to_{c.to_kind}": c.to_endpoint,
        }
        if c.from_module is None:
            entry["direct"] = True
        else:
            entry["from_module"] = c.from_module
            entry[f"from_{c.from_kind}"] = c.from_endpoint
        connections.append(entry)
    periodic = list(raw.get("periodic-events") or []) + [
        {"module": p[0], "entry": p[1], "period": p[2]} for p in dep.periodic
    ]
    merged = {
        "app": dep.app,
        "nodes": nodes,
        "modules": modules,
        "connections": connections,
        "periodic-events": periodic,
    }
    extra = [
        k for k in raw if k not in ("app", "nodes", "modules", "connections", "periodic-events")
    ]
    if extra:
        raise DescriptorError("unknown field in a fragment", where=str(fragment), field=extra[0])
    return desc_mod.from_tree(merged, lines, str(fragment), Path("/"), dep.app)
