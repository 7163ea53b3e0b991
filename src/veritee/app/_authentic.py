"""Descriptors in the Authentic Execution deployer's format (reactive-tools JSON), converted.

reactive-tools' own examples deploy as given wherever their meaning carries over:

* nodes {type, name, ip_address, reactive_port, deploy_port}: ``native`` and ``trustzone``
  both run as Veritee modules in a (v)TEE;
* modules {type, name, node, files | binary | folder | files_dir, inputs, outputs,
  entrypoints}: sources are found by the module's name beside the descriptor as
  reactive-tools does (``folder``, default the name, for native; ``files_dir/<name>/`` for
  TrustZone), and the index maps ``inputs``/``outputs``/``entrypoints`` declare the endpoints
  the binary must export (numbers in connections are resolved through them);
* connections {name, from_module, from_output | from_request, to_module, to_input |
  to_handler, direct, encryption}, periodic-events {module, entry, frequency}.

Accepted but without meaning here, each with one warning saying why: the attestation
``manager`` (Veritee's verifier takes its place), a TrustZone ``node_key``, numeric module
``id`` and TA ``uuid``, cargo ``features``, a native module's ``port``, ``priority``.
Refused: SGX and Sancus descriptors (every field specific to them named in one message),
and keys, nonces and state written into the descriptor by an earlier deployment (the
deployer never holds a module's or a connection's key; deployment state lives in a state
file). Problems are collected, not raised one by one: see ``_tree._Collect``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veritee.app._tree import _Collect
from veritee.app.errors import DescriptorError, UnsupportedField

_OWN_TYPES = ("native", "trustzone")  # both run as Veritee modules in a (v)TEE
_FOREIGN = {"sgx": "SGX", "sancus": "Sancus"}  # type -> the TEE its fields belong to
# Fields that only mean something to one foreign TEE, wherever they appear.
_NODE_FOREIGN = {
    "aesm_host": "sgx",
    "aesm_port": "sgx",
    "vendor_id": "sancus",
    "vendor_key": "sancus",
}
_MODULE_FOREIGN = {
    "vendor_key": "sgx",
    "ra_settings": "sgx",
    "sgxs": "sgx",
    "signature": "sgx",
    "data": "sgx",
    "symtab": "sancus",
}
# On a module of a foreign type, these (native's otherwise) are that TEE's build settings too.
_FOREIGN_TYPED = ("features", "port")

_EARLIER = "state of an earlier Authentic Execution deployment"
_MODULE_REFUSED = {
    "key": "a module key in the descriptor (the deployer never holds module keys)",
    "nonce": _EARLIER,
}
_CONNECTION_REFUSED = {
    "key": "a connection key in the descriptor (the deployer never holds connection keys)",
    "nonce": "a 16-bit nonce of an earlier deployment (Veritee counters are 64-bit, in the TEE)",
    "id": _EARLIER,
}
# Accepted, not used: field -> why (one warning per field, naming every place it is given).
_IGNORED = {
    "manager": "Veritee's verification service takes the place of Authentic Execution's "
    "attestation manager (give --verifier, or verifier.url in a Veritee descriptor)",
    "node_key": "a shared TrustZone node key is not used: Veritee devices prove themselves with "
    "certified keys (and a key written in a descriptor is known to all who read it: drop it)",
    "id": "numeric module ids are not used: Veritee names modules and their endpoints",
    "uuid": "a TrustZone TA UUID is not used: a Veritee module is known by its measurement",
    "features": "cargo features are not passed to the build: the crate builds with its defaults",
    "port": "a native module's own port is not used: events reach a Veritee module through "
    "its node agent",
    "priority": "deployment order is not used: Veritee loads modules concurrently and connects "
    "them once all are attested",
}
# Index maps of a module: field -> endpoint kind (reactive-tools' TrustZone modules).
INDEX_MAPS = {"inputs": "input", "outputs": "output", "entrypoints": "entry"}
# A connection field with a number -> the index map that names it.
_NUMBERED = {"from_output": "outputs", "to_input": "inputs"}
MAX_UUID = 2**128 - 1  # a TA UUID is 128 bits
MAX_MODULE_ID = 2**16 - 1  # reactive-tools' module ids are 16-bit


def is_authentic(data: Mapping[str, Any]) -> bool:
    """Does this look like a reactive-tools descriptor rather than a Veritee one?"""
    if "manager" in data:
        return True
    for section, marks in (
        ("nodes", ("ip_address", "reactive_port", "type")),
        ("modules", ("type", "files", "files_dir", "folder")),
        ("connections", ("encryption",)),
        ("periodic-events", ("frequency",)),
    ):
        items = data.get(section)
        if isinstance(items, list) and any(
            isinstance(i, dict) and any(m in i for m in marks) for i in items
        ):
            return True
    return False


class _Converter:
    def __init__(self, lines: Mapping[str, int], origin: str, problems: _Collect) -> None:
        self.old = lines
        self.lines: dict[str, int] = {}
        self.origin = origin
        self.problems = problems
        self.ignored: dict[str, list[str]] = {}

    def line(self, path: str) -> int | None:
        probe = path
        while probe and probe not in self.old:
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return self.old[probe] if probe else None

    def where(self, path: str) -> str:
        line = self.line(path)
        return f"{self.origin}:{line}" if line is not None else self.origin

    def fail(self, path: str, message: str) -> DescriptorError:
        return DescriptorError(message, where=self.where(path), field=path)

    def refuse(self, path: str, what: str) -> UnsupportedField:
        return UnsupportedField(
            f"Veritee cannot honour this Authentic Execution field: {what}",
            where=self.where(path),
            field=path,
        )

    def ignore(self, path: str, key: str) -> None:
        self.ignored.setdefault(key, []).append(path)

    def warnings(self) -> list[str]:
        out = []
        for key, paths in self.ignored.items():
            out.append(f"{self.where(paths[0])}: {', '.join(paths)}: ignored: {_IGNORED[key]}")
        return out

    def carry(self, old: str, new: str) -> None:
        if old in self.old:
            self.lines[new] = self.old[old]

    def section(self, data: Mapping[str, Any], name: str) -> list[Any]:
        items = data.get(name, [])
        if not isinstance(items, list):
            self.problems.add(self.fail(name, "must be a list"))
            return []
        return items

    def entries(self, data: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for i, item in enumerate(self.section(data, name)):
            p = f"{name}[{i}]"
            if not isinstance(item, dict):
                self.problems.add(self.fail(p, "must be a mapping"))
                continue
            self.carry(p, p)
            out.append((p, item))
        return out

    def check_type(self, item: dict[str, Any], path: str, what: str) -> None:
        kind = item.get("type")
        if kind is not None and not (
            isinstance(kind, str) and (kind in _OWN_TYPES or kind in _FOREIGN)
        ):
            self.problems.add(
                self.fail(
                    f"{path}.type",
                    f"unknown {what} type {kind!r} (expected one of {', '.join(_OWN_TYPES)})",
                )
            )

    def refused(self, item: dict[str, Any], path: str, table: Mapping[str, str]) -> None:
        for key, why in table.items():
            if key in item:
                self.problems.add(self.refuse(f"{path}.{key}", why))

    def integer(self, value: Any, path: str, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            self.problems.add(self.fail(path, f"must be an integer from 0 to {high}"))


def _foreign_fields(cv: _Converter, data: Mapping[str, Any]) -> None:
    """Refuse SGX and Sancus descriptors in one message naming every field specific to them."""
    found: dict[str, list[str]] = {}

    def note(tee: str, path: str, shown: str) -> None:
        line = cv.line(path)
        found.setdefault(tee, []).append(f"{shown} (line {line})" if line else shown)

    first: list[str] = []
    for section, table in (("nodes", _NODE_FOREIGN), ("modules", _MODULE_FOREIGN)):
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            p = f"{section}[{i}]"
            kind = item.get("type")
            if isinstance(kind, str) and kind in _FOREIGN:
                note(kind, f"{p}.type", f"{p}.type {kind!r}")
                first.append(f"{p}.type")
            for key, tee in table.items():
                if key in item:
                    note(tee, f"{p}.{key}", f"{p}.{key}")
                    first.append(f"{p}.{key}")
            if section == "modules" and isinstance(kind, str) and kind in _FOREIGN:
                for key in _FOREIGN_TYPED:
                    if key in item:
                        note(kind, f"{p}.{key}", f"{p}.{key}")
    connections = data.get("connections")
    for i, item in enumerate(connections if isinstance(connections, list) else []):
        if isinstance(item, dict) and item.get("encryption") == "spongent":
            p = f"connections[{i}].encryption"
            note("sancus", p, f"{p} 'spongent'")
            first.append(p)
    if not found:
        return
    tees = " and ".join(_FOREIGN[t] for t in _FOREIGN if t in found)
    groups = "; ".join(
        f"{_FOREIGN[t]}-specific fields: {', '.join(found[t])}" for t in _FOREIGN if t in found
    )
    raise UnsupportedField(
        f"Veritee cannot honour {tees} descriptors (it runs Wasm modules in a TEE, not "
        f"{tees} enclaves): {groups}",
        where=cv.where(first[0]),
        field=first[0],
    )


def _index_maps(cv: _Converter, module: dict[str, Any], path: str) -> dict[str, dict[int, str]]:
    """For each index map the module gives, its numbers -> endpoint names (for connections)."""
    out: dict[str, dict[int, str]] = {}
    for key in INDEX_MAPS:
        given = module.get(key)
        if not isinstance(given, dict):
            continue  # from_tree says what is wrong with it
        numbers: dict[int, str] = {}
        for name, number in given.items():
            if isinstance(number, int) and not isinstance(number, bool):
                if number in numbers:
                    cv.problems.add(
                        cv.fail(
                            f"{path}.{key}.{name}",
                            f"{key} id {number} is given to both {numbers[number]!r} and {name!r}",
                        )
                    )
                numbers[number] = name
        out[key] = numbers
    return out


def _resolve(
    cv: _Converter,
    maps: Mapping[str, Mapping[str, dict[int, str]]],
    module: Any,
    key: str,
    value: Any,
    path: str,
) -> Any:
    """A numeric endpoint id named through the module's index map, as reactive-tools does."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    index = _NUMBERED.get(key, "entrypoints" if key == "entry" else "")
    names = maps.get(module, {}).get(index) if isinstance(module, str) and index else None
    if names is None:
        cv.problems.add(
            cv.refuse(
                path,
                f"numeric endpoint id {value}: name the endpoint"
                + (f", or give module {module!r} an {index!r} map naming it" if index else ""),
            )
        )
        return value
    if value not in names:
        cv.problems.add(cv.fail(path, f"module {module!r} has no {index} id {value}"))
        return value
    return names[value]


