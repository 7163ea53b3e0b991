#!/usr/bin/env python3
"""Run WASI test programs under ``veritee run``: an adapter for wasi-testsuite's test runner.

The runner (WebAssembly/wasi-testsuite, ``test-runner/``) calls an adapter once per test
program, from the program's directory::

    adapter --test-file PROG.wasm [--arg A]... [--dir DIR]... [--env NAME=VALUE]...
    adapter --version                      # prints "NAME VERSION"

and compares the exit code and standard output with the program's JSON. This adapter runs the
program inside the secure world of ``$VERITEE_HOME`` (its secure world must be running: ``veritee
tee start``) with the command in ``$VERITEE`` (default: ``veritee``). A ``--dir DIR`` is granted
at ``/DIR``, where the program's relative paths resolve (wasi-libc's working directory is
``/``); ``--dir HOST::GUEST`` is taken as ``veritee run`` takes it.

    python test-runner/wasi_test_runner.py -t tests/c/testsuite/wasm32-wasip1 \\
        -r /path/to/veritee/scripts/wasi_testsuite_adapter.py
"""

from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
import sys


def _grant(spec: str) -> str:
    host, sep, guest = spec.partition("::")
    if not sep:
        guest = "/" + posixpath.normpath(host).lstrip("/")
        guest = "/" if guest == "/." else guest
    return f"{os.path.abspath(host)}::{guest}"


def _parse(argv: list[str]) -> dict[str, list[str]]:
    """The runner's flags, each value taken as it is (a program argument may start with '-')."""
    opts: dict[str, list[str]] = {"--test-file": [], "--arg": [], "--env": [], "--dir": []}
    it = iter(argv)
    for flag in it:
        if flag == "--version":
            opts.setdefault(flag, [])
            continue
        name, eq, value = flag.partition("=")
        if name not in opts:
            raise SystemExit(f"adapter: unknown option {flag!r}")
        if not eq:
            try:
                value = next(it)
            except StopIteration:
                raise SystemExit(f"adapter: {flag} needs a value") from None
        opts[name].append(value)
    return opts


def main(argv: list[str]) -> int:
    opts = _parse(argv)
    veritee = shlex.split(os.environ.get("VERITEE", "veritee"))
    try:
        if "--version" in opts:
            out = subprocess.run([*veritee, "--version"], capture_output=True, text=True)
            # "veritee, version 0.1.0" -> "veritee 0.1.0"
            print("veritee", out.stdout.strip().rsplit(" ", 1)[-1])
            return out.returncode
        if len(opts["--test-file"]) != 1:
            raise SystemExit("adapter: give one --test-file (or --version)")
        cmd = [*veritee, "run"]
        for env in opts["--env"]:
            cmd += ["--env", env]
        for grant in opts["--dir"]:
            cmd += ["--dir", _grant(grant)]
        return subprocess.run([*cmd, opts["--test-file"][0], "--", *opts["--arg"]]).returncode
    except FileNotFoundError:
        print(f"adapter: {veritee[0]!r} not found (set $VERITEE)", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
