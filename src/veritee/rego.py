"""Rego policies, compiled once and queried per decision (regopy, the OPA Rego runtime).

The verifier's appraisal policies and the secret service's release policies both sit on
this: a module (and optional data) compiled into a bundle for one query, then queried with
an input. regopy's interpreter holds the input between ``set_input`` and the query, so a
compiled policy runs one query at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import regopy


class RegoCompileError(Exception):
    """The policy text does not compile; ``str()`` is a one-line diagnosis."""


class RegoQueryFailed(Exception):
    """A compiled policy failed when queried (a run-time error or conflicting values)."""


class CompiledRego:
    """One Rego module (plus data) built for one query; thread-safe."""

    def __init__(
        self,
        label: str,
        rego: str,
        query: str,
        data: Mapping[str, Any] | None = None,
        *,
        filename: str | None = None,
    ) -> None:
        self.label = label  # how messages name the policy
        self._interpreter = regopy.Interpreter()
        try:
            self._interpreter.add_module(filename or label, rego)
            if data is not None:
                self._interpreter.add_data(dict(data))
            self._bundle = self._interpreter.build(query)
        except regopy.RegoError as exc:
            raise RegoCompileError(f"policy {label} does not compile: {first_line(exc)}") from None
        if not self._bundle.ok():
            raise RegoCompileError(f"policy {label} does not compile")
        self._lock = threading.Lock()

    def query(self, value: Mapping[str, Any]) -> str:
        """The query's output (regopy's JSON text) for ``value`` as input."""
        with self._lock:
            try:
                self._interpreter.set_input(value if isinstance(value, dict) else dict(value))
                output = self._interpreter.query_bundle(self._bundle)
            except regopy.RegoError as exc:
                raise RegoQueryFailed(f"policy {self.label} failed: {first_line(exc)}") from None
            ok, text = output.ok(), str(output)
        if not ok:
            raise RegoQueryFailed(
                f"policy {self.label} could not be evaluated (conflicting rule values?)"
            )
        return text


def first_line(exc: Exception) -> str:
    """regopy's error text, reduced to the line that says what is wrong."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "errormsg" in line:
            return line.strip().strip("()").replace("errormsg ", "")[:200]
    return text.splitlines()[0][:200] if text else type(exc).__name__
