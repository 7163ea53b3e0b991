"""``veritee verifier …`` (serve, provision, attest) and ``veritee ear show``.

Exit codes beyond the common ones: 7 a result does not verify (bad signature, expired);
9 the verifier did not answer or refused the request.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import click

from veritee.cli import JSON_META
from veritee.cli._config import config_option
from veritee.cli._tls import server_options as tls_options
from veritee.cli._tls import server_tls
from veritee.errors import Error, UsageError
from veritee.home import DEFAULT_VTEE, Home

# What trusting "a HOME's device" records as its CA's ceiling: its owner holds the CA's key, so
# its CA file can carry any lifecycle mark (a re-minted "secured" twin) and must not be believed.
EMULATED = "emulated"

DEFAULT_URL = "http://127.0.0.1:8443"
URL_ENV = "VERITEE_VERIFIER"
TOKEN_ENV = "VERITEE_VERIFIER_TOKEN"


def register(cli: click.Group) -> None:
    cli.add_command(verifier)
    cli.add_command(ear_group)


@click.group()
def verifier() -> None:
    """Run and provision the verification service, and attest against it.

    \b
    Example:
      veritee verifier serve --port 8443 &
      veritee verifier provision --token-file HOME/verifier/admin-token trust-device
      veritee verifier attest hello.wasm -o result.jwt
    """


# -- serve -------------------------------------------------------------------------------------


@verifier.command("serve")
@config_option("verifier")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="0: any free."
)
@click.option(
    "--state",
    "state_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (key, token, SQLite database). Default: HOME/verifier.",
)
@click.option(
    "--database",
    help="SQLAlchemy URL, e.g. postgresql+psycopg://user@/veritee?host=/run/postgresql. "
    "Default: SQLite in the state directory.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes on the one port (they share the database and the signing key).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Provisioning bearer token (default: generated into STATE/admin-token).",
)
@click.option(
    "--session-ttl",
    type=click.FloatRange(0.1, 86400),
    default=150.0,
    show_default=True,
    help="Seconds a session's nonce stays valid.",
)
@click.option("--server-nonces-only", is_flag=True, help="Refuse client-chosen nonces (nonce=...).")
@click.option(
    "--corim-signer",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM public key (EC P-256/P-384) that CoRIMs must be signed by (COSE_Sign1); with "
    "it, unsigned CoRIMs are refused; without it, signed ones are.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write {url, pid} as JSON here once listening (for scripts that use --port 0).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option("--access-log", is_flag=True, help="Also log every HTTP request.")
@tls_options
@click.pass_obj
def serve(
    home: Home,
    host: str,
    port: int,
    state_dir: Path | None,
    database: str | None,
    workers: int,
    token_file: Path | None,
    session_ttl: float,
    server_nonces_only: bool,
    corim_signer: Path | None,
    ready_file: Path | None,
    log_level: str,
    access_log: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool,
    tls_client_ca: Path | None,
) -> None:
    """Run the verification service (Veraison challenge-response API v1).

    Logs are JSON lines on stderr. The provisioning token is printed where it was
    written on first start; the verifier's public key is at
    /.well-known/veraison/verification.

    \b
    Examples:
      veritee verifier serve --port 8443
      veritee verifier serve --workers 2 \\
          --database postgresql+psycopg://veritee@/veritee?host=/run/postgresql
      veritee verifier serve --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem

    Off loopback, serve TLS: the provisioning token is refused when it comes over plain
    HTTP from another host.
    """
    state = (state_dir or home.root / "verifier").resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = database or f"sqlite:///{state / 'verifier.db'}"
    tls = server_tls(tls_cert, tls_key, tls_self_signed, tls_client_ca, state=state, host=host)
    new_token = token_file is None and not (state / "admin-token").exists()

    # Metrics from every worker meet in one directory, cleared at each start.
    metrics_dir = state / "metrics" / str(os.getpid())
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

    import uvicorn

    from veritee.logs import log_config
    from veritee.verifier import credentials
    from veritee.verifier.service import CONFIG_ENV, Config
    from veritee.verifier.store import Store

    store = Store(url)
    store.create()
    store.engine.dispose()
    credentials.signing_key(state)
    credentials.session_key(state)
    credentials.admin_token(state, token_file)
    config = Config(
        state_dir=str(state),
        database_url=url,
        token_file=None if token_file is None else str(token_file.resolve()),
        session_ttl=session_ttl,
        allow_client_nonce=not server_nonces_only,
        corim_signer=None if corim_signer is None else str(corim_signer.resolve()),
    )
    if corim_signer is not None:
        from veritee.verifier.endorsements import ec_public_key_pem

        ec_public_key_pem(corim_signer.read_text())  # a bad key stops the start, not a submit
    os.environ[CONFIG_ENV] = config.to_env()

    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it every response waits out the client's delayed ACK (40 ms).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    bound = sock.getsockname()[1]
    # Listening on every address: the URL this machine reaches it at (its certificate's too).
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"{'https' if tls else 'http'}://{shown if ':' not in shown else f'[{shown}]'}:{bound}"
    # JSON lines on stderr from here on, the schema of every Veritee service (veritee.logs).
    import logging
    import logging.config

    logging.config.dictConfig(log_config(log_level, access_log=access_log))
    log = logging.getLogger("veritee.verifier")
    if new_token:
        log.warning(
            "provisioning token written to %s",
            state / "admin-token",
            extra={"path": str(state / "admin-token")},
        )
    log.info(
        "verifier listening on %s (%d worker(s), state %s)",
        base,
        workers,
        state,
        extra={"url": base, "workers": workers},
    )
    if ready_file is not None:
        ready: dict[str, Any] = {"url": base, "pid": os.getpid()}
        if tls is not None:
            ready["cert"] = str(tls.cert)
        ready_file.write_text(json.dumps(ready))
    from veritee import notify

    # The socket listens: connections wait in its backlog until the workers take them.
    notify.ready()  # Type=notify (packaging/systemd/veritee-verifier.service)
    # uvicorn.run(fd=...) would wrap the socket as AF_UNIX: hand uvicorn the socket itself.
    from uvicorn.supervisors import Multiprocess

    uv_config = uvicorn.Config(
        "veritee.verifier.service:app_from_environment",
        factory=True,
        workers=workers,
        log_config=log_config(log_level, access_log=access_log),
        access_log=access_log,
        server_header=False,
        proxy_headers=False,  # served directly: no proxy's X-Forwarded-* is to be believed
        timeout_graceful_shutdown=5,
        ssl_context_factory=tls,  # each worker builds its own TLS 1.3 context from the files
    )
    if workers > 1:
        Multiprocess(uv_config, sockets=[sock]).run()
    else:
        uvicorn.Server(uv_config).run(sockets=[sock])


# -- provisioning ------------------------------------------------------------------------------


def _client(ctx: click.Context) -> Any:
    from veritee.verifier.client import VerifierClient

    opts = ctx.find_root().meta.get("verifier", {})
    return VerifierClient(opts["url"], token=opts.get("token"))


@verifier.group("provision", invoke_without_command=True)
@click.option("--verifier", "url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True)
@click.option("--token", envvar=TOKEN_ENV, help="Provisioning token (or $VERITEE_VERIFIER_TOKEN).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read the provisioning token from this file (e.g. STATE/admin-token).",
)
@click.option(
    "--file",
    "deployment",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Apply a whole deployment (YAML or JSON) in one transaction.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_context
def provision(
    ctx: click.Context,
    url: str,
    token: str | None,
    token_file: Path | None,
    deployment: Path | None,
    as_json: bool,
) -> None:
    """Provision trust anchors, revocations, reference values and policies.

    \b
    Examples:
      veritee verifier provision --token-file STATE/admin-token --file deploy.yaml
      veritee verifier provision trust-device          # this HOME's emulated device
      veritee verifier provision module hello.wasm --version 1.0
      veritee verifier provision corim psa-endorsements.cbor   # a CoRIM, as Veraison takes
      veritee verifier provision revoke --device 01be7d…
      veritee verifier provision show --json
    """
    if token is None and token_file is not None:
        token = token_file.read_text().strip()
    ctx.find_root().meta["verifier"] = {"url": url, "token": token, "json": as_json}
    if deployment is not None:
        from veritee.verifier.deployfile import load

        with _client(ctx) as client:
            answer = client.deploy(load(deployment))
        _print(ctx, answer, f"applied {deployment}: {answer['applied']}")
    elif ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _print(ctx: click.Context, data: Any, text: str) -> None:
    if ctx.find_root().meta.get("verifier", {}).get("json"):
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(text)


@verifier.command("check")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The verifier's configuration file (as 'verifier serve --config').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check(home: Home, config: Path | None, as_json: bool) -> None:
    """Check the verifier's configuration without serving: every problem at once.

    Reads the file and $VERITEE_VERIFIER_* as 'verifier serve' would and shows each setting
    with where it came from; checks the values, the TLS files, the CoRIM signer key, that the
    port is free, the state directory and the database (it connects). Exit 0 when it would
    start, 2 otherwise.

    \b
    Example:  veritee verifier check --config /etc/veritee/verifier.yaml
    """
    from veritee.cli import _config

    settings = _config.read(serve, "verifier", config)
    values, sources = _config.effective(serve, settings)
    problems: list[str] = []
    notes: list[str] = []
    _config.check_listen(str(values["host"]), int(values["port"]), problems, notes)
    _config.check_tls(values, problems, notes)
    state = Path(values["state"] or home.root / "verifier")
    probe = state if state.exists() else next(p for p in state.parents if p.exists())
    if not os.access(probe, os.W_OK | os.X_OK):
        problems.append(f"state directory {state}: not writable by this user")
    if values.get("corim-signer"):
        from veritee.verifier.endorsements import ec_public_key_pem

        try:
            ec_public_key_pem(Path(values["corim-signer"]).read_text())
        except Error as exc:
            problems.append(f"corim-signer {values['corim-signer']}: {exc}")
    if values.get("database"):
        problems.extend(_database_problems(str(values["database"])))
    _config.report("verifier", settings, values, sources, problems, notes, as_json=as_json)


def _database_problems(url: str) -> list[str]:
    """Whether the database answers (the password never shown)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return ["database: not an SQLAlchemy URL (e.g. postgresql+psycopg://user@/veritee)"]
    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except (SQLAlchemyError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return [f"database {shown}: {reason}"]
    return []


@provision.command("trust-ca")
@click.argument(
    "pems", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--max-lifecycle",
    type=click.Choice(["emulated", "debug", "secured"]),
    default="emulated",
    show_default=True,
    help="The most these CAs may endorse, your word: their own lifecycle marks count up to "
    "it only (whoever holds a CA's key can re-mint it with any mark). Say 'secured' only for "
    "a hardware manufacturer's CA you obtained from the manufacturer.",
)
@click.pass_context
def provision_ca(ctx: click.Context, pems: tuple[Path, ...], max_lifecycle: str) -> None:
    """Trust manufacturer CA certificates (PEM) for Veritee evidence.

    \b
    Example:  veritee verifier provision trust-ca HOME/manufacturer/ca.pem
              veritee verifier provision trust-ca --max-lifecycle secured vendor-ca.pem
    """
    entries = [{"ca": p.read_text(), "max-lifecycle": max_lifecycle} for p in pems]
    with _client(ctx) as client:
        ids = client.add_trust_anchors(entries)
    _print(
        ctx,
        {"ids": ids, "max-lifecycle": max_lifecycle},
        "\n".join(f"trusted CA {i} (endorses at most {max_lifecycle})" for i in ids),
    )


@provision.command("trust-tpm")
@click.option(
    "--tpm-ca",
    "tpm_cas",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A TPM manufacturer CA (PEM) that issues EK certificates.",
)
@click.option(
    "--registrations",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="AKs a registrar activated ('veritee evidence tpm-register' writes the file).",
)
@click.pass_context
def provision_tpm(
    ctx: click.Context, tpm_cas: tuple[Path, ...], registrations: Path | None
) -> None:
    """Trust TPM-backed devices: their TPM manufacturer's CA and their registered AKs.

    \b
    Example:  veritee verifier provision trust-tpm --tpm-ca tpm-maker-ca.pem \\
                  --registrations tpm-registrations.json
    """

    entries: list[dict[str, Any]] = [{"tpm-ca": p.read_text()} for p in tpm_cas]
    if registrations is not None:
        listed = _read_json(registrations)
        items = listed.get("tpm-registrations") if isinstance(listed, dict) else None
        if not isinstance(items, list):
            raise UsageError(f"{registrations}: not a TPM registrations file")
        entries += [{"tpm-registration": item} for item in items]
    if not entries:
        raise UsageError("give --tpm-ca and/or --registrations")
    with _client(ctx) as client:
        ids = client.add_trust_anchors(entries)
    _print(ctx, {"ids": ids}, "\n".join(f"trusted TPM anchor {i}" for i in ids))


@provision.command("trust-key")
@click.argument("key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scheme", type=click.Choice(["psa", "cca"]), required=True)
@click.option("--instance-id", help="Device instance id (hex); PSA: derived from the key.")
@click.pass_context
def provision_key(ctx: click.Context, key: Path, scheme: str, instance_id: str | None) -> None:
    """Trust a PSA/CCA device's attestation public key (PEM or JWK).

    \b
    Example:  veritee verifier provision trust-key --scheme psa iak-pub.pem
    """
    entry: dict[str, Any] = {"scheme": scheme, "key": key.read_text()}
    if instance_id is not None:
        entry["instance-id"] = instance_id
    with _client(ctx) as client:
        ids = client.add_trust_anchors([entry])
    _print(ctx, {"ids": ids}, f"trusted {scheme} key {ids[0]}")


@provision.command("trust-device")
@click.pass_context
def provision_device(ctx: click.Context) -> None:
    """Trust this HOME's emulated device: its manufacturer CA and boot reference values.

    The CA endorses at most 'emulated', whatever its file says: the device's owner holds its
    key. A hardware manufacturer's CA is provisioned with 'trust-ca --max-lifecycle'.

    \b
    Example:  veritee --home /tmp/dev1 verifier provision trust-device
    """
    home: Home = ctx.find_root().obj
    ca = home.manufacturer / "ca.pem"
    refs = home.manufacturer / "reference-values.json"
    if not ca.exists() or not refs.exists():
        raise UsageError(f"{home.root} holds no provisioned device (run 'veritee device init')")
    with _client(ctx) as client:
        anchors = client.add_trust_anchors([{"ca": ca.read_text(), "max-lifecycle": EMULATED}])
        ids = client.add_reference_values(_read_json(refs))
    _print(
        ctx,
        {"trust-anchors": anchors, "reference-values": ids, "max-lifecycle": EMULATED},
        f"trusted CA {anchors[0][:16]}… (endorses at most {EMULATED}) and {len(ids)} boot "
        f"reference value(s) from {home.root}",
    )


@provision.command("refs")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--scheme", type=click.Choice(["veritee", "psa", "cca"]), default=None)
@click.pass_context
def provision_refs(ctx: click.Context, path: Path, scheme: str | None) -> None:
    """Add reference values from a JSON/YAML file (an entry, a list, or a manufacturer file).

    \b
    Example:  veritee verifier provision refs HOME/manufacturer/reference-values.json
    """
    from veritee.verifier.deployfile import read_data

    value = read_data(path)
    if scheme is not None:
        value = _with_scheme(value, scheme)
    with _client(ctx) as client:
        ids = client.add_reference_values(value)
    _print(ctx, {"ids": ids}, f"added {len(ids)} reference value(s)")


@provision.command("corim")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--media-type",
    help="Content-Type to send (default: by the file: signed or unsigned CoRIM), e.g. "
    "'application/corim-unsigned+cbor; profile=\"http://arm.com/psa/iot/1\"'.",
)
@click.pass_context
def provision_corim(ctx: click.Context, path: Path, media_type: str | None) -> None:
    """Submit a CoRIM (PSA, CCA platform, CCA realm or Veritee profile), all or nothing.

    Sent to Veraison's endorsement-provisioning API, as Veraison's cocli does.

    \b
    Examples:
      veritee verifier provision corim psa-endorsements.cbor
      veritee verifier corim make HOME/manufacturer/reference-values.json -o boot.corim
      veritee verifier provision corim boot.corim
    """
    with _client(ctx) as client:
        answer = client.submit_corim(path.read_bytes(), media_type)
    info = answer.get("veritee", {})
    _print(
        ctx,
        answer,
        f"provisioned {path.name} ({info.get('profile')}): "
        f"{info.get('trust-anchors', 0)} trust anchor(s), "
        f"{info.get('reference-values', 0)} reference value(s)",
    )


