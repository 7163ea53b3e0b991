"""Configuration files for the services, with environment overrides, and their ``check``.

One format for ``verifier serve``, ``secrets serve`` and ``node start``: a YAML mapping whose
``serve`` section holds the command's options by their long names::

    serve:
      host: 0.0.0.0
      port: 8443
      tls-cert: /etc/veritee/verifier.pem     # relative paths: relative to this file
      tls-key: /etc/veritee/verifier.key
      server-nonces-only: true                # a flag: true or false

Each option may also come from the environment, ``$VERITEE_<SERVICE>_<OPTION>`` (``SERVICE``
one of ``VERIFIER``, ``SECRETS``, ``NODE``; ``OPTION`` upper-case with ``_`` for ``-``: e.g.
``VERITEE_NODE_EVENTS_PORT=7201``). The command line wins over the environment, the
environment over the file, the file over the defaults. The secret service's file is the one
``--config`` already names (trust, secrets, ...): its ``serve`` section sits beside those.

A value is checked where it is read, so a bad one is one error naming its file (or variable)
and option, before anything starts; ``veritee SERVICE check`` reports every problem at once,
and shows each setting with where it came from.
"""

from __future__ import annotations

import enum
import os
import re
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from veritee.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])

SECTION = "serve"
MAX_CONFIG_BYTES = 1024 * 1024  # an operator's text, not a data set
# Options that make no sense in a file (or are the file itself).
NOT_CONFIGURABLE = frozenset({"config", "help"})
META = "veritee.config"  # ctx.meta key: the Settings the command ran with


class ConfigError(UsageError):
    """A configuration file or variable that cannot be used (exit 2)."""


@dataclass
class Settings:
    """The options a service's file and environment give, by parameter name."""

    service: str
    path: Path | None
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # parameter name -> file:key / $VAR
    problems: list[str] = field(default_factory=list)


def env_var(service: str, option: str) -> str:
    return f"VERITEE_{service.upper()}_{option.upper().replace('-', '_')}"


def options(command: click.Command) -> dict[str, click.Option]:
    """The command's configurable options, by long name without the dashes."""
    found: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in NOT_CONFIGURABLE:
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        if longs:
            found[longs[0][2:]] = param
    return found


def _read_yaml(path: Path) -> Mapping[str, Any]:
    import yaml

    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    # Another user who may write the file would choose the service's TLS key, its database,
    # its nonce policy (and a secret service's secrets): refuse it, as ssh does its keys.
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: writable by other users (mode {stat.S_IMODE(mode):o}): "
            f"'chmod go-w {path}' first"
        )
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(data)} bytes, more than a configuration may be")
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a configuration is a mapping, not {type(raw).__name__}")
    return raw


def read(
    command: click.Command,
    service: str,
    path: Path | None,
    *,
    other_sections: frozenset[str] = frozenset(),
    ctx: click.Context | None = None,
) -> Settings:
    """What ``path`` and the environment set for ``command``, each value checked.

    Problems are collected in :attr:`Settings.problems` (``check`` shows them all); the serve
    commands raise the first with :func:`raise_first`.
    """
    settings = Settings(service, path)
    known = options(command)
    given: dict[str, tuple[Any, str]] = {}
    if path is not None:
        base = path.resolve().parent
        raw = _read_yaml(path)
        for key in raw:
            if key != SECTION and key not in other_sections:
                settings.problems.append(
                    f"{path}: unknown section {key!r} (a service's file has '{SECTION}:'"
                    + (f" and {', '.join(sorted(other_sections))}" if other_sections else "")
                    + ")"
                )
        section = raw.get(SECTION, {})
        if section is None:
            section = {}
        if not isinstance(section, dict):
            settings.problems.append(f"{path}: {SECTION}: a mapping of option: value")
            section = {}
        for key, value in section.items():
            if str(key) not in known:
                settings.problems.append(
                    f"{path}: {SECTION}.{key}: not an option of this service "
                    f"(options: {', '.join(sorted(known))})"
                )
                continue
            param = known[str(key)]
            if isinstance(param.type, click.Path) and isinstance(value, str) and value:
                value = str(base / value)  # an absolute value stays as it is
            given[str(key)] = (value, f"{path}: {SECTION}.{key}")
    for key in known:
        var = env_var(service, key)
        if var in os.environ:
            given[key] = (os.environ[var], f"${var}")
    for key, (value, source) in given.items():
        param = known[key]
        assert param.name is not None
        if param.is_flag and not isinstance(value, bool):
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                settings.problems.append(f"{source}: {value!r} is not true or false")
                continue
            value = text in ("true", "1", "yes", "on")
        elif isinstance(value, (dict, list)):
            settings.problems.append(f"{source}: one value, not a {type(value).__name__}")
            continue
        try:
            converted = param.type.convert(value, param, ctx)
        except click.BadParameter as exc:
            settings.problems.append(f"{source}: {exc.message}")
            continue
        settings.values[param.name] = converted
        settings.sources[param.name] = source
    return settings


