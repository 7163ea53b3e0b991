"""Distributed apps: ``veritee node start``, ``deploy``, ``status``, ``call``, ``output``,
``request``, ``update``, ``add``, ``disable``.

Exit codes beyond the common ones: 2 a malformed descriptor or argument, 7 a module was not
acceptable (update), 9 the verifier did not answer, 10 a deployment problem (state file,
refused modules or connections: ``deploy`` exits 10 when any was refused), 11 a node agent
did not answer or refused, 12 the secure world dropped an event.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import click

from veritee.cli import echo_json, json_done, json_option
from veritee.cli._config import config_option
from veritee.cli._tls import server_options as tls_options
from veritee.cli._tls import server_tls
from veritee.errors import Error, UsageError
from veritee.home import DEFAULT_VTEE, Home

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_STATE_HELP = "Deployment state file (default: $VERITEE_DEPLOYMENT or ./veritee-deployment.json)."


def register(cli: click.Group) -> None:
    cli.add_command(node)
    for command in (deploy, status, watch, call, output, request, update, add, disable):
        cli.add_command(command)


def _state_option(f: Any) -> Any:
    return click.option(
        "--state",
        "state_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="VERITEE_DEPLOYMENT",
        default=None,
        help=_STATE_HELP,
    )(f)


def _state(path: Path | None) -> Path:
    from veritee.app.state import default_path

    return path or default_path()


def _payload(arg: str | None, hex_arg: bool, file: Path | None) -> bytes:
    if file is not None:
        if arg is not None:
            raise UsageError("give ARG or --file, not both")
        try:
            return file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    if arg is None:
        return b""
    if hex_arg:
        try:
            return bytes.fromhex(arg)
        except ValueError:
            raise UsageError("ARG is not hex (--hex)") from None
    return arg.encode()


def _payload_options(f: Any) -> Any:
    f = click.option("--hex", "hex_arg", is_flag=True, help="ARG is hex-encoded bytes.")(f)
    return click.option(
        "--file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Send this file's bytes as the payload.",
    )(f)


# -- node ---------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def node() -> None:
    """Run this machine's node agent (the untrusted event manager)."""