@provision.command("module")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name to endorse it under (default: the file name).")
@click.option("--version", "version", default="", help="Version to record.")
@click.option(
    "--corim-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the endorsement as a CoRIM (Veritee profile) to this file instead of "
    "provisioning it; submit it later with 'provision corim'.",
)
@click.pass_context
def provision_module(
    ctx: click.Context, module: Path, name: str | None, version: str, corim_out: Path | None
) -> None:
    """Endorse a Wasm module: its measurement becomes a reference value.

    \b
    Examples:
      veritee verifier provision module hello.wasm --version 1.0
      veritee verifier provision module hello.wasm --corim-out hello.corim
    """
    from veritee.wasm.runtime import measure, to_binary

    entry = {
        "kind": "module",
        "name": name or module.stem,
        "version": version,
        "measurement": measure(to_binary(module.read_bytes())).hex(),
    }
    if corim_out is not None:
        from veritee.verifier import corim
        from veritee.verifier.endorsements import reference_values

        corim_out.write_bytes(corim.make(reference_values(entry)))
        _print(ctx, {"corim": str(corim_out), **entry}, f"wrote {corim_out}")
        return
    with _client(ctx) as client:
        ids = client.add_reference_values(entry)
    _print(ctx, {"ids": ids, **entry}, f"endorsed {entry['name']} {entry['measurement']}")


