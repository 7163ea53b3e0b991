"""Veritee's errors: one base class, each subclass a diagnosis a person can act on.

The CLI catches :class:`Error` in one place, prints ``str(err)`` on one line and exits with
``err.exit_code``. Messages never carry secrets (keys, sealed plaintext, the HUK).
"""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Base of every error Veritee raises on purpose."""

    #: Process exit code used by the CLI for this family of errors. Every class raised has
    #: one of :data:`EXIT_CODES` (tests/test_cli_contract.py walks them); 1 is no family.
    exit_code = 1


class UsageError(Error):
    """The caller asked for something malformed (bad flag value, bad file)."""

    exit_code = 2


class DeviceError(Error):
    """The emulated device is missing, half provisioned or unreadable."""

    exit_code = 3


class SecureWorldError(Error):
    """The secure world is not running, refused a request, or failed."""

    exit_code = 4


class BootError(SecureWorldError):
    """Measured or secure boot refused to start the secure world."""


class ModuleError(Error):
    """A Wasm module is malformed, asks for what is not offered, or broke a limit."""

    exit_code = 5
    # What a run wrote before it trapped or hit a limit (a tee.ta.RunOutput), shown first.
    partial_output: Any = None


class ModuleLimitExceeded(ModuleError):
    """A module went over its memory or time budget and was stopped."""


class SealingError(Error):
    """Sealed data does not open: tampered, or sealed for another module or TEE."""

    exit_code = 6


class EvidenceError(Error):
    """Evidence is malformed or does not appraise; subclasses name the failed check."""

    exit_code = 7


class BuildError(Error):
    """Compiling a module from source failed."""

    exit_code = 8


class ToolchainMissing(BuildError):
    """No compiler for the source's language, or none with the wasm32-wasi target installed."""


#: The README's table of exit codes, which ``veritee --help`` shows. Every error class maps
#: to one of these through its ``exit_code``; a script can tell what failed by the code alone.
EXIT_CODES = {
    0: "success (run: the module's own exit code)",
    2: "usage: a bad flag, argument or input file",
    3: "device: missing, half provisioned or unreadable",
    4: "secure world: not running, refused or failed",
    5: "module: malformed, trapped, or over a limit",
    6: "sealing: sealed data does not open",
    7: "evidence: malformed or does not appraise",
    8: "build: compiling a module failed",
    9: "verifier: unreachable or refused (also the secret service)",
    10: "deployment: the app could not be deployed or changed",
    11: "node agent: down, unreachable or refused",
    12: "event dropped: the secure world refused it (replayed, altered, misrouted)",
}
