"""The deployment state file: what was deployed where, attested how, connected by which id.

JSON, written atomically; later commands (status, call, output, request, update, add,
disable) act on it. It holds no secret: the app's deployment key and the user's
key-agreement key sit beside it in ``STATE.keys`` (mode 0600), and no connection key is
stored anywhere (the user's tool derives its own per command). The user's per-connection
counters are kept here so they keep increasing across commands; a lock file serialises
commands that change the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from veritee.app.errors import StateError

VERSION = 1
DEFAULT_STATE = "veritee-deployment.json"
STATE_ENV = "VERITEE_DEPLOYMENT"
MAX_STATE_BYTES = 16 * 1024 * 1024  # a state file this big is not one we wrote


@dataclass
class ModuleState:
    name: str
    node: str
    binary: str
    measurement: str = ""  # hex
    config: str = ""  # hex
    key: str = ""  # hex: attested X25519 key
    status: str = "pending"  # pending, connected, refused, disabled
    reason: str = ""
    attestation: dict[str, Any] = field(default_factory=dict)
    memory_mb: int | None = None
    timeout: float | None = None
    endpoints: list[list[str]] = field(default_factory=list)


@dataclass
class ConnectionState:
    name: str
    id: str  # hex, 16 bytes
    to_module: str
    to_kind: str
    to_endpoint: str
    from_module: str | None = None  # None: the user's tool (direct or entry)
    from_kind: str = "output"
    from_endpoint: str = "user"
    status: str = "pending"  # pending, connected, refused, retired
    reason: str = ""
    sent: int = 0  # the user's counters, for direct connections
    received: int = 0
    implicit: bool = False  # an entry point's connection, made for `veritee call`

    @property
    def direct(self) -> bool:
        return self.from_module is None

    @property
    def conn(self) -> bytes:
        return bytes.fromhex(self.id)


@dataclass
class NodeState:
    name: str
    host: str
    port: int
    events: list[Any] = field(default_factory=list)  # [host, port] the agent receives events on
    tls: bool = False  # its agent serves HTTPS

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


@dataclass
class Deployment:
    app: str
    descriptor: str
    verifier: str | None = None
    accept: str = "warning"
    trust: list[str] = field(default_factory=list)  # device homes for local appraisal
    nodes: dict[str, NodeState] = field(default_factory=dict)
    modules: dict[str, ModuleState] = field(default_factory=dict)
    connections: dict[str, ConnectionState] = field(default_factory=dict)
    periodic: list[list[Any]] = field(default_factory=list)
    # How events travel between the app's nodes: "direct", a NATS URL, or None (each
    # node's own default, ``node start --transport``).
    transport: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    updated: float = 0.0
    version: int = VERSION

    def module(self, name: str) -> ModuleState:
        m = self.modules.get(name)
        if m is None:
            raise StateError(
                f"no module {name!r} in this deployment (modules: {', '.join(self.modules)})"
            )
        return m

    def connection(self, name: str) -> ConnectionState:
        c = self.connections.get(name)
        if c is None:
            shown = ", ".join(n for n, c in self.connections.items() if not c.implicit)
            raise StateError(f"no connection {name!r} in this deployment (connections: {shown})")
        return c

    def entry(self, module: str, entry: str) -> ConnectionState:
        """The connection ``veritee call MODULE ENTRY`` goes on."""
        self.module(module)
        c = self.connections.get(f"{module}.{entry}")
        if c is None or not c.implicit:
            entries = [c.to_endpoint for c in self.connections.values()
                       if c.implicit and c.to_module == module]  # fmt: skip
            raise StateError(
                f"module {module!r} has no entry point {entry!r} "
                f"(its entry points: {', '.join(entries) or 'none'})"
            )
        return c

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any) -> Deployment:
        if not isinstance(value, dict) or value.get("version") != VERSION:
            raise StateError("not a Veritee deployment state file (or of another version)")
        try:
            return cls(
                app=value["app"],
                descriptor=value["descriptor"],
                verifier=value.get("verifier"),
                accept=value.get("accept", "warning"),
                trust=[str(t) for t in value.get("trust", [])],
                nodes={k: _make(NodeState, v) for k, v in value["nodes"].items()},
                modules={k: _make(ModuleState, v) for k, v in value["modules"].items()},
                connections={k: _make(ConnectionState, v) for k, v in value["connections"].items()},
                periodic=list(value.get("periodic", [])),
                transport=value.get("transport"),
                timings=dict(value.get("timings", {})),
                updated=float(value.get("updated", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"deployment state file is damaged ({exc})") from None


def _make(cls: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__} entry is not an object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in value.items() if k in names})


def default_path() -> Path:
    return Path(os.environ.get(STATE_ENV, DEFAULT_STATE))


def load(path: Path) -> Deployment:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StateError(
            f"no deployment state at {path}: deploy first ('veritee deploy app.yaml'), or give "
            f"--state (or ${STATE_ENV})"
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_STATE_BYTES:
        raise StateError(f"{path} is over {MAX_STATE_BYTES} bytes: not a state file we wrote")
    try:
        value = json.loads(raw)
    except ValueError:
        raise StateError(f"{path} is not JSON: not a deployment state file") from None
    return Deployment.from_json(value)


def save(path: Path, deployment: Deployment) -> None:
    deployment.updated = time.time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(deployment.to_json(), indent=2) + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise commands that change the state (and the user's counters) of one deployment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- keys: beside the state, readable by its owner only ----------------------------------------


@dataclass(frozen=True)
class Keys:
    deployment: ec.EllipticCurvePrivateKey  # the app's deployment key: signs connect statements
    user: x25519.X25519PrivateKey  # the user's tool: one end of direct connections

    @property
    def deployment_public(self) -> bytes:
        return self.deployment.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    @property
    def user_public(self) -> bytes:
        return self.user.public_key().public_bytes_raw()


def keys_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".keys")


def new_keys() -> Keys:
    return Keys(ec.generate_private_key(ec.SECP256R1()), x25519.X25519PrivateKey.generate())


def save_keys(state_path: Path, keys: Keys) -> None:
    path = keys_path(state_path)
    pem = keys.deployment.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body = json.dumps({"deployment_key": pem, "user_key": keys.user.private_bytes_raw().hex()})
    fd = os.open(path.with_name(path.name + ".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body + "\n")
    path.with_name(path.name + ".tmp").replace(path)


def load_keys(state_path: Path) -> Keys:
    path = keys_path(state_path)
    try:
        value = json.loads(path.read_text())
        key = serialization.load_pem_private_key(value["deployment_key"].encode(), None)
        user = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(value["user_key"]))
    except FileNotFoundError:
        raise StateError(f"the deployment's keys are missing ({path})") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise StateError(f"{path} does not hold this deployment's keys") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise StateError(f"{path} does not hold a P-256 deployment key")
    return Keys(key, user)
