"""The application TA, server side: long-lived modules of a distributed, event-driven app.

A session holds one module instance of an application: its measurement, its configuration
(which names the app and its deployment public key, so the evidence attests them), its
keys (a module attestation key endorsed by the vTEE, X25519 and PQ provisioning keys, the
X25519 one also agreeing connection keys), its channels, and a worker process running the
module as a WASI reactor. The vTEE keeps every connection key: the module's worker only
asks it, per call, to seal an output, carry a request, or record a response.

Every delivered event is checked (connection, direction, strictly increasing counter,
AEAD) before the module sees it; what it emits is sealed before the node agent sees it.
After each batch the instance's state (its channels' counters) is sealed under the
module's sealing key and handed to the node agent to keep, so a node that restarts resumes
its connections, and replays stay refused; its keys and channels are sealed when they
change, into a base the state names (see AppModule.state).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shutil
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veritee.errors import Error, EvidenceError, ModuleError, SealingError, UsageError
from veritee.evidence import cose
from veritee.evidence.claims import VteeClaims, encode_claims
from veritee.evidence.deployment import (
    APP_PRIVATE_DIR,
    app_config_digest,
    verify_connect,
    verify_disconnect,
    verify_succession,
)
from veritee.evidence.provisioning import ProvisioningKeys
from veritee.tee import channels, grants
from veritee.tee.channels import Channel, EventRejected
from veritee.tee.keys import derive
from veritee.tee.runtime_ta import VteeIdentity, parse_limits
from veritee.tee.sealing import Counters, Sealer, StateRolledBack
from veritee.tee.services import Attester, attester_of
from veritee.tee.worker import ReactorProcess, Relay, WorkerPool
from veritee.wasm import endpoints
from veritee.wasm.runtime import Compiler, Limits, Preopen, to_binary

# A module's sealed state: a small state after every batch (the rollback counter and the
# channels' counters) naming a base sealed when connections change (keys, channels, ended
# connections), which the vTEE keeps in its storage. Since format 4 both are sealed under a
# key bound to the app and its deployment key, and record that key (see app_binding).
# Formats 2 and 3 were bound to the measurement only: a node agent could load them under a
# deployment key of its own, so they are refused (DeploymentKeyMismatch).
STATE_VERSION = 4
STATE_VERSIONS = (4,)
BINDING_BYTES = 32  # the state handed out starts with its app binding (app_binding)
BASES_DIR = "bases"  # in the vTEE's storage
PENDING_DIR = "pending"  # in the vTEE's storage: answers a node agent went away without
_COUNTS = struct.Struct(">QQ")  # a channel's last counter sent, highest counter received
MAX_CONNECTIONS = 1024  # per module instance
# Connections ended by a disconnect statement, remembered so that a replayed connect
# statement cannot bring one back. Past this many, the oldest are forgotten and every
# connect statement issued up to their end is refused instead (``ended_before``).
MAX_ENDED = 4 * MAX_CONNECTIONS
ANSWERS = {"input": None, "entry": None, "handler": "reply"}  # kinds that receive events
BATCHED = ("input", "entry")  # kinds delivered in batches; a handler's reply is per request
# A batch the node agent hands in at once: bounds what one call makes the vTEE hold (the
# agent sends at most 256 events or 1 MiB; one event may be 4 MiB on its own).
MAX_BATCH_EVENTS = 256
MAX_BATCH_BYTES = 8 * 1024 * 1024
BATCH_EXPORT = "veritee_batch"  # sdk/veritee_app.h: runs a batch of events in one call
EVENTS_OUTPUT = "veritee:events"  # sdk/veritee_app.h: the events a module buffered, at once
_LEN = struct.Struct("<I")


class DeploymentKeyMismatch(SealingError):
    """A sealed state loaded under another deployment key (or app) than the one it was
    created under: a node agent re-keying a module to speak for its owner."""


class SuccessionRefused(SealingError):
    """A succession statement that the deployment key recorded in the predecessor's sealed
    state did not sign, or that does not fit this load."""


def app_binding(app: str, name: str, deployment_key: bytes) -> bytes:
    """What a module instance's sealed data is bound to besides its measurement: its app,
    its name in the app, and the app's deployment public key (SEC1). Another key, another
    binding: a state, a base, a private file sealed under one never opens under another;
    two modules of one app built from one binary (a vault per user) share none of them."""
    label = ["veritee app binding", app, name, deployment_key]
    return hashlib.sha256(bytes(cbor2.dumps(label))).digest()


def app_seal_key(seal_root: bytes, measurement: bytes, binding: bytes) -> bytes:
    """The sealing key of one app module instance's data: its state, its bases, and what
    it seals itself (veritee_seal), bound to the measurement, the app and its key."""
    return derive(seal_root, "app-seal", measurement, binding)


def private_name(measurement: bytes, binding: bytes) -> str:
    """The name of a module's private directory (``APP_PRIVATE_DIR``) in the vTEE's
    storage: one per build and per app binding, so a load under another deployment key
    finds none of the owner's files."""
    return f"{measurement.hex()}-{binding[:16].hex()}"


def private_dir(storage: Path, measurement: bytes, binding: bytes) -> Path:
    return storage / private_name(measurement, binding)


class _Statement(Protocol):
    @property
    def app(self) -> str: ...


_S = TypeVar("_S", bound=_Statement)


