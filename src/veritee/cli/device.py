"""``veritee device …`` and ``veritee tee …``: provisioning and the secure world's lifecycle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from veritee.errors import Error
from veritee.home import DEFAULT_VTEE, Home

STOP_TIMEOUT = 20.0  # seconds to wait for the secure world to shut down


def register(cli: click.Group) -> None:
    cli.add_command(device)
    cli.add_command(tee)


@click.group()
def device() -> None:
    """Provision and inspect the emulated device."""


@device.command("init")
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Use the manufacturer CA in this directory (ca.pem, ca.key).",
)
@click.option("--force", is_flag=True, help="Replace an existing device (destroys its keys).")
@click.pass_obj
def device_init(home: Home, ca_dir: Path | None, force: bool) -> None:
    """Provision a device: manufacturer CA, HUK, attestation key and certificate.

    \b
    Example:  veritee --home /tmp/dev1 device init
    """
    from veritee.tee import device as dev

    info = dev.provision(home, ca_dir=ca_dir, force=force)
    click.echo(f"provisioned device {info.ueid.hex()} in {home.root}")
    click.echo(f"  certificate: {info.certificate.subject.rfc4514_string()}")
    click.echo(f"  issued by:   {info.ca.subject.rfc4514_string()}")
    click.echo(f"  trust anchor for verifiers: {home.manufacturer / 'ca.pem'}")
    click.echo(f"  reference values:           {home.manufacturer / 'reference-values.json'}")


@device.command("sign-boot")
@click.pass_obj
def device_sign_boot(home: Home) -> None:
    """Have the vendor sign the secure world as installed now (after an upgrade)."""
    from veritee.tee import device as dev

    for stage in dev.sign_boot_image(home):
        click.echo(f"signed {stage.component:14} {stage.measurement.hex()}")


@device.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def device_show(home: Home, as_json: bool) -> None:
    """Print the device identity and its certificate chain."""
    from cryptography.hazmat.primitives import serialization

    from veritee.tee import device as dev
    from veritee.tee.keys import spki_digest

    info = dev.load_info(home)
    data: dict[str, Any] = {
        "home": str(home.root),
        "ueid": info.ueid.hex(),
        "certificate": {
            "subject": info.certificate.subject.rfc4514_string(),
            "issuer": info.certificate.issuer.rfc4514_string(),
            "serial": format(info.certificate.serial_number, "x"),
            "not_before": info.certificate.not_valid_before_utc.isoformat(),
            "not_after": info.certificate.not_valid_after_utc.isoformat(),
        },
        "ca": {
            "subject": info.ca.subject.rfc4514_string(),
            "not_after": info.ca.not_valid_after_utc.isoformat(),
        },
        "vendor_key": spki_digest(info.vendor_pub).hex(),
        "vtees": sorted(p.name for p in home.vtees.iterdir()) if home.vtees.exists() else [],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"device      {data['ueid']}")
    click.echo(f"home        {data['home']}")
    click.echo("chain")
    click.echo(f"  [0] {data['certificate']['subject']}")
    click.echo(
        f"      valid {data['certificate']['not_before']} .. {data['certificate']['not_after']}"
    )
    click.echo(f"  [1] {data['ca']['subject']} (trust anchor)")
    click.echo(f"vendor key  sha256:{data['vendor_key']}")
    click.echo(f"vTEEs       {', '.join(data['vtees']) or '-'}")
    click.echo(info.certificate.public_bytes(serialization.Encoding.PEM).decode().rstrip())


@click.group()
def tee() -> None:
    """Start, stop and inspect the secure world."""


@tee.command("start")
@click.option("--foreground", is_flag=True, help="Run in this process (logs to the terminal).")
@click.pass_obj
def tee_start(home: Home, foreground: bool) -> None:
    """Boot the secure world (measured and secure boot), then serve in the background.

    \b
    One secure world per home: a second 'tee start' (or '--foreground') beside a running
    one is refused and leaves it untouched.

    \b
    Examples:
      veritee tee start && veritee tee status
      veritee tee start --foreground      # logs to this terminal; Ctrl-C stops it
    """
    from veritee.tee import monitor

    if foreground:
        import os

        from veritee.tee import spawn

        # The monitor in this terminal, but started as every secure-world process is
        # (isolated, its own environment, in /): this CLI process is the normal world and
        # measured boot refuses to boot in it. It takes the home's lock like a daemon does.
        command = spawn.command("veritee.tee.monitor", "--home", str(home.root.resolve()))
        os.chdir(spawn.WORKING_DIRECTORY)
        os.execve(command[0], command, spawn.environment())
    started = time.monotonic()
    pid = monitor.start_daemon(home)
    click.echo(
        f"secure world booted in {time.monotonic() - started:.2f} s (monitor pid {pid}); "
        f"log: {home.log_file}"
    )


@tee.command("stop")
@click.pass_obj
def tee_stop(home: Home) -> None:
    """Stop the secure world and every vTEE it runs."""
    from veritee.tee import monitor

    monitor.control(home, {"op": "stop"})
    deadline = time.monotonic() + STOP_TIMEOUT
    while home.monitor_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if home.monitor_socket.exists():
        raise Error(f"the secure world did not stop within {STOP_TIMEOUT:g} s")
    click.echo("secure world stopped")


@tee.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True)
@click.pass_obj
def tee_status(home: Home, as_json: bool, vtee: str) -> None:
    """Show boot measurements, vTEEs and loaded modules."""
    from veritee.tee import client as teec
    from veritee.tee import monitor
    from veritee.tee.ta import status

    mon = monitor.control(home, {"op": "status"})["status"]
    with teec.Context(home=home, vtee=vtee) as ctx:
        world = status(ctx)
    if as_json:
        click.echo(json.dumps({"monitor": mon, "vtee": world}, indent=2, default=_jsonable))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]device[/] {mon['ueid'].hex()}  lifecycle [bold]{mon['lifecycle']}[/]  "
        f"secure boot [bold]{'on' if mon['secure_boot'] else 'off'}[/]  monitor pid {mon['pid']}"
    )
    boot = Table(title="measured boot", title_justify="left")
    for col in ("component", "version", "measurement", "signed"):
        boot.add_column(col)
    for e in mon["boot_log"]:
        boot.add_row(e[1], e[4], e[2].hex(), "yes" if e[3] else "no")
    console.print(boot)
    console.print(f"boot register (extended): {mon['pcr'].hex()}")
    vt = Table(title="virtual TEEs", title_justify="left")
    for col in ("name", "id", "pid", "state"):
        vt.add_column(col)
    for name, v in mon["vtees"].items():
        vt.add_row(name, v["id"].hex(), str(v["pid"]), "running" if v["running"] else "dead")
    console.print(vt)
    mods = Table(title=f"modules loaded in vTEE {vtee!r}", title_justify="left")
    for col in ("session", "name", "measurement", "state"):
        mods.add_column(col)
    for m in world["modules"]:
        mods.add_row(
            str(m["session"]),
            m["name"],
            m["measurement"].hex(),
            "running" if m["running"] else "idle",
        )
    console.print(mods)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)
