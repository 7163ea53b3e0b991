"""The deployment descriptor: nodes, modules, connections, periodic events. Parsed once, frozen.

Two formats are read, YAML or JSON either way:

* Veritee's: ``app``, ``nodes`` (name, host, port, backend), ``modules`` (name, node, source
  or binary, memory_mb, timeout), ``connections`` (from_module + from_output/from_request ->
  to_module + to_input/to_handler, or ``direct: true`` from the user; optional name),
  ``periodic-events`` (module, entry, period in ms), and an optional ``verifier``.
* the Authentic Execution deployer's JSON (reactive-tools), converted by ``_authentic``;
  what Veritee cannot honour there (SGX or Sancus fields, keys written into the file) is
  refused with a message saying why.

Errors name the file, the line (YAML and JSON alike) and the field: ``app.yaml:14:
connections[2].to_module: unknown module 'contoller'``. Checks that need the binaries'
endpoint tables (an output the module does not export) are :func:`check_endpoints`, which
takes the tables as values: no file or Wasm engine in here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veritee.app._tree import MAX_DESCRIPTOR_BYTES as MAX_DESCRIPTOR_BYTES
from veritee.app._tree import _Reader
from veritee.app._tree import read_tree as read_tree
from veritee.app.errors import DescriptorError
from veritee.wasm.endpoints import Endpoint

# Bounds a deployer can honour in one run; each is far above the demo's and the paper's cases.
MAX_NODES = 64
MAX_MODULES = 256
MAX_CONNECTIONS = 1024  # the secure world's own bound per module instance
MAX_PERIODIC = 256
# Below this, timers driven by a node agent would mostly measure the agent's own overhead.
MIN_PERIOD_MS = 10
MAX_PERIOD_MS = 24 * 3600 * 1000
# The secure world's bounds on a module instance (see tee/app_ta.py).
MAX_MEMORY_MB = 4096
MAX_TIMEOUT_S = 3600.0

CONNECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:>-]{0,127}$")
BACKENDS = ("emulated",)
ACCEPT_LEVELS = ("affirming", "warning")
SOURCE_SUFFIXES = (".c", ".wat", ".rs")
CARGO_MANIFEST = "Cargo.toml"  # a Rust module may also be a cargo project, named by its manifest

# kind at the sending end -> kind at the receiving end
PAIRS = {"output": "input", "request": "handler"}
DIRECT_TARGETS = ("input", "handler", "entry")


@dataclass(frozen=True)
class Node:
    name: str
    host: str
    port: int
    backend: str = "emulated"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class Module:
    name: str
    node: str
    source: Path | None = None  # C, WAT or Rust (a .rs file or a Cargo.toml); built at deploy time
    binary: Path | None = None  # a Wasm binary built with `veritee build`
    memory_mb: int | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Connection:
    """``source`` is None for a direct connection (the user's tool is that end)."""

    name: str
    source: Endpoint | None
    from_module: str | None
    to_module: str
    target: Endpoint

    @property
    def direct(self) -> bool:
        return self.source is None

    def describe(self) -> str:
        left = "user" if self.source is None else f"{self.from_module}.{self.source.name}"
        return f"{left} -> {self.to_module}.{self.target.name}"


@dataclass(frozen=True)
class PeriodicEvent:
    module: str
    entry: str
    period_ms: int


@dataclass(frozen=True)
class VerifierConfig:
    url: str | None = None
    accept: str = "warning"


@dataclass(frozen=True)
class Descriptor:
    app: str
    nodes: tuple[Node, ...]
    modules: tuple[Module, ...]
    connections: tuple[Connection, ...] = ()
    periodic: tuple[PeriodicEvent, ...] = ()
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    origin: str = "descriptor"
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise DescriptorError(f"unknown node {name!r}", where=self.origin)

    def module(self, name: str) -> Module:
        for m in self.modules:
            if m.name == name:
                return m
        raise DescriptorError(f"unknown module {name!r}", where=self.origin)

    def where(self, path: str) -> str:
        """``file:line`` of a field (or of its nearest enclosing one)."""
        probe = path
        while probe:
            if probe in self.lines:
                return f"{self.origin}:{self.lines[probe]}"
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return self.origin


# -- reading -----------------------------------------------------------------------------------


def load(path: Path) -> Descriptor:
    """Read and check a descriptor file (YAML or JSON, either format); raise DescriptorError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DescriptorError(f"cannot read it: {exc.strerror}", where=str(path)) from None
    return parse(raw, origin=str(path), base=path.parent.resolve(), default_app=path.stem)


def parse(
    raw: bytes | str, *, origin: str = "descriptor", base: Path | None = None, default_app: str = ""
) -> Descriptor:
    """Parse descriptor text; relative module paths are resolved against ``base``."""
    data, lines = read_tree(raw, origin)
    if not isinstance(data, dict):
        raise DescriptorError(
            "a descriptor is a mapping (nodes, modules, connections)", where=origin
        )
    from veritee.app import _authentic

    if _authentic.is_authentic(data):
        data, lines = _authentic.convert(data, lines, origin)
    return from_tree(data, lines, origin, base or Path.cwd(), default_app)


# -- building and checking ---------------------------------------------------------------------

_TOP = ("app", "nodes", "modules", "connections", "periodic-events", "verifier")
_NODE = ("name", "host", "port", "backend")
_MODULE = ("name", "node", "source", "binary", "memory_mb", "timeout")
_CONNECTION = (
    "name",
    "direct",
    "from_module",
    "from_output",
    "from_request",
    "to_module",
    "to_input",
    "to_handler",
    "to_entry",
)
_PERIODIC = ("module", "entry", "period")


def from_tree(
    data: dict[str, Any], lines: Mapping[str, int], origin: str, base: Path, default_app: str
) -> Descriptor:
    """Build and check a descriptor from its (Veritee-format) tree; raise DescriptorError."""
    r = _Reader(lines, origin)
    r.mapping(data, "", _TOP)
    app = r.name(data.get("app", _app_name(default_app)), "app")
    verifier = _verifier(r, data.get("verifier"))

    nodes: dict[str, Node] = {}
    for i, raw in enumerate(r.items(data.get("nodes"), "nodes", MAX_NODES)):
        p = f"nodes[{i}]"
        n = r.mapping(raw, p, _NODE)
        name = r.name(n.get("name"), f"{p}.name")
        if name in nodes:
            raise r.fail(f"{p}.name", f"duplicate node name {name!r}")
        backend = n.get("backend", "emulated")
        if backend not in BACKENDS:
            raise r.fail(
                f"{p}.backend",
                f"TEE backend {backend!r} is not available (available: {', '.join(BACKENDS)})",
            )
        nodes[name] = Node(
            name,
            r.text(n.get("host"), f"{p}.host"),
            r.integer(n.get("port"), f"{p}.port", 1, 65535),
            backend,
        )
    if not nodes:
        raise r.fail("nodes", "a descriptor needs at least one node")
    addresses = [(n.host, n.port) for n in nodes.values()]
    for i, each in enumerate(nodes.values()):
        if addresses.count((each.host, each.port)) > 1:
            raise r.fail(f"nodes[{i}].port", f"two nodes at {each.host}:{each.port}")

    modules: dict[str, Module] = {}
    for i, raw in enumerate(r.items(data.get("modules"), "modules", MAX_MODULES)):
        p = f"modules[{i}]"
        m = r.mapping(raw, p, _MODULE)
        name = r.name(m.get("name"), f"{p}.name")
        if name in modules:
            raise r.fail(f"{p}.name", f"duplicate module name {name!r}")
        node = r.name(m.get("node"), f"{p}.node")
        if node not in nodes:
            raise r.fail(f"{p}.node", f"unknown node {node!r} (nodes: {', '.join(nodes)})")
        source = binary = None
        if ("source" in m) == ("binary" in m):
            raise r.fail(p, f"module {name!r} needs exactly one of 'source' and 'binary'")
        if "source" in m:
            source = base / r.text(m["source"], f"{p}.source", 4096)
            if source.suffix not in SOURCE_SUFFIXES and source.name != CARGO_MANIFEST:
                raise r.fail(
                    f"{p}.source",
                    f"only {', '.join(SOURCE_SUFFIXES)} sources and {CARGO_MANIFEST} build",
                )
        else:
            binary = base / r.text(m["binary"], f"{p}.binary", 4096)
        memory = m.get("memory_mb")
        timeout = m.get("timeout")
        modules[name] = Module(
            name,
            node,
            source,
            binary,
            None if memory is None else r.integer(memory, f"{p}.memory_mb", 1, MAX_MEMORY_MB),
            None if timeout is None else r.number(timeout, f"{p}.timeout", 0.001, MAX_TIMEOUT_S),
        )
    if not modules:
        raise r.fail("modules", "a descriptor needs at least one module")

    connections = _connections(r, data.get("connections"), modules)
    periodic = []
    for i, raw in enumerate(r.items(data.get("periodic-events"), "periodic-events", MAX_PERIODIC)):
        p = f"periodic-events[{i}]"
        e = r.mapping(raw, p, _PERIODIC)
        module = r.name(e.get("module"), f"{p}.module")
        if module not in modules:
            raise r.fail(f"{p}.module", f"unknown module {module!r}")
        periodic.append(
            PeriodicEvent(
                module,
                r.name(e.get("entry"), f"{p}.entry"),
                r.integer(e.get("period"), f"{p}.period", MIN_PERIOD_MS, MAX_PERIOD_MS),
            )
        )
    return Descriptor(
        app=app,
        nodes=tuple(nodes.values()),
        modules=tuple(modules.values()),
        connections=tuple(connections),
        periodic=tuple(periodic),
        verifier=verifier,
        origin=origin,
        lines=dict(lines),
    )


def _app_name(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", stem)[:64] or "app"
    return cleaned if cleaned[0].isalpha() or cleaned[0] == "_" else f"app-{cleaned}"[:64]


def _verifier(r: _Reader, raw: Any) -> VerifierConfig:
    if raw is None:
        return VerifierConfig()
    v = r.mapping(raw, "verifier", ("url", "accept"))
    url = v.get("url")
    accept = v.get("accept", "warning")
    if accept not in ACCEPT_LEVELS:
        raise r.fail("verifier.accept", f"must be one of {', '.join(ACCEPT_LEVELS)}")
    return VerifierConfig(None if url is None else r.text(url, "verifier.url", 2048), accept)


def _connections(r: _Reader, raw: Any, modules: Mapping[str, Module]) -> list[Connection]:
    out: list[Connection] = []
    names: set[str] = set()
    for i, item in enumerate(r.items(raw, "connections", MAX_CONNECTIONS)):
        p = f"connections[{i}]"
        c = r.mapping(item, p, _CONNECTION)
        direct = c.get("direct", False)
        if not isinstance(direct, bool):
            raise r.fail(f"{p}.direct", "must be true or false")
        to_module = r.name(c.get("to_module"), f"{p}.to_module")
        if to_module not in modules:
            raise r.fail(f"{p}.to_module", f"unknown module {to_module!r}")
        targets = [k for k in ("to_input", "to_handler", "to_entry") if k in c]
        if len(targets) != 1:
            raise r.fail(p, "needs exactly one of to_input, to_handler, to_entry")
        target = Endpoint(targets[0][3:], r.name(c[targets[0]], f"{p}.{targets[0]}"))
        source: Endpoint | None = None
        from_module: str | None = None
        if direct:
            extra = [k for k in ("from_module", "from_output", "from_request") if k in c]
            if extra:
                raise r.fail(f"{p}.{extra[0]}", "a direct connection starts at the user's tool")
        else:
            from_module = r.name(c.get("from_module"), f"{p}.from_module")
            if from_module not in modules:
                raise r.fail(f"{p}.from_module", f"unknown module {from_module!r}")
            sources = [k for k in ("from_output", "from_request") if k in c]
            if len(sources) != 1:
                raise r.fail(p, "needs exactly one of from_output and from_request (or direct)")
            source = Endpoint(sources[0][5:], r.name(c[sources[0]], f"{p}.{sources[0]}"))
            expected = PAIRS[source.kind]
            if target.kind != expected:
                raise r.fail(
                    f"{p}.to_{target.kind}",
                    f"a {source.kind} connects to a {expected} (to_{expected}), "
                    f"not to a {target.kind}",
                )
            if from_module == to_module:
                raise r.fail(p, f"module {to_module!r} is connected to itself")
        name = c.get("name")
        if name is None:
            left = "user" if source is None else f"{from_module}.{source.name}"
            name = f"{left}->{to_module}.{target.name}"
        name = r.name(name, f"{p}.name", CONNECTION_NAME)
        if name in names:
            raise r.fail(f"{p}.name", f"duplicate connection name {name!r}")
        names.add(name)
        out.append(Connection(name, source, from_module, to_module, target))
    _no_request_cycle(r, out)
    return out


def _no_request_cycle(r: _Reader, connections: Sequence[Connection]) -> None:
    """A cycle of synchronous requests would deadlock the modules on it: refuse it."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, c in enumerate(connections):
        if c.source is not None and c.source.kind == "request" and c.from_module is not None:
            graph.setdefault(c.from_module, []).append((c.to_module, i))
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target, index in graph.get(module, []):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], module, target] if target in path else []
                shown = " -> ".join(cycle or [module, target])
                raise r.fail(f"connections[{index}]", f"synchronous requests form a cycle: {shown}")
            if state.get(target) is None:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [])