@dataclass
class AppModule:
    name: str
    app: str
    deployment_key: ec.EllipticCurvePublicKey
    measurement: bytes
    config_digest: bytes
    limits: Limits
    table: list[endpoints.Endpoint]
    sealer: Sealer
    counters: Counters
    lineage: bytes  # this state's rollback counter (see Counters)
    seal_key: bytes
    attestation_key: ec.EllipticCurvePrivateKey
    provisioning: ProvisioningKeys
    vtee_token: bytes
    reactor: ReactorProcess | None = None
    sealed: bytes = b""  # the state as last sealed
    sealed_counter: int = 0  # its rollback counter
    # The newest answer that carried a state, until the node agent's next command shows it
    # took it: (rollback counter, state, events sealed with it, digests of the events it
    # consumed). Kept in storage if the agent hangs up first (see keep_unanswered).
    unanswered: tuple[int, bytes, list[bytes], list[bytes]] | None = None
    taken: int = 0  # the rollback counter of the newest state the agent is known to hold
    # After a load that took such an answer up: the events it consumed, which the agent
    # hands in again (they are done, not run again), and what to tell the agent.
    recovered: set[bytes] = field(default_factory=set)
    recovery: dict[str, Any] | None = None
    batches: bool = False  # the module runs a batch of events in one call (BATCH_EXPORT)
    # Where the vTEE keeps this module's bases (see state()).
    bases: Path | None = None
    # Change channels and ended connections through add() and end(): the base holds them.
    channels: dict[bytes, Channel] = field(default_factory=dict)
    ended: dict[bytes, int] = field(default_factory=dict)  # connection id -> when it ended
    ended_before: int = 0  # connect statements issued at or before this time are refused
    dropped: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The base the next state names: its digest, and the channels in its order. None:
    # write a new one first (after a load, or when channels or ended connections change).
    _base: tuple[bytes, list[Channel]] | None = field(default=None, repr=False)
    _written: list[Path] = field(default_factory=list, repr=False)  # bases this one wrote
    _bound: dict[tuple[str, str], list[Channel]] | None = field(default=None, repr=False)

    @functools.cached_property
    def raw_key(self) -> bytes:
        """The deployment key this instance was loaded under (SEC1)."""
        return _sec1(self.deployment_key)

    @functools.cached_property
    def binding(self) -> bytes:
        return app_binding(self.app, self.name, self.raw_key)

    @functools.cached_property
    def exported(self) -> dict[str, bytes]:
        """The provisioning keys as the sealed state holds them (they never change)."""
        return self.provisioning.export()

    def attester(self, platform_token: bytes) -> Attester:
        return attester_of(self, platform_token)

    def endpoint(self, kind: str, name: str) -> bool:
        return endpoints.Endpoint(kind, name) in self.table

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "app": self.app,
            "measurement": self.measurement,
            "config_digest": self.config_digest,
            "endpoints": [[e.kind, e.name] for e in self.table],
            "key": self.provisioning.x25519.public_key().public_bytes_raw(),
        }

    def add(self, channel: Channel) -> None:
        self.channels[channel.conn_id] = channel
        self._base = self._bound = None

    def bound(self, kind: str, endpoint: str) -> list[Channel]:
        """The channels on one endpoint, found in one lookup: every event emitted on an
        output is sealed on each of them, and a module may have 1024."""
        if self._bound is None:
            index: dict[tuple[str, str], list[Channel]] = {}
            for c in self.channels.values():
                index.setdefault((c.kind, c.endpoint), []).append(c)
            self._bound = index
        return self._bound.get((kind, endpoint), [])

    def end(self, conn_ids: tuple[bytes, ...], at: int) -> int:
        """The owner ended connections ``conn_ids`` at ``at``: drop their channels and
        remember them, so that a connect statement cannot bring one back. Past MAX_ENDED,
        the oldest are forgotten and connect statements issued up to their end refused.
        Returns how many of them this instance had."""
        had = 0
        for conn in conn_ids:
            if self.channels.pop(conn, None) is not None:
                had += 1
            self.ended.pop(conn, None)
            self.ended[conn] = at
        while len(self.ended) > MAX_ENDED:
            oldest = next(iter(self.ended))
            self.ended_before = max(self.ended_before, self.ended.pop(oldest))
        self._base = self._bound = None
        return had

    def check_current(self) -> None:
        """Refuse to run, seal or connect once a successor took this instance's state over
        (``update --keep-state``): it shares the successor's channel keys and counters, so
        one more event of its own would reuse a nonce the successor uses too."""
        if self.counters.superseded(self.lineage, self.measurement):
            raise ModuleError(
                f"module {self.name!r} was superseded by its successor, which took over its "
                "sealed state; it runs no more"
            )

    def state(self) -> bytes:
        """This instance's keys and channels, sealed for this module in this vTEE only.

        Each sealing advances the state's rollback counter first: the host can keep only the
        newest state, and an older one no longer loads. A node agent that goes away before
        it takes the state (killed mid-call) comes back with one behind the counter: the
        vTEE then keeps that answer itself (:meth:`keep_unanswered`), and the next load
        takes it up, so the module's work is never done twice nor lost.

        What changes with events is sealed here: the rollback counter, and each channel's
        counters and drop counts. The rest (keys, channels, the connections the owner
        ended) changes only when connections do; it is sealed then, as a **base** that the
        vTEE keeps in its storage, and the state names it by its SHA-256. A batch's state
        so stays small however many connections the module has or the app ever ended
        (it was 258 KB with 1024 channels, and 2.3 ms to make). The digest binds the base:
        a host that swaps, alters or drops it has the state refused at load.
        """
        fresh = self._base is None or len(self._base[1]) != len(self.channels)
        if fresh:
            self._base = self._write_base()
        assert self._base is not None
        digest, chans = self._base
        dropped = {i: c.dropped for i, c in enumerate(chans) if c.dropped}
        self.sealed_counter = self.counters.advance(self.lineage)
        body = {
            "v": STATE_VERSION,
            "app": self.app,
            "deployment_key": self.raw_key,
            "lineage": self.lineage,
            "counter": self.sealed_counter,
            "base": digest,
            "counters": b"".join([_COUNTS.pack(c.sent, c.received) for c in chans]),
            "dropped": dropped,
        }
        self.sealed = self.binding + self.sealer.seal(bytes(cbor2.dumps(body)))
        if fresh:
            self._forget_bases()
        return self.sealed

    def answer(self, state: bytes, events: list[bytes], done: Sequence[bytes] = ()) -> None:
        """Note the answer about to go to the node agent (see :meth:`keep_unanswered`)."""
        self.unanswered = (self.sealed_counter, state, list(events), list(done))

    def took(self) -> None:
        """The node agent sent another command: it took the last answer."""
        if self.unanswered is not None:
            self.taken = self.unanswered[0]
            self.unanswered = None

    def keep_unanswered(self) -> None:
        """The node agent hung up: if it had not taken the newest answer (its next command
        would have shown it did), keep it in the vTEE's storage, sealed for this module.

        Its state advanced the rollback counter past the one the agent kept, and the
        module already ran the events (and changed its private files): without it, the
        next load would refuse the agent's state, or run those events again. The next load
        of this lineage with the state the agent held takes it up (:func:`_pending`); an
        older state than that is still refused as rolled back."""
        if self.unanswered is None or self.bases is None:
            return
        counter, state, events, done = self.unanswered
        self.unanswered = None
        if self.counters.current(self.lineage) != counter:
            return  # a successor sealed since (an update that kept the state)
        record = {
            "v": STATE_VERSION,
            "lineage": self.lineage,
            "counter": counter,
            "after": self.taken,
            "state": state,
            "events": events,
            "done": done,
        }
        path = pending_path(self.bases.parent, self.lineage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.sealer.seal(bytes(cbor2.dumps(record))))
        tmp.replace(path)

    def _write_base(self) -> tuple[bytes, list[Channel]]:
        if self.bases is None:
            raise SealingError("this module instance has nowhere to keep its sealed base")
        chans = list(self.channels.values())
        body = {
            "v": STATE_VERSION,
            "app": self.app,
            "deployment_key": self.raw_key,
            "lineage": self.lineage,
            "provisioning": self.exported,
            "channels": [c.to_cbor() for c in chans],
            "ended": [[conn, at] for conn, at in self.ended.items()],
            "ended_before": self.ended_before,
        }
        sealed = self.sealer.seal(bytes(cbor2.dumps(body)))
        digest = hashlib.sha256(sealed).digest()
        path = base_path(self.bases, self.lineage, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sealed)
        self._written.append(path)
        return digest, chans

    def _forget_bases(self) -> None:
        """Once a state names the newest base, the older ones of this lineage serve no
        state that can still load (the rollback counter refuses all but the newest).
        While an update runs two instances of one lineage, each forgets its own only."""
        keep = self._written[-1]
        if self.counters.alone(self.lineage):
            old = [p for p in _bases_of(keep.parent, self.lineage) if p != keep]
        else:
            old = self._written[:-1]
        for p in old:
            p.unlink(missing_ok=True)
        self._written = [keep]


