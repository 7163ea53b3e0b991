"""Descriptor text to plain values, with the line of every field; typed access naming both.

YAML and JSON alike (JSON is read as YAML too, for line numbers); duplicate keys are refused
in both, as PyYAML and the json module would otherwise keep the last silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from veritee.app.errors import DescriptorError, DescriptorProblems

# A descriptor is a few KiB; one this big is a mistake or an attack on the parser.
MAX_DESCRIPTOR_BYTES = 1024 * 1024
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def read_tree(raw: bytes | str, origin: str) -> tuple[Any, dict[str, int]]:
    """The document as plain values, and the line of each field path (``modules[1].node``)."""
    if len(raw) > MAX_DESCRIPTOR_BYTES:
        raise DescriptorError(f"over {MAX_DESCRIPTOR_BYTES} bytes", where=origin)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    as_json: Any = None
    if text.lstrip().startswith(("{", "[")):
        try:
            as_json = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise DescriptorError(
                f"not valid JSON: {exc.msg}", where=f"{origin}:{exc.lineno}"
            ) from None
        except _Duplicate as exc:
            raise DescriptorError(f"duplicate key {exc.key!r}", where=origin) from None
    try:
        # JSON is read as YAML too, for the line of each field.
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        if as_json is not None:  # valid JSON that PyYAML's YAML 1.1 reads otherwise (tabs)
            return as_json, {}
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "does not parse"
        raise DescriptorError(f"not valid YAML: {problem}", where=f"{origin}{line}") from None
    if node is None:
        raise DescriptorError("the file is empty", where=origin)
    lines: dict[str, int] = {}
    return _value(node, "", lines, origin), lines


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


def _value(node: yaml.Node, path: str, lines: dict[str, int], origin: str) -> Any:
    if path:
        lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _value(key_node, "", {}, origin)
            if not isinstance(key, str):
                raise DescriptorError(
                    f"keys must be text, not {key!r}",
                    where=f"{origin}:{key_node.start_mark.line + 1}",
                )
            if key in out:
                raise DescriptorError(
                    f"duplicate key {key!r}", where=f"{origin}:{key_node.start_mark.line + 1}"
                )
            out[key] = _value(value_node, f"{path}.{key}" if path else key, lines, origin)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_value(v, f"{path}[{i}]", lines, origin) for i, v in enumerate(node.value)]
    constructor = yaml.SafeLoader("")
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise DescriptorError(
            "a value does not parse", where=f"{origin}:{node.start_mark.line + 1}"
        ) from None
    finally:
        constructor.dispose()


class _Reader:
    """Typed access to the raw tree that names the field (and its line) in every error."""

    def __init__(self, lines: Mapping[str, int], origin: str) -> None:
        self.lines, self.origin = lines, origin

    def fail(self, path: str, message: str) -> DescriptorError:
        probe = path
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0] if "." in probe else ""
        where = f"{self.origin}:{self.lines[probe]}" if probe else self.origin
        return DescriptorError(message, where=where, field=path)

    def mapping(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a mapping")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            raise self.fail(
                f"{path}.{unknown[0]}" if path else unknown[0],
                f"unknown field (expected one of: {', '.join(allowed)})",
            )
        return value

    def items(self, value: Any, path: str, limit: int) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, "must be a list")
        if len(value) > limit:
            raise self.fail(path, f"more than {limit} entries")
        return value

    def name(self, value: Any, path: str, pattern: re.Pattern[str] = NAME) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise self.fail(
                path,
                f"{value!r} is not a name (letters, digits, '_' and '-', starting with a letter "
                "or '_', at most 64 characters)"
                if pattern is NAME
                else f"{value!r} is not a valid name",
            )
        return value

    def text(self, value: Any, path: str, limit: int = 255) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise self.fail(path, f"must be text of 1 to {limit} characters")
        return value

    def number(self, value: Any, path: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number from {low:g} to {high:g}")
        if not low <= value <= high:
            raise self.fail(path, f"must be a number from {low:g} to {high:g}")
        return float(value)

    def integer(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(path, f"must be an integer from {low} to {high}")
        return value


class _Collect:
    """Checks run independently: ``with problems:`` records a DescriptorError and goes on.

    So one reading of a descriptor reports every problem it has (``veritee deploy --check``)
    instead of the first only.
    """

    def __init__(self) -> None:
        self.problems: list[DescriptorError] = []

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, DescriptorError):
            self.problems.append(exc)
            return True
        return False

    def add(self, problem: DescriptorError) -> None:
        self.problems.append(problem)

    def raise_any(self) -> None:
        """Raise the one problem, or DescriptorProblems naming all of them."""
        if len(self.problems) == 1:
            raise self.problems[0]
        if self.problems:
            raise DescriptorProblems(tuple(self.problems))