def raise_first(settings: Settings) -> None:
    if settings.problems:
        more = len(settings.problems) - 1
        also = f" (and {more} more: 'veritee {settings.service} check' lists them)" if more else ""
        raise ConfigError(settings.problems[0] + also)


def apply(ctx: click.Context, settings: Settings) -> None:
    """Make the file's and environment's values the command's defaults (the command line
    still wins): Click reads ``default_map`` for every option not given on it."""
    raise_first(settings)
    ctx.default_map = {**(ctx.default_map or {}), **settings.values}
    ctx.meta[META] = settings


def config_option(service: str) -> Callable[[F], F]:
    """``--config FILE`` for a serve command whose file holds only the ``serve`` section."""

    def callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
        assert ctx.command is not None
        apply(ctx, read(ctx.command, service, value, ctx=ctx))
        return value

    return click.option(
        "--config",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=callback,
        help=f"Configuration file (YAML, a '{SECTION}:' section of these options); "
        f"$VERITEE_{service.upper()}_<OPTION> overrides it, the command line both.",
    )


# -- check ---------------------------------------------------------------------------------


def effective(command: click.Command, settings: Settings) -> tuple[dict[str, Any], dict[str, str]]:
    """Every option's value as the serve command would run with it (short of the command
    line), and where it came from, by the option's long name (``tls-cert``)."""
    ctx = click.Context(command)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, param in options(command).items():
        assert param.name is not None
        if param.name in settings.values:
            values[key] = settings.values[param.name]
            sources[key] = settings.sources[param.name]
        else:
            default = param.get_default(ctx)
            # An option without a default gives Click's UNSET marker (an enum member).
            values[key] = None if isinstance(default, enum.Enum) else default
            sources[key] = "default"
    return values, sources


def check_listen(host: str, port: int, problems: list[str], notes: list[str]) -> None:
    """Whether the service could listen there now (a running one holds it: a note)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        problems.append(f"host {host}: {exc.strerror}")
        return
    try:
        sock.bind((host, port))
    except socket.gaierror as exc:
        problems.append(f"host {host}: not an address of this machine ({exc.strerror})")
    except OSError as exc:
        if exc.errno == 98 and port:  # EADDRINUSE: perhaps the service itself
            notes.append(f"{host}:{port} is in use now (by this service already running?)")
        else:
            problems.append(f"cannot listen on {host}:{port}: {exc.strerror}")
    finally:
        sock.close()


def check_tls(values: Mapping[str, Any], problems: list[str], notes: list[str]) -> None:
    """The TLS options go together and their files load (cert and key match)."""
    from veritee import servicetls

    cert, key = values.get("tls-cert"), values.get("tls-key")
    self_signed, client_ca = bool(values.get("tls-self-signed")), values.get("tls-client-ca")
    try:
        servicetls.check_options(cert, key, self_signed, client_ca)
        if cert and key:  # the files load, and the key is the certificate's
            servicetls.ServerTls(Path(cert).resolve(), Path(key).resolve(), client_ca).context()
    except UsageError as exc:
        problems.append(str(exc))
    host = str(values.get("host", ""))
    if not (cert or self_signed) and host and not servicetls.is_loopback(host):
        notes.append(
            f"listening on {host} without TLS: other hosts' requests and the provisioning "
            "token would cross the network in clear (set tls-cert/tls-key)"
        )


_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")


def shown(value: Any) -> Any:
    """A value as ``check`` prints it: a URL's password masked (a database URL has one)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return _PASSWORD.sub(r"\1***@", value)
    return value


def report(
    service: str,
    settings: Settings,
    values: Mapping[str, Any],
    sources: Mapping[str, str],
    problems: list[str],
    notes: list[str],
    *,
    as_json: bool,
) -> None:
    """Print what ``check`` found; a problem makes it fail (exit 2)."""
    import json

    problems = [*settings.problems, *problems]
    if as_json:
        table = {k: {"value": shown(v), "source": sources[k]} for k, v in values.items()}
        click.echo(
            json.dumps(
                {
                    "ok": not problems,
                    "service": service,
                    "config": None if settings.path is None else str(settings.path),
                    "settings": table,
                    "problems": problems,
                    "notes": notes,
                },
                indent=2,
            )
        )
    else:
        where = settings.path if settings.path is not None else "no file (defaults, environment)"
        click.echo(f"{service}: {where}")
        for name, value in values.items():
            if value is None or value is False:
                continue
            click.echo(f"  {name} = {shown(value)}   ({sources[name]})")
        for note in notes:
            click.echo(f"  note: {note}")
        for problem in problems:
            click.echo(f"  problem: {problem}", err=True)
        if not problems:
            click.echo("OK: it would start with these settings")
    if problems:
        if as_json:
            from veritee.cli import json_done

            json_done()
        raise ConfigError(f"{len(problems)} problem(s) in the {service}'s configuration")
