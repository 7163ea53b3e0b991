"""Appraisal policies in Rego, evaluated with regopy: compiled once, queried once per appraisal.

The contract a policy is written against (see docs/verifier.md):

* it is a Rego module in ``package veritee``;
* the verifier queries ``data.veritee`` once per appraisal, with ``input``::

      {"scheme": "veritee" | "psa" | "cca",
       "submods": {NAME: {"claims": {...as in ear.veraison.annotated-evidence...},
                          "trust_vector": {"instance_identity": 2, "hardware": 32, ...}}}}

  where NAME is ``platform`` and ``module`` (Veritee), ``psa``, or ``cca-platform`` and
  ``cca-realm``, and each trust vector holds the verifier's own codes (the facts);
* each of the eight AR4SI claims (``instance_identity``, ``configuration``, ``executables``,
  ``file_system``, ``hardware``, ``runtime_opaque``, ``storage_opaque``, ``sourced_data``)
  may be defined as an object from submodule name to code (-128..127), e.g.
  ``hardware.platform := 32 if ...`` or ``hardware[name] := 96 if { some name, _ in
  input.submods; ... }``; a code given replaces the verifier's. ``status`` likewise maps a
  submodule to a tier name, which can make its status worse than its vector, never better.
* ``require_rollback_protection`` (a knob, false if undefined): when true, every submodule of
  a platform whose rollback protection is not in hardware (``rpmb``, ``tpm-nv``: the
  emulated device's ``host-file`` counters are not, nor evidence that does not say, as
  PSA's and CCA's) gets ``storage_opaque`` 96, contraindicated, with the reason.
  Other rules are the policy's own helpers and are ignored.

Policies judge evidence whose signatures, chain and nonce already checked out: a
cryptographic failure is contraindicated whatever the policy says. One query per appraisal,
not one per submodule: building regopy's input costs more than evaluating most policies.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import types
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veritee.rego import CompiledRego, RegoCompileError, RegoQueryFailed
from veritee.verifier.ear import CLAIM_MAX, CLAIM_MIN, STATUSES
from veritee.verifier.errors import PolicyCompileError, PolicyFailed

PACKAGE = "veritee"
QUERY = f"x = data.{PACKAGE}"
CLAIMS = (
    "instance_identity",
    "configuration",
    "executables",
    "file_system",
    "hardware",
    "runtime_opaque",
    "storage_opaque",
    "sourced_data",
)
DEFAULT_NAME = "default"
STRICT_NAME = "strict"
# The policy's knob (a boolean rule) that refuses platforms without hardware rollback
# protection: a host that can roll counters back has events it accepted accepted again.
REQUIRE_ROLLBACK_PROTECTION = "require_rollback_protection"

DEFAULT_POLICY = """\
# Veritee's default appraisal policy ("default").
#
# The verifier has already computed every trustworthiness claim from its checks (see
# docs/verifier.md); this policy decides what is acceptable. A rule left undefined keeps
# the verifier's value.
package veritee

import rego.v1

# Emulated and debug devices are ACCEPTED WITH A WARNING. Their hardware claim is 32 ("genuine
# but known bugs or vulnerabilities"), never 2, for the platform and the module it runs: a
# relying party that needs real, locked-down hardware asks for "affirming", or the operator
# activates the "strict" policy.
hardware[name] := 32 if {
	input.scheme == "veritee"
	input.submods.platform.claims.lifecycle in {"emulated", "debug"}
	some name, _ in input.submods
}

# A TPM-rooted device (the TPM 2.0 backend: keys and boot measurements in a TPM, the secure
# world isolated by the operating system, not by hardware) is ACCEPTED WITH A WARNING too,
# for every submodule: it is told apart from a hardware TEE by its "tpm-platform" submodule.
hardware[name] := 32 if {
	input.submods["tpm-platform"].claims.protection == "tpm-rooted-os-isolated"
	some name, _ in input.submods
}

# A Veritee platform that booted without secure boot is NOT accepted.
configuration.platform := 96 if {
	input.scheme == "veritee"
	input.submods.platform.claims["secure-boot"] == false
}