def pending_path(storage: Path, lineage: bytes) -> Path:
    return storage / PENDING_DIR / lineage.hex()


def base_path(bases: Path, lineage: bytes, digest: bytes) -> Path:
    return bases / f"{lineage.hex()}-{digest[:16].hex()}.sealed"


def _bases_of(bases: Path, lineage: bytes) -> list[Path]:
    """Every base kept for ``lineage`` (see base_path)."""
    return list(bases.glob(f"{lineage.hex()}-*"))


def load(
    compiler: Compiler,
    pool: WorkerPool,
    counters: Counters,
    vtee: VteeIdentity,
    storage: Path,
    scratch: Path,
    module: bytes,
    raw_config: bytes,
) -> AppModule:
    """Measure, compile, key and start one app module instance."""
    try:
        config = cbor2.loads(raw_config)
    except (cbor2.CBORDecodeError, ValueError, TypeError):
        raise UsageError("app load config is not valid CBOR") from None
    if not isinstance(config, dict):
        raise UsageError("app load config must be a map")
    name, app = config.get("name"), config.get("app")
    if not (isinstance(name, str) and 0 < len(name) <= 64):
        raise UsageError("module name must be 1 to 64 characters")
    if not (isinstance(app, str) and 0 < len(app) <= 64):
        raise UsageError("app name must be 1 to 64 characters")
    try:
        deployment_key = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), config.get("deployment_key", b"")
        )
    except (ValueError, TypeError):
        raise UsageError("deployment_key must be a P-256 public key (SEC1 encoding)") from None
    limits = parse_limits(config, vtee, memory_mb=64, timeout=10.0, max_timeout=3600)

    wasm = to_binary(module)
    table = endpoints.recorded(wasm)
    if table is None:
        raise ModuleError(
            "not an app module: no endpoint table (build it with 'veritee build' from a "
            "source that includes veritee_app.h)"
        )
    compiled = compiler.compile(wasm)
    raw_key = _sec1(deployment_key)
    binding = app_binding(app, name, raw_key)
    # Made if missing, and never a symlink the normal world planted there.
    private = grants.private_dir(storage, private_name(compiled.measurement, binding))
    preopens = (Preopen(str(private), APP_PRIVATE_DIR, True),)
    digest = app_config_digest(app, raw_key, limits.memory_bytes, limits.to_cbor()["time_ms"])
    seal_key = app_seal_key(vtee.seal_root, compiled.measurement, binding)
    state = config.get("state")
    predecessors = _succession(
        config.get("succession"), state, vtee.seal_root, raw_key, app, name, compiled.measurement
    )
    unseal_keys = [(app_seal_key(vtee.seal_root, m, binding), m) for m in predecessors]
    sealer = Sealer(seal_key, compiled.measurement, unseal_keys)
    for old in predecessors:  # the new build starts from its predecessor's private files
        before = private_dir(storage, old, binding)
        if not any(private.iterdir()) and before.is_dir() and not before.is_symlink():
            # symlinks=True: a symlink the normal world planted among the old files is
            # copied as a link (WASI does not follow it out), never as what it points at.
            shutil.copytree(before, private, dirs_exist_ok=True, symlinks=True)
    bases = storage / BASES_DIR
    restored = _restore(sealer, counters, state, app, name, raw_key, bases)
    lineage = restored.lineage or counters.create()
    mak = ec.generate_private_key(ec.SECP256R1())
    vtee_token = cose.sign1(
        encode_claims(
            VteeClaims(
                vtee_id=vtee.vtee_id,
                measurement=compiled.measurement,
                config=digest,
                module_key=cose.ec_key_to_cose(mak.public_key()),
                iat=int(time.time()),
            )
        ),
        vtee.attestation_key,
    )
    loaded = AppModule(
        name=name,
        app=app,
        deployment_key=deployment_key,
        measurement=compiled.measurement,
        config_digest=digest,
        limits=limits,
        table=table,
        sealer=sealer,
        seal_key=seal_key,
        attestation_key=mak,
        provisioning=restored.provisioning,
        vtee_token=vtee_token,
        counters=counters,
        lineage=lineage,
        bases=bases,
        channels={c.conn_id: c for c in restored.channels},
        ended=restored.ended,
        ended_before=restored.ended_before,
        batches=BATCH_EXPORT in endpoints.exports(wasm),
    )
    loaded.taken = restored.counter
    if restored.recovery is not None:
        newest, events, done = restored.recovery
        loaded.recovered = set(done)
        loaded.recovery = {"state": newest, "events": events}
        # Told to the agent with the load; kept again if it is gone before it took it.
        loaded.sealed_counter = counters.current(lineage)
        loaded.answer(newest, events, done)
    job = {
        "artifact_path": str(compiled.artifact_path),
        "artifact_digest": compiled.artifact_digest,
        "measurement": compiled.measurement,
        "seal_key": seal_key,
        "unseal_keys": [[k, m] for k, m in unseal_keys],
        "name": name,
        "args": [],
        "env": [],
        "stdin": b"",
        "preopens": [[p.host, p.guest, p.writable] for p in preopens],
        "memory": limits.memory_bytes,
        "time": limits.time_seconds,
        "scratch": str(scratch),
        "attestation_key": mak.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "platform_token": vtee.platform_token,
        "vtee_token": vtee_token,
        "config_digest": digest,
        "provisioning": restored.provisioning.export(),
        "relay": True,
    }
    counters.claim(lineage, compiled.measurement, succession=bool(predecessors))
    try:
        loaded.reactor = pool.reactor(job, limits.time_seconds, _no_events)
    except BaseException:
        counters.release(lineage, compiled.measurement)
        raise
    return loaded


