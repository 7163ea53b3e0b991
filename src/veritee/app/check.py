"""``veritee deploy --check``: every problem of a descriptor at once, before anything is loaded.

In order, each stage on what the one before could read: every field of the descriptor
(both formats); each module's source found (by name beside the descriptor, as Authentic
Execution does) or binary read; each source built in a temporary directory and every
endpoint named (in connections, periodic events, index maps) looked up in the binaries'
endpoint tables; each node agent asked for ``/v1/info``, a few at a time, with a short
timeout. Nothing is shipped, loaded or attested, and no state file is written.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veritee.app import descriptor as desc_mod
from veritee.app import sources
from veritee.app.errors import DescriptorError
from veritee.errors import Error
from veritee.servicetls import client_verify
from veritee.wasm.endpoints import Endpoint

# A node agent answers /v1/info at once; an address that drops packets must not hold the check.
REACH_TIMEOUT_S = 3.0
# Nodes are asked in parallel (a check of 64 dead nodes takes one timeout, not 64), this many
# at a time, so a descriptor cannot make the check open an unbounded number of connections.
MAX_REACH_WORKERS = 16

STAGES = ("descriptor", "source", "build", "endpoint", "node")


@dataclass(frozen=True)
class Problem:
    """One problem, one line: ``file:line: field: what``; ``stage`` says which check found it."""

    stage: str
    message: str
    where: str = ""
    field: str = ""

    @classmethod
    def of(cls, stage: str, err: DescriptorError) -> Problem:
        return cls(stage, str(err), err.where, err.field)

    def to_json(self) -> dict[str, str]:
        return {
            "stage": self.stage,
            "where": self.where,
            "field": self.field,
            "message": self.message,
        }


@dataclass(frozen=True)
class Report:
    descriptor: str
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...]
    built: int = 0  # modules whose binary was built or read, with an endpoint table
    answered: int = 0  # node agents that answered

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        """0 clean; 2 when every problem is in the descriptor's own text; 10 otherwise."""
        if not self.problems:
            return 0
        return 2 if all(p.stage == "descriptor" for p in self.problems) else 10

    def to_json(self) -> dict[str, Any]:
        return {
            "descriptor": self.descriptor,
            "ok": self.ok,
            "problems": [p.to_json() for p in self.problems],
            "warnings": list(self.warnings),
            "built": self.built,
            "answered": self.answered,
        }


def check(path: Path, *, reach: bool = True) -> Report:
    """Every problem of the descriptor at ``path``; never raises for a problem it finds."""
    desc, found = desc_mod.load_all(path)
    problems = [Problem.of("descriptor", e) for e in found]
    if desc is None:
        return Report(str(path), tuple(problems), ())
    tables: dict[str, list[Endpoint]] = {}
    with tempfile.TemporaryDirectory(prefix="veritee-check-") as tmp:
        for i, m in enumerate(desc.modules):
            p = m.path or f"modules[{i}]"
            table = _table(desc, m, p, Path(tmp), problems)
            if table is not None:
                tables[m.name] = table
    problems += [
        Problem.of("endpoint", e) for e in desc_mod.endpoint_problems(desc, tables, partial=True)
    ]
    answered = 0
    if reach and desc.nodes:
        with ThreadPoolExecutor(min(MAX_REACH_WORKERS, len(desc.nodes))) as pool:
            for problem in pool.map(lambda n: _reach(desc, n), desc.nodes):
                if problem is None:
                    answered += 1
                else:
                    problems.append(problem)
    return Report(str(path), tuple(problems), desc.warnings, len(tables), answered)


def _table(
    desc: desc_mod.Descriptor, m: desc_mod.Module, p: str, tmp: Path, problems: list[Problem]
) -> list[Endpoint] | None:
    from veritee.wasm.endpoints import recorded

    where = desc.where(p)
    if m.binary is not None:
        try:
            binary = m.binary.read_bytes()
        except OSError as exc:
            message = f"{where}: {p}.binary: cannot read {m.binary}: {exc.strerror}"
            problems.append(Problem("source", message, where, f"{p}.binary"))
            return None
    else:
        assert m.source is not None
        try:
            source = sources.find(m.source, m.name, where=where, field=f"{p}.source")
        except DescriptorError as exc:
            problems.append(Problem.of("source", exc))
            return None
        from veritee.wasm.build import build

        out = tmp / f"{m.name}.wasm"
        try:
            build(source, out)
            binary = out.read_bytes()
        except (Error, OSError) as exc:
            message = f"{where}: {p}: {m.name} does not build: {_one_line(exc)}"
            problems.append(Problem("build", message, where, p))
            return None
    try:
        table = recorded(binary)
    except Error as exc:
        problems.append(Problem("build", f"{where}: {p}: {exc}", where, p))
        return None
    if table is None:
        problems.append(
            Problem(
                "build",
                f"{where}: {p}: {m.name} is not an app module (no endpoint table): its source "
                "must include veritee_app.h",
                where,
                p,
            )
        )
        return None
    return table


def _reach(desc: desc_mod.Descriptor, node: desc_mod.Node) -> Problem | None:
    import cbor2
    import httpx

    p = node.path or "nodes"
    where = desc.where(p)
    try:
        response = httpx.get(f"{node.url}/v1/info", timeout=REACH_TIMEOUT_S, verify=client_verify())
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        return Problem(
            "node",
            f"{where}: {p}: node {node.name} ({node.url}) did not answer: {reason}",
            where,
            p,
        )
    try:
        info = cbor2.loads(response.content) if response.status_code == 200 else None
    except (cbor2.CBORDecodeError, ValueError):
        info = None
    if not isinstance(info, dict):
        return Problem(
            "node",
            f"{where}: {p}: {node.url} answered HTTP {response.status_code}, "
            "but not as a Veritee node agent",
            where,
            p,
        )
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
