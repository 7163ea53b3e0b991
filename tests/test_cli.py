"""The command's shape: every command is reachable, and `veritee run` starts light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from veritee.cli import LAZY_COMMANDS, cli

HEAVY = (
    "veritee.cli.app",
    "veritee.cli.verifier",
    "veritee.cli.secrets",
    "veritee.cli.ratls",
    "veritee.tee.supplicant",
    "fastapi",
    "cryptography",
    "wasmtime",
)


def test_the_lazy_table_names_exactly_the_commands_each_module_registers() -> None:
    for module_name in set(LAZY_COMMANDS.values()):
        group = click.Group()
        importlib.import_module(f"veritee.cli.{module_name}").register(group)
        expected = {name for name, where in LAZY_COMMANDS.items() if where == module_name}
        assert set(group.commands) == expected, module_name


def test_every_listed_command_resolves() -> None:
    with click.Context(cli) as ctx:
        for name in cli.list_commands(ctx):
            assert cli.get_command(ctx, name) is not None, name


def test_run_imports_nothing_heavy_before_it_talks_to_the_secure_world() -> None:
    # `veritee run --help` parses the command line as a run does, then stops.
    probe = (
        "import sys\n"
        "from veritee.cli import cli\n"
        "try:\n"
        "    cli.main(['run', '--help'], prog_name='veritee')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('loaded:', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.splitlines()[-1] == "loaded: []", out.stdout