def _succession(
    statement: Any,
    state: Any,
    seal_root: bytes,
    raw_key: bytes,
    app: str,
    name: str,
    measurement: bytes,
) -> list[bytes]:
    """Measurements whose sealed state this build may open, on the app owner's signed word.

    The word is checked under the deployment key recorded in the predecessor's sealed
    state, never under the one this load brings: a node agent that loads its own build
    with its own key and a statement signed by that key inherits nothing. Without that
    state there is no recorded key, so no succession either.
    """
    if statement is None:
        return []
    if not isinstance(statement, bytes):
        raise UsageError("succession must be a signed statement (bytes)")
    if not isinstance(state, bytes):
        raise SuccessionRefused(
            "succession refused: it needs the predecessor's sealed state, which records the "
            "deployment key that must have signed it"
        )
    predecessor = _claimed_predecessor(statement)
    binding = state[:BINDING_BYTES]
    sealer = Sealer(app_seal_key(seal_root, predecessor, binding), predecessor)
    try:
        body = cbor2.loads(sealer.unseal(state[BINDING_BYTES:]))
        recorded, recorded_app = bytes(body["deployment_key"]), body["app"]
    except SealingError:
        raise SuccessionRefused(
            "succession refused: the state given is not the sealed state of the predecessor "
            "the statement names"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError, cbor2.CBORDecodeError):
        raise SuccessionRefused(
            "succession refused: the predecessor's state does not decode"
        ) from None
    if not isinstance(recorded_app, str) or app_binding(recorded_app, name, recorded) != binding:
        raise SuccessionRefused("succession refused: the predecessor's state is inconsistent")
    try:
        owner = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), recorded)
        s = verify_succession(statement, owner)
    except (EvidenceError, ValueError) as exc:
        raise SuccessionRefused(
            "succession refused: the statement is not signed with the deployment key "
            f"recorded in the predecessor's sealed state ({exc})"
        ) from None
    if (s.app, s.name, s.predecessor, s.successor) != (app, name, predecessor, measurement):
        raise SuccessionRefused(
            "succession refused: the statement is for another app, module or build"
        )
    if recorded_app != app or recorded != raw_key:
        raise DeploymentKeyMismatch(
            "succession refused: the successor is loaded under another deployment key (or "
            "app) than the one its predecessor's sealed state records"
        )
    return [predecessor]


