"""Every example in every command's --help works (issue 19 section 3).

Each command's help has an example; every example parses against the real command tree
(options and subcommands that exist, in an order Click takes, files named by the example
present); the examples a single device can run are run, in order, through the real CLI
against a device and secure world this test starts.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from veritee.cli import cli

from .conftest import REPO

NONCE = "5a" * 32
# Names in examples that stand for a file the reader has: made (empty) for the parse check.
FILE_ARG = re.compile(r"^[\w./-]+\.(wasm|cbor|jwt|yaml|json|pem|rego|jwk|c|rs|corim|key)$")
# Commands whose examples this test runs end to end on one device, in this order (each
# leaves what the next needs: a device, a booted world, hello.wasm, ev.cbor, a vTEE).
RUN_ORDER = [
    (),
    ("device", "init"),
    ("device", "show"),
    ("device", "sign-boot"),
    ("tee", "stop"),  # the quick start booted it
    ("tee", "start"),
    ("build",),
    ("measure",),
    ("run",),
    ("attest",),
    ("evidence", "show"),
    ("evidence", "appraise"),
    ("vtee", "create"),
    ("tee", "status"),
    ("vtee", "stop"),
    ("vtee", "start"),
    ("vtee", "list"),
    ("vtee", "destroy"),
    ("tee", "stop"),
]


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            yield from _commands(sub, (*path, name))


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        found = cmd.get_command(click.Context(cmd), name)
        assert found is not None, path
        cmd = found
    return cmd


def _examples(cmd: click.Command) -> list[str]:
    """The example lines of a command's help, continuation lines joined."""
    out: list[str] = []
    pending = ""
    for raw in (cmd.help or "").splitlines():
        line = re.sub(r"^\s*Examples?:\s*", "", raw).strip()
        if pending:
            line, pending = f"{pending} {line}", ""
        elif "veritee " not in line:
            continue
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        out.append(line)
    return out


def _invocations(example: str, subst: dict[str, str]) -> list[list[str]]:
    """The veritee commands of one example line (split at &&, |, ;, a trailing &)."""
    example = example.replace("$(openssl rand -hex 32)", NONCE).replace("$N", NONCE)
    for key, value in subst.items():
        example = example.replace(key, value)
    out = []
    for inner in re.findall(r"\$\(veritee ([^)]*)\)", example):  # a command's output as a value
        out.append(shlex.split(inner))
    example = re.sub(r"\$\(veritee [^)]*\)", "00", example)
    for part in re.split(r"&&|\||;", example.split(" #")[0]):
        words = shlex.split(part.strip().rstrip("&"))
        if words[:1] == ["veritee"]:
            out.append(words[1:])
    return out


def _parse(args: list[str]) -> None:
    """Parse ``veritee ARGS`` as Click would, down to the command, invoking nothing."""
    cmd: click.Command = cli
    ctx = cli.make_context("veritee", list(args))
    rest = [*ctx._protected_args, *ctx.args]
    while isinstance(cmd, click.Group) and rest:
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
        rest = [*ctx._protected_args, *ctx.args] if isinstance(sub, click.Group) else []


def test_every_command_has_an_example() -> None:
    leaves = [p for p in _commands(cli) if not isinstance(_command(p), click.Group)]
    missing = [" ".join(p) for p in leaves if not _examples(_command(p))]
    assert not missing, missing


def test_every_example_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(REPO / "examples")
    subst = {"HOME/": f"{tmp_path}/home/", "STATE/": f"{tmp_path}/state/", "/tmp/": f"{tmp_path}/"}
    failures = []
    for path in _commands(cli):
        for example in _examples(_command(path)):
            for args in _invocations(example, subst):
                for word in args:
                    if FILE_ARG.match(word) and not Path(word).exists():
                        Path(word).parent.mkdir(parents=True, exist_ok=True)
                        Path(word).touch()
                for flag, value in itertools.pairwise(args):
                    if flag in ("--trust-home", "--home", "--state"):
                        Path(value).mkdir(parents=True, exist_ok=True)
                if "--token-file" in args:
                    token = Path(args[args.index("--token-file") + 1])
                    token.parent.mkdir(parents=True, exist_ok=True)
                    token.touch()
                try:
                    _parse(args)
                except click.ClickException as exc:
                    failures.append(f"{example!r}: {exc.format_message()}")
    assert not failures, failures


@pytest.mark.slow  # about 90 s on a loaded 2-core machine, most of it the Rust builds
def test_the_single_device_examples_run(tmp_path: Path) -> None:
    """Every example of the commands in RUN_ORDER, run for real, in order."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    shutil.copy(REPO / "examples" / "hello" / "hello.c", work / "hello.c")
    env = {**os.environ, "VERITEE_HOME": str(tmp_path / "home")}
    subst = {"/tmp/": f"{tmp_path}/"}
    ran = 0
    try:
        for path in RUN_ORDER:
            for example in _examples(_command(path)):
                for args in _invocations(example, subst):
                    proc = subprocess.run(
                        [sys.executable, "-m", "veritee", *args],
                        cwd=work,
                        env=env,
                        capture_output=True,
                        stdin=subprocess.DEVNULL,
                        timeout=300,
                        check=False,
                    )
                    err = proc.stderr.decode()
                    assert "Traceback" not in err, (example, err)
                    assert proc.returncode == 0, (example, proc.returncode, err)
                    ran += 1
    finally:
        subprocess.run(
            [sys.executable, "-m", "veritee", "tee", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert ran >= 25
