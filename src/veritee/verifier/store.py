"""The verifier's state in SQL (SQLAlchemy 2): SQLite by default, PostgreSQL to scale out.

Sessions, trust anchors, revocations, reference values, policies and results live here, so a
restart loses nothing and several worker processes can share one database. Every
provisioning write bumps a *generation* counter in the same transaction; each worker keeps
one endorsement snapshot and reloads it when the generation moves, so a revocation takes
effect in every worker at the next appraisal.

Writes that race between workers are single conditional statements (``UPDATE ... WHERE
status = 'waiting'``, a unique nonce): the database, not a lock in one process, decides
which submission wins.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from cryptography import x509
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from veritee.errors import Error
from veritee.evidence import certs
from veritee.verifier.endorsements import (
    Anchor,
    CaAnchor,
    Deployment,
    KeyAnchor,
    ReferenceValue,
    Revocation,
    TpmCaAnchor,
    TpmRegistration,
    resolve_revocation,
)
from veritee.verifier.errors import NotFound, ProvisioningError
from veritee.verifier.policy import BUILTIN, DEFAULT_NAME

log = logging.getLogger(__name__)

# SQLite waits this long for another process's write lock before giving up: several workers
# share one file, and a commit takes well under a millisecond.
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Sessions (with their evidence and result) are kept this long after they expire, so a
# relying party can still read a result and an operator can still see why it failed.
SESSION_RETENTION_SECONDS = 7 * 24 * 3600
# The write-ahead log is started over once it holds this many pages (16 MiB at 4 KiB), the
# checkpoint waiting up to WAL_RESTART_WAIT_MS for writes in progress (Store.checkpoint).
WAL_RESTART_FRAMES = 4096
WAL_RESTART_WAIT_MS = 200
# Expired sessions are deleted this many to a transaction (see Store.purge_sessions).
PURGE_BATCH = 500
# What a session keeps is bounded, so whoever can reach newSession cannot grow the database
# by more than a small row per submission (300 garbage submissions once grew it by 18 MB):
# evidence only if a trusted device signed it and it is no bigger than this (Veritee, PSA and
# CCA evidence are 1 to 3 KiB; the service does not keep refused or forged bodies at all);
MAX_STORED_EVIDENCE_BYTES = 8 * 1024
# a failed check's name and reason cut to these lengths (they may quote the submission).
MAX_STORED_CHECK_CHARS = 64
MAX_STORED_REASON_CHARS = 300

_T = TypeVar("_T")

WAITING, COMPLETE, FAILED = "waiting", "complete", "failed"
# A deleted session's tombstone: its id takes no submission, and reads as no session.
DELETED = "deleted"


class StoreError(Error):
    """The database cannot be reached or used."""

    exit_code = 9  # the verification service cannot serve (README's table)


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    """A challenge-response session: its nonce, expiry, and what was submitted and decided."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Unique: a nonce, server-minted or client-chosen, serves one session only.
    nonce: Mapped[bytes] = mapped_column(LargeBinary(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    expiry: Mapped[float] = mapped_column(Float, index=True)
    status: Mapped[str] = mapped_column(String(16))
    media_type: Mapped[str | None] = mapped_column(String(256))
    evidence: Mapped[bytes | None] = mapped_column(LargeBinary)
    result: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(32))
    failure: Mapped[str | None] = mapped_column(Text)


class AnchorRow(Base):
    """A trust anchor: a manufacturer CA, or a PSA/CCA device key by instance id."""

    __tablename__ = "trust_anchors"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "ca" | "key" | "tpm-ca" | "tpm-ak"
    scheme: Mapped[str] = mapped_column(String(16))
    instance_id: Mapped[str | None] = mapped_column(String(130))
    subject: Mapped[str] = mapped_column(Text)
    pem: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float)
    # A CA's ceiling, the operator's word at provisioning (NULL in a database from before
    # ceilings were recorded: read as emulated, the least).
    max_lifecycle: Mapped[str | None] = mapped_column(String(16), nullable=True)


class RevocationRow(Base):
    __tablename__ = "revocations"
    id: Mapped[str] = mapped_column(String(140), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # "device" | "ca"
    value: Mapped[str] = mapped_column(String(130))
    reason: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float)