def _claimed_predecessor(statement: bytes) -> bytes:
    """The predecessor a succession statement names, before its signature is checked: only
    to find the state whose recorded key then checks it."""
    try:
        claims = cose.loads(
            cose.decode(statement, what="succession statement").payload, what="succession statement"
        )
    except EvidenceError as exc:
        raise SuccessionRefused(f"succession refused: {exc}") from None
    predecessor = claims.get("predecessor") if isinstance(claims, dict) else None
    if not (isinstance(predecessor, bytes) and len(predecessor) == 32):
        raise SuccessionRefused("succession refused: the statement names no predecessor")
    return predecessor


def _sec1(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _no_events(rpc: dict[str, Any]) -> dict[str, Any]:
    return {"error": "no events may be emitted while the module initialises"}


@dataclass(frozen=True)
class _Restored:
    provisioning: ProvisioningKeys
    channels: list[Channel]
    ended: dict[bytes, int]
    ended_before: int
    lineage: bytes | None  # None: a fresh instance, no state
    counter: int  # the rollback counter of the state the agent handed in (0: none)
    # Taken up from the vTEE's storage instead of the agent's older state (keep_unanswered):
    # the events its answer carried, and the digests of those it had consumed.
    recovery: tuple[bytes, list[bytes], list[bytes]] | None = None


def _restore(
    sealer: Sealer,
    counters: Counters,
    state: Any,
    app: str,
    name: str,
    raw_key: bytes,
    bases: Path,
    *,
    pending: bool = True,
) -> _Restored:
    """The channels and keys of ``state``. A state behind the rollback counter is refused,
    unless the vTEE keeps the newest answer of its lineage, which the agent never took
    (``pending``): then that answer's state is restored instead, with its events."""
    if state is None:
        return _Restored(ProvisioningKeys(), [], {}, 0, None, 0)
    if not isinstance(state, bytes):
        raise UsageError("state must be bytes sealed by this module")
    # The binding in front is only a label (the sealing key is derived from it, so a host
    # that rewrites it gets a state that does not open): it lets a load under another key
    # be refused saying so, before anything is opened.
    if state[:BINDING_BYTES] != app_binding(app, name, raw_key):
        raise DeploymentKeyMismatch(
            "sealed state was created under another deployment key (or app, or module "
            "name), or before states were bound to one: it does not load under this one"
        )
    try:
        body = cbor2.loads(sealer.unseal(state[BINDING_BYTES:]))
        if body.get("v") not in STATE_VERSIONS or body.get("app") != app:
            raise SealingError("sealed state is of another version or application")
        if bytes(body["deployment_key"]) != raw_key:
            raise DeploymentKeyMismatch("sealed state records another deployment key")
        lineage, counter = bytes(body["lineage"]), int(body["counter"])
        try:
            counters.check(lineage, counter)
        except StateRolledBack:
            kept = _pending(sealer, bases.parent, lineage, counter, counters) if pending else None
            if kept is None:
                raise
            newest, events, done = kept
            again = _restore(sealer, counters, newest, app, name, raw_key, bases, pending=False)
            return dataclasses.replace(again, counter=counter, recovery=(newest, events, done))
        pending_path(bases.parent, lineage).unlink(missing_ok=True)  # the agent took it
        whole = _based(sealer, bases, body)
        return _Restored(
            ProvisioningKeys.restore(whole["provisioning"]),
            whole["channels"],
            {bytes(conn): int(at) for conn, at in whole["ended"]},
            int(whole["ended_before"]),
            lineage,
            counter,
        )
    except SealingError:
        raise
    except (KeyError, TypeError, ValueError, struct.error, cbor2.CBORDecodeError):
        raise SealingError("sealed state does not decode") from None


def _pending(
    sealer: Sealer, storage: Path, lineage: bytes, held: int, counters: Counters
) -> tuple[bytes, list[bytes], list[bytes]] | None:
    """The answer kept for ``lineage`` (see AppModule.keep_unanswered) if it is the newest
    and came after the state the agent holds (counter ``held``): its state, events and
    consumed events' digests. The record is sealed for the module, so a host can delete it
    (the agent's state then stays refused) but not make nor alter one."""
    try:
        sealed = pending_path(storage, lineage).read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = cbor2.loads(sealer.unseal(sealed))
        if bytes(record["lineage"]) != lineage:
            raise SealingError("the answer kept in storage is of another module instance")
        if int(record["counter"]) != counters.current(lineage) or int(record["after"]) != held:
            return None  # stale (a newer state was sealed since), or not the agent's next
        events = [bytes(e) for e in record["events"]]
        done = [bytes(d) for d in record["done"]]
        return bytes(record["state"]), events, done
    except SealingError:
        raise
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError):
        raise SealingError("the answer kept in storage does not decode") from None