def check_endpoints(desc: Descriptor, tables: Mapping[str, Sequence[Endpoint]]) -> None:
    """Every endpoint the descriptor names must be in the module's binary, of that kind.

    ``tables`` maps module name to the endpoint table recorded in its binary.
    """
    r = _Reader(desc.lines, desc.origin)

    def need(module: str, endpoint: Endpoint, path: str) -> None:
        table = tables.get(module)
        if table is None:
            raise r.fail(path, f"module {module!r} has no endpoint table")
        if endpoint not in table:
            same_name = [e.kind for e in table if e.name == endpoint.name]
            hint = f" (it is a {same_name[0]})" if same_name else ""
            available = ", ".join(e.name for e in table if e.kind == endpoint.kind) or "none"
            raise r.fail(
                path,
                f"module {module!r} does not export {endpoint.kind} {endpoint.name!r}{hint}; "
                f"its {endpoint.kind}s: {available}",
            )

    handlers: dict[tuple[str, str], int] = {}
    for i, c in enumerate(desc.connections):
        p = f"connections[{i}]"
        if c.source is not None and c.from_module is not None:
            need(c.from_module, c.source, f"{p}.from_{c.source.kind}")
            if c.source.kind == "request":
                key = (c.from_module, c.source.name)
                if key in handlers:
                    raise r.fail(
                        f"{p}.from_request",
                        f"request {c.from_module}.{c.source.name} is already answered by "
                        f"connections[{handlers[key]}]: one handler answers a request",
                    )
                handlers[key] = i
        need(c.to_module, c.target, f"{p}.to_{c.target.kind}")
    for i, e in enumerate(desc.periodic):
        p = f"periodic-events[{i}].entry"
        table = tables.get(e.module, ())
        if Endpoint("public", e.entry) not in table:
            kinds = [x.kind for x in table if x.name == e.entry]
            raise r.fail(
                p,
                f"periodic events call a public endpoint (VERITEE_PUBLIC): a timer the node "
                f"agent drives cannot be authenticated; {e.module}.{e.entry} is "
                + (f"a {kinds[0]}" if kinds else "not exported"),
            )
