"""Reading a deployment file (YAML or JSON) into the document the service applies.

The thin I/O layer in front of :class:`veritee.verifier.endorsements.Deployment`: it reads the
files an entry names (paths are relative to the deployment file) and measures Wasm modules,
so the document sent to the verifier is self-contained. Example::

    trust-anchors:
      - ca: manufacturer/ca.pem              # a path, or PEM text inline; endorses at most
                                             # emulated unless max-lifecycle says otherwise:
      - {ca: vendor-ca.pem, max-lifecycle: secured}
      - {scheme: psa, key: iak-pub.pem}      # PSA/CCA key: PEM or JWK, path or inline
    reference-values:
      - file: manufacturer/reference-values.json
      - {kind: module, wasm: hello.wasm, name: hello, version: "1.0"}
    revocations:
      - {device: 01be7d54..., reason: stolen}
    policies:
      - {name: prod, file: prod.rego, activate: true}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from veritee.verifier.errors import ProvisioningError

# A deployment file is hand-written: a few hundred KiB at most. Bigger is a mistake.
MAX_FILE_BYTES = 1024 * 1024


def read_data(path: Path) -> Any:
    """JSON or YAML (JSON is YAML) from ``path``; raise :class:`ProvisioningError`."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ProvisioningError(f"{path} is over {MAX_FILE_BYTES} bytes")
        text = path.read_text()
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ProvisioningError(f"{path} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from None


def load(path: Path) -> dict[str, Any]:
    """The deployment in ``path`` with every referenced file read in."""
    doc = read_data(path)
    if not isinstance(doc, dict):
        raise ProvisioningError(f"{path} must hold a mapping (trust-anchors, policies, ...)")
    base = path.parent
    out = dict(doc)
    out["trust-anchors"] = [_anchor(e, base) for e in _list(doc, "trust-anchors")]
    out["revocations"] = [_revocation(e, base) for e in _list(doc, "revocations")]
    out["reference-values"] = [
        r for e in _list(doc, "reference-values") for r in _references(e, base)
    ]
    out["policies"] = [_policy(e, base) for e in _list(doc, "policies")]
    return out


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise ProvisioningError(f"'{key}' must be a list")
    return value


def _text_or_file(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or value.lstrip().startswith(("-----BEGIN", "{")):
        return value
    if "\n" in value:
        return value
    return _read(base / value)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from None


def _anchor(entry: Any, base: Path) -> Any:
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    for key in ("ca", "key", "tpm-ca"):
        if key in out:
            out[key] = _text_or_file(out[key], base)
    return out


def _revocation(entry: Any, base: Path) -> Any:
    if isinstance(entry, dict) and isinstance(entry.get("ca"), str):
        ca = entry["ca"]
        if (base / ca).is_file():
            return {**entry, "ca": _read(base / ca)}
    return entry


def _references(entry: Any, base: Path) -> list[Any]:
    if not isinstance(entry, dict):
        return [entry]
    if "file" in entry:
        data = read_data(base / str(entry["file"]))
        scheme = entry.get("scheme")
        items = data if isinstance(data, list) else [data]
        return [{**i, "scheme": scheme} if scheme and isinstance(i, dict) else i for i in items]
    if "wasm" in entry:
        from veritee.wasm.runtime import measure, to_binary

        module = base / str(entry["wasm"])
        try:
            digest = measure(to_binary(module.read_bytes())).hex()
        except OSError as exc:
            raise ProvisioningError(f"cannot read {module}: {exc.strerror}") from None
        rest = {k: v for k, v in entry.items() if k != "wasm"}
        return [{"kind": "module", "name": module.stem, **rest, "measurement": digest}]
    return [entry]


def _policy(entry: Any, base: Path) -> Any:
    if isinstance(entry, dict) and "file" in entry:
        rest = {k: v for k, v in entry.items() if k != "file"}
        return {**rest, "rego": _read(base / str(entry["file"]))}
    return entry