def convert(
    data: dict[str, Any], lines: Mapping[str, int], origin: str, problems: _Collect
) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """The Veritee form of a reactive-tools descriptor, each field's line, and its warnings.

    Problems go to ``problems``; an SGX or Sancus descriptor raises UnsupportedField at once.
    """
    cv = _Converter(lines, origin, problems)
    _foreign_fields(cv, data)
    if "manager" in data:
        cv.ignore("manager", "manager")
    for k in data:
        if k not in ("manager", "nodes", "modules", "connections", "periodic-events"):
            problems.add(cv.fail(k, "unknown field in an Authentic Execution descriptor"))
    out: dict[str, Any] = {"nodes": [], "modules": [], "connections": [], "periodic-events": []}

    for p, n in cv.entries(data, "nodes"):
        cv.check_type(n, p, "node")
        if "node_key" in n:
            cv.ignore(f"{p}.node_key", "node_key")
        node = {
            k: v
            for k, v in n.items()
            if k not in ("type", "ip_address", "reactive_port", "deploy_port", "node_key")
        }
        if "ip_address" in n:
            node["host"] = n["ip_address"]
            cv.carry(f"{p}.ip_address", f"{p}.host")
        # One node agent serves deployment and events: the deployer talks to its API port.
        port_field = "deploy_port" if "deploy_port" in n else "reactive_port"
        if port_field in n:
            node["port"] = n[port_field]
            cv.carry(f"{p}.{port_field}", f"{p}.port")
        for k in node:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["nodes"].append(node)

    maps: dict[str, dict[str, dict[int, str]]] = {}
    for p, m in cv.entries(data, "modules"):
        cv.check_type(m, p, "module")
        cv.refused(m, p, _MODULE_REFUSED)
        for flag in ("deployed", "attested"):
            if m.get(flag):
                problems.add(
                    cv.refuse(
                        f"{p}.{flag}",
                        f"{_EARLIER} (Veritee keeps deployment state in its state file: give "
                        "the original descriptor)",
                    )
                )
        if "id" in m:
            cv.integer(m["id"], f"{p}.id", MAX_MODULE_ID)
        if "uuid" in m:
            cv.integer(m["uuid"], f"{p}.uuid", MAX_UUID)
        for key in ("id", "uuid", "features", "port", "priority"):
            if key in m:
                cv.ignore(f"{p}.{key}", key)
        dropped = ("type", "files", "folder", "files_dir", "deployed", "attested")
        module = {k: v for k, v in m.items() if k not in (*dropped, *_IGNORED)}
        if module.get("binary") in ("", None):
            module.pop("binary", None)
        files = m.get("files")
        if files is not None:
            if isinstance(files, list) and len(files) == 1 and isinstance(files[0], str):
                module["source"] = files[0]
                cv.carry(f"{p}.files", f"{p}.source")
            else:
                problems.add(
                    cv.fail(f"{p}.files", "Veritee builds a module from one source: give one")
                )
        elif "binary" not in module:
            # Found by name beside the descriptor, as reactive-tools finds it.
            name = m.get("name")
            folder, files_dir = m.get("folder"), m.get("files_dir")
            if isinstance(folder, str) and folder:
                module["source"] = folder
                cv.carry(f"{p}.folder", f"{p}.source")
            elif isinstance(name, str):
                if isinstance(files_dir, str) and files_dir:
                    module["source"] = f"{files_dir.rstrip('/')}/{name}"
                    cv.carry(f"{p}.files_dir", f"{p}.source")
                else:
                    module["source"] = name
                    cv.carry(p, f"{p}.source")
        for k in module:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        for key in INDEX_MAPS:
            given = m.get(key)
            if isinstance(given, dict):
                for sub in given:
                    cv.carry(f"{p}.{key}.{sub}", f"{p}.{key}.{sub}")
        if isinstance(m.get("name"), str):
            maps[m["name"]] = _index_maps(cv, m, p)
        out["modules"].append(module)

    for p, c in cv.entries(data, "connections"):
        cv.refused(c, p, _CONNECTION_REFUSED)
        if c.get("established"):
            problems.add(cv.refuse(f"{p}.established", _EARLIER))
        encryption = c.get("encryption")
        if encryption not in (None, "aes", "spongent"):
            problems.add(cv.fail(f"{p}.encryption", f"unknown encryption {encryption!r}"))
        conn = {
            k: v for k, v in c.items() if k not in ("encryption", "established", "key", "nonce")
        }
        conn.pop("id", None)
        for key in ("from_output", "from_request", "to_input", "to_handler"):
            if key in conn:
                owner = conn.get("from_module" if key.startswith("from") else "to_module")
                conn[key] = _resolve(cv, maps, owner, key, conn[key], f"{p}.{key}")
        for k in conn:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["connections"].append(conn)

    for p, e in cv.entries(data, "periodic-events"):
        if e.get("established"):
            problems.add(cv.refuse(f"{p}.established", _EARLIER))
        event = {k: v for k, v in e.items() if k not in ("frequency", "established")}
        if "frequency" in e:  # reactive-tools' "frequency" is a period in milliseconds
            event["period"] = e["frequency"]
            cv.carry(f"{p}.frequency", f"{p}.period")
        if "entry" in event:
            entry = event["entry"]
            if isinstance(entry, str) and entry.isdigit():  # reactive-tools takes "3" too
                entry = int(entry)
            event["entry"] = _resolve(cv, maps, event.get("module"), "entry", entry, f"{p}.entry")
        for k in event:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["periodic-events"].append(event)
    return out, cv.lines, cv.warnings()
