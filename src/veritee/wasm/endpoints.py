"""A module's endpoint table: read from, and recorded in, the Wasm binary itself.

Endpoints are exports named ``veritee_<kind>_<name>`` (see sdk/veritee_app.h). ``veritee
build`` records them in a custom section ``veritee.endpoints`` (CBOR list of [kind, name]);
readers check the section against the exports, so a table that claims an endpoint the code
does not have is refused. Pure byte parsing: the deployer needs no Wasm engine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cbor2

from veritee.errors import ModuleError

SECTION = "veritee.endpoints"
KINDS = ("input", "output", "request", "handler", "entry", "public")
_EXPORT = re.compile(
    r"^veritee_(input|output|request|handler|entry|public)_([A-Za-z_][A-Za-z0-9_]{0,63})$"
)
MAX_ENDPOINTS = 256


@dataclass(frozen=True, order=True)
class Endpoint:
    kind: str
    name: str

    @property
    def export(self) -> str:
        return f"veritee_{self.kind}_{self.name}"


def _leb(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(data) or shift > 35:
            raise ModuleError("malformed Wasm binary (bad LEB128)")
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _sections(wasm: bytes) -> list[tuple[int, bytes]]:
    if wasm[:8] != b"\0asm\x01\0\0\0":
        raise ModuleError("not a Wasm binary module")
    out, i = [], 8
    while i < len(wasm):
        sid = wasm[i]
        size, j = _leb(wasm, i + 1)
        if j + size > len(wasm):
            raise ModuleError("malformed Wasm binary (section overruns the file)")
        out.append((sid, wasm[j : j + size]))
        i = j + size
    return out


def _name(body: bytes, i: int) -> tuple[str, int]:
    n, i = _leb(body, i)
    try:
        return body[i : i + n].decode("utf-8"), i + n
    except UnicodeDecodeError:
        raise ModuleError("malformed Wasm binary (name is not UTF-8)") from None


def exports(wasm: bytes) -> list[str]:
    names: list[str] = []
    for sid, body in _sections(wasm):
        if sid == 7:
            count, i = _leb(body, 0)
            for _ in range(count):
                name, i = _name(body, i)
                i += 1  # kind
                _, i = _leb(body, i)  # index
                names.append(name)
    return names


def from_exports(names: list[str]) -> list[Endpoint]:
    found = []
    for name in names:
        m = _EXPORT.match(name)
        if m:
            found.append(Endpoint(m.group(1), m.group(2)))
    return sorted(found)


def recorded(wasm: bytes) -> list[Endpoint] | None:
    """The endpoint table in the binary's custom section, checked against its exports."""
    table = None
    for sid, body in _sections(wasm):
        if sid == 0:
            name, i = _name(body, 0)
            if name == SECTION:
                try:
                    entries = cbor2.loads(body[i:])
                    table = sorted(Endpoint(str(k), str(n)) for k, n in entries)
                except (ValueError, TypeError, cbor2.CBORDecodeError):
                    raise ModuleError("the veritee.endpoints section does not parse") from None
    if table is None:
        return None
    actual = from_exports(exports(wasm))
    if table != actual:
        claimed = [(e.kind, e.name) for e in table]
        exported = [(e.kind, e.name) for e in actual]
        raise ModuleError(
            f"the module's endpoint table {claimed} does not match its exports {exported}"
        )
    return table


def record(wasm: bytes) -> bytes:
    """Append (or replace) the endpoint table section derived from the exports."""
    table = from_exports(exports(wasm))
    if len(table) > MAX_ENDPOINTS:
        raise ModuleError(f"more than {MAX_ENDPOINTS} endpoints")
    names = [e.name for e in table]
    if len(set(names)) != len(names):
        raise ModuleError("endpoint names must be unique across kinds")
    kept = bytearray(wasm[:8])
    for sid, body in _sections(wasm):
        if sid == 0 and _name(body, 0)[0] == SECTION:
            continue
        kept += bytes([sid]) + _uleb(len(body)) + body
    payload = (
        _uleb(len(SECTION)) + SECTION.encode() + cbor2.dumps([[e.kind, e.name] for e in table])
    )
    return bytes(kept) + b"\x00" + _uleb(len(payload)) + payload


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
