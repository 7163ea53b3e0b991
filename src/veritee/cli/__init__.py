"""The ``veritee`` command. Light at start-up: heavy libraries are imported inside commands.

Exit codes: the README's table, :data:`veritee.errors.EXIT_CODES`, which ``veritee --help``
shows; an error's class names its code (``exit_code``), :class:`_Group` turns it into one line.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from veritee import servicetls
from veritee.cli._tls import ca_option
from veritee.errors import EXIT_CODES, Error, ModuleError, UsageError
from veritee.home import DEFAULT_VTEE, Home

if TYPE_CHECKING:
    from veritee.tee.supplicant import HttpRelay

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _home(ctx: click.Context) -> Home:
    home: Home = ctx.obj
    return home


_F = TypeVar("_F", bound=Callable[..., Any])

# ctx.meta key (shared by a command's whole context chain): the command was given --json,
# so a failure is a JSON result on stdout too, beside the one line on stderr.
JSON_META = "veritee.json"


def _mark_json(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    if value:
        ctx.meta[JSON_META] = True
    return value


def json_option(
    help: str = "Print the result as JSON (on failure too).",
) -> Callable[[_F], _F]:
    """The ``--json`` flag: the command prints its result as JSON, and a failure as
    ``{"ok": false, "error", "error_type", "exit_code"}``."""
    return click.option("--json", "as_json", is_flag=True, help=help, callback=_mark_json)


def json_done(ctx: click.Context | None = None) -> None:
    """The command already printed its JSON result (a report of what is wrong, then an
    error for the exit code): a failure adds no second JSON document."""
    (ctx or click.get_current_context()).meta[JSON_META] = False


def echo_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, default=str))


def _mark_json_options(cmd: click.Command) -> None:
    """Every command's ``--json`` flag (named ``as_json``) marks the context, wherever it
    was declared, so that every such command also reports a failure as JSON."""
    for param in cmd.params:
        if param.name == "as_json" and param.callback is None:
            param.callback = _mark_json
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _mark_json_options(sub)


def _fail(err: Error, ctx: click.Context | None = None) -> NoReturn:
    click.echo(f"veritee: error: {err}", err=True)
    if ctx is not None and ctx.meta.get(JSON_META):
        echo_json(
            {
                "ok": False,
                "error": str(err),
                "error_type": type(err).__name__,
                "exit_code": err.exit_code,
            }
        )
    sys.exit(err.exit_code)


# Commands defined in the other cli modules, by name: a module is imported when one of its
# commands is named (or help lists them all), so that `veritee run` starts without importing
# the verifier, the deployer or RA-TLS. tests/test_cli.py checks this table against them.
LAZY_COMMANDS = {
    **dict.fromkeys(
        (
            "node",
            "deploy",
            "status",
            "watch",
            "call",
            "output",
            "request",
            "update",
            "add",
            "disable",
        ),
        "app",
    ),
    "dashboard": "dashboard",
    "device": "device",
    "tee": "device",
    "evidence": "evidence",
    "ratls": "ratls",
    "secrets": "secrets",
    "verifier": "verifier",
    "ear": "verifier",
    "vtee": "vtee",
}


class _Group(click.Group):
    """Turns every Veritee error into one line and its exit code, never a traceback; loads
    the commands of :data:`LAZY_COMMANDS` when they are named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module = importlib.import_module(f"veritee.cli.{LAZY_COMMANDS[cmd_name]}")
            module.register(self)
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _mark_json_options(cmd)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Error as err:
            _fail(err, ctx)
        except OSError as err:
            # A file the caller named could not be read or written (a missing directory, no
            # permission) where no command checked it first: one line, never a traceback.
            where = f"{err.filename}: " if err.filename else ""
            _fail(UsageError(f"{where}{err.strerror or err}"), ctx)
        except KeyboardInterrupt:
            click.echo("veritee: interrupted", err=True)
            sys.exit(130)


def _exit_code_table() -> str:
    rows = "\n".join(f"  {code:<3} {meaning}" for code, meaning in EXIT_CODES.items())
    return f"\b\nExit codes:\n{rows}"


