"""``veritee vtee …``: virtual TEEs, asked of the device monitor (the host never holds a key)."""

from __future__ import annotations

import json
from typing import Any

import click

from veritee.cli import echo_json, json_option
from veritee.home import Home


def register(cli: click.Group) -> None:
    cli.add_command(vtee)


def _ask(home: Home, request: dict[str, Any]) -> dict[str, Any]:
    from veritee.tee import monitor

    return monitor.control(home, request, timeout=120)


@click.group()
def vtee() -> None:
    """Create, start, stop and destroy virtual TEEs on this device.

    Each vTEE is its own secure-world process with its own identity (attestation key
    endorsed by the device), sealed storage, modules and TEE Client API endpoint.
    """


@vtee.command("create")
@click.argument("name")
@click.option("--memory", "memory_mb", type=int, help="Memory for all its modules, MiB [4096].")
@click.option("--max-modules", type=int, help="Modules loaded at once [64].")
@click.option("--workers", type=int, help="Warm worker processes kept ready [2].")
@click.option("--start", is_flag=True, help="Start it right away.")
@json_option('Print {"name", "id", "pid"} as JSON (pid: null unless --start).')
@click.pass_obj
def vtee_create(
    home: Home,
    name: str,
    memory_mb: int | None,
    max_modules: int | None,
    workers: int | None,
    start: bool,
    as_json: bool,
) -> None:
    """Create a vTEE: a fresh id and keys derived for it by the monitor.

    \b
    Examples:
      veritee vtee create tenant-a --memory 512 --max-modules 8 --start
      veritee vtee create tenant-b --json
    """
    config = {"memory_mb": memory_mb, "max_modules": max_modules, "workers": workers}
    reply = _ask(home, {"op": "vtee-create", "name": name, "config": config})
    vtee_id = reply["id"].hex()
    if not as_json:
        click.echo(f"created vTEE {name} (id {vtee_id})")
    pid = _ask(home, {"op": "vtee-start", "name": name})["pid"] if start else None
    if as_json:
        echo_json({"ok": True, "name": name, "id": vtee_id, "pid": pid})
    elif start:
        click.echo(f"started vTEE {name} (pid {pid}); run modules with --vtee {name}")


@vtee.command("start")
@click.argument("name")
@click.pass_obj
def vtee_start(home: Home, name: str) -> None:
    """Start a vTEE (it then comes back whenever the secure world boots).

    \b
    Example:  veritee vtee start tenant-a
    """
    reply = _ask(home, {"op": "vtee-start", "name": name})
    click.echo(f"started vTEE {name} (pid {reply['pid']})")


@vtee.command("stop")
@click.argument("name")
@click.pass_obj
def vtee_stop(home: Home, name: str) -> None:
    """Stop a vTEE; its identity, storage and keys stay.

    \b
    Example:  veritee vtee stop tenant-a
    """
    _ask(home, {"op": "vtee-stop", "name": name})
    click.echo(f"stopped vTEE {name}")


@vtee.command("destroy")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def vtee_destroy(home: Home, name: str, yes: bool) -> None:
    """Destroy a vTEE: its keys, sealed data and modules' storage are gone for good.

    \b
    Example:  veritee vtee destroy tenant-a --yes
    """
    if not yes:
        click.confirm(f"Destroy vTEE {name} and everything sealed in it?", abort=True)
    reply = _ask(home, {"op": "vtee-destroy", "name": name})
    click.echo(f"destroyed vTEE {name} (id {reply['id'].hex()})")


@vtee.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def vtee_list(home: Home, as_json: bool) -> None:
    """List the vTEEs of this device.

    \b
    Examples:
      veritee vtee list
      veritee vtee list --json
    """
    entries = _ask(home, {"op": "vtee-list"})["vtees"]
    if as_json:
        for e in entries:
            if isinstance(e.get("id"), bytes):
                e["id"] = e["id"].hex()
        click.echo(json.dumps(entries, indent=2))
        return
    click.echo(f"{'name':16} {'state':8} {'id':32} {'memory':>7} {'modules':>7}")
    for e in entries:
        if "error" in e:
            click.echo(f"{e['name']:16} {'broken':8} {e['error']}")
            continue
        state = "running" if e["running"] else "stopped"
        cfg = e["config"]
        click.echo(
            f"{e['name']:16} {state:8} {e['id'].hex():32} {cfg['memory_mb']:>5}Mi "
            f"{cfg['max_modules']:>7}"
        )
