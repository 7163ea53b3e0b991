"""The deployment descriptor: nodes, modules, connections, periodic events. Parsed once, frozen.

Two formats are read, YAML or JSON either way:

* Veritee's: ``app``, ``nodes`` (name, host, port, backend), ``modules`` (name, node, source
  or binary, memory_mb, timeout, and optionally the endpoints it must export: inputs,
  outputs, entrypoints, as lists of names or reactive-tools' name -> id maps),
  ``connections`` (from_module + from_output/from_request -> to_module +
  to_input/to_handler, or ``direct: true`` from the user; optional name),
  ``periodic-events`` (module, entry, period in ms), and an optional ``verifier``.
* the Authentic Execution deployer's JSON (reactive-tools), converted by ``_authentic``:
  its examples deploy as given; fields without meaning here are kept as ``warnings``; what
  Veritee cannot honour (SGX or Sancus descriptors, keys written into the file) is refused
  with a message saying why.

Every problem is collected (:func:`parse_all`, :func:`load_all`); :func:`parse` and
:func:`load` raise the one, or DescriptorProblems naming the first and holding them all.

Errors name the file, the line (YAML and JSON alike) and the field: ``app.yaml:14:
connections[2].to_module: unknown module 'contoller'``. Checks that need the binaries'
endpoint tables (an output the module does not export) are :func:`check_endpoints`, which
takes the tables as values: no file or Wasm engine in here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veritee.app._nats_wire import BadTransport, parse_transport
from veritee.app._tree import MAX_DESCRIPTOR_BYTES as MAX_DESCRIPTOR_BYTES
from veritee.app._tree import _Collect, _Reader
from veritee.app._tree import read_tree as read_tree
from veritee.app.errors import DescriptorError
from veritee.tee.backends import BACKENDS as _BACKEND_REGISTRY
from veritee.wasm.endpoints import Endpoint

log = logging.getLogger(__name__)

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

_ENTRY = re.compile(r"^[a-z-]+\[\d+\]")
CONNECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:>-]{0,127}$")
BACKENDS = tuple(_BACKEND_REGISTRY)  # the TEE backends a node may name (tee/backends)
ACCEPT_LEVELS = ("affirming", "warning")
SOURCE_SUFFIXES = (".c", ".wat", ".rs")  # or a directory holding one, or a cargo project
CARGO_MANIFEST = "Cargo.toml"  # a Rust module may also be a cargo project, named by its manifest
# reactive-tools' endpoint ids are 16-bit; an index map is a module's few endpoints.
MAX_ENDPOINT_ID = 2**16 - 1
MAX_DECLARED = 256

# kind at the sending end -> kind at the receiving end
PAIRS = {"output": "input", "request": "handler"}
DIRECT_TARGETS = ("input", "handler", "entry")


@dataclass(frozen=True)
class Node:
    name: str
    host: str
    port: int
    backend: str = "emulated"
    path: str = field(default="", compare=False, repr=False)  # nodes[i] in the descriptor
    tls: bool = False  # its agent serves HTTPS, verified against --ca / $VERITEE_CA

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@dataclass(frozen=True)
class Module:
    name: str
    node: str
    source: Path | None = None  # C, WAT or Rust (a .rs file or a Cargo.toml); built at deploy time
    binary: Path | None = None  # a Wasm binary built with `veritee build`
    memory_mb: int | None = None
    timeout: float | None = None
    # Endpoints the descriptor declares (reactive-tools' inputs/outputs/entrypoints maps): the
    # binary must export them; checked with the others by check_endpoints.
    declared: tuple[Endpoint, ...] = ()
    path: str = field(default="", compare=False, repr=False)  # modules[i] in the descriptor


@dataclass(frozen=True)
class Connection:
    """``source`` is None for a direct connection (the user's tool is that end)."""

    name: str
    source: Endpoint | None
    from_module: str | None
    to_module: str
    target: Endpoint
    path: str = field(default="", compare=False, repr=False)  # connections[i] in the descriptor

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
    path: str = field(default="", compare=False, repr=False)


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
    # "direct", a NATS URL (app/transport_nats.py), or None: each node's own default.
    transport: str | None = None
    origin: str = "descriptor"
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    # One line each, ``file:line: field: why``: fields accepted but without meaning here.
    warnings: tuple[str, ...] = field(default=(), compare=False)

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
    """Read and check a descriptor file (YAML or JSON, either format); raise DescriptorError.

    With several problems, DescriptorProblems names the first and holds them all.
    """
    desc, problems = load_all(path)
    if problems or desc is None:
        _raise(problems)
    assert desc is not None
    return desc


def load_all(path: Path) -> tuple[Descriptor | None, list[DescriptorError]]:
    """Every problem of a descriptor file at once, and what of it could be read.

    The descriptor is None when the file cannot be read as a descriptor at all; otherwise it
    holds the nodes, modules and connections that passed their checks.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [DescriptorError(f"cannot read it: {exc.strerror}", where=str(path))]
    return parse_all(raw, origin=str(path), base=path.parent.resolve(), default_app=path.stem)


def parse(
    raw: bytes | str, *, origin: str = "descriptor", base: Path | None = None, default_app: str = ""
) -> Descriptor:
    """Parse descriptor text; relative module paths are resolved against ``base``."""
    desc, problems = parse_all(raw, origin=origin, base=base, default_app=default_app)
    if problems or desc is None:
        _raise(problems)
    assert desc is not None
    return desc


def parse_all(
    raw: bytes | str, *, origin: str = "descriptor", base: Path | None = None, default_app: str = ""
) -> tuple[Descriptor | None, list[DescriptorError]]:
    """Like :func:`parse`, returning every problem instead of raising the first."""
    try:
        data, lines = read_tree(raw, origin)
    except DescriptorError as exc:
        return None, [exc]
    if not isinstance(data, dict):
        return None, [
            DescriptorError("a descriptor is a mapping (nodes, modules, connections)", where=origin)
        ]
    from veritee.app import _authentic

    problems = _Collect()
    warnings: list[str] = []
    if _authentic.is_authentic(data):
        try:
            data, lines, warnings = _authentic.convert(data, lines, origin, problems)
        except DescriptorError as exc:  # an SGX or Sancus descriptor: nothing else applies
            return None, [exc]
    converted = len(problems.problems)
    desc = _build(data, lines, origin, base or Path.cwd(), default_app, problems)
    # An entry the conversion found wrong is reported once, not again in Veritee's terms.
    reported = {_entry_of(e.field) for e in problems.problems[:converted]}
    problems.problems[converted:] = [
        e for e in problems.problems[converted:] if _entry_of(e.field) not in reported
    ]
    for w in warnings:
        log.info("%s", w)
    return replace(desc, warnings=tuple(warnings)), problems.problems


def _entry_of(path: str) -> str:
    """``modules[2]`` of ``modules[2].inputs.x``: the entry a field belongs to."""
    match = _ENTRY.match(path)
    return match.group(0) if match else path


def _raise(problems: Sequence[DescriptorError]) -> None:
    collect = _Collect()
    collect.problems.extend(problems)
    collect.raise_any()


# -- building and checking ---------------------------------------------------------------------

_TOP = ("app", "nodes", "modules", "connections", "periodic-events", "verifier", "transport")
_NODE = ("name", "host", "port", "backend", "tls")
_MODULE = (
    "name",
    "node",
    "source",
    "binary",
    "memory_mb",
    "timeout",
    "inputs",
    "outputs",
    "entrypoints",
)
# A module's declared endpoints: field -> endpoint kind.
_DECLARED = {"inputs": "input", "outputs": "output", "entrypoints": "entry"}
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
    problems = _Collect()
    desc = _build(data, lines, origin, base, default_app, problems)
    problems.raise_any()
    return desc


def _build(
    data: dict[str, Any],
    lines: Mapping[str, int],
    origin: str,
    base: Path,
    default_app: str,
    problems: _Collect,
) -> Descriptor:
    """Each section, each entry, each field checked on its own: problems are collected.

    An entry with a problem is left out of the result, but its name stays known, so that
    what refers to it is not reported as well.
    """
    r = _Reader(lines, origin)
    with problems:
        r.mapping(data, "", _TOP)
    app = _app_name(default_app)
    with problems:
        app = r.name(data.get("app", app), "app")
    verifier = VerifierConfig()
    with problems:
        verifier = _verifier(r, data.get("verifier"))
    transport: str | None = None
    if data.get("transport") is not None:
        with problems:
            raw_transport = r.text(data.get("transport"), "transport", 1024)
            try:
                transport = parse_transport(raw_transport)
            except BadTransport as exc:
                raise r.fail("transport", str(exc)) from None

    nodes: dict[str, Node] = {}
    node_names: set[str] = set()
    raw_nodes: list[Any] = []
    with problems:
        raw_nodes = r.items(data.get("nodes"), "nodes", MAX_NODES)
    for i, raw in enumerate(raw_nodes):
        p = f"nodes[{i}]"
        with problems:
            n = raw if isinstance(raw, dict) else r.mapping(raw, p, _NODE)
            name = r.name(n.get("name"), f"{p}.name")
            if name in node_names:
                raise r.fail(f"{p}.name", f"duplicate node name {name!r}")
            node_names.add(name)  # known from here on, even if a field of it is wrong
            r.mapping(n, p, _NODE)
            backend = n.get("backend", "emulated")
            if backend not in BACKENDS:
                raise r.fail(
                    f"{p}.backend",
                    f"TEE backend {backend!r} is not available (available: {', '.join(BACKENDS)})",
                )
            host = port = None
            with problems:
                host = r.text(n.get("host"), f"{p}.host")
            with problems:
                port = r.integer(n.get("port"), f"{p}.port", 1, 65535)
            tls = n.get("tls", False)
            if not isinstance(tls, bool):
                raise r.fail(f"{p}.tls", "tls must be true (the agent serves HTTPS) or false")
            if host is not None and port is not None:
                nodes[name] = Node(name, host, port, backend, p, tls)
    if not node_names and "nodes" not in {e.field for e in problems.problems}:
        problems.add(r.fail("nodes", "a descriptor needs at least one node"))
    addresses = [(n.host, n.port) for n in nodes.values()]
    for i, each in enumerate(nodes.values()):
        if addresses.count((each.host, each.port)) > 1:
            problems.add(r.fail(f"nodes[{i}].port", f"two nodes at {each.host}:{each.port}"))

    modules: dict[str, Module] = {}
    module_names: set[str] = set()
    raw_modules: list[Any] = []
    with problems:
        raw_modules = r.items(data.get("modules"), "modules", MAX_MODULES)
    for i, raw in enumerate(raw_modules):
        p = f"modules[{i}]"
        with problems:
            m = raw if isinstance(raw, dict) else r.mapping(raw, p, _MODULE)
            name = r.name(m.get("name"), f"{p}.name")
            if name in module_names:
                raise r.fail(f"{p}.name", f"duplicate module name {name!r}")
            module_names.add(name)  # known from here on, even if a field of it is wrong
            r.mapping(m, p, _MODULE)
            module = _module(r, m, p, name, node_names, base, problems)
            if module is not None:
                modules[name] = module
    if not module_names and "modules" not in {e.field for e in problems.problems}:
        problems.add(r.fail("modules", "a descriptor needs at least one module"))

    connections = _connections(r, data.get("connections"), module_names, problems)
    periodic = []
    raw_periodic: list[Any] = []
    with problems:
        raw_periodic = r.items(data.get("periodic-events"), "periodic-events", MAX_PERIODIC)
    for i, raw in enumerate(raw_periodic):
        p = f"periodic-events[{i}]"
        with problems:
            e = r.mapping(raw, p, _PERIODIC)
            module_name = r.name(e.get("module"), f"{p}.module")
            if module_name not in module_names:
                raise r.fail(f"{p}.module", f"unknown module {module_name!r}")
            periodic.append(
                PeriodicEvent(
                    module_name,
                    r.name(e.get("entry"), f"{p}.entry"),
                    r.integer(e.get("period"), f"{p}.period", MIN_PERIOD_MS, MAX_PERIOD_MS),
                    p,
                )
            )
    return Descriptor(
        app=app,
        nodes=tuple(nodes.values()),
        modules=tuple(modules.values()),
        connections=tuple(c for c in connections if _complete(c, modules)),
        periodic=tuple(e for e in periodic if e.module in modules),
        verifier=verifier,
        transport=transport,
        origin=origin,
        lines=dict(lines),
    )


def _complete(c: Connection, modules: Mapping[str, Module]) -> bool:
    """A connection is kept when both its modules are (they may have had problems)."""
    return c.to_module in modules and (c.from_module is None or c.from_module in modules)


def _module(
    r: _Reader,
    m: dict[str, Any],
    p: str,
    name: str,
    nodes: set[str],
    base: Path,
    problems: _Collect,
) -> Module | None:
    """One module's fields, each checked on its own; None when any had a problem."""
    before = len(problems.problems)
    node = ""
    with problems:
        node = r.name(m.get("node"), f"{p}.node")
        if node not in nodes:
            raise r.fail(f"{p}.node", f"unknown node {node!r} (nodes: {', '.join(sorted(nodes))})")
    source = binary = None
    with problems:
        if ("source" in m) == ("binary" in m):
            raise r.fail(p, f"module {name!r} needs exactly one of 'source' and 'binary'")
        if "source" in m:
            source = base / r.text(m["source"], f"{p}.source", 4096)
            # A directory (found by name, as Authentic Execution does) is looked into at build.
            if (
                source.suffix
                and source.suffix not in SOURCE_SUFFIXES
                and source.name != CARGO_MANIFEST
                and not source.is_dir()
            ):
                raise r.fail(
                    f"{p}.source",
                    f"only {', '.join(SOURCE_SUFFIXES)} sources build, a {CARGO_MANIFEST}, "
                    "or a directory of one",
                )
        else:
            binary = base / r.text(m["binary"], f"{p}.binary", 4096)
    memory = timeout = None
    with problems:
        if m.get("memory_mb") is not None:
            memory = r.integer(m["memory_mb"], f"{p}.memory_mb", 1, MAX_MEMORY_MB)
    with problems:
        if m.get("timeout") is not None:
            timeout = r.number(m["timeout"], f"{p}.timeout", 0.001, MAX_TIMEOUT_S)
    declared: list[Endpoint] = []
    for key, kind in _DECLARED.items():
        with problems:
            declared += [Endpoint(kind, e) for e in _declared(r, m.get(key), f"{p}.{key}")]
    if len(problems.problems) > before:
        return None
    return Module(name, node, source, binary, memory, timeout, tuple(declared), p)


def _declared(r: _Reader, raw: Any, path: str) -> list[str]:
    """An index map (name -> numeric id, reactive-tools') or a list of endpoint names."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        if len(raw) > MAX_DECLARED:
            raise r.fail(path, f"more than {MAX_DECLARED} entries")
        for name, number in raw.items():
            r.name(name, f"{path}.{name}")
            r.integer(number, f"{path}.{name}", 0, MAX_ENDPOINT_ID)
        return list(raw)
    return [r.name(n, f"{path}[{i}]") for i, n in enumerate(r.items(raw, path, MAX_DECLARED))]


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


def _connections(r: _Reader, raw: Any, modules: set[str], problems: _Collect) -> list[Connection]:
    out: list[Connection] = []
    names: set[str] = set()
    items: list[Any] = []
    with problems:
        items = r.items(raw, "connections", MAX_CONNECTIONS)
    for i, item in enumerate(items):
        with problems:
            conn = _connection(r, item, f"connections[{i}]", modules, names)
            out.append(conn)
    with problems:
        _no_request_cycle(r, out)
    return out


def _connection(r: _Reader, item: Any, p: str, modules: set[str], names: set[str]) -> Connection:
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
                f"a {source.kind} connects to a {expected} (to_{expected}), not to a {target.kind}",
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
    return Connection(name, source, from_module, to_module, target, p)


def _no_request_cycle(r: _Reader, connections: Sequence[Connection]) -> None:
    """A cycle of synchronous requests would deadlock the modules on it: refuse it."""
    graph: dict[str, list[tuple[str, int]]] = {}
    for i, c in enumerate(connections):
        if c.source is not None and c.source.kind == "request" and c.from_module is not None:
            graph.setdefault(c.from_module, []).append((c.to_module, i))
    where = [c.path or f"connections[{i}]" for i, c in enumerate(connections)]
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target, index in graph.get(module, []):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], module, target] if target in path else []
                shown = " -> ".join(cycle or [module, target])
                raise r.fail(where[index], f"synchronous requests form a cycle: {shown}")
            if state.get(target) is None:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [])


def check_endpoints(desc: Descriptor, tables: Mapping[str, Sequence[Endpoint]]) -> None:
    """Every endpoint the descriptor names must be in the module's binary, of that kind.

    ``tables`` maps module name to the endpoint table recorded in its binary. Raises the
    one problem, or DescriptorProblems naming them all.
    """
    _raise(endpoint_problems(desc, tables))


def endpoint_problems(
    desc: Descriptor, tables: Mapping[str, Sequence[Endpoint]], *, partial: bool = False
) -> list[DescriptorError]:
    """Every endpoint problem at once. ``partial``: modules without a table (their build
    failed, and that is reported already) are skipped rather than a problem each."""
    r = _Reader(desc.lines, desc.origin)
    problems = _Collect()

    def need(module: str, endpoint: Endpoint, path: str) -> None:
        table = tables.get(module)
        if table is None and not partial:
            problems.add(r.fail(path, f"module {module!r} has no endpoint table"))
            return
        if table is None or endpoint in table:
            return
        same_name = [e.kind for e in table if e.name == endpoint.name]
        hint = f" (it is a {same_name[0]})" if same_name else ""
        available = ", ".join(e.name for e in table if e.kind == endpoint.kind) or "none"
        problems.add(
            r.fail(
                path,
                f"module {module!r} does not export {endpoint.kind} {endpoint.name!r}{hint}; "
                f"its {endpoint.kind}s: {available}",
            )
        )

    for i, m in enumerate(desc.modules):
        for d in m.declared:
            field_of = {"input": "inputs", "output": "outputs", "entry": "entrypoints"}[d.kind]
            need(m.name, d, f"{m.path or f'modules[{i}]'}.{field_of}.{d.name}")
    handlers: dict[tuple[str, str], str] = {}
    for i, c in enumerate(desc.connections):
        p = c.path or f"connections[{i}]"
        if c.source is not None and c.from_module is not None:
            need(c.from_module, c.source, f"{p}.from_{c.source.kind}")
            if c.source.kind == "request":
                key = (c.from_module, c.source.name)
                if key in handlers:
                    problems.add(
                        r.fail(
                            f"{p}.from_request",
                            f"request {c.from_module}.{c.source.name} is already answered by "
                            f"{handlers[key]}: one handler answers a request",
                        )
                    )
                handlers[key] = p
        need(c.to_module, c.target, f"{p}.to_{c.target.kind}")
    for i, e in enumerate(desc.periodic):
        p = f"{e.path or f'periodic-events[{i}]'}.entry"
        table = tables.get(e.module, None if partial else ())
        if table is not None and Endpoint("public", e.entry) not in table:
            kinds = [x.kind for x in table if x.name == e.entry]
            problems.add(
                r.fail(
                    p,
                    f"periodic events call a public endpoint (VERITEE_PUBLIC): a timer the node "
                    f"agent drives cannot be authenticated; {e.module}.{e.entry} is "
                    + (f"a {kinds[0]}" if kinds else "not exported"),
                )
            )
    return problems.problems