@click.group(cls=_Group, context_settings=CONTEXT, epilog=_exit_code_table())
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="VERITEE_HOME",
    help="State directory of the emulated device (default: $VERITEE_HOME or the user data dir).",
)
@ca_option
@click.version_option(package_name="veritee")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, ca: Path | None) -> None:
    """Veritee: run WebAssembly modules inside a TEE and prove what runs where.

    \b
    Quick start:
      veritee device init                 # provision an emulated device
      veritee tee start                   # boot its secure world (background)
      veritee build hello.c -o hello.wasm
      veritee run hello.wasm -- a b c     # run inside the secure world
      veritee attest hello.wasm -o ev.cbor && veritee evidence show ev.cbor
    """
    if ca is not None:
        # Every client made below (and every service this command starts) verifies
        # https:// services against it.
        os.environ[servicetls.CA_ENV] = str(ca.resolve())
    ctx.obj = Home.resolve(home)


# -- modules -------------------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("-O", "opt", default="2", show_default=True, help="Optimisation level.")
@click.option("-I", "includes", multiple=True, type=click.Path(path_type=Path), help="Include dir.")
@click.option(
    "-D", "defines", multiple=True, metavar="NAME[=VALUE]", help="Define a macro (Rust: a cfg)."
)
@json_option('Print {"output", "bytes", "measurement"} as JSON.')
def build(
    source: Path,
    output: Path,
    opt: str,
    includes: tuple[Path, ...],
    defines: tuple[str, ...],
    as_json: bool,
) -> None:
    """Compile a C source (clang), a Rust source or cargo project (rustc, cargo) for
    wasm32-wasi, or WAT text, into a Wasm module.

    \b
    Example:  veritee build examples/hello/hello.c -o hello.wasm
              veritee build examples/rust/smart-home/db.rs -o db.wasm
              veritee build examples/rust/counter -o counter.wasm   # a cargo project
              veritee build examples/hello/hello.c -o hello.wasm --json
    """
    from veritee.wasm import build as wasm_build

    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: directory {output.parent} does not exist")
    size = wasm_build.build(source, output, opt=opt, includes=list(includes), defines=list(defines))
    if as_json:
        from veritee.wasm.runtime import measure as measure_bytes

        digest = measure_bytes(output.read_bytes()).hex()
        echo_json({"ok": True, "output": str(output), "bytes": size, "measurement": digest})
        return
    click.echo(f"built {output} ({size} bytes)", err=True)


@cli.command(context_settings=CONTEXT)
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option('Print {"module", "measurement"} as JSON.')
def measure(module: Path, as_json: bool) -> None:
    """Print a module's measurement (SHA-256 of its binary; WAT is converted first).

    \b
    Examples:
      veritee measure hello.wasm
      veritee measure hello.wasm --json
    """
    from veritee.wasm.runtime import measure as measure_bytes
    from veritee.wasm.runtime import to_binary

    digest = measure_bytes(to_binary(module.read_bytes())).hex()
    if as_json:
        echo_json({"ok": True, "module": str(module), "measurement": digest})
        return
    click.echo(digest)


def _parse_dirs(dirs: tuple[str, ...]) -> list[tuple[str, str, bool]]:
    out = []
    for d in dirs:
        host, _, guest = d.partition("::")
        path = Path(host).resolve()
        if not path.is_dir():
            raise UsageError(f"--dir {d}: {host} is not a directory")
        # The secure world judges the grant by its real path again: this only fails early.
        out.append((str(path), guest or str(path), True))
    return out


