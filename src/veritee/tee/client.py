"""The TEE Client API: how normal-world programs talk to a secure world (GlobalPlatform style).

Mirrors the GlobalPlatform TEE Client API as OP-TEE's libteec offers it: a :class:`Context`
(``TEEC_InitializeContext``) connected to one TEE (here: one vTEE's socket), sessions opened
with a trusted application named by UUID (``TEEC_OpenSession``), commands invoked with up to
four parameters, values or temporary memory references (``TEEC_InvokeCommand``), and every
failure reported as a TEEC return code with its origin. Kept free of heavy imports: ``veritee
run`` starts with it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from veritee.errors import ModuleError, SecureWorldError, UsageError
from veritee.home import DEFAULT_VTEE, Home
from veritee.tee import protocol

# Return codes (GlobalPlatform TEE Client API v1.0, section 4.4.2).
TEEC_SUCCESS = 0x00000000
TEEC_ERROR_GENERIC = 0xFFFF0000
TEEC_ERROR_ACCESS_DENIED = 0xFFFF0001
TEEC_ERROR_CANCEL = 0xFFFF0002
TEEC_ERROR_BAD_FORMAT = 0xFFFF0005
TEEC_ERROR_BAD_PARAMETERS = 0xFFFF0006
TEEC_ERROR_BAD_STATE = 0xFFFF0007
TEEC_ERROR_ITEM_NOT_FOUND = 0xFFFF0008
TEEC_ERROR_NOT_IMPLEMENTED = 0xFFFF0009
TEEC_ERROR_NOT_SUPPORTED = 0xFFFF000A
TEEC_ERROR_OUT_OF_MEMORY = 0xFFFF000C
TEEC_ERROR_BUSY = 0xFFFF000D
TEEC_ERROR_COMMUNICATION = 0xFFFF000E
TEEC_ERROR_SECURITY = 0xFFFF000F
TEEC_ERROR_SHORT_BUFFER = 0xFFFF0010
TEEC_ERROR_TARGET_DEAD = 0xFFFF3024

CODE_NAMES = {
    value: name
    for name, value in globals().items()
    if name.startswith("TEEC_ERROR_") or name == "TEEC_SUCCESS"
}

# Return origins (section 4.4.3).
TEEC_ORIGIN_API = 1
TEEC_ORIGIN_COMMS = 2
TEEC_ORIGIN_TEE = 3
TEEC_ORIGIN_TRUSTED_APP = 4
ORIGIN_NAMES = {1: "API", 2: "COMMS", 3: "TEE", 4: "TRUSTED_APP"}

# Parameter types (section 4.5.4).
TEEC_NONE = 0x0
TEEC_VALUE_INPUT = 0x1
TEEC_VALUE_OUTPUT = 0x2
TEEC_VALUE_INOUT = 0x3
TEEC_MEMREF_TEMP_INPUT = 0x5
TEEC_MEMREF_TEMP_OUTPUT = 0x6
TEEC_MEMREF_TEMP_INOUT = 0x7
_VALUE_TYPES = (TEEC_VALUE_INPUT, TEEC_VALUE_OUTPUT, TEEC_VALUE_INOUT)
_MEMREF_TYPES = (TEEC_MEMREF_TEMP_INPUT, TEEC_MEMREF_TEMP_OUTPUT, TEEC_MEMREF_TEMP_INOUT)

TEEC_LOGIN_PUBLIC = 0x0
TEEC_LOGIN_USER = 0x1

MAX_PARAMS = 4


# Seconds to look for the reason a TEE gave before it closed a connection mid-call.
PARTING_TIMEOUT = 1.0


class TeecError(SecureWorldError):
    """A TEEC call failed: ``code`` and ``origin`` as GlobalPlatform defines them."""

    def __init__(self, code: int, origin: int, message: str = "") -> None:
        self.code = code
        self.origin = origin
        self.message = message
        if origin == TEEC_ORIGIN_TRUSTED_APP and code in (
            TEEC_ERROR_BAD_FORMAT,
            TEEC_ERROR_CANCEL,
        ):
            self.exit_code = ModuleError.exit_code  # the module was at fault, not the TEE
        elif origin == TEEC_ORIGIN_TRUSTED_APP and code == TEEC_ERROR_BAD_PARAMETERS:
            self.exit_code = UsageError.exit_code  # the TA refused what the caller asked
        name = CODE_NAMES.get(code, f"0x{code:08x}")
        where = ORIGIN_NAMES.get(origin, str(origin))
        super().__init__(message or f"{name} (origin {where})")

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, f"0x{self.code:08x}")


@dataclass
class Value:
    """A value parameter: two 32-bit unsigned integers."""

    type: int = TEEC_VALUE_INPUT
    a: int = 0
    b: int = 0


@dataclass
class TempMemref:
    """A temporary memory reference: ``buffer`` in, and up to ``size`` bytes out."""

    type: int = TEEC_MEMREF_TEMP_INPUT
    buffer: bytes = b""
    size: int = 0

    def __post_init__(self) -> None:
        if self.type == TEEC_MEMREF_TEMP_INPUT and not self.size:
            self.size = len(self.buffer)


Param = Value | TempMemref | None
Relay = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Operation:
    """Up to four parameters; after a call, output parameters hold what the TA wrote."""

    params: list[Param] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.params) > MAX_PARAMS:
            raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "more than 4 parameters")
        self.params = [*self.params, *([None] * (MAX_PARAMS - len(self.params)))]

    def encode(self) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        for p in self.params:
            if p is None:
                out.append(None)
            elif isinstance(p, Value):
                if p.type not in _VALUE_TYPES:
                    raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "bad value type")
                out.append({"t": p.type, "a": p.a, "b": p.b})
            else:
                if p.type not in _MEMREF_TYPES:
                    raise TeecError(TEEC_ERROR_BAD_PARAMETERS, TEEC_ORIGIN_API, "bad memref type")
                data = p.buffer if p.type != TEEC_MEMREF_TEMP_OUTPUT else b""
                out.append({"t": p.type, "buf": data, "size": p.size})
        return out

    def update(self, returned: Any) -> None:
        if not isinstance(returned, list) or len(returned) != MAX_PARAMS:
            return
        for p, r in zip(self.params, returned, strict=True):
            if p is None or not isinstance(r, dict):
                continue
            if isinstance(p, Value) and p.type in (TEEC_VALUE_OUTPUT, TEEC_VALUE_INOUT):
                p.a, p.b = int(r.get("a", 0)), int(r.get("b", 0))
            elif isinstance(p, TempMemref) and p.type in (
                TEEC_MEMREF_TEMP_OUTPUT,
                TEEC_MEMREF_TEMP_INOUT,
            ):
                p.size = int(r.get("size", 0))
                buf = r.get("buf", b"")
                p.buffer = buf if isinstance(buf, bytes) else b""


def value_in(a: int = 0, b: int = 0) -> Value:
    return Value(TEEC_VALUE_INPUT, a, b)


def value_out() -> Value:
    return Value(TEEC_VALUE_OUTPUT)


def memref_in(data: bytes) -> TempMemref:
    return TempMemref(TEEC_MEMREF_TEMP_INPUT, data, len(data))


def memref_out(size: int) -> TempMemref:
    return TempMemref(TEEC_MEMREF_TEMP_OUTPUT, b"", size)


class Context:
    """``TEEC_InitializeContext``: a connection to one TEE (a vTEE's Client API endpoint)."""

    def __init__(
        self,
        name: str | os.PathLike[str] | None = None,
        *,
        home: Home | None = None,
        vtee: str = DEFAULT_VTEE,
    ) -> None:
        path = Path(name) if name is not None else (home or Home.resolve()).vtee_socket(vtee)
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            self._sock.close()
            raise TeecError(
                TEEC_ERROR_COMMUNICATION,
                TEEC_ORIGIN_COMMS,
                f"the secure world for vTEE {vtee!r} is not running (no listener at {path}): "
                "start it with 'veritee tee start'",
            ) from None
        except OSError as exc:
            self._sock.close()
            raise TeecError(
                TEEC_ERROR_COMMUNICATION, TEEC_ORIGIN_COMMS, f"cannot reach {path}: {exc}"
            ) from None
        self._closed = False
        self._sessions: set[Session] = set()

    def call(self, message: dict[str, Any], relay: Relay | None = None) -> dict[str, Any]:
        """One request; requests the TEE makes of the normal world meanwhile go to ``relay``."""
        if self._closed:
            raise TeecError(TEEC_ERROR_BAD_STATE, TEEC_ORIGIN_API, "context is finalized")
        try:
            protocol.send(self._sock, message)
            reply = protocol.recv(self._sock)
            while "rpc" in reply:
                rpc = reply["rpc"]
                answer = relay(rpc) if relay and isinstance(rpc, dict) else {"error": "no relay"}
                protocol.send(self._sock, {"rpc_reply": answer})
                reply = protocol.recv(self._sock)
        except (OSError, protocol.ProtocolError) as exc:
            parting = self._parting_reason()
            if parting is None:
                raise TeecError(
                    TEEC_ERROR_TARGET_DEAD,
                    TEEC_ORIGIN_COMMS,
                    f"lost the secure world mid-call ({exc})",
                ) from None
            reply = parting
        rc = reply.get("rc", TEEC_ERROR_GENERIC)
        if rc != TEEC_SUCCESS:
            raise TeecError(
                int(rc), int(reply.get("origin", TEEC_ORIGIN_TEE)), str(reply.get("msg", ""))
            )
        return reply

    def _parting_reason(self) -> dict[str, Any] | None:
        """The error the TEE sent before it closed the connection (it refuses a connection
        over its limits that way), if it sent one."""
        try:
            self._sock.settimeout(PARTING_TIMEOUT)
            reply = protocol.recv(self._sock)
        except (OSError, protocol.ProtocolError):
            return None
        return reply if reply.get("rc", TEEC_SUCCESS) != TEEC_SUCCESS else None

    def open_session(
        self, uuid: str, operation: Operation | None = None, login: int = TEEC_LOGIN_PUBLIC
    ) -> Session:
        """``TEEC_OpenSession`` with the trusted application ``uuid``."""
        op = operation or Operation()
        reply = self.call({"op": "open", "uuid": uuid, "login": login, "params": op.encode()})
        op.update(reply.get("params"))
        session = Session(self, int(reply["session"]))
        self._sessions.add(session)
        return session

    def close(self) -> None:
        """``TEEC_FinalizeContext``: closes every session still open on this context (a
        client that goes without, a killed one, leaves its sessions hung up: the TEE then
        keeps an app module's last answer, which it cannot know was taken)."""
        if not self._closed:
            for session in list(self._sessions):
                with contextlib.suppress(OSError):
                    session.close()
            self._closed = True
            self._sock.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Session:
    """An open session with a trusted application."""

    def __init__(self, context: Context, session_id: int) -> None:
        self.context = context
        self.id = session_id
        self._open = True

    def invoke(
        self, command: int, operation: Operation | None = None, relay: Relay | None = None
    ) -> Operation:
        """``TEEC_InvokeCommand``; output parameters of ``operation`` are filled in.

        ``relay`` plays the part of OP-TEE's tee-supplicant: it carries out requests the
        trusted application makes of the normal world during the call (e.g. network I/O).
        """
        if not self._open:
            raise TeecError(TEEC_ERROR_BAD_STATE, TEEC_ORIGIN_API, "session is closed")
        op = operation or Operation()
        reply = self.context.call(
            {"op": "invoke", "session": self.id, "cmd": command, "params": op.encode()}, relay
        )
        op.update(reply.get("params"))
        return op

    def close(self) -> None:
        """``TEEC_CloseSession``."""
        if self._open:
            self._open = False
            self.context._sessions.discard(self)
            # The session dies with the connection either way.
            with contextlib.suppress(TeecError):
                self.context.call({"op": "close", "session": self.id})

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