@provision.command("revoke")
@click.option("--device", help="UEID / instance id of the device (hex).")
@click.option(
    "--ca",
    help="A trusted CA, revoked by its key (every certificate of that key): a certificate of "
    "it (PEM file), its key id or its trust-anchor id (hex, see 'show').",
)
@click.option("--reason", default="", help="Why, for the record.")
@click.pass_context
def provision_revoke(ctx: click.Context, device: str | None, ca: str | None, reason: str) -> None:
    """Revoke a device or a manufacturer CA: its evidence appraises contraindicated.

    \b
    Example:  veritee verifier provision revoke --device 01be7d54… --reason "stolen"
    """
    if (device is None) == (ca is None):
        raise UsageError("give exactly one of --device and --ca")
    entry: dict[str, str] = {"reason": reason}
    if device is not None:
        entry["device"] = device
    else:
        assert ca is not None
        entry["ca"] = Path(ca).read_text() if Path(ca).is_file() else ca
    with _client(ctx) as client:
        rid = client.revoke(entry)
    _print(ctx, {"id": rid}, f"revoked {rid}")


@provision.command("policy")
@click.argument("name")
@click.argument("rego", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--activate", is_flag=True, help="Make it the active appraisal policy.")
@click.pass_context
def provision_policy(ctx: click.Context, name: str, rego: Path, activate: bool) -> None:
    """Add (or replace) an appraisal policy written in Rego.

    \b
    Example:  veritee verifier provision policy prod prod.rego --activate
    """
    with _client(ctx) as client:
        answer = client.put_policy(name, rego.read_text(), activate=activate)
    _print(ctx, answer, f"policy {answer['id']}" + (" (active)" if activate else ""))


@provision.command("activate")
@click.argument("name")
@click.pass_context
def provision_activate(ctx: click.Context, name: str) -> None:
    """Make NAME the active appraisal policy (built in: default, strict).

    \b
    Example:  veritee verifier provision activate strict
    """
    with _client(ctx) as client:
        client.activate_policy(name)
    _print(ctx, {"active-policy": name}, f"active policy: {name}")


@provision.command("remove")
@click.argument(
    "what", type=click.Choice(["trust-anchors", "revocations", "reference-values", "policies"])
)
@click.argument("item_id")
@click.pass_context
def provision_remove(ctx: click.Context, what: str, item_id: str) -> None:
    """Remove one provisioned item by its id (see 'show').

    \b
    Example:  veritee verifier provision remove revocations device:01be7d…
    """
    with _client(ctx) as client:
        client.remove(what, item_id)
    _print(ctx, {"removed": item_id}, f"removed {item_id}")


@provision.command("show")
@click.option("--sessions", "n_sessions", type=click.IntRange(0, 1000), default=0)
@click.pass_context
def provision_show(ctx: click.Context, n_sessions: int) -> None:
    """Show everything provisioned (and the latest sessions with --sessions N).

    \b
    Example:  veritee verifier provision show --sessions 10 --json
    """
    with _client(ctx) as client:
        state = client.state()
        if n_sessions:
            state["sessions"] = client.sessions(n_sessions)
    if ctx.find_root().meta["verifier"].get("json"):
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(f"generation {state['generation']}, active policy {state['active-policy']}")
    for section in ("trust-anchors", "revocations", "reference-values", "policies"):
        click.secho(f"{section} ({len(state[section])})", bold=True)
        for item in state[section]:
            shown = {k: v for k, v in item.items() if k not in ("max-lifecycle", "key-id")}
            line = "  " + "  ".join(str(v) for v in shown.values() if v not in (None, ""))
            if item.get("max-lifecycle"):
                # The ceiling is the operator's word: the CA's own mark counts up to it only.
                line += f"  endorses at most {item['max-lifecycle']}  key {item['key-id']}"
            click.echo(line)
    for s in state.get("sessions", []):
        failure = s.get("failure") or {}
        click.echo(
            f"  {s['id']}  {s['status']:9} {s['outcome'] or '':16} {failure.get('check', '')}"
        )


# -- attest ------------------------------------------------------------------------------------


@verifier.group("corim")
def corim_group() -> None:
    """Make and read CoRIMs (Veritee's CoMID profile: boot stages, modules, CAs).

    \b
    Examples:
      veritee verifier corim make HOME/manufacturer/reference-values.json -o boot.corim
      veritee verifier corim make deploy.yaml -o deploy.corim --sign-key signer.pem
      veritee verifier corim show tests/vectors/corim/psa-endorsements.cbor
    """


@corim_group.command("make")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--sign-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="EC private key (PEM) to sign the CoRIM with (COSE_Sign1); its public key is the "
    "verifier's --corim-signer.",
)
def corim_make(source: Path, output: Path, sign_key: Path | None) -> None:
    """Turn reference values (an entry, a list, a manufacturer file) or a deployment file's
    trust anchors and reference values (JSON/YAML) into a CoRIM of Veritee's profile.

    \b
    Example:  veritee verifier corim make HOME/manufacturer/reference-values.json -o boot.corim
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from veritee.verifier import corim
    from veritee.verifier.deployfile import load, read_data
    from veritee.verifier.endorsements import CaAnchor, Deployment, reference_values

    data = read_data(source)
    if isinstance(data, dict) and ("trust-anchors" in data or "reference-values" in data):
        deployment = Deployment.parse(load(source))  # paths resolved as by 'provision --file'
        refs = list(deployment.references)
        cas = [a for a in deployment.anchors if isinstance(a, CaAnchor)]
        if len(cas) != len(deployment.anchors):
            raise UsageError("Veritee's CoMID profile carries CAs, not PSA/CCA device keys")
        if deployment.revocations or deployment.policies or deployment.active_policy:
            raise UsageError(
                "a CoRIM carries trust anchors and reference values only: apply revocations "
                "and policies with 'provision --file'"
            )
    else:
        refs, cas = reference_values(data), []
    signer = None
    if sign_key is not None:
        try:
            key = serialization.load_pem_private_key(sign_key.read_bytes(), password=None)
        except (ValueError, TypeError):
            raise UsageError(f"{sign_key} is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UsageError("the CoRIM signing key must be an EC P-256 or P-384 key")
        signer = key
    output.write_bytes(corim.make(refs, cas, signer=signer))
    click.echo(f"wrote {output}: {len(refs)} reference value(s), {len(cas)} CA(s)")


@corim_group.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--signer",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM public key a signed CoRIM must verify under.",
)
def corim_show(path: Path, signer: Path | None) -> None:
    """Decode a CoRIM as the verifier would, and print what it endorses (JSON).

    \b
    Example:  veritee verifier corim show boot.corim
    """
    from veritee.verifier import corim
    from veritee.verifier.endorsements import CaAnchor, KeyAnchor, ec_public_key_pem

    key = None if signer is None else ec_public_key_pem(signer.read_text())
    decoded = corim.decode(path.read_bytes(), signer=key)
    d = decoded.deployment
    out = {
        **decoded.summary(),
        "trust-anchors": [
            {"scheme": a.scheme, "instance-id": a.instance_id.hex()}
            if isinstance(a, KeyAnchor)
            else {"ca": a.subject, "id": a.id}
            if isinstance(a, CaAnchor)
            else {"id": a.id}
            for a in d.anchors
        ],
        "reference-values": [rv.to_json() for rv in d.references],
    }
    click.echo(json.dumps(out, indent=2))


@verifier.command("attest")
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--verifier", "url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True)
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Save EAR.")
@click.option("--json", "as_json", is_flag=True, help="Print the verified result as JSON.")
@click.pass_obj
def attest_remote(
    home: Home, module: Path, url: str, vtee: str, output: Path | None, as_json: bool
) -> None:
    """Attest a module to a verifier: new session, evidence from the secure world, result.

    Exits 0 whatever the result says; the result is printed (and checked against the
    verifier's published key). Exit 9 if the verifier refused.

    \b
    Example:  veritee verifier attest hello.wasm --verifier http://127.0.0.1:8443
    """
    from veritee.evidence.claims import MEDIA_TYPE
    from veritee.tee import client as teec
    from veritee.tee.ta import WasmSession
    from veritee.verifier import ear
    from veritee.verifier.client import VerifierClient

    with teec.Context(home=home, vtee=vtee) as context, VerifierClient(url) as client:
        session = WasmSession(context)
        session.load(module.read_bytes(), name=module.name)
        token = client.attest(lambda nonce, _accept: (session.attest(nonce), MEDIA_TYPE))
        result = ear.verify(token, client.public_key())
    if output is not None:
        output.write_text(token + "\n")
    _show_result(result, as_json)


# -- ear show ----------------------------------------------------------------------------------


@click.group("ear")
def ear_group() -> None:
    """Read and check EAT attestation results (EAR).

    \b
    Example:  veritee ear show result.jwt --verifier http://127.0.0.1:8443
    """


@ear_group.command("show")
@click.argument("result")
@click.option("--key", help="The verifier's public key: a JWK file or JWK JSON text.")
@click.option("--verifier", "url", help="Fetch the key from this verifier's discovery document.")
@click.option("--json", "as_json", is_flag=True, help="Print the verified claims as JSON.")
def ear_show(result: str, key: str | None, url: str | None, as_json: bool) -> None:
    """Check an EAR's signature and print it readably. Exit 7 if it does not verify.

    RESULT is a file holding the JWT (or a session JSON with a "result"), the JWT
    itself, or - for standard input.

    \b
    Examples:
      veritee ear show result.jwt --verifier http://127.0.0.1:8443
      veritee ear show result.jwt --key verifier.jwk --json
    """
    from veritee.verifier import ear

    token = _read_token(result)
    if (key is None) == (url is None):
        raise UsageError("give exactly one of --key and --verifier to check the signature")
    if key is not None:
        text = Path(key).read_text() if Path(key).is_file() else key
        public = ear.public_key_from_jwk(text)
    else:
        from veritee.verifier.client import VerifierClient

        assert url is not None
        with VerifierClient(url) as client:
            public = client.public_key()
    _show_result(ear.verify(token, public), as_json)


def _read_token(result: str) -> str:
    if result == "-":
        text = sys.stdin.read()
    elif Path(result).is_file():
        text = Path(result).read_text()
    elif result.count(".") == 2:
        text = result
    else:
        raise UsageError(f"RESULT {result[:80]!r} is neither a file nor a JWT")
    text = text.strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("result", ""))
        except (ValueError, AttributeError):
            raise UsageError("RESULT is JSON without a 'result' member") from None
    if not text:
        raise UsageError("RESULT is empty")
    return text


def _show_result(result: Any, as_json: bool) -> None:
    from veritee.verifier import ear

    claims = result.to_json()
    if as_json:
        click.echo(json.dumps({"verified": True, "claims": claims}, indent=2))
        return
    colours = {"affirming": "green", "warning": "yellow", "contraindicated": "red"}
    click.echo(f"EAR from {result.verifier_id.developer} {result.verifier_id.build}, signature OK")
    failure = claims.get("ear.veritee.failure")
    if failure:
        click.secho(f"failed check: {failure['check']}: {failure['reason']}", fg="red")
    rows = ear.describe(result)
    for name, appraisal in result.submods.items():
        click.secho(f"{name}: {appraisal.status}", bold=True, fg=colours.get(appraisal.status))
        if appraisal.policy_id:
            click.echo(f"  policy {appraisal.policy_id}")
        for row in rows:
            if row.submod == name and row.tier != "none":
                click.echo(f"  {row.claim:18} {row.tier:16} {row.meaning}")
        # Veritee's reading of PSA/CCA claims, else (Veritee evidence) the annotated evidence.
        annotated = appraisal.extensions.get(
            "ear.veritee.claims", appraisal.extensions.get("ear.veraison.annotated-evidence", {})
        )
        for field in ("ueid", "lifecycle", "vtee-name", "name", "measurement", "instance-id"):
            if field in annotated:
                click.echo(f"  {field:18} {annotated[field]}")
        for reason in appraisal.extensions.get("ear.veritee.reasons", ()):
            click.secho(f"  ! {reason}", fg="yellow")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None


def _with_scheme(value: Any, scheme: str) -> Any:
    if isinstance(value, list):
        return [_with_scheme(v, scheme) for v in value]
    if isinstance(value, dict):
        return {**value, "scheme": scheme}
    return value


def _provision_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.find_root().meta.setdefault("verifier", {})["json"] = True
        ctx.meta[JSON_META] = True
    return value


# `--json` is taken after a provisioning subcommand too ('provision show --sessions 10
# --json'), not only before it: where the examples, and people, put it.
for _sub in provision.commands.values():
    if not any(p.name == "as_json" for p in _sub.params):
        _sub.params.append(
            click.Option(
                ["--json", "as_json"],
                is_flag=True,
                expose_value=False,
                callback=_provision_json,
                help="Print the answer as JSON (as 'provision --json' does).",
            )
        )
