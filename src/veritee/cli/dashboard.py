"""``veritee dashboard``: the deployment, live in the browser (app/dashboard.py)."""

from __future__ import annotations

from pathlib import Path

import click

from veritee.cli._tls import server_options as tls_options
from veritee.cli._tls import server_tls
from veritee.errors import UsageError
from veritee.home import Home

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
TOKEN_ENV = "VERITEE_VERIFIER_TOKEN"  # as the verifier's own commands read it


def register(cli: click.Group) -> None:
    cli.add_command(dashboard)


@click.command(context_settings=CONTEXT)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="VERITEE_DEPLOYMENT",
    default=None,
    help="Deployment state file (default: $VERITEE_DEPLOYMENT or ./veritee-deployment.json).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (loopback: only this machine's browsers reach it).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=7300,
    show_default=True,
    help="Port to listen on (0: any free one; the printed URL says which).",
)
@click.option(
    "--verifier-token",
    envvar=TOKEN_ENV,
    help="The verifier's provisioning token, to list its recent sessions "
    "(or $VERITEE_VERIFIER_TOKEN).",
)
@click.option(
    "--verifier-token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read the verifier's provisioning token from this file (e.g. STATE/admin-token).",
)
@tls_options
@click.pass_obj
def dashboard(
    home: Home,
    state_path: Path | None,
    host: str,
    port: int,
    verifier_token: str | None,
    verifier_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool,
    tls_client_ca: Path | None,
) -> None:
    """Serve a live dashboard of a deployment; print the URL to open.

    The page shows the nodes and their health, the modules with their measurement,
    attestation status and the EAR's trust vector, the connections with their event
    counts and drops by reason, and the appraisals, refreshed every second from the
    same node agents and verifier 'veritee status' reads. The URL carries a random
    key (after '#'): the page's data answers only to it. Off loopback it serves only
    HTTPS (--tls-cert/--tls-key, or --tls-self-signed). With the verifier's token
    (--verifier-token-file STATE/admin-token) it lists the verifier's recent sessions
    too. Ctrl-C stops.

    \b
    Examples:
      veritee dashboard                 # ./veritee-deployment.json, on port 7300
      veritee dashboard --port 0        # any free port: the printed URL says which
    """
    from veritee.app import state as state_mod
    from veritee.app.dashboard import Dashboard, View, serve

    if verifier_token_file is not None:
        verifier_token = verifier_token_file.read_text().strip()
        if not verifier_token:
            raise UsageError(f"{verifier_token_file} is empty")
    path = state_path or state_mod.default_path()
    state_mod.load(path)  # no deployment: one line now, not a page that only says so
    tls = server_tls(
        tls_cert, tls_key, tls_self_signed, tls_client_ca, state=home.root / "dashboard", host=host
    )

    def ready(server: Dashboard) -> None:
        click.echo(server.url)
        click.echo(
            f"veritee: dashboard of {path} on {host}:{server.server_address[1]}; Ctrl-C stops",
            err=True,
        )

    view = View(path, verifier_token=verifier_token)
    serve(view, host=host, port=port, tls=tls, on_ready=ready)