def _parse_env(env: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for kv in env:
        key, sep, value = kv.partition("=")
        if not key:
            raise UsageError(f"--env {kv}: expected NAME=VALUE")
        out.append((key, value if sep else os.environ.get(key, "")))
    return out


# What `run` reads ahead of the module from its stdin: at most this many pieces of 64 KiB.
# Reading stops there until the module takes some (a module that never reads stdin costs
# at most this much memory, whatever is piped in).
STDIN_AHEAD_PIECES = 16


class _StdinReader:
    """Our stdin, read by a thread as it comes, handed to the module as it reads.

    The secure world asks for stdin over the same one-at-a-time channel as the output, so
    an answer never waits for input: it is what has arrived so far (possibly nothing)."""

    def __init__(self, fd: int) -> None:
        import queue
        import threading

        self._fd = fd
        self._pieces: queue.Queue[bytes] = queue.Queue(maxsize=STDIN_AHEAD_PIECES)
        self._left = b""
        self._done = False
        threading.Thread(target=self._read, name="stdin", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except OSError:
                data = b""
            self._pieces.put(data)  # b"": the end
            if not data:
                return

    def take(self, most: int) -> tuple[bytes, bool]:
        import queue

        if not self._left and not self._done:
            try:
                self._left = self._pieces.get_nowait()
            except queue.Empty:
                return b"", False
            self._done = not self._left
        piece, self._left = self._left[:most], self._left[most:]
        return piece, self._done and not self._left


def _stdin_reader() -> _StdinReader | None:
    if sys.stdin is None:
        return None  # fd 0 closed: the module reads EOF
    try:
        return _StdinReader(sys.stdin.fileno())
    except (OSError, ValueError):
        return None


@cli.command(
    # Options end at the module: what follows it is the module's, options or not; an unknown
    # option before it is a usage error (not taken for the module's file name).
    context_settings={**CONTEXT, "allow_interspersed_args": False}
)
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True, help="Virtual TEE to run in.")
@click.option(
    "--dir",
    "dirs",
    multiple=True,
    metavar="HOST[::GUEST]",
    help="Grant a directory (GUEST: an absolute path, default HOST's). Never the TEE's own.",
)
@click.option("--env", "env", multiple=True, metavar="NAME[=VAL]", help="Set an env variable.")
@click.option(
    "--max-memory",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Memory limit in MiB.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=300.0,
    show_default=True,
    help="Time budget in seconds.",
)
@click.option(
    "--fuel",
    type=click.IntRange(1),
    default=None,
    metavar="N",
    help="Instruction budget (wasmtime fuel), beside the time one; off by default: "
    "counting slows compute-bound code.",
)
@click.option(
    "--invoke",
    metavar="FUNC",
    default=None,
    help="Call export FUNC with the arguments as its parameters (i32, i64, f32, f64) "
    "instead of _start; its results are printed.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="After the run, print a result object as the last line of stderr (exit code, "
    "stop reason, fuel used); the module's own output is unchanged.",
)
@click.option("--name", default=None, help="Name of the module (default: file name).")
@click.option(
    "--attest-to",
    metavar="URL",
    default=None,
    help="Secret service the module may attest to (WASI-RA); this relays its traffic.",
)
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    vtee: str,
    dirs: tuple[str, ...],
    env: tuple[str, ...],
    max_memory: int,
    timeout: float,
    fuel: int | None,
    invoke: str | None,
    as_json: bool,
    name: str | None,
    attest_to: str | None,
    module: Path,
    args: tuple[str, ...],
) -> None:
    """Run a WASI module inside the secure world; its exit code becomes ours.

    \b
    Flags follow 'wasmtime run': options, then the module, then its arguments
    (a '--' before them is accepted). Standard input streams to the module
    as it reads, and its output back as it writes. A module stopped by a trap or a limit (memory,
    time, --fuel) exits 5, after what it wrote before.
    \b
    Examples: veritee run --dir .::/work --env GREETING=hi hello.wasm -- a b
              veritee run --invoke add math.wasm 2 40       # prints 42
              veritee run --fuel 1000000 loop.wasm
    """
    from veritee.tee import client as teec
    from veritee.tee.ta import WasmSession

    argv = list(args[1:] if args[:1] == ("--",) else args)
    relay: HttpRelay | None = None
    if attest_to:
        from veritee.tee.supplicant import HttpRelay

        relay = HttpRelay(attest_to)
    try:
        with teec.Context(home=_home(ctx), vtee=vtee) as context:
            session = WasmSession(context)
            session.load(
                module.read_bytes(),
                name=name or module.name,
                memory_mb=max_memory,
                timeout=timeout,
                dirs=_parse_dirs(dirs),
                fuel=fuel,
                invoke=invoke,
            )
            reader = _stdin_reader()
            result = session.run(
                argv,
                _parse_env(env),
                relay=relay,
                output=_stream,
                stdin_stream=reader.take if reader is not None else None,
            )
    except Error as err:
        # A trap or a limit: what the module wrote before it still reaches the user.
        partial = err.partial_output if isinstance(err, ModuleError) else None
        if partial is not None:
            _write_output(partial)
        if as_json:
            _json_result(err.exit_code, type(err).__name__, str(err), partial)
        raise
    _write_output(result)
    code = result.exit_code & 0xFF if result.exit_code >= 0 else 1
    if as_json:
        _json_result(code, None, None, result)
    sys.exit(code)


def _json_result(exit_code: int, stop: str | None, reason: str | None, result: Any) -> None:
    import json

    obj = {
        "exit_code": exit_code,
        "module_exit_code": result.exit_code if result is not None and stop is None else None,
        "stopped": {"error": stop, "reason": reason} if stop else None,
        "fuel_used": result.fuel_used if result is not None else None,
        "elapsed": round(result.elapsed, 6) if result is not None else None,
    }
    sys.stderr.write(json.dumps(obj) + "\n")
    sys.stderr.flush()


def _stream(fd: int, data: bytes) -> None:
    """The module's output as it writes it: flushed at once, so a pipe reader sees it."""
    stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
    stream.write(data)
    stream.flush()


def _write_output(result: Any) -> None:
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()


@cli.command(context_settings=CONTEXT)
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--nonce", help="Verifier's challenge, hex (8 to 64 bytes). Random if omitted.")
@click.option(
    "--host-data",
    "--user-data",
    "host_data",
    default="",
    help="Extra data (hex) the module token carries as host-data: chosen by you, the caller, "
    "so nothing binds through it (--user-data is its old name; user data is the module's).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--vtee", default=DEFAULT_VTEE, show_default=True)
@click.option("--max-memory", type=click.IntRange(1), default=256, show_default=True)
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=300.0)
@json_option('Print {"output", "bytes", "measurement", "nonce"} as JSON.')
@click.pass_context
def attest(
    ctx: click.Context,
    module: Path,
    nonce: str | None,
    host_data: str,
    output: Path,
    vtee: str,
    max_memory: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Load a module into the secure world and write evidence for it over a nonce.

    \b
    Examples:
      veritee attest hello.wasm --nonce $(openssl rand -hex 32) -o ev.cbor
      veritee attest hello.wasm --nonce $N -o ev.cbor --json
    """
    from veritee.tee import client as teec
    from veritee.tee.ta import WasmSession

    challenge = _hex_arg("--nonce", nonce) if nonce else os.urandom(32)
    with teec.Context(home=_home(ctx), vtee=vtee) as context:
        session = WasmSession(context)
        info = session.load(
            module.read_bytes(), name=module.name, memory_mb=max_memory, timeout=timeout
        )
        evidence = session.attest(challenge, _hex_arg("--host-data", host_data))
    output.write_bytes(evidence)
    if as_json:
        echo_json(
            {
                "ok": True,
                "output": str(output),
                "bytes": len(evidence),
                "measurement": info["measurement"].hex(),
                "nonce": challenge.hex(),
            }
        )
        return
    click.echo(f"measurement {info['measurement'].hex()}", err=True)
    click.echo(f"nonce       {challenge.hex()}", err=True)
    click.echo(f"wrote {output} ({len(evidence)} bytes)", err=True)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/demo"),
    show_default=True,
    help="Where the demo keeps its devices, modules and state (replaced each run).",
)
@click.option(
    "--single-device",
    is_flag=True,
    help="The one-device tour instead: run, attest, appraise, seal, attack.",
)
@click.option(
    "--presses",
    type=click.IntRange(1, 1000),
    default=5,
    show_default=True,
    help="Button presses in the distributed demo.",
)
@click.option(
    "--nats",
    is_flag=True,
    help="Carry the events through a NATS JetStream broker (nats-server) instead of direct "
    "links between the node agents.",
)
def demo(workdir: Path, single_device: bool, presses: int, nats: bool) -> None:
    """A narrated demo of Veritee.

    By default: the distributed smart-home app (two nodes, each its own device and secure
    world, and a verifier) deployed, attested, connected, driven, and attacked.
    With --single-device: one device, from provisioning to appraised evidence and sealing.

    \b
    \b
    Examples:
      veritee demo --presses 7
      veritee demo --nats        # the same app, its events through a NATS JetStream broker
    """
    if single_device:
        from veritee import demo as tour

        tour.run(workdir.resolve())
        return
    from veritee.app import demo as app_demo

    app_demo.run(workdir.resolve(), presses, nats=nats)


def _hex_arg(flag: str, value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{flag} must be hex") from None


def main() -> None:
    cli(prog_name="veritee")


if __name__ == "__main__":
    main()