@node.command("start", context_settings=CONTEXT)
@config_option("node")
@click.option(
    "--home",
    "node_home",
    type=click.Path(file_okay=False, path_type=Path),
    help="This node's device home (overrides the global --home).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7100, show_default=True)
@click.option(
    "--events-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port for events from other nodes (default: the one used last time, else 7200; "
    "0: any free).",
)
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True, help="Virtual TEE to use.")
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write {url, events} as JSON here once listening.",
)
@click.option(
    "--poll-us",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help="After events from a peer, poll its link this many µs before sleeping, while "
    "they come that often: lower latency for CPU while they do (0: never; default 2000).",
)
@click.option(
    "--transport",
    "transport_url",
    default="direct",
    show_default=True,
    metavar="direct|nats://HOST:PORT",
    help="How apps this node hosts exchange events, unless their descriptor says: Veritee's "
    "direct links, or a NATS JetStream broker (several URLs comma-separated for a cluster).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@tls_options
@click.pass_obj
def node_start(
    home: Home,
    node_home: Path | None,
    host: str,
    port: int,
    events_port: int | None,
    vtee: str,
    ready_file: Path | None,
    poll_us: int | None,
    log_level: str,
    transport_url: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool,
    tls_client_ca: Path | None,
) -> None:
    """Serve the node agent in the foreground until interrupted.

    Boots the device's secure world if it is not running (and stops it again on
    exit), reloads the modules this node hosted with their sealed state, and
    delivers the events it kept. Logs are JSON lines on stderr; /health and /metrics
    answer on the API port (docs/operations.md). The device must be provisioned
    first ('veritee device init'): the node agent never creates device secrets.

    \b
    Examples:
      veritee --home /tmp/hub device init
      veritee node start --home /tmp/hub --port 7101 --events-port 7201
      veritee node start --home /tmp/srv --host 0.0.0.0 --port 7102 --events-port 7202 \\
          --tls-cert srv.pem --tls-key srv.key   # deployers: veritee --ca ca.pem deploy …
      veritee node start --home /tmp/hub --port 7101 --transport nats://127.0.0.1:4222

    Off loopback, serve TLS: the owners' signed requests are fresh and bound to this
    node, but TLS keeps who manages which app, and the module binaries, off the network.
    """
    from veritee.app import server
    from veritee.app.transport import POLL
    from veritee.app.transport_nats import parse_transport

    transport_url = parse_transport(transport_url)  # a wrong one is one line, before booting

    if node_home is not None:
        home = Home.resolve(node_home)
    import logging.config

    from veritee.logs import log_config

    # JSON lines on stderr, the schema of every Veritee service (docs/operations.md).
    logging.config.dictConfig(log_config(log_level))
    tls = server_tls(
        tls_cert, tls_key, tls_self_signed, tls_client_ca, state=home.root / "node", host=host
    )  # checked before the secure world boots: a bad file is one line, and nothing started
    _stop_on_sigterm()
    started = _boot_secure_world(home)
    try:
        server.serve(
            home,
            tls=tls,
            host=host,
            port=port,
            events_port=events_port,
            vtee=vtee,
            ready_file=ready_file,
            log_level=log_level,
            poll=POLL if poll_us is None else poll_us / 1e6,
            transport_url=transport_url,
        )
    finally:
        if started:
            _stop_secure_world(home)


class _Terminated(SystemExit):
    """SIGTERM to ``node start``: unwinds it like Ctrl-C, so what it started stops too."""


SIGTERM_EXIT = 128 + 15  # the shell's status of a command ended by SIGTERM


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into an orderly stop: the agent first, then the secure world it booted.

    Without this, SIGTERM (systemd, ``kill``, a container stop) ended the process with the
    default action and no ``finally`` ran, leaving the secure world serving. uvicorn catches
    SIGTERM while it serves, shuts down gracefully, then re-raises it to the handler it found
    here, so the stop comes after the graceful shutdown and before anything else.
    """
    import signal

    def terminated(_signo: int, _frame: object) -> None:
        raise _Terminated(SIGTERM_EXIT)

    signal.signal(signal.SIGTERM, terminated)


@node.command("check", context_settings=CONTEXT)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The node agent's configuration file (as 'node start --config').",
)
@json_option()
@click.pass_obj
def node_check(home: Home, config: Path | None, as_json: bool) -> None:
    """Check a node agent's configuration without starting it: every problem at once.

    Reads the file and $VERITEE_NODE_* as 'node start' would and shows each setting with
    where it came from; checks the values, the TLS files, that the ports are free and that
    the home holds a provisioned device. Exit 0 when it would start, 2 otherwise.

    \b
    Example:  veritee node check --config /etc/veritee/node.yaml
    """
    from veritee.cli import _config
    from veritee.tee import device

    settings = _config.read(node_start, "node", config)
    values, sources = _config.effective(node_start, settings)
    problems: list[str] = []
    notes: list[str] = []
    where = Home(Path(values["home"])) if values.get("home") else home
    if not device.is_provisioned(where):
        problems.append(
            f"{where.root} holds no provisioned device: run "
            f"'veritee --home {where.root} device init' first"
        )
    host = str(values["host"])
    _config.check_listen(host, int(values["port"]), problems, notes)
    if values.get("events-port"):
        _config.check_listen(host, int(values["events-port"]), problems, notes)
    _config.check_tls(values, problems, notes)
    _config.report("node", settings, values, sources, problems, notes, as_json=as_json)


def _boot_secure_world(home: Home) -> bool:
    """Boot the node's secure world unless it runs; True if this command started it. The
    operator's step, not the agent's: the agent never provisions or boots a device."""
    from veritee.errors import DeviceError, Error
    from veritee.tee import device, monitor

    try:
        monitor.control(home, {"op": "status"}, timeout=5)
        return False
    except Error:
        pass
    if not device.is_provisioned(home):
        raise DeviceError(
            f"{home.root} holds no provisioned device: run "
            f"'veritee --home {home.root} device init' first"
        )
    monitor.start_daemon(home)
    logging.getLogger("veritee.node").info("booted the secure world of %s", home.root)
    return True


def _stop_secure_world(home: Home) -> None:
    from veritee.errors import Error
    from veritee.tee import monitor

    try:
        monitor.control(home, {"op": "stop"})
    except Error as exc:
        logging.getLogger("veritee.node").warning("could not stop the secure world: %s", exc)


# -- deploy ---------------------------------------------------------------------------------------


class _Progress:
    """Renders deployer steps: one line per module (build, load, attest), then connections."""

    ICONS: ClassVar[dict[str, str]] = {"done": "[green]✔[/]", "failed": "[red]✘[/]"}

    def __init__(self, quiet: bool) -> None:
        from veritee.console import console

        self.console = console(stderr=True, highlight=False, quiet=quiet)
        self.lock = threading.Lock()

    def __call__(self, step: Any) -> None:
        if step.state == "start":
            return
        detail = f" [dim]{step.detail}[/]" if step.detail else ""
        with self.lock:
            self.console.print(
                f"  {self.ICONS[step.state]} {step.step:8} {step.what}{detail}", soft_wrap=True
            )


@click.command(context_settings=CONTEXT)
@click.argument("descriptor", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_state_option
@click.option(
    "--verifier",
    envvar="VERITEE_VERIFIER",
    help="Verification service URL (default: the descriptor's; else appraise locally).",
)
@click.option(
    "--accept",
    type=click.Choice(["affirming", "warning"]),
    default=None,
    help="Worst attestation status still connected (default: the descriptor's, or warning).",
)
@click.option(
    "--trust-home",
    "trust_homes",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Appraise locally with this device home's manufacturer CA and boot reference values.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Deploy again over an existing deployment: overwrite the state file, and replace "
    "the app's modules that already run on its nodes under this deployment key (listed).",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Only list every problem of DESCRIPTOR (fields, sources, builds, endpoints, nodes), "
    "building in a temporary directory; nothing is loaded. Exit 0 clean, 2 when all are in "
    "the descriptor's text, else 10.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the deployment state (--check: problems) as JSON.",
)
def deploy(
    descriptor: Path,
    state_path: Path | None,
    verifier: str | None,
    accept: str | None,
    trust_homes: tuple[Path, ...],
    force: bool,
    check_only: bool,
    as_json: bool,
) -> None:
    """Deploy an app: ship, load and attest every module, then connect them.

    DESCRIPTOR is YAML or JSON, Veritee's format or the Authentic Execution
    deployer's. A module whose attestation is not acceptable is not connected,
    and neither are its connections: the summary says which and why (exit 10).

    \b
    Examples:
      veritee deploy examples/smart-home/app.yaml --verifier http://127.0.0.1:8443
      veritee deploy app.json --trust-home /tmp/hub --trust-home /tmp/srv
      veritee deploy --check tz-to-tz.json
    """
    from veritee.app import descriptor as desc_mod
    from veritee.app.deployer import Deployer

    if check_only:
        _check(descriptor, as_json)
    desc = desc_mod.load(descriptor)
    for warning in desc.warnings:
        click.echo(f"veritee: warning: {warning}", err=True)
    view = _Progress(quiet=as_json)
    view.console.print(
        f"deploying [bold]{desc.app}[/]: {len(desc.modules)} modules on {len(desc.nodes)} "
        f"nodes, {len(desc.connections)} connections"
    )
    deployer = Deployer(
        _state(state_path),
        progress=view,
        verifier=verifier,
        accept=accept,
        trust_homes=trust_homes,
    )
    dep = deployer.deploy(desc, force=force)
    if as_json:
        click.echo(json.dumps(dep.to_json(), indent=2))
    else:
        _summary(view.console, dep)
    refused = [m for m in dep.modules.values() if m.status != "connected"]
    refused_conns = [c for c in dep.connections.values() if c.status != "connected"]
    if refused or refused_conns:
        sys.exit(10)


def _check(descriptor: Path, as_json: bool) -> None:
    """``deploy --check``: problems on stdout, one a line; warnings and the verdict on stderr."""
    from veritee.app.check import check

    report = check(descriptor)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for warning in report.warnings:
            click.echo(f"veritee: warning: {warning}", err=True)
        for problem in report.problems:
            click.echo(problem.message)
        n = len(report.problems)
        click.echo(
            f"{descriptor}: {n} problem{'s' if n != 1 else ''}"
            if n
            else f"{descriptor}: no problems ({report.built} modules built, "
            f"{report.answered} node agents answered)",
            err=True,
        )
    sys.exit(report.exit_code)


def _summary(console: Any, dep: Any) -> None:
    t = dep.timings
    phases = "  ".join(
        f"{k} {t[k]:.2f} s" for k in ("build", "nodes", "load", "attest", "connect") if k in t
    )
    console.print(f"  [dim]{phases}[/]")
    for m in dep.modules.values():
        if m.status != "connected":
            console.print(f"  [red]✘ module {m.name} not connected:[/] {m.reason}")
    for c in dep.connections.values():
        if c.status != "connected" and not c.implicit:
            console.print(f"  [red]✘ connection {c.name} not made:[/] {c.reason}")
    ok = sum(m.status == "connected" for m in dep.modules.values())
    conns = [c for c in dep.connections.values() if not c.implicit]
    made = sum(c.status == "connected" for c in conns)
    colour = "green" if ok == len(dep.modules) and made == len(conns) else "yellow"
    console.print(
        f"[{colour}]{ok}/{len(dep.modules)} modules attested and connected, "
        f"{made}/{len(conns)} connections[/]"
    )


# -- status ---------------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@_state_option
@click.option("--attest", "reattest", is_flag=True, help="Attest every module again first.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def status(state_path: Path | None, reattest: bool, as_json: bool) -> None:
    """Show a deployment: nodes, modules, measurements, attestation, connections, drops.

    Asks each node agent for its live view (delivered and dropped events, what it
    keeps for nodes that are down); a node that does not answer is shown as down.

    \b
    Examples:
      veritee status
      veritee status --attest --json
    """
    from veritee.app import changes
    from veritee.app import state as state_mod
    from veritee.app.deployer import Deployer
    from veritee.app.errors import StateError
    from veritee.app.status import collect

    path = _state(state_path)
    if reattest:
        with state_mod.locked(path):
            changes.reattest(Deployer(path, progress=_Progress(quiet=as_json)))
    dep = state_mod.load(path)
    try:  # without the app's key, nodes show nothing of its modules
        key = state_mod.load_keys(path).deployment
    except StateError:
        key = None
    report = collect(dep, key)
    problem = _status_problem(report)
    report["ok"] = problem is None
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        json_done()  # the report is the result, its "ok" says whether all is well
    else:
        _render(report)
    if problem is not None:
        # What was shown is the state; the exit code says it is not healthy (README's table).
        raise problem


@click.command(context_settings=CONTEXT)
@_state_option
@click.option(
    "--interval",
    type=click.FloatRange(1, 86400),
    default=30.0,
    show_default=True,
    help="Seconds between two rounds of attestation.",
)
@click.option(
    "--poll",
    type=click.FloatRange(0.2, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between two questions to the verifier whether its provisioning changed "
    "(a change starts a round at once).",
)
@click.option("--rounds", type=click.IntRange(1), help="Stop after this many rounds.")
def watch(state_path: Path | None, interval: float, poll: float, rounds: int | None) -> None:
    """Attest a deployment's modules again and again; cut off any no longer acceptable.

    Each round attests every connected module over a fresh nonce, as 'status --attest'
    does. A module whose evidence the appraisal no longer accepts (its device revoked, its
    reference value withdrawn, a stricter policy) is disconnected on the owner's signed
    statement: its peers' secure worlds stop sending to it and take nothing from it. A
    round runs every --interval seconds, and at once when the verifier's provisioning
    changes. One line per round; 'veritee status' shows when each module was last attested.

    \b
    Examples:
      veritee watch                       # every 30 s, and on every provisioning change
      veritee watch --interval 5 --rounds 1
    """
    import time

    from veritee.app import changes
    from veritee.app import state as state_mod
    from veritee.app.deployer import Deployer

    path = _state(state_path)
    dep = state_mod.load(path)
    verifier = None
    if dep.verifier:
        from veritee.verifier.client import VerifierClient

        verifier = VerifierClient(dep.verifier)

    def generation() -> int | None:
        if verifier is None:
            return None
        try:
            return verifier.provisioning_generation()
        except Error:
            return None  # unreachable now: the rounds say so, module by module

    done = 0
    seen = generation()
    why = "start"
    try:
        while True:
            done += 1
            try:
                with state_mod.locked(path):
                    before = {m.name: m.status for m in state_mod.load(path).modules.values()}
                    after = changes.reattest(Deployer(path, progress=_Progress(quiet=True)))
            except Error as exc:  # the verifier down, say: no verdict, so nothing is cut off
                click.echo(f"round {done} ({why}): not done: {exc}", err=True)
            else:
                _report_round(done, why, before, after)
            if rounds is not None and done >= rounds:
                return
            deadline = time.monotonic() + interval
            why = "interval"
            while time.monotonic() < deadline:
                time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
                now = generation()
                if now is not None and now != seen:
                    why, seen = f"provisioning changed, generation {seen} -> {now}", now
                    break
    except KeyboardInterrupt:
        return
    finally:
        if verifier is not None:
            verifier.close()


def _report_round(done: int, why: str, before: dict[str, str], after: Any) -> None:
    """One line for a round of `watch`, and one more for each module it cut off."""
    modules = list(after.modules.values())
    cut = [m for m in modules if m.status == "refused" and before.get(m.name) != "refused"]
    lost = [m.name for m in modules if m.status == "lost"]
    ok = sum(m.status == "connected" for m in modules)
    line = f"round {done} ({why}): {ok}/{len(modules)} modules attested and connected"
    if lost:
        line += f"; not answering: {', '.join(lost)}"
    click.echo(line, err=True)
    for m in cut:
        click.echo(f"  cut off {m.name}: {m.reason}", err=True)


def _status_problem(report: dict[str, Any]) -> Error | None:
    """The first reason a deployment is not healthy: a node down (11) before a module lost,
    refused or not running (10); None when every node answers and every module runs."""
    from veritee.app.errors import AppError, NodeError

    down = [n["name"] for n in report["nodes"] if not n["up"]]
    if down:
        return NodeError(f"node agent(s) down: {', '.join(down)}")
    lost = [
        f"{m['name']} ({m['status'] if m['status'] != 'connected' else 'not running'})"
        for m in report["modules"]
        if m["status"] in ("lost", "refused")
        or (m["status"] == "connected" and m["running"] is False)
    ]
    if lost:
        return AppError(f"module(s) not serving: {', '.join(lost)}")
    return None


def _attested(attestation: dict[str, Any]) -> str:
    """The last appraisal's status and how long ago it was: "affirming, 12 s ago"."""
    import time

    status = str(attestation.get("status", "-"))
    at = attestation.get("at")
    if not isinstance(at, (int, float)):
        return status
    ago = max(0, int(time.time() - at))
    text = f"{ago} s" if ago < 120 else f"{ago // 60} min" if ago < 7200 else f"{ago // 3600} h"
    return f"{status}, {text} ago"


def _render(report: dict[str, Any]) -> None:
    from rich.table import Table

    from veritee.console import console as make_console

    console = make_console(highlight=False)
    console.print(f"[bold]{report['app']}[/]  attested via {report['verifier']}")
    nodes = Table(title="nodes", title_justify="left", show_edge=False)
    for col in ("node", "agent", "up", "kept for peers", "agent drops"):
        nodes.add_column(col)
    for n in report["nodes"]:
        drops = ", ".join(f"{k} {v}" for k, v in n["agent_drops"].items()) or "0"
        up = "[green]up[/]" if n["up"] else "[red]down[/]"
        nodes.add_row(n["name"], n["url"], up, str(n["queued"]), drops)
    console.print(nodes)
    modules = Table(title="modules", title_justify="left", show_edge=False)
    for col in ("module", "node", "status", "measurement", "attestation", "events", "dropped"):
        modules.add_column(col, overflow="fold")
    colours = {"connected": "green", "refused": "red", "lost": "red", "disabled": "dim"}
    for m in report["modules"]:
        status = f"[{colours.get(m['status'], 'yellow')}]{m['status']}[/]"
        if m["running"] is False and m["status"] == "connected":
            status += " [red](not running)[/]"
        dropped = ", ".join(f"{k} {v}" for k, v in (m["dropped"] or {}).items()) or "0"
        delivered = "-" if m["delivered"] is None else str(m["delivered"])
        modules.add_row(
            m["name"],
            m["node"],
            status,
            (m["measurement"][:12] + "…") if m["measurement"] else "-",
            _attested(m["attestation"]),
            delivered,
            dropped,
        )
    console.print(modules)
    conns = Table(title="connections", title_justify="left", show_edge=False)
    for col in ("connection", "status", "dropped"):
        conns.add_column(col, overflow="fold")
    for c in report["connections"]:
        if c["implicit"] and c["status"] == "connected":
            continue
        path = f"{c['from']} → {c['to']}"
        name = path if c["name"] == f"{c['from']}->{c['to']}" else f"{c['name']} ({path})"
        status = f"[{colours.get(c['status'], 'yellow')}]{c['status']}[/]"
        dropped = ", ".join(f"{k} {v}" for k, v in c["dropped"].items()) or "0"
        conns.add_row(name, status, dropped)
    console.print(conns)
    for n in report["nodes"]:
        if n["error"]:
            console.print(f"[red]{n['name']}[/]: {n['error']}")
    for m in report["modules"]:
        if m["reason"]:
            console.print(f"[red]{m['name']}[/]: {m['reason']}")
    for c in report["connections"]:
        if c["reason"] and not c["implicit"]:
            console.print(f"[red]{c['name']}[/]: {c['reason']}")


# -- user commands --------------------------------------------------------------------------------


def _user(state_path: Path | None) -> tuple[Path, Any, Any]:
    from veritee.app import state as state_mod
    from veritee.app.user import UserTool

    path = _state(state_path)
    dep = state_mod.load(path)
    return path, dep, UserTool(dep, state_mod.load_keys(path))


def _echo_answer(answer: bytes) -> None:
    sys.stdout.buffer.write(answer + (b"" if answer.endswith(b"\n") else b"\n"))
    sys.stdout.flush()


@click.command(context_settings=CONTEXT)
@click.argument("module")
@click.argument("entry")
@click.argument("arg", required=False)
@_payload_options
@_state_option
@json_option('Print {"ok", "routed", "log"} as JSON (on a drop: the error, exit 12).')
def call(
    module: str,
    entry: str,
    arg: str | None,
    hex_arg: bool,
    file: Path | None,
    state_path: Path | None,
    as_json: bool,
) -> None:
    """Call an entry point of a module, authenticated as the deployment's user.

    \b
    Examples:
      veritee call button_driver entry          # tz-to-tz.json's button
      veritee call button_driver entry ff --hex --json
    """
    from veritee.app import state as state_mod

    path, dep, tool = _user(state_path)
    with state_mod.locked(path):
        dep = state_mod.load(path)
        tool.deployment = dep
        conn = dep.entry(module, entry)
        try:
            answer = tool.send(conn, _payload(arg, hex_arg, file))
        finally:
            state_mod.save(path, dep)
    _print_log(answer, as_json)


def _print_log(answer: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        log = answer.get("log")
        echo_json({"ok": True, "routed": answer.get("routed"), "log": log or ""})
        return
    _echo_log(answer)


def _echo_log(answer: dict[str, Any]) -> None:
    log = answer.get("log")
    if isinstance(log, str) and log:
        click.echo(log.rstrip("\n"), err=True)
    if answer.get("routed") not in ("local", None):
        click.echo(f"event {answer.get('routed')}", err=True)


@click.command(context_settings=CONTEXT)
@click.argument("connection")
@click.argument("arg", required=False)
@_payload_options
@_state_option
@json_option('Print {"ok", "routed", "log"} as JSON (on a drop: the error, exit 12).')
def output(
    connection: str,
    arg: str | None,
    hex_arg: bool,
    file: Path | None,
    state_path: Path | None,
    as_json: bool,
) -> None:
    """Send an event on a direct connection (the user's tool is its sending end).

    What the module printed while handling it goes to stderr. Exit 12 if its
    secure world dropped the event.

    \b
    Examples:
      veritee output trigger-btn press
      veritee output trigger-btn press --json
    """
    answer = _on_connection(state_path, connection, _payload(arg, hex_arg, file), request=False)
    _print_log(answer, as_json)


@click.command(context_settings=CONTEXT)
@click.argument("connection")
@click.argument("arg", required=False)
@_payload_options
@_state_option
@json_option('Print {"ok", "answer", "answer_hex"} as JSON (answer: null unless UTF-8).')
def request(
    connection: str,
    arg: str | None,
    hex_arg: bool,
    file: Path | None,
    state_path: Path | None,
    as_json: bool,
) -> None:
    """Send a request on a direct connection to a handler; print its (checked) answer.

    \b
    Examples:
      veritee request get-presses
      veritee request get-presses --json
    """
    answer = _on_connection(state_path, connection, _payload(arg, hex_arg, file), request=True)
    if as_json:
        try:
            text: str | None = answer.decode()
        except UnicodeDecodeError:
            text = None
        echo_json({"ok": True, "answer": text, "answer_hex": answer.hex()})
        return
    _echo_answer(answer)


def _on_connection(
    state_path: Path | None, connection: str, payload: bytes, *, request: bool
) -> Any:
    """Send an event (or a request) on a direct connection as the user's tool, keeping its
    counters in the deployment state."""
    from veritee.app import state as state_mod

    path, _, tool = _user(state_path)
    with state_mod.locked(path):
        dep = state_mod.load(path)
        tool.deployment = dep
        conn = dep.connection(connection)
        try:
            return tool.request(conn, payload) if request else tool.send(conn, payload)
        finally:
            state_mod.save(path, dep)


# -- changes --------------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.argument("module")
@click.argument("binary", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--keep-state",
    is_flag=True,
    help="Let the new build open the old one's sealed state (you sign for it).",
)
@_state_option
@json_option('Print {"ok", "module", "status", "measurement", "seconds"} as JSON.')
def update(
    module: str, binary: Path, keep_state: bool, state_path: Path | None, as_json: bool
) -> None:
    """Replace a module with a new binary: load it beside the old, attest, reconnect, swap.

    If the new binary is not acceptable it is discarded and the old one keeps
    running (exit 7). Sealing keys are bound to the measurement, so the new build
    starts empty unless --keep-state: then the deployer signs, with the app's key,
    that this build succeeds the old one, and its secure world lets it open the
    old build's sealed state and private files.

    \b
    Examples:
      veritee update db db-v2.wasm --keep-state
      veritee update db db-v2.wasm --json
    """
    from veritee.app import changes
    from veritee.app import state as state_mod
    from veritee.app.deployer import Deployer

    path = _state(state_path)
    view = _Progress(quiet=as_json)
    with state_mod.locked(path):
        dep, result = changes.update(
            Deployer(path, progress=view), module, binary, keep_state=keep_state
        )
    if as_json:
        echo_json(
            {
                "ok": True,
                "module": module,
                "status": result.status,
                "measurement": result.measurement.hex(),
                "keep_state": keep_state,
                "seconds": round(dep.timings.get("update", 0), 3),
            }
        )
        return
    view.console.print(
        f"[green]{module} updated[/] ({result.status}, {result.measurement.hex()[:16]}…) in "
        f"{dep.timings.get('update', 0):.2f} s"
    )


@click.command(context_settings=CONTEXT)
@click.argument("fragment", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_state_option
@json_option("Print the deployment state as JSON (as deploy --json does).")
def add(fragment: Path, state_path: Path | None, as_json: bool) -> None:
    """Add modules and connections to a running deployment.

    FRAGMENT is a descriptor whose modules are new; its connections may name
    modules already deployed, and its nodes may be new or existing.

    \b
    Examples:
      veritee add thermostat.yaml
      veritee add thermostat.yaml --json
    """
    from veritee.app import changes
    from veritee.app import state as state_mod
    from veritee.app.deployer import Deployer

    path = _state(state_path)
    view = _Progress(quiet=as_json)
    with state_mod.locked(path):
        dep = changes.add(Deployer(path, progress=view), fragment)
    if as_json:
        echo_json(dep.to_json())
        return
    _summary(view.console, dep)


@click.command(context_settings=CONTEXT)
@click.argument("module")
@_state_option
@json_option('Print {"ok", "module", "connections_ended"} as JSON.')
def disable(module: str, state_path: Path | None, as_json: bool) -> None:
    """Unload a module; its connections end and events on them are dropped.

    \b
    Examples:
      veritee disable webserver
      veritee disable webserver --json
    """
    from veritee.app import changes
    from veritee.app import state as state_mod
    from veritee.app.deployer import Deployer

    path = _state(state_path)
    with state_mod.locked(path):
        dep = changes.disable(Deployer(path), module)
    retired = [c.name for c in dep.connections.values() if c.status == "retired" and not c.implicit]
    if as_json:
        echo_json({"ok": True, "module": module, "connections_ended": retired})
        return
    click.echo(f"disabled {module}; connections ended: {', '.join(retired) or 'none'}")
