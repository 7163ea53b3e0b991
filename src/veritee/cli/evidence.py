"""``veritee evidence …``: read and appraise evidence."""

from __future__ import annotations

import json
from pathlib import Path

import click

from veritee.errors import UsageError
from veritee.evidence.appraisal import TrustAnchors
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
@click.option(
    "--tpm-ca",
    "tpm_cas",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trusted TPM manufacturer CA (PEM) for TPM-backed devices' EK certificates.",
)
@click.option(
    "--tpm-registrations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The AKs this verifier activated ('veritee evidence tpm-register').",
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
    tpm_cas: tuple[Path, ...],
    tpm_registrations: Path | None,
    as_json: bool,
) -> None:
    """Appraise evidence locally against a trust anchor and reference values.

    Exits 0 when every check passes; otherwise prints the failed check and exits 7.

    \b
    Example:  veritee evidence appraise ev.cbor --nonce $N --module hello.wasm

    A TPM-backed device's evidence also needs --tpm-ca and --tpm-registrations.
    """
    from veritee.evidence.appraisal import ReferenceValues, appraise, local_status
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
    if tpm_cas or tpm_registrations:
        anchors = with_tpm_trust(anchors, tpm_cas, tpm_registrations)
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
        "backend": "emulated" if verified.tpm is None else "tpm",
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


def with_tpm_trust(
    anchors: TrustAnchors, tpm_cas: tuple[Path, ...], registrations: Path | None
) -> TrustAnchors:
    """``anchors`` and the TPM manufacturer CAs and registered AKs (read here, parsed by
    evidence.tpm)."""
    import dataclasses

    from cryptography import x509

    from veritee.evidence import tpm

    cas: list[x509.Certificate] = []
    for f in tpm_cas:
        try:
            cas.extend(x509.load_pem_x509_certificates(f.read_bytes()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--tpm-ca {f}: not a PEM certificate file ({exc})") from None
    regs = {}
    if registrations is not None:
        try:
            regs = tpm.registrations_from_json(json.loads(registrations.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--tpm-registrations {registrations}: {exc}") from None
    return dataclasses.replace(anchors, tpm_cas=tuple(cas), tpm_registrations=regs)


@evidence.command("tpm-register")
@click.option(
    "--tpm-ca",
    "tpm_cas",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trusted TPM manufacturer CA (PEM): the device's EK certificate must chain to it.",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The device's TPM identity. Default: HOME/manufacturer/tpm-identity.cbor.",
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The verifier's registrations file (created, or added to).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"ek-sha256", "ak"} as JSON.')
@click.pass_obj
def evidence_tpm_register(
    home: Home, tpm_cas: tuple[Path, ...], identity: Path | None, out: Path, as_json: bool
) -> None:
    """Register a TPM-backed device's AK, as a verifier's registrar does.

    Checks the EK certificate's chain to a TPM manufacturer CA, makes a credential only the
    TPM holding that EK and the AK can activate (TPM2_MakeCredential), has the device's
    running secure world activate it, and records the AK only if the secret came back.
    Register a device when it is enrolled: whoever controls the host then is believed.

    \b
    Example:  veritee evidence tpm-register --tpm-ca tpm-ca.pem -o tpm-registrations.json
    """
    import cbor2

    from veritee.evidence import tpm
    from veritee.tee import monitor

    anchors = with_tpm_trust(TrustAnchors(()), tpm_cas, None).tpm_cas
    source = identity or home.manufacturer / "tpm-identity.cbor"
    try:
        raw = cbor2.loads(source.read_bytes())
        ek, ak = bytes(raw["ek"]), bytes(raw["ak"])
    except FileNotFoundError:
        raise UsageError(f"no TPM identity at {source}: pass --identity") from None
    except (OSError, ValueError, KeyError, TypeError, cbor2.CBORDecodeError) as exc:
        raise UsageError(f"{source}: not a TPM identity ({exc})") from None
    leaf = tpm.verify_ek_certificate(ek, anchors)
    challenge = tpm.make_activation_challenge(leaf, ak)
    reply = monitor.control(
        home,
        {"op": "tpm-activate", "credential": challenge.credential_blob, "secret": challenge.secret},
    )
    answer = reply.get("answer")
    registration = tpm.register(ek, ak, challenge, answer if isinstance(answer, bytes) else b"")
    known = {}
    if out.exists():
        try:
            known = tpm.registrations_from_json(json.loads(out.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--out {out}: {exc}") from None
    known[registration.ek_fingerprint] = registration
    out.write_text(json.dumps(tpm.registrations_to_json(known.values()), indent=2) + "\n")
    entry = {"ek-sha256": registration.ek_fingerprint.hex(), "ak": registration.ak_public.hex()}
    if as_json:
        click.echo(json.dumps({"ok": True, **entry}, indent=2))
        return
    click.echo(f"registered the AK of TPM {entry['ek-sha256'][:16]}… in {out}")