# PSA and CCA platforms in a debug lifecycle state are accepted with a warning (the verifier
# computes 32 for them); every other non-secured state is contraindicated (the verifier
# computes 96). Nothing to change here: listed so the decision is written down.

# Rollback protection is NOT required: an emulated device keeps its counters in a file of its
# user ("host-file"), who can restore it with older sealed state. Results say so in
# ear.veritee.rollback-protection; a policy that needs counters the host cannot roll back
# sets this to true (and the verifier then contraindicates storage-opaque).
require_rollback_protection := false
"""

STRICT_POLICY = """\
# A stricter policy ("strict"): only devices in the "secured" lifecycle are accepted.
package veritee

import rego.v1

lifecycle := input.submods.platform.claims.lifecycle if input.scheme == "veritee"

lifecycle := input.submods.psa.claims.lifecycle if input.scheme == "psa"

lifecycle := input.submods["cca-platform"].claims.lifecycle if input.scheme == "cca"

# Anything but a secured device: hardware contraindicated ("genuine but contraindicated"),
# for every submodule.
hardware[name] := 96 if {
	lifecycle != "secured"
	some name, _ in input.submods
}

configuration.platform := 96 if {
	input.scheme == "veritee"
	input.submods.platform.claims["secure-boot"] == false
}

# A TPM-rooted device's secure world is isolated by the OS, not by hardware: not a secured TEE.
hardware[name] := 96 if {
	input.submods["tpm-platform"]
	some name, _ in input.submods
}
"""

BUILTIN: Mapping[str, str] = {DEFAULT_NAME: DEFAULT_POLICY, STRICT_NAME: STRICT_POLICY}


@dataclass(frozen=True)
class Judgement:
    """What a policy decided for one submodule: claim overrides and an optional status."""

    claims: Mapping[str, int] = field(default_factory=dict)
    status: str | None = None


@dataclass(frozen=True)
class Judgements:
    """What a policy decided: a :class:`Judgement` per submodule it judged, and its knobs."""

    by_submod: Mapping[str, Judgement] = field(default_factory=dict)
    require_rollback_protection: bool = False

    def get(self, submod: str) -> Judgement | None:
        return self.by_submod.get(submod)


# Builtins whose answer depends on more than the input (the clock, chance, the network, the
# runtime). A policy that calls none of them is a pure function of its input.
_IMPURE = re.compile(
    r"\b(time\.now_ns|rand\.intn|uuid\.rfc4122|http\.send|net\.lookup_ip_addr|opa\.runtime"
    r"|io\.jwt\.decode_verify|crypto\.x509\.parse_and_verify\w*)\b"
)
# Decisions remembered per policy. A device re-attesting the same module instance presents the
# same claims (only the nonce differs, and it is not in the input), so the decision repeats.
DECISIONS_REMEMBERED = 4096


class Policy:
    """A compiled Rego policy. Thread-safe: one query runs at a time per policy.

    A pure policy (one that calls no clock, random or network builtin) decides the same for
    the same input, so its decisions are remembered (keyed by the exact input, as JSON):
    the query, and building regopy's input, which costs more, run once per distinct
    input. An impure policy is queried every time.
    """

    def __init__(self, name: str, rego: str, *, remember: int = DECISIONS_REMEMBERED) -> None:
        self.name = name
        self.rego = rego
        self.digest = hashlib.sha256(rego.encode()).hexdigest()
        try:
            self._rego = CompiledRego(repr(name), rego, QUERY, filename=f"{name}.rego")
        except RegoCompileError as exc:
            raise PolicyCompileError(str(exc)) from None
        self.pure = _IMPURE.search(rego) is None
        self._remember = remember if self.pure else 0
        self._decisions: OrderedDict[str, Judgements] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        """What results carry as ``ear.appraisal-policy-id``: name and a digest of the text."""
        return f"policy:{self.name}@{self.digest[:12]}"

    def judge(self, value: Mapping[str, Any]) -> Judgements:
        """Query the policy; a judgement per submodule it judged. Raise :class:`PolicyFailed`."""
        if not self._remember:
            return self._query(value)
        try:
            # The exact input: two inputs with the same text are the same input. (Not sorted:
            # the same claims in another order only miss the memory, they never share it.)
            key = json.dumps(value, separators=(",", ":"), default=_plain)
        except (TypeError, ValueError):
            return self._query(value)  # not JSON: regopy will say what is wrong with it
        with self._lock:
            found = self._decisions.get(key)
            if found is not None:
                self._decisions.move_to_end(key)
                return found
        decided = self._query(value)
        with self._lock:
            self._decisions[key] = decided
            while len(self._decisions) > self._remember:
                self._decisions.popitem(last=False)
        return decided

    def _query(self, value: Mapping[str, Any]) -> Judgements:
        try:
            text = self._rego.query(value)
        except RegoQueryFailed as exc:
            raise PolicyFailed(str(exc)) from None
        return _judgements(self.name, text)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def compile_policy(name: str, rego: str) -> Policy:
    """Compile ``rego`` and check it answers a sample query with a well-formed judgement.

    Raises :class:`PolicyCompileError`. Run it in a child process for untrusted text (see
    :func:`veritee.verifier.service` provisioning): regopy aborts the process on some inputs.
    """
    policy = Policy(name, rego)
    sample = {
        "scheme": "veritee",
        "submods": {
            "platform": {
                "claims": {"lifecycle": "emulated", "secure-boot": True},
                "trust_vector": dict.fromkeys(CLAIMS, 0),
            },
            "module": {"claims": {}, "trust_vector": dict.fromkeys(CLAIMS, 0)},
        },
    }
    try:
        policy.judge(sample)
    except PolicyFailed as exc:
        raise PolicyCompileError(str(exc)) from None
    return policy


def _judgements(name: str, text: str) -> Judgements:
    if text.strip() == "undefined":
        return Judgements()  # no package veritee: nothing to change
    try:
        document = json.loads(text)["bindings"]["x"]
    except (ValueError, KeyError, TypeError):
        raise PolicyFailed(f"policy {name!r} returned something that is not a document") from None
    if not isinstance(document, dict):
        raise PolicyFailed(f"policy {name!r}: data.{PACKAGE} is not an object")
    require_rollback = document.get(REQUIRE_ROLLBACK_PROTECTION, False)
    if not isinstance(require_rollback, bool):
        raise PolicyFailed(f"policy {name!r} set '{REQUIRE_ROLLBACK_PROTECTION}' to a non-boolean")
    claims: dict[str, dict[str, int]] = {}
    statuses: dict[str, str] = {}
    for claim in (*CLAIMS, "status"):
        by_submod = document.get(claim, {})
        if not isinstance(by_submod, dict):
            raise PolicyFailed(
                f"policy {name!r}: '{claim}' must be an object keyed by submodule name"
            )
        for submod, value in by_submod.items():
            if claim == "status":
                if value not in STATUSES:
                    raise PolicyFailed(f"policy {name!r} set 'status' to {str(value)[:40]!r}")
                statuses[submod] = value
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise PolicyFailed(f"policy {name!r} set '{claim}' to a non-integer")
            if not CLAIM_MIN <= value <= CLAIM_MAX:
                raise PolicyFailed(f"policy {name!r} set '{claim}' to {value}, out of range")
            claims.setdefault(submod, {})[claim] = value
    by_submod = {
        submod: Judgement(claims.get(submod, {}), statuses.get(submod))
        for submod in {*claims, *statuses}
    }
    return Judgements(types.MappingProxyType(by_submod), require_rollback)


def main() -> None:
    """``python -m veritee.verifier.policy NAME < policy.rego``: compile-check in isolation.

    Exit 0 if it compiles, 1 with the diagnosis on stderr otherwise. The service runs this
    in a child process before accepting a policy, so a policy that crashes regopy crashes
    only the child.
    """
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "policy"
    try:
        compile_policy(name, sys.stdin.read())
    except PolicyCompileError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