def _based(sealer: Sealer, bases: Path, state: dict[str, Any]) -> dict[str, Any]:
    """A state of format 3 with its base: the base's map, its channels with the state's
    counters."""
    lineage, digest = bytes(state["lineage"]), bytes(state["base"])
    try:
        sealed = base_path(bases, lineage, digest).read_bytes()
    except FileNotFoundError:
        raise SealingError(
            "sealed state names a base that is not in this TEE's storage: it was deleted, "
            "or the state is from another TEE"
        ) from None
    if hashlib.sha256(sealed).digest() != digest:
        raise SealingError("the sealed state's base in storage was altered or swapped")
    base = cbor2.loads(sealer.unseal(sealed))
    if base.get("lineage") != lineage or base.get("app") != state["app"]:
        raise SealingError("the sealed state's base is of another module instance")
    if base.get("deployment_key") != state["deployment_key"]:
        raise DeploymentKeyMismatch("the sealed state's base records another deployment key")
    chans = [Channel.from_cbor(c) for c in base["channels"]]
    counts = bytes(state["counters"])
    if len(counts) != _COUNTS.size * len(chans):
        raise SealingError("sealed state does not decode: its counters do not fit its base")
    for i, ch in enumerate(chans):
        ch.sent, ch.received = _COUNTS.unpack_from(counts, i * _COUNTS.size)
        ch.dropped = {str(k): int(v) for k, v in state["dropped"].get(i, {}).items()}
    return {**base, "channels": chans}


def forget(
    counters: Counters, vtee: VteeIdentity, storage: Path, measurement: bytes, state: bytes
) -> None:
    """The node agent discards a module instance's state for good (its module was disabled,
    or replaced without keeping it): free its rollback counter and delete its bases, so that
    a node whose apps come and go does not run out of counters nor fill its storage.

    Only the newest state does it (Counters.forget), and it is sealed: the agent could only
    discard what it holds anyway, and no state of the lineage can load afterwards.
    """
    if not (isinstance(measurement, bytes) and len(measurement) == 32):
        raise UsageError("measurement must be 32 bytes")
    if not isinstance(state, bytes):
        raise UsageError("state must be bytes sealed by the module")
    # The state opens only under the binding it was sealed with: showing it proves as much
    # as the agent has anyway (the newest state, which it could simply delete).
    binding = state[:BINDING_BYTES]
    sealer = Sealer(app_seal_key(vtee.seal_root, measurement, binding), measurement)
    try:
        body = cbor2.loads(sealer.unseal(state[BINDING_BYTES:]))
        lineage, value = bytes(body["lineage"]), int(body["counter"])
    except SealingError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, cbor2.CBORDecodeError):
        raise SealingError("sealed state does not decode") from None
    counters.forget(lineage, value)
    for path in _bases_of(storage / BASES_DIR, lineage):
        path.unlink(missing_ok=True)
    pending_path(storage, lineage).unlink(missing_ok=True)


def _owners_word(
    loaded: AppModule,
    verify: Callable[[bytes, ec.EllipticCurvePublicKey], _S],
    statement: bytes,
    refused: str,
) -> _S:
    """A statement signed with the app's deployment key, for this module's app; else
    SealingError starting with ``refused``."""
    try:
        stmt = verify(statement, loaded.deployment_key)
    except EvidenceError as exc:
        raise SealingError(f"{refused}: {exc}") from None
    if stmt.app != loaded.app:
        raise SealingError(f"{refused}: statement is for app {stmt.app!r}")
    return stmt


def connect(loaded: AppModule, statement: bytes) -> dict[str, Any]:
    """Bind an endpoint to an attested peer, on the deployer's signed word."""
    loaded.check_current()
    stmt = _owners_word(loaded, verify_connect, statement, "connection refused")
    if not loaded.endpoint(stmt.kind, stmt.endpoint):
        raise UsageError(f"module {loaded.name!r} has no {stmt.kind} endpoint {stmt.endpoint!r}")
    if stmt.initiator != (stmt.kind in ("output", "request")):
        raise UsageError("statement's initiator flag does not fit the endpoint kind")
    try:
        channel = channels.establish(loaded.provisioning.x25519, loaded.measurement, stmt)
    except EventRejected as exc:
        raise SealingError(f"connection refused: {exc}") from None
    with loaded.lock:
        loaded.check_current()
        existing = loaded.channels.get(stmt.conn_id)
        if existing is not None:
            # The same statement again (a retry) changes nothing; above all it must not
            # start the counters over, which would let replayed events in.
            if (existing.kind, existing.endpoint, existing.peer) != (
                channel.kind,
                channel.endpoint,
                channel.peer,
            ):
                raise SealingError("connection refused: that connection id is already bound")
            return {"state": _answered(loaded, loaded.state())}
        if stmt.conn_id in loaded.ended or stmt.iat <= loaded.ended_before:
            raise SealingError(
                f"connection refused: connection {stmt.conn_id.hex()} was ended by the app "
                "owner's disconnect statement; an earlier connect statement cannot revive it"
            )
        if len(loaded.channels) >= MAX_CONNECTIONS:
            raise UsageError(f"module already has {MAX_CONNECTIONS} connections")
        loaded.add(channel)
        return {"state": _answered(loaded, loaded.state())}


