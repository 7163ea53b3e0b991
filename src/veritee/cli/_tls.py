"""The ``--tls-*`` options every serve command takes, and ``--ca`` for the commands that talk
to a service (src/veritee/servicetls.py does the work)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from veritee import servicetls

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def server_options(func: F) -> F:
    """``--tls-cert``, ``--tls-key``, ``--tls-self-signed``, ``--tls-client-ca``."""
    for option in reversed(
        (
            click.option(
                "--tls-cert",
                type=_FILE,
                help="Serve HTTPS (TLS 1.3) with this PEM certificate chain (with --tls-key).",
            ),
            click.option("--tls-key", type=_FILE, help="The PEM private key of --tls-cert."),
            click.option(
                "--tls-self-signed",
                is_flag=True,
                help="Serve HTTPS with a self-signed certificate for the listening names, kept "
                "under the state directory; clients pin it with --ca (for trying TLS out).",
            ),
            click.option(
                "--tls-client-ca",
                type=_FILE,
                help="Also require client certificates issued by this CA (mutual TLS).",
            ),
        )
    ):
        func = option(func)
    return func


def server_tls(
    cert: Path | None,
    key: Path | None,
    self_signed: bool,
    client_ca: Path | None,
    *,
    state: Path,
    host: str,
) -> servicetls.ServerTls | None:
    """The TLS settings the options ask for (None: plain HTTP); says on stderr what a
    client needs to trust the certificate."""
    tls = servicetls.from_options(
        cert, key, self_signed, client_ca=client_ca, state=state, host=host
    )
    if tls is not None:
        pin = f"; clients trust it with --ca {tls.cert}" if self_signed else ""
        click.echo(f"TLS 1.3, certificate {tls.cert} (SHA-256 {tls.fingerprint}){pin}", err=True)
    return tls


def ca_option(func: F) -> F:
    """``--ca FILE``: verify the services' certificates against it (else $VERITEE_CA, else
    the system's CAs)."""
    return click.option(
        "--ca",
        type=_FILE,
        envvar=servicetls.CA_ENV,
        help="CA file to verify https:// services against (also $VERITEE_CA); host names "
        "are checked.",
    )(func)