class ReferenceRow(Base):
    __tablename__ = "reference_values"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scheme: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(256))
    measurement: Mapped[str] = mapped_column(String(128))
    created: Mapped[float] = mapped_column(Float)
    # ReferenceValue.extra() as JSON: a realm's REMs and personalization value, a PSA/CCA
    # value's implementation id (NULL: none).
    extra: Mapped[str | None] = mapped_column(Text, nullable=True)


class PolicyRow(Base):
    __tablename__ = "policies"
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    rego: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)


class SettingRow(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class GenerationRow(Base):
    __tablename__ = "generation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer)


_SESSIONS = cast(Table, SessionRow.__table__)
_GENERATION = cast(Table, GenerationRow.__table__)
_ANCHORS = cast(Table, AnchorRow.__table__)
_REVOCATIONS = cast(Table, RevocationRow.__table__)
_REFERENCES = cast(Table, ReferenceRow.__table__)
_POLICIES = cast(Table, PolicyRow.__table__)
_SETTINGS = cast(Table, SettingRow.__table__)
ACTIVE_POLICY = "active-policy"

# The statements of every attestation go straight to the database driver, on a connection
# each thread keeps: SQLAlchemy's pool checkout, transaction and result wrappers cost three
# times the statements themselves (measured with SQLite: 527 µs against 134 µs of CPU for
# one attestation). Parameters are named; each driver gets its own style (":id" for sqlite3,
# "%(id)s" for psycopg). A session is written once, at its submission: a waiting session
# lives in its id (see veritee.verifier.sessions).
_SESSION_COLUMNS = (
    "id",
    "nonce",
    "created",
    "expiry",
    "status",
    "media_type",
    "evidence",
    "result",
    "outcome",
    "failure",
)
_INSERT_SESSION = (
    "INSERT INTO sessions (id, nonce, created, expiry, status, media_type, evidence, result, "
    "outcome, failure) VALUES ({id}, {nonce}, {created}, {expiry}, {status}, {media_type}, "
    "{evidence}, {result}, {outcome}, {failure})"
)
_SELECT_SESSION = (
    "SELECT id, nonce, created, expiry, status, media_type, evidence, result, outcome, failure "
    "FROM sessions WHERE id = {id}"
)
# A client-chosen nonce is reserved when its session is created (a WAITING row): the
# submission then fills that row in, once.
_FILL_RESERVED = (
    "UPDATE sessions SET status = {status}, media_type = {media_type}, evidence = {evidence}, "
    "result = {result}, outcome = {outcome}, failure = {failure} "
    "WHERE id = {id} AND nonce = {nonce} AND status = {waiting}"
)
_SELECT_GENERATION = "SELECT value FROM generation WHERE id = 1"
_DELETE_SESSION = (
    "UPDATE sessions SET status = {deleted}, media_type = NULL, evidence = NULL, "
    "result = NULL, outcome = NULL, failure = NULL WHERE id = {id} AND status <> {deleted}"
)

# What record_session() says.
RECORDED, STALE, TAKEN = "recorded", "stale", "taken"


class _Placeholders(dict[str, str]):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def __missing__(self, name: str) -> str:
        return self.style.format(name)


def _tpm_anchor(row: Any) -> TpmCaAnchor | TpmRegistration:
    if row.kind == "tpm-ca":
        return TpmCaAnchor(pem=row.pem, id=row.id, subject=row.subject)
    return TpmRegistration(bytes.fromhex(row.instance_id or ""), bytes.fromhex(row.pem))


def _ca_anchor(row: Any) -> CaAnchor:
    """A stored CA row as a trust anchor; a row without a ceiling (recorded before ceilings
    were) endorses at most emulated."""
    cert = x509.load_pem_x509_certificate(row.pem.encode())
    return CaAnchor(
        pem=row.pem,
        id=row.id,
        subject=row.subject,
        max_lifecycle=row.max_lifecycle or certs.DEFAULT_CEILING,
        key_id=certs.key_id(cert).hex(),
    )


@dataclass(frozen=True)
class SessionRecord:
    id: str
    nonce: bytes
    created: float
    expiry: float
    status: str
    media_type: str | None = None
    evidence: bytes | None = None
    result: str | None = None
    outcome: str | None = None
    failure: dict[str, str] | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything appraisal reads from the store, at one generation."""

    generation: int
    cas: tuple[CaAnchor, ...]
    keys: tuple[KeyAnchor, ...]
    revocations: tuple[Revocation, ...]
    references: tuple[ReferenceValue, ...]
    policy_name: str
    policy_rego: str
    tpm: tuple[TpmCaAnchor | TpmRegistration, ...] = ()


class Store:
    """Thin I/O layer over one database URL; every method is one short transaction."""

    def __init__(self, url: str, *, checkpoint_elsewhere: bool = False) -> None:
        """``checkpoint_elsewhere``: with SQLite, this store's session writes never copy the
        write-ahead log back into the database file (a checkpoint, which fsyncs); the owner
        calls :meth:`checkpoint` from a thread of its own instead."""
        self.url = url
        try:
            self.engine: Engine = _engine(url)
        except Exception as exc:
            raise StoreError(f"cannot open database {_redact(url)}: {exc}") from None
        self._dbapi: Any = self.engine.dialect.loaded_dbapi
        self._sqlite = self.engine.dialect.driver == "pysqlite"
        self._checkpoint_elsewhere = checkpoint_elsewhere and self._sqlite
        names = _Placeholders(":{}" if self._sqlite else "%({})s")
        self._sql = {
            "insert": _INSERT_SESSION.format_map(names),
            "select": _SELECT_SESSION.format_map(names),
            "delete": _DELETE_SESSION.format_map(names),
            "fill": _FILL_RESERVED.format_map(names),
        }
        # The generation is read inside the transaction that records a session, and held
        # there: SQLite takes the write lock first (BEGIN IMMEDIATE), PostgreSQL locks the
        # row, so provisioning cannot move it between the read and the commit.
        self._begin = "BEGIN IMMEDIATE" if self._sqlite else None
        self._generation_sql = _SELECT_GENERATION + ("" if self._sqlite else " FOR SHARE")
        self._local = threading.local()

    # -- schema --------------------------------------------------------------------------

    def create(self) -> None:
        """Create tables that do not exist yet (safe to race: a loser retries once)."""
        for attempt in (1, 2):
            try:
                Base.metadata.create_all(self.engine)
                self._add_missing_columns()
                with self.engine.begin() as c:
                    if c.execute(select(GenerationRow.value)).first() is None:
                        c.execute(insert(_GENERATION).values(id=1, value=1))
                return
            except (IntegrityError, ProgrammingError, OperationalError) as exc:
                if attempt == 2:
                    raise StoreError(f"cannot create the schema: {_first_line(exc)}") from None
                time.sleep(0.2)

    def _add_missing_columns(self) -> None:
        """Columns added since a database was created (create_all adds tables only)."""
        present = {col["name"] for col in inspect(self.engine).get_columns("trust_anchors")}
        if "max_lifecycle" not in present:
            with self.engine.begin() as c:
                c.execute(text("ALTER TABLE trust_anchors ADD COLUMN max_lifecycle VARCHAR(16)"))
        present = {col["name"] for col in inspect(self.engine).get_columns("reference_values")}
        if "extra" not in present:
            with self.engine.begin() as c:
                c.execute(text("ALTER TABLE reference_values ADD COLUMN extra TEXT"))

    # -- sessions ------------------------------------------------------------------------

    def record_session(
        self,
        key: str,
        *,
        nonce: bytes,
        created: float,
        expiry: float,
        generation: int,
        status: str,
        media_type: str,
        evidence: bytes | None,
        result: str | None,
        outcome: str,
        failure: dict[str, str] | None,
    ) -> str:
        """Record a session's one submission, appraised at provisioning ``generation``.

        RECORDED; STALE if provisioning has moved on since (nothing written: appraise again
        with the new endorsements); TAKEN if the session already took its submission or was
        deleted, or its nonce served another session (see :meth:`session`).
        """
        row = {
            "id": key,
            "nonce": nonce,
            "created": created,
            "expiry": expiry,
            "status": status,
            "media_type": media_type,
            "evidence": None
            if evidence is None or len(evidence) > MAX_STORED_EVIDENCE_BYTES
            else evidence,
            "result": result,
            "outcome": outcome,
            "failure": None if failure is None else json.dumps(_bounded_failure(failure)),
        }

        def record(cursor: Any) -> str:
            if self._begin is not None:
                cursor.execute(self._begin)
            cursor.execute(self._generation_sql)
            if int(cursor.fetchone()[0]) != generation:
                return STALE
            cursor.execute(self._sql["fill"], {**row, "waiting": WAITING})
            if cursor.rowcount == 1:  # its nonce was reserved at creation
                return RECORDED
            cursor.execute(self._sql["insert"], row)
            return RECORDED

        try:
            return self._transact(record)
        except self._dbapi.IntegrityError:
            return TAKEN

    def reserve_nonce(self, key: str, nonce: bytes, created: float, expiry: float) -> bool:
        """Reserve a client-chosen ``nonce`` for the session ``key`` as it is created (a
        WAITING row); False if any session, waiting, submitted or deleted, holds it."""
        row = dict.fromkeys(_SESSION_COLUMNS)
        row.update(id=key, nonce=nonce, created=created, expiry=expiry, status=WAITING)

        def reserve(cursor: Any) -> bool:
            cursor.execute(self._sql["insert"], row)
            return True

        try:
            return self._transact(reserve)
        except self._dbapi.IntegrityError:
            return False

    def session(self, key: str) -> SessionRecord | None:
        """The stored session under ``key``: a submitted one, a DELETED tombstone, or one
        WAITING whose client-chosen nonce was reserved at its creation."""

        def read(cursor: Any) -> Any:
            cursor.execute(self._sql["select"], {"id": key})
            return cursor.fetchone()

        row = self._transact(read)
        return None if row is None else self._record(dict(zip(_SESSION_COLUMNS, row, strict=True)))

    @staticmethod
    def _record(m: Any) -> SessionRecord:
        return SessionRecord(
            id=m["id"],
            nonce=bytes(m["nonce"]),
            created=m["created"],
            expiry=m["expiry"],
            status=m["status"],
            media_type=m["media_type"],
            evidence=None if m["evidence"] is None else bytes(m["evidence"]),
            result=m["result"],
            outcome=m["outcome"],
            failure=None if m["failure"] is None else json.loads(m["failure"]),
        )

    def delete_session(self, key: str, nonce: bytes, created: float, expiry: float) -> bool:
        """Delete a session, leaving a tombstone so its id takes no submission; False if it
        was deleted already."""

        def delete(cursor: Any) -> bool:
            cursor.execute(self._sql["delete"], {"id": key, "deleted": DELETED})
            if cursor.rowcount == 1:
                return True
            cursor.execute(self._sql["select"], {"id": key})
            if cursor.fetchone() is not None:
                return False  # a tombstone already
            cursor.execute(self._sql["insert"], _tombstone(key, nonce, created, expiry))
            return True

        try:
            return self._transact(delete)
        except self._dbapi.IntegrityError:
            pass
        # Its nonce served another session (a client-chosen one): the tombstone keeps the key
        # alone, with the tag for a nonce (which no session was issued).
        row = _tombstone(key, bytes.fromhex(key), created, expiry)

        def bury(cursor: Any) -> bool:
            cursor.execute(self._sql["insert"], row)
            return True

        try:
            return self._transact(bury)
        except self._dbapi.IntegrityError:
            return False  # deleted concurrently

    @property
    def embedded(self) -> bool:
        """A file this process writes itself (SQLite): a statement takes tens of microseconds
        and waits on no network, so it may run on an event loop (a server's round trip may
        not)."""
        return self._sqlite

    def checkpoint(self) -> tuple[int, int]:
        """Copy SQLite's write-ahead log back into the database file; (frames in the log,
        frames now copied). (0, 0) for PostgreSQL, which has nothing of the kind to do.

        PASSIVE first: writers go on meanwhile. But under a steady stream of writes a
        passive checkpoint never finds the log wholly copied with no write in between,
        and the log only starts over from its beginning then: it grew by 35 KB an
        attestation, without end, and every write had to extend the file. So once it
        holds more than WAL_RESTART_FRAMES, a RESTART checkpoint holds new writes back
        (they wait, as for any write lock) while it copies the rest, and the next write
        starts the log over, in place. It waits at most WAL_RESTART_WAIT_MS for writes and
        reads in progress, else tries again next time: a long reader stalls no writer for
        longer.
        """
        if not self._sqlite:
            return 0, 0

        def run(cursor: Any) -> tuple[int, int]:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            _busy, frames, copied = cursor.fetchone()
            if frames > WAL_RESTART_FRAMES:
                cursor.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
                try:
                    cursor.execute("PRAGMA wal_checkpoint(RESTART)")
                    _busy, frames, copied = cursor.fetchone()
                finally:
                    cursor.execute("PRAGMA busy_timeout=0")
            return int(frames), int(copied)

        return self._transact(run)

    def purge_sessions(self, now: float, retention: float = SESSION_RETENTION_SECONDS) -> int:
        """Delete sessions whose retention has ended; how many went.

        In transactions of PURGE_BATCH rows: a verifier at 1,000 appraisals a second has
        60,000 sessions to delete a minute, and one transaction deleting them all would hold
        SQLite's write lock for as long, stalling every worker's next submission.
        """
        t = _SESSIONS.c
        expired = select(t.id).where(t.expiry < now - retention).limit(PURGE_BATCH)
        purged = 0
        while True:
            with self._write() as c:
                gone = int(c.execute(delete(_SESSIONS).where(t.id.in_(expired))).rowcount)
            purged += gone
            if gone < PURGE_BATCH:
                return purged

    def recent_sessions(self, limit: int) -> list[dict[str, Any]]:
        """The latest sessions, newest first, without evidence or result (operator's view)."""
        t = _SESSIONS.c
        with self._read() as c:
            rows = c.execute(
                select(t.id, t.created, t.expiry, t.status, t.media_type, t.outcome, t.failure)
                .order_by(t.created.desc())
                .limit(limit)
            ).all()
        return [
            {
                "id": r.id,
                "created": r.created,
                "expiry": r.expiry,
                "status": r.status,
                "media-type": r.media_type,
                "outcome": r.outcome,
                "failure": None if r.failure is None else json.loads(r.failure),
            }
            for r in rows
        ]

    def count_sessions(self) -> dict[str, int]:
        with self._read() as c:
            rows = c.execute(select(_SESSIONS.c.status, _SESSIONS.c.outcome)).all()
        counts: dict[str, int] = {}
        for status, outcome in rows:
            key = outcome or status
            counts[key] = counts.get(key, 0) + 1
        return counts

    # -- provisioning --------------------------------------------------------------------

    def generation(self) -> int:
        with self._read() as c:
            value = c.execute(select(GenerationRow.value)).scalar_one()
        return int(value)

    def snapshot(self) -> Snapshot:
        with self._read() as c:
            generation = int(c.execute(select(GenerationRow.value)).scalar_one())
            anchors = c.execute(select(_ANCHORS)).all()
            revocations = c.execute(select(_REVOCATIONS)).all()
            refs = c.execute(select(_REFERENCES)).all()
            active = c.execute(
                select(SettingRow.value).where(SettingRow.key == ACTIVE_POLICY)
            ).scalar_one_or_none()
            name = active or DEFAULT_NAME
            rego = BUILTIN.get(name)
            if rego is None:
                rego = c.execute(select(PolicyRow.rego).where(PolicyRow.name == name)).scalar()
            if rego is None:  # pragma: no cover - activation checks the policy exists
                name, rego = DEFAULT_NAME, BUILTIN[DEFAULT_NAME]
        return Snapshot(
            generation=generation,
            cas=tuple(_ca_anchor(a) for a in anchors if a.kind == "ca"),
            keys=tuple(
                KeyAnchor(
                    scheme=a.scheme,
                    instance_id=bytes.fromhex(a.instance_id or ""),
                    pem=a.pem,
                )
                for a in anchors
                if a.kind == "key"
            ),
            revocations=tuple(
                Revocation(r.kind, bytes.fromhex(r.value), r.reason) for r in revocations
            ),
            references=tuple(
                ReferenceValue(
                    scheme=r.scheme,
                    kind=r.kind,
                    name=r.name,
                    measurement=bytes.fromhex(r.measurement),
                    version=r.version,
                    **_extra(r.extra),
                )
                for r in refs
            ),
            policy_name=name,
            policy_rego=rego,
            tpm=tuple(_tpm_anchor(a) for a in anchors if a.kind in ("tpm-ca", "tpm-ak")),
        )

    def policy_text(self, name: str) -> str:
        with self._read() as c:
            rego = c.execute(select(PolicyRow.rego).where(PolicyRow.name == name)).scalar()
        if rego is None:
            raise NotFound(f"no policy named {name[:80]!r}")
        return str(rego)

    def add_anchors(self, anchors: Iterable[Anchor]) -> list[str]:
        with self._write() as c:
            ids = self._add_anchors(c, anchors)
            self._bump(c)
        return ids

    def add_revocation(self, revocation: Revocation) -> str:
        """Record ``revocation``; a CA's must name the key of a trust anchor (ProvisioningError
        otherwise), and is recorded under that key."""
        with self._write() as c:
            revocation = resolve_revocation(revocation, self._ca_anchors(c))
            self._add_revocations(c, [revocation])
            self._bump(c)
        return revocation.id

    def add_references(self, refs: Iterable[ReferenceValue]) -> list[str]:
        with self._write() as c:
            ids = self._add_references(c, refs)
            self._bump(c)
        return ids

    def put_policy(self, name: str, rego: str, digest: str, *, activate: bool = False) -> None:
        with self._write() as c:
            self._put_policy(c, name, rego, digest)
            if activate:
                self._activate(c, name)
            self._bump(c)

    def activate_policy(self, name: str) -> None:
        with self._write() as c:
            self._activate(c, name)
            self._bump(c)

    def apply(self, deployment: Deployment, digests: dict[str, str]) -> dict[str, int]:
        """Apply a whole deployment document in one transaction."""
        with self._write() as c:
            self._add_anchors(c, deployment.anchors)
            cas = self._ca_anchors(c)
            self._add_revocations(c, [resolve_revocation(r, cas) for r in deployment.revocations])
            self._add_references(c, deployment.references)
            for name, rego in deployment.policies:
                self._put_policy(c, name, rego, digests[name])
            if deployment.active_policy is not None:
                self._activate(c, deployment.active_policy)
            self._bump(c)
        return {
            "trust-anchors": len(deployment.anchors),
            "revocations": len(deployment.revocations),
            "reference-values": len(deployment.references),
            "policies": len(deployment.policies),
        }

    def remove(self, what: str, item_id: str) -> None:
        table = {
            "trust-anchors": _ANCHORS,
            "revocations": _REVOCATIONS,
            "reference-values": _REFERENCES,
            "policies": _POLICIES,
        }[what]
        key = table.c.name if what == "policies" else table.c.id
        with self._write() as c:
            if what == "policies" and self._active(c) == item_id:
                raise ProvisioningError(f"policy {item_id!r} is active; activate another first")
            if c.execute(delete(table).where(key == item_id)).rowcount != 1:
                raise NotFound(f"no {what[:-1].replace('-', ' ')} with id {item_id[:80]!r}")
            self._bump(c)

    def listing(self) -> dict[str, Any]:
        """Everything provisioned, as JSON values (for ``GET /provisioning/v1/state``)."""
        with self._read() as c:
            anchors = c.execute(select(_ANCHORS).order_by(_ANCHORS.c.created)).all()
            revs = c.execute(select(_REVOCATIONS).order_by(_REVOCATIONS.c.created)).all()
            refs = c.execute(select(_REFERENCES).order_by(_REFERENCES.c.created)).all()
            policies = c.execute(select(_POLICIES).order_by(_POLICIES.c.name)).all()
            active = self._active(c)
            generation = int(c.execute(select(GenerationRow.value)).scalar_one())
        return {
            "generation": generation,
            "active-policy": active,
            "trust-anchors": [
                {
                    "id": a.id,
                    "kind": a.kind,
                    "scheme": a.scheme,
                    "instance-id": a.instance_id,
                    "subject": a.subject,
                    # The most the operator lets this CA endorse (its mark counts up to it).
                    "max-lifecycle": _ca_anchor(a).max_lifecycle if a.kind == "ca" else None,
                    "key-id": _ca_anchor(a).key_id if a.kind == "ca" else None,
                }
                for a in anchors
            ],
            "revocations": [
                {"id": r.id, "kind": r.kind, "value": r.value, "reason": r.reason} for r in revs
            ],
            "reference-values": [
                {
                    "id": r.id,
                    "scheme": r.scheme,
                    "kind": r.kind,
                    "name": r.name,
                    "version": r.version,
                    "measurement": r.measurement,
                    **(json.loads(r.extra) if r.extra else {}),
                }
                for r in refs
            ],
            "policies": [{"name": name, "builtin": True, "digest": None} for name in BUILTIN]
            + [{"name": p.name, "builtin": False, "digest": p.digest} for p in policies],
        }

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as c:
                yield c
        except OperationalError as exc:
            raise StoreError(f"database error: {_first_line(exc)}") from None

    def _transact(self, work: Callable[[Any], _T]) -> _T:
        """``work(cursor)`` in one transaction on this thread's own driver connection.

        A statement that fails rolls back; a connection the driver reports broken is dropped
        (the next call opens another). The driver's IntegrityError reaches the caller; its
        other errors become StoreError. With SQLite, a write that finds the file locked by
        another worker is retried after 50 µs, doubling up to 2 ms, until
        SQLITE_BUSY_TIMEOUT_MS: SQLite's own busy handler first sleeps a whole millisecond,
        and workers sharing one file under load meet the lock on one attestation in seven.
        """
        conn = self._connection()
        pause, deadline = 50e-6, 0.0
        while True:
            try:
                cursor = conn.cursor()
                try:
                    result = work(cursor)
                finally:
                    cursor.close()
                conn.commit()
                return result
            except self._dbapi.Error as exc:
                self._roll_back(conn)
                if self._sqlite and _locked(exc):
                    now = time.monotonic()
                    deadline = deadline or now + SQLITE_BUSY_TIMEOUT_MS / 1000
                    if now < deadline:
                        time.sleep(pause)
                        pause = min(pause * 2, 0.002)
                        continue
                if isinstance(exc, self._dbapi.IntegrityError):
                    raise
                raise StoreError(f"database error: {_first_line(exc)}") from None
            except BaseException:
                self._roll_back(conn)
                raise

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = self.engine.raw_connection()
                if self._sqlite:
                    conn.cursor().execute("PRAGMA busy_timeout=0")  # _transact retries
                    if self._checkpoint_elsewhere:
                        conn.cursor().execute("PRAGMA wal_autocheckpoint=0")
            except (OperationalError, self._dbapi.Error) as exc:
                raise StoreError(f"database error: {_first_line(exc)}") from None
            self._local.conn = conn
        return conn

    def _roll_back(self, conn: Any) -> None:
        try:
            conn.rollback()
        except self._dbapi.Error:
            self._local.conn = None
            conn.invalidate()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as c:
                yield c
        except OperationalError as exc:
            raise StoreError(f"database error: {_first_line(exc)}") from None

    @staticmethod
    def _bump(c: Connection) -> None:
        c.execute(
            update(_GENERATION).where(_GENERATION.c.id == 1).values(value=_GENERATION.c.value + 1)
        )

    @staticmethod
    def _active(c: Connection) -> str:
        value = c.execute(
            select(SettingRow.value).where(SettingRow.key == ACTIVE_POLICY)
        ).scalar_one_or_none()
        return value or DEFAULT_NAME

    @staticmethod
    def _ca_anchors(c: Connection) -> list[CaAnchor]:
        return [_ca_anchor(a) for a in c.execute(select(_ANCHORS)).all() if a.kind == "ca"]

    @staticmethod
    def _add_anchors(c: Connection, anchors: Iterable[Anchor]) -> list[str]:
        ids = []
        now = time.time()
        for a in anchors:
            c.execute(delete(_ANCHORS).where(_ANCHORS.c.id == a.id))
            pem = a.pem if not isinstance(a, TpmRegistration) else a.ak_public.hex()
            if isinstance(a, TpmCaAnchor):
                values: dict[str, str | None] = {
                    "kind": "tpm-ca",
                    "scheme": "veritee",
                    "instance_id": None,
                    "subject": a.subject,
                    "max_lifecycle": None,
                }
            elif isinstance(a, TpmRegistration):
                values = {
                    "kind": "tpm-ak",
                    "scheme": "veritee",
                    "instance_id": a.ek_fingerprint.hex(),
                    "subject": f"TPM AK registered for EK {a.ek_fingerprint.hex()[:16]}",
                    "max_lifecycle": None,
                }
            elif isinstance(a, CaAnchor):
                values = {
                    "kind": "ca",
                    "scheme": "veritee",
                    "instance_id": None,
                    "subject": a.subject,
                    "max_lifecycle": a.max_lifecycle,
                }
            else:
                values = {
                    "kind": "key",
                    "scheme": a.scheme,
                    "instance_id": a.instance_id.hex(),
                    "subject": f"{a.scheme} device {a.instance_id.hex()}",
                    "max_lifecycle": None,
                }
            c.execute(insert(_ANCHORS).values(id=a.id, pem=pem, created=now, **values))
            ids.append(a.id)
        return ids

    @staticmethod
    def _add_revocations(c: Connection, revocations: Iterable[Revocation]) -> None:
        table = _REVOCATIONS
        for r in revocations:
            c.execute(delete(table).where(table.c.id == r.id))
            c.execute(
                insert(table).values(
                    id=r.id, kind=r.kind, value=r.value.hex(), reason=r.reason, created=time.time()
                )
            )

    @staticmethod
    def _add_references(c: Connection, refs: Iterable[ReferenceValue]) -> list[str]:
        table = _REFERENCES
        ids = []
        for r in refs:
            c.execute(delete(table).where(table.c.id == r.id))
            c.execute(
                insert(table).values(
                    id=r.id,
                    scheme=r.scheme,
                    kind=r.kind,
                    name=r.name,
                    version=r.version,
                    measurement=r.measurement.hex(),
                    created=time.time(),
                    extra=json.dumps(r.extra()) if r.extra() else None,
                )
            )
            ids.append(r.id)
        return ids

    @staticmethod
    def _put_policy(c: Connection, name: str, rego: str, digest: str) -> None:
        if name in BUILTIN:
            raise ProvisioningError(f"policy {name!r} is built in and cannot be replaced")
        table = _POLICIES
        c.execute(delete(table).where(table.c.name == name))
        c.execute(insert(table).values(name=name, rego=rego, digest=digest, created=time.time()))

    @staticmethod
    def _activate(c: Connection, name: str) -> None:
        if name not in BUILTIN:
            exists = c.execute(select(PolicyRow.name).where(PolicyRow.name == name)).first()
            if exists is None:
                raise NotFound(f"no policy named {name[:80]!r}")
        table = _SETTINGS
        c.execute(delete(table).where(table.c.key == ACTIVE_POLICY))
        c.execute(insert(table).values(key=ACTIVE_POLICY, value=name))


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL: readers never block the writer and commits do not fsync the whole file;
            # NORMAL survives a process crash (not a power cut) without losing a commit.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _extra(extra: str | None) -> dict[str, Any]:
    if not extra:
        return {}
    value = json.loads(extra)
    return {
        "rems": tuple(bytes.fromhex(r) for r in value.get("rems", [])),
        "personalization": bytes.fromhex(value.get("personalization-value", "")),
        "implementation": bytes.fromhex(value.get("implementation-id", "")),
    }


def _tombstone(key: str, nonce: bytes, created: float, expiry: float) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_SESSION_COLUMNS)
    row.update(id=key, nonce=nonce, created=created, expiry=expiry, status=DELETED)
    return row


def _bounded_failure(failure: dict[str, str]) -> dict[str, str]:
    return {
        "check": str(failure.get("check", ""))[:MAX_STORED_CHECK_CHARS],
        "reason": str(failure.get("reason", ""))[:MAX_STORED_REASON_CHARS],
    }


def _locked(exc: Exception) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY): another connection holds the write lock."""
    return getattr(exc, "sqlite_errorcode", None) == 5 or "database is locked" in str(exc)


def _redact(url: str) -> str:
    # postgresql+psycopg://user:password@host/db -> keep the password out of messages.
    head, sep, tail = url.partition("@")
    if sep and ":" in head.split("//", 1)[-1]:
        scheme, _, creds = head.partition("//")
        return f"{scheme}//{creds.split(':', 1)[0]}:***@{tail}"
    return url


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
