"""Descriptors in the Authentic Execution deployer's format (reactive-tools JSON), converted.

Field names there: nodes {type, name, ip_address, reactive_port, deploy_port}, modules {type,
name, node, files, binary, priority}, connections {name, from_module, from_output |
from_request, to_module, to_input | to_handler, direct, encryption}, periodic-events {module,
entry, frequency}. What Veritee cannot honour is refused, each with the reason:

* SGX and Sancus nodes and modules, and their fields (vendor keys, AESM, RA settings, symbol
  tables, numeric endpoint ids, SPONGENT encryption): Veritee runs Wasm modules in a (v)TEE;
* keys, nonces and ids written into the descriptor by an earlier deployment: the deployer
  never holds a module's or a connection's key, and deployment state lives in a state file;
* the attestation manager: Veritee attests through its verification service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veritee.app.errors import DescriptorError, UnsupportedField

_SGX = "SGX-specific"
_SANCUS = "Sancus-specific"
_OWN_TYPES = ("native", "trustzone")  # both run as Veritee modules in a (v)TEE

_NODE_FIELDS = {
    "aesm_host": _SGX,
    "aesm_port": _SGX,
    "vendor_id": _SANCUS,
    "vendor_key": _SANCUS,
    "node_key": "a shared node key (Veritee devices prove themselves with certified keys)",
}
_MODULE_FIELDS = {
    "vendor_key": _SGX,
    "ra_settings": _SGX,
    "features": _SGX,
    "sgxs": _SGX,
    "signature": _SGX,
    "data": _SGX,
    "port": _SGX,
    "symtab": _SANCUS,
    "folder": "a Rust crate to build (give 'files' with one C source, or a 'binary')",
    "key": "a module key in the descriptor (the deployer never holds module keys)",
    "nonce": "state of an earlier Authentic Execution deployment",
    "id": "state of an earlier Authentic Execution deployment",
}
_EARLIER = "state of an earlier Authentic Execution deployment"
_CONNECTION_FIELDS = {
    "key": "a connection key in the descriptor (the deployer never holds connection keys)",
    "nonce": "a 16-bit nonce of an earlier deployment (Veritee counters are 64-bit, in the TEE)",
    "id": "state of an earlier Authentic Execution deployment",
}


def is_authentic(data: Mapping[str, Any]) -> bool:
    """Does this look like a reactive-tools descriptor rather than a Veritee one?"""
    if "manager" in data:
        return True
    for section, marks in (
        ("nodes", ("ip_address", "reactive_port", "type")),
        ("modules", ("type", "files")),
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
    def __init__(self, lines: Mapping[str, int], origin: str) -> None:
        self.old = lines
        self.lines: dict[str, int] = {}
        self.origin = origin

    def where(self, path: str) -> str:
        probe = path
        while probe and probe not in self.old:
            probe = probe.rpartition(".")[0] if "." in probe else ""
        return f"{self.origin}:{self.old[probe]}" if probe else self.origin

    def refuse(self, path: str, what: str) -> UnsupportedField:
        return UnsupportedField(
            f"Veritee cannot honour this Authentic Execution field: {what}",
            where=self.where(path),
            field=path,
        )

    def carry(self, old: str, new: str) -> None:
        if old in self.old:
            self.lines[new] = self.old[old]

    def section(self, data: Mapping[str, Any], name: str) -> list[Any]:
        items = data.get(name, [])
        if not isinstance(items, list):
            raise DescriptorError("must be a list", where=self.where(name), field=name)
        return items

    def entry(self, item: Any, path: str) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise DescriptorError("must be a mapping", where=self.where(path), field=path)
        self.carry(path, path)
        return item

    def type_of(self, item: dict[str, Any], path: str, what: str) -> None:
        kind = item.get("type")
        if kind in ("sgx", "sancus"):
            raise self.refuse(
                f"{path}.type",
                f"{what} type {kind!r} is {_SGX if kind == 'sgx' else _SANCUS} (Veritee runs "
                f"Wasm modules in a TEE; use type {' or '.join(map(repr, _OWN_TYPES))})",
            )
        if kind is not None and kind not in _OWN_TYPES:
            raise DescriptorError(
                f"unknown {what} type {kind!r} (expected one of {', '.join(_OWN_TYPES)})",
                where=self.where(f"{path}.type"),
                field=f"{path}.type",
            )

    def refused_fields(self, item: dict[str, Any], path: str, table: Mapping[str, str]) -> None:
        for key, why in table.items():
            if key in item:
                raise self.refuse(f"{path}.{key}", why)


def convert(
    data: dict[str, Any], lines: Mapping[str, int], origin: str
) -> tuple[dict[str, Any], dict[str, int]]:
    """The Veritee form of a reactive-tools descriptor, with each field's original line."""
    cv = _Converter(lines, origin)
    if "manager" in data:
        raise cv.refuse(
            "manager",
            "the attestation manager (Veritee attests through its verification service: "
            "drop 'manager' and give --verifier)",
        )
    unknown = [k for k in data if k not in ("nodes", "modules", "connections", "periodic-events")]
    if unknown:
        raise DescriptorError(
            "unknown field in an Authentic Execution descriptor",
            where=cv.where(unknown[0]),
            field=unknown[0],
        )
    out: dict[str, Any] = {"nodes": [], "modules": [], "connections": [], "periodic-events": []}

    for i, item in enumerate(cv.section(data, "nodes")):
        p = f"nodes[{i}]"
        n = cv.entry(item, p)
        cv.type_of(n, p, "node")
        cv.refused_fields(n, p, _NODE_FIELDS)
        node = {k: v for k, v in n.items() if k not in ("type", "ip_address", "reactive_port")}
        node.pop("deploy_port", None)
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

    for i, item in enumerate(cv.section(data, "modules")):
        p = f"modules[{i}]"
        m = cv.entry(item, p)
        cv.type_of(m, p, "module")
        cv.refused_fields(m, p, _MODULE_FIELDS)
        for flag in ("deployed", "attested"):
            if m.get(flag):
                raise cv.refuse(
                    f"{p}.{flag}",
                    "state of an earlier Authentic Execution deployment (Veritee keeps "
                    "deployment state in its state file: give the original descriptor)",
                )
        module = {
            k: v
            for k, v in m.items()
            if k not in ("type", "files", "priority", "deployed", "attested")
        }
        files = m.get("files")
        if files is not None:
            if not (isinstance(files, list) and len(files) == 1 and isinstance(files[0], str)):
                raise DescriptorError(
                    "Veritee builds a module from one C or WAT file: give exactly one",
                    where=cv.where(f"{p}.files"),
                    field=f"{p}.files",
                )
            module["source"] = files[0]
            cv.carry(f"{p}.files", f"{p}.source")
        if module.get("binary") == "":
            module.pop("binary")
        for k in module:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["modules"].append(module)

    for i, item in enumerate(cv.section(data, "connections")):
        p = f"connections[{i}]"
        c = cv.entry(item, p)
        cv.refused_fields(c, p, _CONNECTION_FIELDS)
        if c.get("established"):
            raise cv.refuse(f"{p}.established", _EARLIER)
        encryption = c.get("encryption")
        if encryption == "spongent":
            raise cv.refuse(f"{p}.encryption", "SPONGENT encryption is Sancus-specific")
        if encryption not in (None, "aes"):
            raise DescriptorError(
                f"unknown encryption {encryption!r}",
                where=cv.where(f"{p}.encryption"),
                field=f"{p}.encryption",
            )
        for key in ("from_output", "from_request", "to_input", "to_handler"):
            if isinstance(c.get(key), int) and not isinstance(c.get(key), bool):
                raise cv.refuse(
                    f"{p}.{key}", "numeric endpoint ids are Sancus-specific: name the endpoint"
                )
        conn = {k: v for k, v in c.items() if k not in ("encryption", "established")}
        for k in conn:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["connections"].append(conn)

    for i, item in enumerate(cv.section(data, "periodic-events")):
        p = f"periodic-events[{i}]"
        e = cv.entry(item, p)
        if e.get("established"):
            raise cv.refuse(f"{p}.established", _EARLIER)
        event = {k: v for k, v in e.items() if k not in ("frequency", "established")}
        if "frequency" in e:  # reactive-tools' "frequency" is a period in milliseconds
            event["period"] = e["frequency"]
            cv.carry(f"{p}.frequency", f"{p}.period")
        for k in event:
            cv.carry(f"{p}.{k}", f"{p}.{k}")
        out["periodic-events"].append(event)
    return out, cv.lines
