"""``veritee ratls …``: attested TLS. Serve a module over it, connect to one, read a certificate.

Exit codes: 0 attested (and answered), 1 the channel failed (unreachable, refused, not TLS
1.3), 2 usage, 4 secure world, 7 the peer's evidence did not pass (the check is named).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from veritee.errors import UsageError
from veritee.home import DEFAULT_VTEE, Home

if TYPE_CHECKING:
    from veritee.ratls import Appraiser, AttestedPeer, ConnectionResult, Mode

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def register(cli: click.Group) -> None:
    cli.add_command(ratls)


@click.group(context_settings=CONTEXT)
def ratls() -> None:
    """Attested TLS: channels whose ends prove they are attested modules.

    \b
    Quick start:
      veritee ratls serve directory.wasm --port 8443 &
      veritee ratls connect 127.0.0.1:8443 --module directory.wasm --send alice
      name=$(veritee ratls challenge)
      openssl s_client -connect 127.0.0.1:8443 -servername "$name" </dev/null \\
        | veritee ratls show - --challenge "$name" --module directory.wasm
    """


def host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair, or UsageError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:8443")
    return host.strip("[]"), int(port)


def _refs_and_anchors(
    home: Home, ca: Path | None, refs_files: tuple[Path, ...], modules: tuple[Path, ...]
) -> tuple[bytes, dict[str, Any]]:
    """Trust anchors (PEM) and reference values (JSON form) from files, this device's by default."""
    from veritee.wasm.runtime import measure, to_binary

    ca_path = ca or home.manufacturer / "ca.pem"
    try:
        anchors = ca_path.read_bytes()
    except OSError as exc:
        raise UsageError(f"trust anchor {ca_path}: {exc.strerror}") from None
    boot: list[Any] = []
    endorsed: list[Any] = []
    for f in refs_files or (home.manufacturer / "reference-values.json",):
        try:
            value = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"reference values {f}: {exc}") from None
        if not isinstance(value, dict):
            raise UsageError(f"reference values {f}: not a JSON object")
        boot += value.get("boot", [])
        endorsed += value.get("modules", [])
    for m in modules:
        endorsed.append({"name": m.name, "measurement": measure(to_binary(m.read_bytes())).hex()})
    return anchors, {"boot": boot, "modules": endorsed}


def _appraiser(
    home: Home,
    verifier: str | None,
    ca: Path | None,
    refs_files: tuple[Path, ...],
    modules: tuple[Path, ...],
    tpm_cas: tuple[Path, ...] = (),
    tpm_registrations: Path | None = None,
) -> Appraiser:
    from veritee.evidence.appraisal import ReferenceValues, TrustAnchors
    from veritee.ratls import LocalAppraiser, ServiceAppraiser

    if verifier is not None:
        if ca or refs_files or modules or tpm_cas or tpm_registrations:
            raise UsageError(
                "--verifier appraises remotely: leave out --ca, --refs, --module and --tpm-*"
            )
        return ServiceAppraiser(verifier)
    pem, refs = _refs_and_anchors(home, ca, refs_files, modules)
    anchors = TrustAnchors.from_pem(pem)
    if tpm_cas or tpm_registrations:
        from veritee.cli.evidence import with_tpm_trust

        anchors = with_tpm_trust(anchors, tpm_cas, tpm_registrations)
    return LocalAppraiser(anchors, ReferenceValues.from_json(refs))


def _describe(peer: AttestedPeer) -> list[tuple[str, str]]:
    endorsed = f" [endorsed as {peer.endorsed_as}]" if peer.endorsed_as else ""
    by = "locally" if peer.appraised_by == "local" else f"by {peer.appraised_by}"
    return [
        ("module", f"{peer.module_name} (measurement {peer.measurement.hex()}){endorsed}"),
        ("status", f"{peer.status} (appraised {by})"),
        ("freshness", f"{peer.mode}, over {peer.nonce.hex()[:32]}…"),
        ("device", f"{peer.device.hex()} ({peer.hwmodel})"),
        ("lifecycle", f"{peer.lifecycle}, secure boot {'on' if peer.secure_boot else 'off'}"),
        ("vTEE", f"{peer.vtee} (id {peer.vtee_id.hex()})"),
        ("TLS key", f"SHA-256 {peer.key_sha256.hex()}"),
    ]


