"""``veritee device …`` and ``veritee tee …``: provisioning and the secure world's lifecycle."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import click

from veritee.cli import echo_json, json_option
from veritee.errors import SecureWorldError
from veritee.home import DEFAULT_VTEE, Home
from veritee.tee.backends import BACKENDS

STOP_TIMEOUT = 20.0  # seconds to wait for the secure world to shut down
BACKEND_NAMES = tuple(BACKENDS)


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
@click.option(
    "--backend",
    type=click.Choice(BACKEND_NAMES),
    default="emulated",
    show_default=True,
    help="The root of trust (docs/secure-world.md#backends).",
)
@click.option(
    "--tpm",
    "tpm",
    metavar="DEVICE_OR_TCTI",
    default=None,
    help="The TPM to use (tpm backend): /dev/tpmrm0, or a TCTI such as swtpm:port=2321.",
)
@json_option('Print {"ueid", "home", "backend", "certificate", "ca", "trust_anchor", ...} as JSON.')
@click.pass_obj
def device_init(
    home: Home, ca_dir: Path | None, force: bool, backend: str, tpm: str | None, as_json: bool
) -> None:
    """Provision a device: manufacturer CA, HUK, attestation key and certificate.

    \b
    Examples:
      veritee --home /tmp/dev1 device init
      veritee --home /tmp/dev2 device init --json
    """
    from veritee.tee import backends

    options = {} if tpm is None else {"tpm": tpm}
    info = backends.provision(home, backend=backend, options=options, ca_dir=ca_dir, force=force)
    if as_json:
        echo_json(
            {
                "ok": True,
                "ueid": info.ueid.hex(),
                "home": str(home.root),
                "backend": backend,
                "certificate": info.certificate.subject.rfc4514_string(),
                "ca": info.ca.subject.rfc4514_string(),
                "trust_anchor": str(home.manufacturer / "ca.pem"),
                "reference_values": str(home.manufacturer / "reference-values.json"),
            }
        )
        return
    click.echo(f"provisioned device {info.ueid.hex()} in {home.root} (backend {backend})")
    click.echo(f"  certificate: {info.certificate.subject.rfc4514_string()}")
    click.echo(f"  issued by:   {info.ca.subject.rfc4514_string()}")
    click.echo(f"  trust anchor for verifiers: {home.manufacturer / 'ca.pem'}")
    click.echo(f"  reference values:           {home.manufacturer / 'reference-values.json'}")


@device.command("sign-boot")
@json_option('Print {"signed": [{"component", "measurement"}]} as JSON.')
@click.pass_obj
def device_sign_boot(home: Home, as_json: bool) -> None:
    """Have the vendor sign the secure world as installed now (after an upgrade).

    \b
    Examples:
      veritee device sign-boot
      veritee device sign-boot --json
    """
    from veritee.errors import UsageError
    from veritee.tee import backends
    from veritee.tee import device as dev

    if backends.recorded(home).name == "tpm":
        # The root is sealed in the TPM for the boot it was provisioned with. Resealing it
        # for whatever the vendor key signs would hand it to any stage that key's holder (on
        # this machine, the host user) chooses: a TPM device is provisioned anew instead.
        raise UsageError(
            "a TPM device's root is sealed for the secure world it was provisioned with: "
            "after an upgrade, provision it again (device init --backend tpm --force) and "
            "register its new AK"
        )
    stages = dev.sign_boot_image(home)
    if as_json:
        signed = [{"component": s.component, "measurement": s.measurement.hex()} for s in stages]
        echo_json({"ok": True, "signed": signed})
        return
    for stage in stages:
        click.echo(f"signed {stage.component:14} {stage.measurement.hex()}")


@device.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def device_show(home: Home, as_json: bool) -> None:
    """Print the device identity and its certificate chain.

    \b
    Examples:
      veritee device show
      veritee device show --json
    """
    from cryptography.hazmat.primitives import serialization

    from veritee.tee import backends
    from veritee.tee import device as dev
    from veritee.tee.keys import spki_digest

    info = dev.load_info(home)
    choice = backends.recorded(home)
    tpm: dict[str, Any] | None = None
    if choice.name == "tpm":
        # Its identity is the TPM's: the EK certificate and the AK (what a verifier registers).
        from cryptography import x509

        from veritee.evidence.tpm import ak_name, ek_fingerprint, tpm_ueid
        from veritee.tee.backends import tpm_device

        ident = tpm_device.read_identity(home)
        ek = x509.load_der_x509_certificate(ident.ek_certificate)
        info = dataclasses.replace(info, ueid=tpm_ueid(ident.ek_certificate))
        tpm = {
            "tpm": choice.options.get("tpm", ""),
            "ek_sha256": ek_fingerprint(ident.ek_certificate).hex(),
            "ek_issuer": ek.issuer.rfc4514_string(),
            "ak_name": ak_name(ident.ak_public).hex(),
            "identity": str(home.manufacturer / tpm_device.PUBLISHED_IDENTITY),
        }
    data: dict[str, Any] = {
        "home": str(home.root),
        "backend": choice.name,
        **({} if tpm is None else {"tpm": tpm}),
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
    click.echo(f"backend     {data['backend']}")
    if tpm is not None:
        click.echo(f"TPM         {tpm['tpm']}")
        click.echo(f"  EK        sha256:{tpm['ek_sha256']} (issued by {tpm['ek_issuer']})")
        click.echo(f"  AK        name {tpm['ak_name']}")
        click.echo(f"  identity  {tpm['identity']} (for 'veritee evidence tpm-register')")
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
    """Stop the secure world and every vTEE it runs.

    \b
    Example:  veritee tee stop
    """
    from veritee.tee import monitor

    monitor.control(home, {"op": "stop"})
    deadline = time.monotonic() + STOP_TIMEOUT
    while home.monitor_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if home.monitor_socket.exists():
        raise SecureWorldError(f"the secure world did not stop within {STOP_TIMEOUT:g} s")
    click.echo("secure world stopped")


@tee.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True)
@click.pass_obj
def tee_status(home: Home, as_json: bool, vtee: str) -> None:
    """Show boot measurements, vTEEs and loaded modules.

    \b
    Examples:
      veritee tee status
      veritee tee status --vtee tenant-a --json
    """
    from veritee.evidence.claims import BootEntry
    from veritee.tee import client as teec
    from veritee.tee import monitor
    from veritee.tee.ta import status

    mon = monitor.control(home, {"op": "status"})["status"]
    # The boot log travels as the evidence's CBOR (integer keys): named here for people.
    mon["boot_log"] = [
        {
            "component": e.component,
            "version": e.version,
            "measurement": e.measurement.hex(),
            "signer": e.signer.hex(),
        }
        for e in map(BootEntry.from_cbor, mon["boot_log"])
    ]
    with teec.Context(home=home, vtee=vtee) as ctx:
        world = status(ctx)
    if as_json:
        click.echo(json.dumps({"monitor": mon, "vtee": world}, indent=2, default=_jsonable))
        return
    from rich.table import Table

    from veritee.console import console as make_console

    console = make_console()
    console.print(
        f"[bold]device[/] {mon['ueid'].hex()}  backend [bold]{mon['backend']['name']}[/]  "
        f"lifecycle [bold]{mon['lifecycle']}[/]  "
        f"secure boot [bold]{'on' if mon['secure_boot'] else 'off'}[/]  monitor pid {mon['pid']}"
    )
    boot = Table(title="measured boot", title_justify="left")
    for col in ("component", "version", "measurement", "signed"):
        boot.add_column(col)
    for e in mon["boot_log"]:
        boot.add_row(e["component"], e["version"], e["measurement"], "yes" if e["signer"] else "no")
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