def disconnect(loaded: AppModule, statement: bytes) -> dict[str, Any]:
    """End connections on the app owner's signed word: no more events sealed or accepted.

    Returns the sealed state (without them) and how many of them this instance had.
    """
    stmt = _owners_word(loaded, verify_disconnect, statement, "disconnect refused")
    with loaded.lock:
        loaded.check_current()
        ended = loaded.end(stmt.conn_ids, stmt.iat)
        return {"state": _answered(loaded, loaded.state()), "ended": ended}


class _Call:
    """What one delivery collects while the module runs."""

    def __init__(self, loaded: AppModule, relay: Relay | None, *, early: bool = False) -> None:
        self.loaded = loaded
        self.relay = relay
        self.events: list[bytes] = []
        self.response: bytes | None = None
        self.used_channels = False  # a counter moved: the state must be sealed again
        self.early = early  # hand buffered events out while the module finishes
        self.released: bytes | None = None  # the state sealed when events were handed out

    def __call__(self, rpc: dict[str, Any]) -> dict[str, Any]:
        op = rpc.get("op")
        try:
            if op == "output":
                return self._output(str(rpc.get("name")), _data(rpc))
            if op == "request":
                return self._request(str(rpc.get("name")), _data(rpc))
            if op == "respond":
                self.response = _data(rpc)
                return {"ok": True}
        except Error as exc:
            return {"error": str(exc)}
        if op == "http" and self.relay is not None:
            return self.relay(rpc)
        return {"error": f"operation {op!r} is not available here"}

    def _output(self, name: str, data: bytes) -> dict[str, Any]:
        if name == EVENTS_OUTPUT:
            for one, payload in _records(data):
                answer = self._output(one, payload)
                if "error" in answer:
                    return answer
            if self.early and self.events:
                self._release()
            return {"ok": True}
        if not self.loaded.endpoint("output", name):
            return {"error": f"module declares no output {name!r}"}
        bound = self.loaded.bound("output", name)
        if bound:
            self.used_channels = True
            # Connected to several inputs: sealed once for all of them (a fan-out event).
            sealed = bound[0].seal(data) if len(bound) == 1 else channels.seal_fanout(bound, data)
            self.events.append(sealed)
        return {"ok": True}

    def _release(self) -> None:
        """Hand the events sealed so far to the node agent now, with the state that covers
        them, so they travel while the module finishes. The state is sealed (its rollback
        counter advanced) before any event leaves: a host can never reload a state whose
        send counters are behind events it holds, which would seal two events under one
        nonce. An agent that does not take them (a bare client) gets them in the outcome.
        """
        if self.relay is None:
            return
        state = self.loaded.state()
        answer = self.relay({"op": "events", "events": self.events, "state": state})
        if "error" not in answer:
            self.events = []
            self.used_channels = False
            self.released = state
            self.loaded.taken = self.loaded.sealed_counter

    def _request(self, name: str, data: bytes) -> dict[str, Any]:
        matches = self.loaded.bound("request", name)
        if not matches:
            return {"error": f"request {name!r} is not connected"}
        if self.relay is None:
            return {"error": "no node agent to carry the request"}
        ch = matches[0]
        self.used_channels = True
        answer = self.relay({"op": "request", "event": ch.seal(data)})
        reply = answer.get("event")
        if not isinstance(reply, bytes):
            return {"error": str(answer.get("error", "request was not answered"))}
        try:
            return {"data": ch.open(reply)}
        except EventRejected as exc:
            self.loaded.dropped[exc.reason] = self.loaded.dropped.get(exc.reason, 0) + 1
            return {"error": f"answer refused: {exc}"}


def _records(data: bytes) -> list[tuple[str, bytes]]:
    """Unpack records ``len || name || len || payload`` (32-bit little-endian lengths)."""
    out, i = [], 0
    while i < len(data):
        try:
            (n,) = _LEN.unpack_from(data, i)
            name = data[i + 4 : i + 4 + n]
            (m,) = _LEN.unpack_from(data, i + 4 + n)
        except struct.error:
            raise UsageError("buffered events do not parse") from None
        start = i + 8 + n
        if len(name) != n or start + m > len(data):
            raise UsageError("buffered events do not parse")
        out.append((name.decode("utf-8", "replace"), data[start : start + m]))
        i = start + m
    return out


def _pack(calls: list[tuple[str, bytes]]) -> bytes:
    return b"".join(_LEN.pack(len(e)) + e.encode() + _LEN.pack(len(p)) + p for e, p in calls)


def _data(rpc: dict[str, Any]) -> bytes:
    data = rpc.get("data", b"")
    if not isinstance(data, bytes):
        raise UsageError("event data must be bytes")
    return data


def _check(loaded: AppModule, event: bytes, kinds: Any) -> tuple[Channel, bytes]:
    """The channel an event is for and its payload; raise EventRejected (and count it)."""
    try:
        conn_id = channels.conn_id_of(event)
        channel = loaded.channels.get(conn_id)
        if channel is None:
            raise EventRejected("misrouted", "event is for a connection this module lacks")
        if channel.kind not in kinds:
            raise EventRejected("misrouted", f"events do not arrive on a {channel.kind} here")
        return channel, channel.open(event)
    except EventRejected as exc:
        loaded.dropped[exc.reason] = loaded.dropped.get(exc.reason, 0) + 1
        raise


