"""Release policies in Rego, evaluated with regopy: compiled once per secret, queried per request.

The contract a policy is written against (the default is ``default.rego`` beside this file;
see docs/secrets.md):

* a Rego module in ``package veritee.secrets``;
* ``input`` is built by :func:`veritee.secrets.release.policy_input` from verified evidence:
  the secret's name, the module's measurement and the names the service's reference values
  endorse it under, and the platform's claims (never the module's self-asserted name);
* ``data.allow`` is the secret's ``allow`` block from the configuration;
* it defines ``allow`` (a boolean; the secret is released only if it is ``true``) and may
  define ``reasons`` (strings) to explain a refusal to the client.

Compiling runs no network or file access; the data is folded into the compiled bundle, so a
query only sets the input. About half a millisecond per query here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from veritee.rego import CompiledRego, RegoCompileError, RegoQueryFailed
from veritee.secrets.errors import PolicyCompileError, PolicyFailed

PACKAGE = "veritee.secrets"
QUERY = f"x = data.{PACKAGE}"
DEFAULT_POLICY_FILE = "default.rego"
# A refusal's reasons go back to the client on one line: bound what a policy can make us send.
MAX_REASONS = 8
MAX_REASON_CHARS = 300

# What a policy is compiled against before it is accepted: it must answer ``allow``.
_SAMPLE_INPUT: Mapping[str, Any] = {
    "secret": "sample",
    "module": {"measurement": "00" * 32, "endorsed_names": []},
    "platform": {
        "lifecycle": "secured",
        "vtee_id": "00" * 16,
        "vtee_name": "default",
        "ueid": "01" + "00" * 32,
        "secure_boot": True,
        "rollback_protection": "rpmb",
    },
}


def default_policy() -> str:
    """The text of the shipped default policy."""
    return resources.files(__package__).joinpath(DEFAULT_POLICY_FILE).read_text()


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...] = ()


class ReleasePolicy:
    """One secret's compiled policy (its Rego text plus its ``allow`` block as data).

    Thread-safe: regopy's interpreter holds the input between ``set_input`` and the query,
    so one query runs at a time per policy.
    """

    def __init__(self, source: str, rego: str, allow: Mapping[str, Any]) -> None:
        self.source = source  # where the text came from, for messages ("default.rego", a path)
        try:
            self._rego = CompiledRego(source, rego, QUERY, {"allow": dict(allow)})
        except RegoCompileError as exc:
            raise PolicyCompileError(str(exc)) from None
        try:
            self.evaluate(_SAMPLE_INPUT)
        except PolicyFailed as exc:
            raise PolicyCompileError(str(exc)) from None

    def evaluate(self, value: Mapping[str, Any]) -> Decision:
        """Query the policy with ``value`` as input; raise :class:`PolicyFailed` if it cannot."""
        try:
            return self._decision(self._rego.query(value))
        except RegoQueryFailed as exc:
            raise PolicyFailed(str(exc)) from None

    def _decision(self, text: str) -> Decision:
        if text.strip() == "undefined":
            raise PolicyFailed(f"policy {self.source} defines nothing in package {PACKAGE}")
        try:
            document = json.loads(text)["bindings"]["x"]
        except (ValueError, KeyError, TypeError):
            raise PolicyFailed(f"policy {self.source} returned something not a document") from None
        if not isinstance(document, dict) or not isinstance(document.get("allow"), bool):
            raise PolicyFailed(f"policy {self.source} must define 'allow' as a boolean")
        reasons = document.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise PolicyFailed(f"policy {self.source}: 'reasons' must be a set of strings")
        return Decision(
            document["allow"], tuple(r[:MAX_REASON_CHARS] for r in sorted(reasons)[:MAX_REASONS])
        )
