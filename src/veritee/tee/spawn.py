"""How the secure world starts its processes (monitor, vTEEs, module workers): isolated.

Whoever starts the secure world is the normal world, and it chooses the environment and the
working directory the process would inherit. Through them it could run its own code in the
secure world: a ``sitecustomize`` on ``PYTHONPATH``, ``PYTHONSTARTUP``/``PYTHONINSPECT``,
a ``PYTHONHOME`` of its own, a shared object in ``LD_PRELOAD``, a module in the current
directory that shadows one the secure world imports. So every secure-world process:

* runs the interpreter in isolated mode (``-I``: no ``PYTHON*`` variable is read, no user
  site-packages, and neither the current directory nor the script's is put on ``sys.path``);
* gets an environment built here, not the caller's (nothing of it is passed on);
* starts in ``/``, so no relative path resolves into the caller's directory.

What then runs is the installed interpreter and packages, and measured boot measures those
(tee/boot.py). A user who can edit the installed files can still change them: secure boot
then refuses to boot, and measured boot shows the change in the evidence.
"""

from __future__ import annotations

import os
import sys

# The interpreter's isolated mode: PYTHON* variables, user site-packages and the current
# directory on sys.path are each a way for the caller to run code in the secure world.
ISOLATED = "-I"
WORKING_DIRECTORY = "/"  # not the caller's: nothing relative resolves into its directory


def command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args`` as a secure-world process."""
    return [sys.executable, ISOLATED, "-m", module, *args]


def environment() -> dict[str, str]:
    """The whole environment of a secure-world process: a fixed search path, nothing else.

    Nothing is taken from the caller's environment (``LD_PRELOAD``, ``LD_LIBRARY_PATH``,
    ``MALLOC_*``, ``VERITEE_*``, …): what a secure-world process needs to know it is told
    on its command line or over its handoff pipe by its parent.
    """
    return {"PATH": os.defpath}


# What the interpreter itself may add to that environment (PEP 538 locale coercion).
_ADDED_BY_INTERPRETER = frozenset({"LC_CTYPE"})


def isolated() -> bool:
    """Whether this process runs as :func:`command` starts secure-world processes."""
    extra = set(os.environ) - set(environment()) - _ADDED_BY_INTERPRETER
    return bool(sys.flags.isolated) and not extra


__all__ = ["ISOLATED", "WORKING_DIRECTORY", "command", "environment", "isolated"]