@ratls.command("connect", context_settings=CONTEXT)
@click.argument("address", metavar="HOST:PORT")
@click.option(
    "--mode",
    type=click.Choice(["challenge", "exporter"]),
    default="challenge",
    show_default=True,
    help="Freshness: a challenge in the TLS server name, or evidence over the TLS exporter.",
)
@click.option(
    "--server-name",
    metavar="NAME",
    help="Host name an SNI router or proxy routes on (the challenge goes in front of it).",
)
@click.option("--ca", type=FILE, help="Trusted manufacturer CA (PEM). Default: this device's.")
@click.option(
    "--refs",
    "refs_files",
    multiple=True,
    type=FILE,
    help="Reference values JSON. Default: this device manufacturer's.",
)
@click.option(
    "--module",
    "modules",
    multiple=True,
    type=FILE,
    help="Endorse this module's measurement (repeatable).",
)
@click.option(
    "--tpm-ca",
    "tpm_cas",
    multiple=True,
    type=FILE,
    help="Trusted TPM manufacturer CA (PEM), for a server on a TPM-backed device.",
)
@click.option(
    "--tpm-registrations",
    type=FILE,
    help="The AKs a registrar activated ('veritee evidence tpm-register').",
)
@click.option("--verifier", metavar="URL", help="Appraise through this verification service.")
@click.option("--send", metavar="TEXT", help="Request to send once attested (UTF-8).")
@click.option("--stdin", "from_stdin", is_flag=True, help="Send standard input as the request.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the peer at each step.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the claims (and answer) as JSON.")
@click.pass_obj
def connect(
    home: Home,
    address: str,
    mode: str,
    server_name: str | None,
    ca: Path | None,
    refs_files: tuple[Path, ...],
    modules: tuple[Path, ...],
    tpm_cas: tuple[Path, ...],
    tpm_registrations: Path | None,
    verifier: str | None,
    send: str | None,
    from_stdin: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Connect over attested TLS; print the server's verified claims and status.

    Nothing is sent before the server's evidence passed: its certificate (challenge
    mode) or its evidence over this session's exporter (exporter mode) must come from
    an endorsed module on a trusted device, and vouch for the TLS key.

    \b
    Examples:
      veritee ratls connect 127.0.0.1:8443 --module directory.wasm --send alice
      veritee ratls connect 127.0.0.1:8443 --mode exporter --verifier http://127.0.0.1:8080
    """
    from veritee import ratls as api

    if send is not None and from_stdin:
        raise UsageError("--send and --stdin both give the request: use one")
    host, port = host_port(address)
    if server_name is not None:
        _check_server_name(server_name)
    request = send.encode() if send is not None else sys.stdin.buffer.read() if from_stdin else None
    appraiser = _appraiser(home, verifier, ca, refs_files, modules, tpm_cas, tpm_registrations)
    try:
        fresh: Mode = "exporter" if mode == "exporter" else "challenge"
        with api.connect(
            host, port, appraiser, mode=fresh, timeout=timeout, server_name=server_name
        ) as conn:
            peer = conn.peer
            assert peer is not None
            der = conn.certificate
            answer = conn.request(request) if request is not None else None
    finally:
        appraiser.close()
    from veritee.tls import certificate

    carried = certificate.read(der).format_note if der is not None else "-"
    if as_json:
        out: dict[str, Any] = {"attested": True, **peer.claims(), "certificate": carried}
        if answer is not None:
            out["response"] = answer.decode("utf-8", "replace")
        if peer.ear is not None:
            out["ear"] = peer.ear
        click.echo(json.dumps(out, indent=2))
        return
    click.secho(f"attested TLS to {host}:{port}: every check passed", bold=True, err=True)
    for key, value in [*_describe(peer), ("evidence", carried)]:
        click.echo(f"  {key:10} {value}", err=True)
    if answer is not None:
        sys.stdout.buffer.write(answer)
        sys.stdout.flush()


@ratls.command("serve", context_settings=CONTEXT)
@click.argument("module", type=FILE)
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True, help="Virtual TEE to run in.")
@click.option("--name", help="Module name (default: the file name).")
@click.option("--arg", "args", multiple=True, help="Argument for each run (repeatable).")
@click.option(
    "--instances",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Module instances sharing the connections.",
)
@click.option(
    "--max-memory",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Memory limit of each instance, MiB.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Time budget of one request's run, seconds.",
)
@click.option(
    "--client-module",
    "client_modules",
    multiple=True,
    type=FILE,
    help="Require attested clients; endorse this module (repeatable).",
)
@click.option("--client-ca", type=FILE, help="CA for attested clients (default: this device's).")
@click.option("--client-refs", multiple=True, type=FILE, help="Reference values for clients.")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write {host, port, measurement} as JSON here once listening.",
)
@click.pass_obj
def serve(
    home: Home,
    module: Path,
    port: int,
    host: str,
    vtee: str,
    name: str | None,
    args: tuple[str, ...],
    instances: int,
    max_memory: int,
    timeout: float,
    client_modules: tuple[Path, ...],
    client_ca: Path | None,
    client_refs: tuple[Path, ...],
    ready_file: Path | None,
) -> None:
    """Serve a module over attested TLS until interrupted: one run per request.

    The TLS endpoint lives in the secure world; this process only moves ciphertext.
    Each connection gets a certificate with fresh evidence (over the client's challenge,
    or over a marked nonce of the module's own for clients that send none, such as
    openssl s_client, followed by evidence over the TLS exporter). A request runs the
    module with the request on stdin; its stdout is the answer.

    \b
    Examples:
      veritee ratls serve directory.wasm --port 8443
      veritee ratls serve directory.wasm --port 8443 --client-module fetch.wasm
    """
    from veritee import ratls as api
    from veritee.tee import client as teec

    peer = None
    if client_modules or client_ca or client_refs:
        pem, refs = _refs_and_anchors(home, client_ca, client_refs, client_modules)
        peer = api.PeerPolicy(pem, refs)
    server = api.ModuleServer(
        lambda: teec.Context(home=home, vtee=vtee),
        module.read_bytes(),
        (host, port),
        name=name or module.name,
        args=args,
        memory_mb=max_memory,
        timeout=timeout,
        peer=peer,
        instances=instances,
        on_result=_report,
    )
    bound_host, bound_port = server.address
    measurement = server.measurement.hex()
    if ready_file is not None:
        ready_file.write_text(
            json.dumps({"host": bound_host, "port": bound_port, "measurement": measurement})
        )
    click.echo(
        f"serving {name or module.name} (measurement {measurement}) over attested TLS on "
        f"{bound_host}:{bound_port}{'; clients must attest' if peer else ''}",
        err=True,
    )

    def stop(_signo: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.close()
    click.echo("stopped", err=True)


def _report(result: ConnectionResult) -> None:
    who = ""
    if result.client:
        who = f" client {result.client['module']['name']}"
    if result.error is None:
        what = "served" if result.served else "closed"
        click.echo(f"{result.peer_address} {result.mode or '-'}{who}: {what}", err=True)
    else:
        check, reason = result.error
        click.echo(
            f"{result.peer_address} {result.mode or '-'}: refused: {check}: {reason}", err=True
        )


def _check_server_name(name: str) -> None:
    from veritee.tls import wire

    try:
        wire.check_routing_name(name)
    except ValueError as exc:
        raise UsageError(f"--server-name: {exc}") from None


@ratls.command("challenge", context_settings=CONTEXT)
@click.option(
    "--server-name",
    metavar="NAME",
    default="veritee",
    show_default=True,
    help="Host name an SNI router or proxy routes on.",
)
def challenge(server_name: str) -> None:
    """Print a TLS server name carrying a fresh random challenge, for plain TLS clients.

    A module server answers a ClientHello with this server name (SNI) with a certificate whose
    evidence is over the challenge; `show --challenge` then checks it.

    \b
    Example:
      name=$(veritee ratls challenge)
      openssl s_client -connect 127.0.0.1:8443 -servername "$name" </dev/null \\
        | veritee ratls show - --challenge "$name" --module directory.wasm
    """
    import os

    from veritee.tls import wire

    _check_server_name(server_name)
    click.echo(wire.challenge_name(os.urandom(wire.CHALLENGE_BYTES), server_name))


@ratls.command("show", context_settings=CONTEXT)
@click.argument("path", metavar="CERT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--challenge",
    "challenge_name",
    metavar="NAME",
    help="Appraise: the server name (or hex challenge) the certificate must answer.",
)
@click.option("--ca", type=FILE, help="With --challenge: trusted manufacturer CA (PEM).")
@click.option("--refs", "refs_files", multiple=True, type=FILE, help="With --challenge.")
@click.option(
    "--module",
    "modules",
    multiple=True,
    type=FILE,
    help="With --challenge: endorse this module's measurement (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def show(
    home: Home,
    path: str,
    challenge_name: str | None,
    ca: Path | None,
    refs_files: tuple[Path, ...],
    modules: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Print the evidence in an RA-TLS certificate (PEM or DER; '-': stdin).

    NOT verified, unless --challenge names the challenge the certificate must answer: then
    every check runs (as `connect` runs them) and a failed one exits 7.
    Reads the first certificate found, so the output of openssl s_client can be piped in.

    \b
    Examples:
      openssl s_client -connect 127.0.0.1:8443 </dev/null | veritee ratls show -
      name=$(veritee ratls challenge)
      openssl s_client -connect 127.0.0.1:8443 -servername "$name" </dev/null \\
        | veritee ratls show - --challenge "$name" --module directory.wasm
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from veritee.evidence.certs import CERT_ERRORS
    from veritee.evidence.readable import describe
    from veritee.tls import certificate, wire

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            der = x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        except CERT_ERRORS:
            raise UsageError(f"{path}: the PEM certificate does not parse") from None
    else:
        der = data
    expected = _challenge_of(challenge_name) if challenge_name is not None else None
    if expected is None and (ca or refs_files or modules):
        raise UsageError("--ca, --refs and --module appraise: give --challenge too")
    cert = certificate.read(der)
    info: dict[str, Any] = {
        "subject": cert.subject,
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "key_sha256": cert.spki_sha256.hex(),
        "evidence_in": list(cert.carriers),
        "format": cert.format_note,
    }
    if cert.evidence is not None:
        claims = describe(cert.evidence)
        module = claims.get("module", {})
        raw = bytes.fromhex(str(module.get("nonce", "")))
        info["freshness"] = (
            "no challenge: a nonce the module chose itself (proves no freshness)"
            if wire.is_no_challenge(raw)
            else f"over the challenge {raw.hex()}"
        )
        info["binds_this_key"] = module.get("user_data") == cert.spki_sha256.hex()
        info["claims"] = claims
    if expected is not None:
        from veritee.tls.verify import Freshness

        appraiser = _appraiser(home, None, ca, refs_files, modules)
        peer = appraiser.appraise(der, Freshness("challenge", expected))  # raises a failed check
        info["verified"] = peer.claims()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    title = "verified: every check passed" if expected is not None else "decoded, NOT verified"
    click.secho(f"certificate ({title})", bold=True)
    for key in ("subject", "not_before", "not_after", "key_sha256", "freshness", "binds_this_key"):
        if key in info:
            click.echo(f"  {key}: {info[key]}")
    click.echo(f"  evidence in: {', '.join(cert.carriers) or '-'}: {cert.format_note}")
    if expected is not None:
        for key, value in _describe(peer):
            click.echo(f"  {key:10} {value}")
    for token, claims in info.get("claims", {}).items():
        click.secho(f"{token} token", bold=True)
        for key, value in claims.items():
            if key == "boot_log":
                click.echo("  boot_log:")
                for e in value:
                    click.echo(f"    {e['component']:14} {e['version']:8} {e['measurement']}")
            elif key != "x5chain":
                click.echo(f"  {key}: {value}")


def _challenge_of(value: str) -> bytes:
    """The challenge in a server name from `ratls challenge`, or given as hex."""
    from veritee.tls import wire
    from veritee.tls.errors import MalformedChallenge

    try:
        found = wire.parse_server_name(value.encode())
        if found is None:
            found = bytes.fromhex(value)
            if not wire.CHALLENGE_MIN <= len(found) <= wire.CHALLENGE_MAX:
                raise ValueError
    except (MalformedChallenge, ValueError, UnicodeEncodeError):
        raise UsageError(
            f"--challenge: {value[:80]!r} is neither a challenge server name nor "
            f"{wire.CHALLENGE_MIN} to {wire.CHALLENGE_MAX} bytes of hex"
        ) from None
    return found