def deliver(loaded: AppModule, event: bytes, relay: Relay | None) -> dict[str, Any]:
    """Check one sealed event, hand it to the module, seal what it emits."""
    with loaded.lock:
        loaded.check_current()
        try:
            channel, payload = _check(loaded, event, ANSWERS)
        except EventRejected as exc:
            return _outcome(loaded, [], None, exc.reason, str(exc))
        call = _Call(loaded, relay)
        log = _call(loaded, f"veritee_{channel.kind}_{channel.endpoint}", payload, call)
        reply = None
        if channel.kind == "handler":
            reply = channel.seal(call.response if call.response is not None else b"")
        loaded.delivered += 1
        return _outcome(loaded, call.events, reply, None, log)


def deliver_batch(loaded: AppModule, events: list[bytes], relay: Relay | None) -> dict[str, Any]:
    """Check each event of a batch on its own, run the accepted ones, seal the state once.

    Every event gets the checks :func:`deliver` makes (a bad one is dropped and counted,
    the others go on); the accepted ones run in the module's worker in one call when the
    module offers it (``BATCH_EXPORT``), else one call each. Requests are not batched:
    each waits for its own reply. The events the module hands over at once (the SDK's
    buffer) go to the node agent as soon as they are sealed (see ``_Call._release``).
    """
    if len(events) > MAX_BATCH_EVENTS or sum(len(e) for e in events) > MAX_BATCH_BYTES:
        raise UsageError(
            f"a batch holds at most {MAX_BATCH_EVENTS} events and {MAX_BATCH_BYTES} bytes"
        )
    with loaded.lock:
        loaded.check_current()
        dropped: list[str | None] = []
        calls: list[tuple[str, bytes]] = []
        done: list[bytes] = []
        for event in events:
            digest = hashlib.sha256(event).digest()
            if digest in loaded.recovered:
                # Run before its node agent was killed, in the answer the vTEE kept: done.
                loaded.recovered.discard(digest)
                dropped.append(None)
                continue
            try:
                channel, payload = _check(loaded, event, BATCHED)
            except EventRejected as exc:
                dropped.append(exc.reason)
                continue
            dropped.append(None)
            done.append(digest)
            calls.append((f"veritee_{channel.kind}_{channel.endpoint}", payload))
        call = _Call(loaded, relay, early=True)
        logs = []
        if calls and loaded.batches:
            logs.append(_call(loaded, BATCH_EXPORT, _pack(calls), call, len(calls)))
        else:
            logs += [_call(loaded, export, payload, call) for export, payload in calls]
        loaded.delivered += len(calls)
        unchanged = call.released is not None and not call.used_channels
        state = call.released if unchanged else loaded.state()
        assert state is not None
        loaded.answer(state, call.events, done)
        return {"dropped": dropped, "events": call.events, "state": state, "log": "".join(logs)}


def public(loaded: AppModule, endpoint: str, request: bytes, relay: Relay | None) -> dict[str, Any]:
    """An unauthenticated request to a public endpoint; the module decides what to answer."""
    if not loaded.endpoint("public", endpoint):
        raise UsageError(f"module {loaded.name!r} has no public endpoint {endpoint!r}")
    with loaded.lock:
        loaded.check_current()
        call = _Call(loaded, relay)
        log = _call(loaded, f"veritee_public_{endpoint}", request, call)
        # A call that moved no counter (a periodic tick, a page served from memory) leaves
        # the state as it was: no new sealing, no rollback counter spent.
        state = loaded.state() if call.used_channels or not loaded.sealed else loaded.sealed
        loaded.answer(state, call.events)
        return {
            "events": call.events,
            "reply": call.response or b"",
            "state": state,
            "dropped": None,
            "log": log,
        }


def _call(loaded: AppModule, export: str, payload: bytes, call: _Call, events: int = 1) -> str:
    """Run one export; a batch of ``events`` gets the time budget of that many events."""
    if loaded.reactor is None or not loaded.reactor.alive:
        raise ModuleError(f"module {loaded.name!r} is not running (it failed earlier); reload it")
    return loaded.reactor.call(export, payload, loaded.limits.time_seconds * events, call)


def _answered(loaded: AppModule, state: bytes) -> bytes:
    loaded.answer(state, [])
    return state


def _outcome(
    loaded: AppModule, events: list[bytes], reply: bytes | None, dropped: str | None, log: str
) -> dict[str, Any]:
    state = loaded.state()
    loaded.answer(state, events)
    return {
        "events": events,
        "reply": reply,
        "state": state,
        "dropped": dropped,
        "log": log,
    }


def status(loaded: AppModule) -> dict[str, Any]:
    with loaded.lock:
        return {
            **loaded.info(),
            "running": loaded.reactor is not None and loaded.reactor.alive,
            "delivered": loaded.delivered,
            "dropped": dict(loaded.dropped),
            "ended": len(loaded.ended),
            "connections": [
                {
                    "conn": c.conn_id,
                    "kind": c.kind,
                    "endpoint": c.endpoint,
                    "peer_node": c.peer.node,
                    "peer_endpoint": c.peer.endpoint,
                    "peer_measurement": c.peer.measurement,
                    "sent": c.sent,
                    "received": c.received,
                    "dropped": dict(c.dropped),
                }
                for c in loaded.channels.values()
            ],
        }
