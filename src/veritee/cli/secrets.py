"""``veritee secrets …``: the secret service (relying party) and its key."""

from __future__ import annotations

import json
from pathlib import Path

import click

from veritee.cli._tls import server_options as tls_options
from veritee.cli._tls import server_tls
from veritee.errors import UsageError
from veritee.home import Home
from veritee.verifier.errors import VerifierRefused, VerifierUnreachable

# How long `secrets key --url` waits for the service.
KEY_FETCH_TIMEOUT = 10.0
LOG_LEVELS = ("debug", "info", "warning", "error")


def register(cli: click.Group) -> None:
    cli.add_command(secrets)


def _state(ctx: click.Context, state: Path | None) -> Path:
    if state is not None:
        return state.resolve()
    home: Home = ctx.obj
    return home.root / "secrets"


@click.group()
def secrets() -> None:
    """Release named secrets to attested modules, HPKE-encrypted to their own key.

    \b
    Exit codes: 0 success, 1 service unreachable or refused, 2 bad configuration or usage.
    See docs/secrets.md for the configuration, the protocol and the policies.
    """


# The sections of a secret service's file besides 'serve:' (secrets/config.py reads them).
_SECTIONS = frozenset({"trust", "nonce_ttl", "secrets", "challenges_per_client"})


def _serve_section(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """The file's ``serve:`` section and $VERITEE_SECRETS_* become the defaults of the
    other options (cli/_config.py); the rest of the file is the service's own."""
    from veritee.cli import _config

    if value is not None and value.is_file():
        assert ctx.command is not None
        _config.apply(ctx, _config.read(ctx.command, "secrets", value, other_sections=_SECTIONS))
    return value


@secrets.command("serve")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    is_eager=True,
    callback=_serve_section,
    help="The service configuration (YAML): trust anchors, reference values, secrets, and "
    "a 'serve:' section of these options ($VERITEE_SECRETS_<OPTION> overrides it).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8444,
    show_default=True,
    help="Port to listen on; 0 picks a free one (the URL is printed).",
)
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="Signing key and issued nonces (default: HOME/secrets, see 'veritee --home').",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@tls_options
@click.pass_context
def serve(
    ctx: click.Context,
    config_path: Path,
    host: str,
    port: int,
    state: Path | None,
    log_level: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool,
    tls_client_ca: Path | None,
) -> None:
    """Run the secret service until interrupted.

    Prints 'listening on URL' on standard output once it accepts connections; logs are
    JSON lines on standard error. The signing key is created in the state directory on
    first start: modules pin it (see 'veritee secrets key').

    \b
    Example:  veritee secrets serve --config secrets.yaml --port 0
    With TLS: veritee secrets serve --config secrets.yaml --host 0.0.0.0 --tls-self-signed
    """
    from veritee.secrets import load_config
    from veritee.secrets.service import serve as run

    where = _state(ctx, state)
    tls = server_tls(tls_cert, tls_key, tls_self_signed, tls_client_ca, state=where, host=host)
    config = load_config(config_path)
    run(
        config,
        tls=tls,
        state=where,
        host=host,
        port=port,
        log_level=log_level,
        on_listening=lambda url: click.echo(f"listening on {url}"),
    )


@secrets.command("key")
@click.option("--url", help="Ask a running service (GET /secrets/v1/key).")
@click.option(
    "--state",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read the key from this state directory (default: HOME/secrets); created if absent.",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"alg", "public_key"} as JSON.')
@click.pass_context
def key(ctx: click.Context, url: str | None, state: Path | None, as_json: bool) -> None:
    """Print the service's public key (65-byte P-256 point, hex) for modules to pin.

    \b
    Example:  veritee build app.c -o app.wasm \\
                -DVERITEE_SECRET_SERVICE_KEY=$(veritee secrets key)
              veritee secrets key --url http://127.0.0.1:8444
    """
    from veritee.secrets import keys

    if url is not None and state is not None:
        raise UsageError("give --url or --state, not both")
    if url is not None:
        public = _fetch_key(url)
    else:
        directory = _state(ctx, state)
        private, created = keys.service_key(directory)
        if created:
            click.echo(f"created a new service key in {directory / keys.KEY_FILE}", err=True)
        public = keys.public_key_hex(private.public_key())
    if as_json:
        click.echo(json.dumps({"alg": keys.ALG, "public_key": public}))
    else:
        click.echo(public)


def _fetch_key(url: str) -> str:
    import httpx

    from veritee.secrets import keys
    from veritee.secrets.protocol import KEY_PATH
    from veritee.servicetls import client_verify

    target = url.rstrip("/") + KEY_PATH
    try:
        response = httpx.get(target, timeout=KEY_FETCH_TIMEOUT, verify=client_verify())
    except httpx.InvalidURL:
        raise UsageError(f"--url {url}: not a URL") from None
    except httpx.HTTPError as exc:
        raise VerifierUnreachable(f"cannot reach the secret service at {target}: {exc}") from None
    try:
        body = response.json()
        public = body["public_key"]
        if response.status_code != 200 or body.get("alg") != keys.ALG:
            raise ValueError
        keys.parse_public_key(public)
    except (ValueError, KeyError, TypeError):
        raise VerifierRefused(
            f"{target} answered {response.status_code} without a valid ES256 public key",
            status=response.status_code,
        ) from None
    return str(public)


@secrets.command("check")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The service configuration (YAML) to validate.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the secrets and policies as JSON.")
def check(config_path: Path, as_json: bool) -> None:
    """Validate a configuration and compile its policies, without serving.

    \b
    Example:  veritee secrets check --config secrets.yaml
    """
    from veritee.cli import _config
    from veritee.secrets import load_config

    config = load_config(config_path)
    settings = _config.read(serve, "secrets", config_path, other_sections=_SECTIONS)
    values, _sources = _config.effective(serve, settings)
    problems: list[str] = list(settings.problems)
    notes: list[str] = []
    _config.check_listen(str(values["host"]), int(values["port"]), problems, notes)
    _config.check_tls(values, problems, notes)
    rows = [
        {"name": s.name, "bytes": len(s.value), "policy": s.policy.source, "allow": dict(s.allow)}
        for s in config.secrets.values()
    ]
    serving = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    if as_json:
        top = {"nonce_ttl": config.nonce_ttl, "challenges_per_client": config.challenges_per_client}
        click.echo(
            json.dumps(
                {**top, "secrets": rows, "serve": serving, "problems": problems, "notes": notes},
                indent=2,
            )
        )
        if problems:
            from veritee.cli import json_done

            json_done()
            raise _config.ConfigError(f"{len(problems)} problem(s) in {config_path}")
        return
    for problem in problems:
        click.echo(f"  problem: {problem}", err=True)
    if problems:
        raise _config.ConfigError(f"{len(problems)} problem(s) in {config_path}")
    click.echo(
        f"{config.path}: OK, nonce lifetime {config.nonce_ttl:g} s, "
        f"{config.challenges_per_client} challenges per client"
    )
    for row in rows:
        click.echo(f"  {row['name']}: {row['bytes']} bytes, policy {row['policy']}")
        click.echo(f"    allow: {json.dumps(row['allow'])}")
    scheme = "https" if values["tls-cert"] or values["tls-self-signed"] else "http"
    click.echo(f"  serves {scheme}://{values['host']}:{values['port']}")
    for note in notes:
        click.echo(f"  note: {note}")
