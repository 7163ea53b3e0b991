"""``veritee evidence …``: read and appraise evidence."""

from __future__ import annotations

import json
from pathlib import Path

import click

from veritee.errors import UsageError
from veritee.evidence.certs import DEFAULT_CEILING
from veritee.evidence.claims import LIFECYCLES
from veritee.home import Home


def register(cli: click.Group) -> None:
    cli.add_command(evidence)


@click.group()
def evidence() -> None:
    """Inspect and appraise attestation evidence."""


def _note_old_format(path: Path) -> None:
    """Evidence in the format before the CMW collection is read for one more release."""
    from veritee.evidence.claims import Evidence

    if Evidence.decode(path.read_bytes()).old_format:
        click.echo(
            f"note: {path} is in the old format (before the CMW collection), read for one "
            "more release: attest again to get the current one",
            err=True,
        )


@evidence.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def evidence_show(path: Path, as_json: bool) -> None:
    """Print the claims of an evidence file (decoded, NOT verified).

    \b
    Example:  veritee evidence show ev.cbor
    """
    from veritee.evidence.readable import describe

    data = describe(path.read_bytes())
    _note_old_format(path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for token, claims in data.items():
        click.secho(f"{token} token", bold=True)
        for key, value in claims.items():
            if key == "boot_log":
                click.echo("  boot_log:")
                for e in value:
                    click.echo(f"    {e['component']:14} {e['version']:8} {e['measurement']}")
            elif key == "x5chain":
                for i, c in enumerate(value):
                    click.echo(f"  x5chain[{i}]: {c.get('subject', c.get('error'))}")
            else:
                click.echo(f"  {key}: {value}")


@evidence.command("appraise")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--nonce", required=True, help="The challenge the evidence must answer (hex).")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trusted manufacturer CA (PEM). Default: this device's manufacturer CA.",
)
@click.option(
    "--refs",
    "refs_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Reference values JSON (boot and modules). Default: the manufacturer's.",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Endorse this module's measurement (repeatable).",
)
@click.option(
    "--max-lifecycle",
    type=click.Choice(LIFECYCLES),
    default=DEFAULT_CEILING,
    show_default=True,
    help="The most the CA may endorse: its lifecycle marks are believed up to this only.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def evidence_appraise(
    home: Home,
    path: Path,
    nonce: str,
    ca: Path | None,
    max_lifecycle: str,
    refs_files: tuple[Path, ...],
    modules: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Appraise evidence locally against a trust anchor and reference values.

    Exits 0 when every check passes; otherwise prints the failed check and exits 7.

    \b
    Example:  veritee evidence appraise ev.cbor --nonce $N --module hello.wasm
    """
    from veritee.evidence.appraisal import ReferenceValues, TrustAnchors, appraise, local_status
    from veritee.wasm.runtime import measure, to_binary

    try:
        challenge = bytes.fromhex(nonce)
    except ValueError:
        raise UsageError("--nonce must be hex") from None
    default_ca = home.manufacturer / "ca.pem"
    if ca is None and not default_ca.is_file():
        # A relying party's machine has no device: its trust anchor must be named.
        raise UsageError(
            f"no device at {home.root} to take the manufacturer CA from: "
            "pass --ca CA.pem (and --refs or --module for what to endorse)"
        )
    # A CA file is capped at emulated: whoever holds its key can re-mint it with any mark.
    try:
        pem = (ca or default_ca).read_bytes()
    except OSError as exc:
        raise UsageError(f"--ca {ca or default_ca}: {exc.strerror}") from None
    anchors = TrustAnchors.from_pem(pem, max_lifecycle=max_lifecycle)
    refs = ReferenceValues()
    default_refs = home.manufacturer / "reference-values.json"
    for f in refs_files or ((default_refs,) if default_refs.is_file() else ()):
        try:
            refs = refs.merge(ReferenceValues.from_json(json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"reference values {f}: {exc}") from None
    extra = {measure(to_binary(m.read_bytes())): m.name for m in modules}
    refs = refs.merge(ReferenceValues({}, extra))
    verified = appraise(path.read_bytes(), anchors, refs, nonce=challenge)
    _note_old_format(path)
    result = {
        "status": local_status(verified),
        "device": verified.platform.ueid.hex(),
        "lifecycle": verified.lifecycle,
        "vtee": verified.platform.vtee_name,
        "module": verified.module.name,
        "measurement": verified.module.measurement.hex(),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"evidence appraised: module {result['module']} ({result['measurement'][:16]}…) "
            f"in vTEE {result['vtee']} on device {result['device'][:18]}… "
            f"[lifecycle {result['lifecycle']}, {result['status']}]: every check passed"
        )
