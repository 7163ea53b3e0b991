"""The secure world's trusted applications: their UUIDs, commands, and a client-side binding.

Four TAs live in every (v)TEE:

- the **Wasm runtime TA**: one session holds one loaded module instance, with its own
  attestation and provisioning keys. Commands: LOAD, RUN, ATTEST, INFO.
- the **system TA**: STATUS (boot log, vTEE identity, loaded modules).
- the **application TA**: a long-lived module of a distributed app (see ``AppSession``).
- the **TLS TA**: RA-TLS endpoints of modules, terminated inside (see docs/ratls.md).

Structured inputs and outputs travel as CBOR inside memref parameters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from veritee.errors import ModuleError, ModuleLimitExceeded
from veritee.tee import client as teec

RUNTIME_TA = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:veritee:ta:wasm-runtime"))
SYSTEM_TA = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:veritee:ta:system"))

CMD_LOAD = 0x1  # p0 in: module bytes; p1 in: CBOR load config; p2 out: CBOR module info
CMD_RUN = 0x2  # p0 in: CBOR run request; p1 out: CBOR result; p2 value out: a = exit code
CMD_ATTEST = 0x3  # p0 in: nonce; p1 in: host data; p2 out: evidence (CBOR)
CMD_INFO = 0x4  # p0 out: CBOR module info
CMD_STATUS = 0x10  # system TA; p0 out: CBOR status

# Output capacities the client offers. They bound what a TA may return, not what is allocated.
MAX_RESULT_BYTES = 40 * 1024 * 1024
MAX_EVIDENCE_BYTES = 64 * 1024
MAX_INFO_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RunOutput:
    exit_code: int
    stdout: bytes
    stderr: bytes
    elapsed: float
    truncated: bool
    fuel_used: int | None = None


def _with_client(
    relay: teec.Relay | None,
    output: Callable[[int, bytes], None] | None,
    stdin: Callable[[int], tuple[bytes, bool]] | None,
) -> teec.Relay:
    """``relay``, with the secure world's streamed output ({"op": "output"}) going to
    ``output`` (answered once written, so the module waits for a slow reader) and its
    requests for stdin ({"op": "stdin"}) answered by ``stdin``: (what is there now, at end)."""

    def serve(rpc: dict[str, Any]) -> dict[str, Any]:
        op = rpc.get("op")
        if op == "stdin" and stdin is not None:
            most = rpc.get("max")
            if not isinstance(most, int) or most < 1:
                return {"error": "malformed stdin request"}
            data, at_end = stdin(most)
            return {"data": data[:most], "eof": at_end}
        if op != "output" or output is None:
            return relay(rpc) if relay is not None else {"error": "no relay"}
        fd, chunk = rpc.get("fd"), rpc.get("data")
        if fd not in (1, 2) or not isinstance(chunk, bytes):
            return {"error": "malformed output"}
        try:
            output(int(fd), chunk)
        except OSError as exc:  # our reader went away (a closed pipe): say so, go on
            return {"error": f"output closed: {exc.strerror}"}
        return {}

    return serve


class WasmSession:
    """A session with the runtime TA: one module, loaded into a (v)TEE."""

    def __init__(self, context: teec.Context) -> None:
        self.session = context.open_session(RUNTIME_TA)
        self.info: dict[str, Any] = {}

    def load(
        self,
        module: bytes,
        *,
        name: str = "module",
        memory_mb: int | None = None,
        timeout: float | None = None,
        dirs: list[tuple[str, str, bool]] | None = None,
        fuel: int | None = None,
        invoke: str | None = None,
    ) -> dict[str, Any]:
        """Load ``module`` (Wasm binary or WAT); returns measurement and config digest.

        ``fuel``: an instruction budget for each run; ``invoke``: the export runs call
        (with their arguments as its parameters) instead of ``_start``."""
        config: dict[str, Any] = {"name": name, "dirs": [list(d) for d in dirs or []]}
        if fuel is not None:
            config["fuel"] = fuel
        if invoke is not None:
            config["invoke"] = invoke
        if memory_mb is not None:
            config["memory_mb"] = memory_mb
        if timeout is not None:
            config["timeout"] = timeout
        out = teec.memref_out(MAX_INFO_BYTES)
        self.session.invoke(
            CMD_LOAD,
            teec.Operation([teec.memref_in(module), teec.memref_in(cbor2.dumps(config)), out]),
        )
        self.info = cbor2.loads(out.buffer)
        return self.info

    def run(
        self,
        args: list[str],
        env: list[tuple[str, str]] | None = None,
        stdin: bytes = b"",
        relay: teec.Relay | None = None,
        output: Callable[[int, bytes], None] | None = None,
        stdin_stream: Callable[[int], tuple[bytes, bool]] | None = None,
    ) -> RunOutput:
        """Run the module; ``relay`` carries its attestation traffic (see supplicant).

        ``output``: called with (1 or 2, bytes) as the module writes, while it runs (the
        result's stdout and stderr are then empty); without it, output comes at the end.
        ``stdin_stream``: called with a size as the module reads stdin, returns at most that
        many bytes of what is there now (never waiting) and whether stdin is at its end;
        without it, the module reads ``stdin``."""
        request = {
            "args": args,
            "env": [list(kv) for kv in env or []],
            "stdin": stdin,
            "relay": relay is not None,
            "stream": output is not None,
            "stdin_stream": stdin_stream is not None,
        }
        if output is not None or stdin_stream is not None:
            relay = _with_client(relay, output, stdin_stream)
        out = teec.memref_out(MAX_RESULT_BYTES)
        code = teec.value_out()
        self.session.invoke(
            CMD_RUN, teec.Operation([teec.memref_in(cbor2.dumps(request)), out, code]), relay
        )
        result = cbor2.loads(out.buffer)
        done = RunOutput(
            exit_code=code.a if code.a < 2**31 else code.a - 2**32,
            stdout=result["stdout"],
            stderr=result["stderr"],
            elapsed=result["elapsed"],
            truncated=result["truncated"],
            fuel_used=result.get("fuel_used"),
        )
        stopped = result.get("stopped")
        if isinstance(stopped, dict):
            # Trapped or over a limit after it started: raised as before, carrying what the
            # module wrote first (the CLI shows it before the error line).
            cls = (
                ModuleLimitExceeded if stopped.get("kind") == "ModuleLimitExceeded" else ModuleError
            )
            err = cls(str(stopped.get("message", "module stopped")))
            err.partial_output = done
            raise err
        return done

    def attest(self, nonce: bytes, host_data: bytes = b"") -> bytes:
        """Evidence for this module over the verifier's ``nonce``; ``host_data`` lands in
        the module token's host-data claim (chosen by the caller), never in its user data."""
        out = teec.memref_out(MAX_EVIDENCE_BYTES)
        self.session.invoke(
            CMD_ATTEST,
            teec.Operation([teec.memref_in(nonce), teec.memref_in(host_data), out]),
        )
        return out.buffer

    def close(self) -> None:
        self.session.close()


def status(context: teec.Context) -> dict[str, Any]:
    session = context.open_session(SYSTEM_TA)
    try:
        out = teec.memref_out(MAX_INFO_BYTES)
        session.invoke(CMD_STATUS, teec.Operation([out]))
        value: dict[str, Any] = cbor2.loads(out.buffer)
        return value
    finally:
        session.close()


# -- the application TA: long-lived modules of a distributed app (see docs/apps.md) ---------

APP_TA = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:veritee:ta:app-module"))
CMD_APP_LOAD = 0x20  # p0 in: module; p1 in: CBOR config; p2 out: CBOR info
CMD_APP_ATTEST = 0x21  # p0 in: nonce; p1 in: host data; p2 out: evidence
CMD_APP_CONNECT = 0x22  # p0 in: statement signed with the deployment key; p1 out: state
CMD_APP_DELIVER = 0x23  # p0 in: sealed event; p1 out: CBOR outcome
CMD_APP_STATUS = 0x24  # p0 out: CBOR status
CMD_APP_PUBLIC = 0x25  # p0 in: endpoint name; p1 in: request bytes; p2 out: CBOR outcome
CMD_APP_DELIVER_BATCH = 0x26  # p0 in: CBOR list of sealed events; p1 out: CBOR batch outcome
CMD_APP_DISCONNECT = 0x27  # p0 in: statement signed with the deployment key; p1 out: state
CMD_APP_FORGET = 0x28  # p0 in: measurement; p1 in: the newest sealed state, being discarded


@dataclass(frozen=True)
class Outcome:
    """What delivering one event produced.

    ``events``: sealed events the module emitted (route each by its connection id);
    ``reply``: the sealed answer when the event was a request; ``state``: the instance's
    sealed state after the event (store it, hand it back to ``load`` after a restart);
    ``dropped``: why the event was refused (replay, altered, misrouted, malformed), else None;
    ``log``: what the module wrote to stdout/stderr.
    """

    events: list[bytes]
    reply: bytes | None
    state: bytes
    dropped: str | None
    log: str


@dataclass(frozen=True)
class BatchOutcome:
    """What delivering a batch of events produced.

    ``dropped``: per event, in order, why it was refused, or None if the module took it;
    ``events``: what the module emitted, in order (route each by its connection id);
    ``state``: the sealed state after the whole batch; ``log``: the module's output.
    """

    dropped: list[str | None]
    events: list[bytes]
    state: bytes
    log: str

    def outcome(self, i: int) -> Outcome:
        """The part of the batch that concerns its event ``i`` (for a caller waiting on it)."""
        return Outcome([], None, self.state, self.dropped[i], self.log)


def _outcome(raw: bytes) -> Outcome:
    r = cbor2.loads(raw)
    return Outcome(r["events"], r["reply"], r["state"], r["dropped"], r["log"])


class AppSession:
    """A session with the application TA: one long-lived module instance of an app.

    Node agents use it: ``load`` (with the app's deployment public key, and the sealed state
    from a previous life if any), ``attest``, ``connect`` (statements the deployer signed),
    ``deliver`` each sealed event that arrives for this module. Requests the module makes
    during a delivery reach the node agent through ``relay`` as
    ``{"op": "request", "event": sealed}``; it must answer ``{"event": sealed_reply}`` or
    ``{"error": reason}``. Give each AppSession its own Context (connection): a request
    relayed during one delivery is delivered to its handler's session meanwhile, and calls
    on one connection do not nest.
    """

    def __init__(self, context: teec.Context) -> None:
        self.session = context.open_session(APP_TA)
        self.info: dict[str, Any] = {}

    def load(
        self,
        module: bytes,
        *,
        name: str,
        app: str,
        deployment_key: bytes,
        memory_mb: int | None = None,
        timeout: float | None = None,
        state: bytes | None = None,
        succession: bytes | None = None,
    ) -> dict[str, Any]:
        """Returns measurement, config_digest, endpoints ([kind, name]), key (X25519), and
        ``recovered`` ({state, events}) when the TEE kept the last answer an earlier client
        of this state went away without: the caller keeps that state and sends the events.

        ``succession``: a statement the app owner signed that lets this build open the
        sealed state (and private files) of the build it replaces.
        """
        config: dict[str, Any] = {"name": name, "app": app, "deployment_key": deployment_key}
        if memory_mb is not None:
            config["memory_mb"] = memory_mb
        if timeout is not None:
            config["timeout"] = timeout
        if state is not None:
            config["state"] = state
        if succession is not None:
            config["succession"] = succession
        # With "recovered" (the answer a killed agent never took: its state and events).
        out = teec.memref_out(MAX_RESULT_BYTES)
        self.session.invoke(
            CMD_APP_LOAD,
            teec.Operation([teec.memref_in(module), teec.memref_in(cbor2.dumps(config)), out]),
        )
        self.info = cbor2.loads(out.buffer)
        return self.info

    def attest(self, nonce: bytes, host_data: bytes = b"") -> bytes:
        out = teec.memref_out(MAX_EVIDENCE_BYTES)
        self.session.invoke(
            CMD_APP_ATTEST,
            teec.Operation([teec.memref_in(nonce), teec.memref_in(host_data), out]),
        )
        return out.buffer

    def connect(self, statement: bytes) -> bytes:
        """Bind an endpoint; returns the instance's sealed state, now with the connection."""
        state = teec.memref_out(MAX_INFO_BYTES)
        self.session.invoke(CMD_APP_CONNECT, teec.Operation([teec.memref_in(statement), state]))
        return state.buffer

    def disconnect(self, statement: bytes) -> bytes:
        """End the connections a signed disconnect statement names; returns the sealed state."""
        state = teec.memref_out(MAX_INFO_BYTES)
        self.session.invoke(CMD_APP_DISCONNECT, teec.Operation([teec.memref_in(statement), state]))
        return state.buffer

    def deliver(self, event: bytes, relay: teec.Relay | None = None) -> Outcome:
        out = teec.memref_out(MAX_RESULT_BYTES)
        self.session.invoke(CMD_APP_DELIVER, teec.Operation([teec.memref_in(event), out]), relay)
        return _outcome(out.buffer)

    def deliver_batch(self, events: list[bytes], relay: teec.Relay | None = None) -> BatchOutcome:
        """Deliver events in one call; each is checked on its own, the state sealed once."""
        out = teec.memref_out(MAX_RESULT_BYTES)
        self.session.invoke(
            CMD_APP_DELIVER_BATCH,
            teec.Operation([teec.memref_in(cbor2.dumps(events)), out]),
            relay,
        )
        r = cbor2.loads(out.buffer)
        return BatchOutcome(r["dropped"], r["events"], r["state"], r["log"])

    def public(self, endpoint: str, request: bytes, relay: teec.Relay | None = None) -> Outcome:
        """Call a public (unauthenticated) endpoint; its answer is ``Outcome.reply``, plain."""
        out = teec.memref_out(MAX_RESULT_BYTES)
        self.session.invoke(
            CMD_APP_PUBLIC,
            teec.Operation([teec.memref_in(endpoint.encode()), teec.memref_in(request), out]),
            relay,
        )
        return _outcome(out.buffer)

    def forget(self, measurement: bytes, state: bytes) -> None:
        """Discard a module instance's sealed state for good (its module, of
        ``measurement``, is disabled or replaced without keeping it): the secure world
        frees its rollback counter and deletes what it kept for it. Needs the newest state,
        in a session with no module loaded; refused while an instance runs that state."""
        self.session.invoke(
            CMD_APP_FORGET, teec.Operation([teec.memref_in(measurement), teec.memref_in(state)])
        )

    def status(self) -> dict[str, Any]:
        out = teec.memref_out(MAX_INFO_BYTES)
        self.session.invoke(CMD_APP_STATUS, teec.Operation([out]))
        value: dict[str, Any] = cbor2.loads(out.buffer)
        return value

    def close(self) -> None:
        self.session.close()


# -- the TLS TA (attested TLS, veritee.tee.tls_ta): a module's TLS endpoint in the secure world.
# Every command takes p0 in: a CBOR request, and gives p1 out: a CBOR reply.
TLS_TA = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:veritee:ta:tls"))
CMD_TLS_LOAD = 0x30  # load the module whose endpoint this session is; reply: its identity
CMD_TLS_OPEN = 0x31  # open a connection (server or client role); reply: conn id, bytes to send
CMD_TLS_FEED = 0x32  # bytes that arrived for a connection; reply: bytes to send, state, result
CMD_TLS_CLOSE = 0x33  # forget a connection (its socket is gone)
MAX_TLS_REPLY_BYTES = 40 * 1024 * 1024  # a response of 16 MiB, TLS records, a module's output
