#!/usr/bin/env python3
"""The import direction of docs/architecture.md, checked (``make lint`` runs this).

Layers, top to bottom; a package may import its own layer's modules and any layer below it,
never one above:

    cli
    app, demo
    secrets, ratls
    verifier
    tee
    tls                the RA-TLS protocol core (I/O-free), shared by tee and ratls
    evidence
    wasm
    console, errors, home, logs, notify, rego, servicetls   (the base every layer may use)

Two contracts on top of the order:

* ``verifier`` never imports ``tee`` (it runs on machines with no TEE at all);
* the node agent (``app``'s agent-side modules) reaches the secure world only through the TEE
  Client API and its bindings, never by importing the secure world's own modules, so it can
  neither provision a device nor hold a device secret;
* a root of trust's own library (``tpm2_pytss``) is imported only by its backend's module under
  ``tee/backends/`` and by the appraisal of that backend's evidence (``evidence/tpm.py``, which
  unmarshals the TPM's structures with it), so every other part stays usable without it.

Exit status 0 when every import follows them; 1 with one line per offending import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "veritee"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"cli", "__main__"}),
    frozenset({"app", "demo"}),
    frozenset({"secrets", "ratls"}),
    frozenset({"verifier"}),
    frozenset({"tee"}),
    frozenset({"tls"}),
    frozenset({"evidence"}),
    frozenset({"wasm"}),
    frozenset({"console", "errors", "home", "logs", "notify", "rego", "servicetls", "__init__"}),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

FORBIDDEN = {"verifier": frozenset({"tee"})}

# The node agent's modules, and the only parts of the secure-world package they may import:
# the TEE Client API, the bindings of its trusted apps, the wire format, the event header.
BACKEND_LIBRARIES = frozenset({"tpm2_pytss"})
BACKEND_LIBRARY_USERS = (("tee", "backends"), ("evidence", "tpm.py"))

AGENT_MODULES = frozenset({"agent", "api", "server", "routes", "_host", "transport", "spool"})
AGENT_MAY_IMPORT = frozenset(
    {"veritee.tee.client", "veritee.tee.ta", "veritee.tee.protocol", "veritee.tee.channels"}
)


def _package(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for each import of Veritee's own; ``from veritee.tee import client``
    counts as ``veritee.tee.client`` (a name imported from a package may be a module)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "veritee" or node.module.count(".") == 1:
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            elif node.module.startswith("veritee."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("veritee.")]
    return [(line, m) for line, m in found if m.startswith("veritee.")]


def _library_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
    return [(line, m) for line, m in found if m in BACKEND_LIBRARIES]


def check(src: Path = SRC) -> list[str]:
    problems = []
    for path in sorted(src.rglob("*.py")):
        if path.relative_to(src).parts[:2] not in BACKEND_LIBRARY_USERS:
            for line, library in _library_imports(ast.parse(path.read_text(), str(path))):
                problems.append(
                    f"{path.relative_to(src.parent)}:{line}: imports {library}, which only its "
                    "backend's module (tee/backends/) and its appraisal (evidence/tpm.py) "
                    "may import"
                )
        pkg = _package(path, src)
        if pkg not in RANK:
            problems.append(f"{path.relative_to(src.parent)}: package {pkg!r} has no layer")
            continue
        for line, module in _imports(ast.parse(path.read_text(), str(path))):
            target = module.split(".")[1]
            where = f"{path.relative_to(src.parent)}:{line}"
            if target == pkg:
                pass
            elif target not in RANK:
                problems.append(f"{where}: imports {module}, whose package has no layer")
            elif RANK[target] < RANK[pkg]:
                problems.append(f"{where}: {pkg} imports {module}, a layer above it")
            elif target in FORBIDDEN.get(pkg, ()):
                problems.append(f"{where}: {pkg} must never import {target} ({module})")
            if (
                pkg == "app"
                and path.stem in AGENT_MODULES
                and target == "tee"
                and ".".join(module.split(".")[:3]) not in AGENT_MAY_IMPORT
            ):
                problems.append(
                    f"{where}: the node agent imports {module}; it reaches the secure world "
                    "only through the TEE Client API"
                )
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(f"layers: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
