"""The verifier's store and session ids, on a real SQLite file: what sessions promise, under
lock contention, provisioning racing an appraisal, and a connection lost underneath."""

from __future__ import annotations

import base64
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from veritee.verifier.sessions import Tickets
from veritee.verifier.store import (
    COMPLETE,
    DELETED,
    RECORDED,
    STALE,
    TAKEN,
    Store,
    StoreError,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "verifier.db"
    Store(f"sqlite:///{path}").create()
    return path


@pytest.fixture
def url(db: Path) -> str:
    return f"sqlite:///{db}"


def _store(db: Path | str) -> Store:
    return Store(db if isinstance(db, str) else f"sqlite:///{db}")


def _key() -> str:
    return os.urandom(16).hex()


def _record(
    store: Store,
    key: str,
    nonce: bytes,
    generation: int | None = None,
    *,
    expiry: float | None = None,
    evidence: bytes = b"evidence",
) -> str:
    expiry = time.time() + 60 if expiry is None else expiry
    return store.record_session(
        key,
        nonce=nonce,
        created=expiry - 150,
        expiry=expiry,
        generation=store.generation() if generation is None else generation,
        status=COMPLETE,
        media_type="application/x",
        evidence=evidence,
        result="ear",
        outcome="affirming",
        failure=None,
    )


# -- session ids ---------------------------------------------------------------------------------

TICKETS = Tickets(bytes(32))


def test_a_session_id_carries_its_nonce_and_expiry() -> None:
    nonce = os.urandom(32)
    ticket = TICKETS.issue(nonce, 1_700_000_000.5, 1_700_000_150.5)
    opened = TICKETS.open(ticket.id)
    assert opened == ticket
    assert (opened.nonce, opened.created, opened.expiry) == (
        nonce,
        1_700_000_000.5,
        1_700_000_150.5,
    )
    assert len(ticket.key) == 32  # fits the sessions table's 36-character key


def test_a_session_id_cannot_be_forged_or_altered() -> None:
    ticket = TICKETS.issue(os.urandom(32), time.time(), time.time() + 150)
    raw = bytearray(base64.urlsafe_b64decode(ticket.id + "=" * (-len(ticket.id) % 4)))
    later = bytearray(raw)
    later[9:17] = (2**62).to_bytes(8, "big")  # push the expiry far out
    other_nonce = bytearray(raw)
    other_nonce[20] ^= 1
    for forged in (later, other_nonce, raw[:-1], raw + b"\0"):
        assert TICKETS.open(base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()) is None
    # Another verifier's key, a UUID, garbage, an attacker-sized id: no session.
    assert Tickets(b"\1" * 32).open(ticket.id) is None
    for text in ("d4c5f1d2-5d3a-4b5c-9a1e-8f2f1b3c4d5e", "", "***", "A" * 10_000, ticket.id + "="):
        assert TICKETS.open(text) is None


# -- stored sessions -------------------------------------------------------------------------


def test_a_session_and_its_nonce_take_one_submission_across_workers(url: str) -> None:
    one, other = _store(url), _store(url)  # two workers, or before and after a restart
    a, b, nonce = _key(), _key(), os.urandom(32)
    assert _record(one, a, nonce) == RECORDED
    assert _record(other, a, os.urandom(32)) == TAKEN  # the session, again
    assert _record(other, b, nonce) == TAKEN  # the nonce, in another session
    stored = other.session(a)
    assert stored is not None and stored.status == COMPLETE and stored.nonce == nonce
    assert other.session(b) is None


def test_a_result_appraised_before_a_provisioning_change_is_not_recorded(url: str) -> None:
    store, a = _store(url), _key()
    before = store.generation()
    store.put_policy(f"p{a}", "package veritee\n", "digest", activate=True)  # a new generation
    assert store.generation() != before
    assert _record(store, a, os.urandom(32), generation=before) == STALE
    assert store.session(a) is None  # nothing written: appraise again
    assert _record(store, a, os.urandom(32)) == RECORDED


def test_a_deleted_session_stays_deleted(url: str) -> None:
    store = _store(url)
    a, b, c, d = _key(), _key(), _key(), _key()
    nonce, now = os.urandom(32), time.time()
    assert store.delete_session(a, nonce, now, now + 60)  # deleted while waiting
    assert not store.delete_session(a, nonce, now, now + 60)
    assert _record(store, a, os.urandom(32)) == TAKEN
    gone = store.session(a)
    assert gone is not None and gone.status == DELETED
    # A submitted one: its evidence and result go with it.
    assert _record(store, b, os.urandom(32)) == RECORDED
    assert store.delete_session(b, b"", now, now + 60)
    gone = store.session(b)
    assert gone is not None and (gone.status, gone.evidence, gone.result) == (DELETED, None, None)
    # A waiting session whose client-chosen nonce another session used is still deleted.
    used = os.urandom(32)
    assert _record(store, c, used) == RECORDED
    assert store.delete_session(d, used, now, now + 60)
    assert _record(store, d, os.urandom(32)) == TAKEN


def test_sessions_past_their_retention_are_purged(url: str) -> None:
    store, old, recent = _store(url), _key(), _key()
    now = time.time()
    for key, expiry in ((old, now - 3600), (recent, now - 60)):
        assert _record(store, key, os.urandom(32), expiry=expiry) == RECORDED
    assert store.purge_sessions(now, retention=1800) >= 1
    assert store.session(old) is None and store.session(recent) is not None


def test_a_purge_deletes_in_short_transactions(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each transaction deletes at most PURGE_BATCH rows, and the purge goes on until none
    # is left: 30 expired sessions take five batches of 7 (the last one short).
    monkeypatch.setattr("veritee.verifier.store.PURGE_BATCH", 7)
    store, now = _store(url), time.time()
    for _ in range(30):
        assert _record(store, _key(), os.urandom(32), expiry=now - 3600) == RECORDED
    recent = _key()
    assert _record(store, recent, os.urandom(32), expiry=now - 60) == RECORDED
    deletes: list[int] = []
    original = store._write

    def counting() -> Any:
        deletes.append(1)
        return original()

    monkeypatch.setattr(store, "_write", counting)
    assert store.purge_sessions(now, retention=1800) == 30
    assert len(deletes) == 5
    assert store.session(recent) is not None


SESSION_CHECKS = (
    test_a_session_and_its_nonce_take_one_submission_across_workers,
    test_a_result_appraised_before_a_provisioning_change_is_not_recorded,
    test_a_deleted_session_stays_deleted,
    test_sessions_past_their_retention_are_purged,
)


def test_a_write_waits_for_another_workers_lock(db: Path) -> None:
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another worker in the middle of a write
    released = threading.Event()

    def release() -> None:
        time.sleep(0.3)
        holder.execute("COMMIT")
        released.set()

    threading.Thread(target=release).start()
    start = time.monotonic()
    assert _record(_store(db), "a" * 32, os.urandom(32)) == RECORDED
    assert released.is_set() and time.monotonic() - start >= 0.3
    holder.close()


def test_writes_leave_checkpoints_to_the_checkpointing_thread(db: Path) -> None:
    # A serving worker's writes never checkpoint (the copy fsyncs, and they run on its event
    # loop); its checkpoint thread copies the whole log back.
    evidence = os.urandom(2400)

    def write_200(store: Store) -> None:  # about 1,400 pages of log: past SQLite's 1,000
        for _ in range(200):
            _record(store, _key(), os.urandom(32), evidence=evidence)

    serving = Store(f"sqlite:///{db}", checkpoint_elsewhere=True)
    write_200(serving)
    frames, copied = serving.checkpoint()
    assert frames > 1000 and copied == frames
    # A store that checkpoints itself (the default) never lets the log grow that far.
    own = _store(db)
    write_200(own)
    frames, copied = own.checkpoint()
    assert frames < 1000


def test_the_log_starts_over_under_a_steady_stream_of_writes(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker writes without pause while the checkpoint thread works: passive
    # checkpoints alone never find the log wholly copied, and it grows by every write
    # (40 MB here). Past WAL_RESTART_FRAMES the checkpoint starts it over (under 1 MB).
    monkeypatch.setattr("veritee.verifier.store.WAL_RESTART_FRAMES", 100)
    store = Store(f"sqlite:///{db}", checkpoint_elsewhere=True)
    generation = store.generation()
    evidence = os.urandom(2400)
    done = threading.Event()

    def write() -> None:
        for _ in range(1500):
            time.sleep(0.0002)  # a worker writes once a request; room for the other thread
            _record(store, _key(), os.urandom(32), generation, evidence=evidence)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        store.checkpoint()
        time.sleep(0.005)
    writer.join()
    assert db.with_name(db.name + "-wal").stat().st_size < 8 * 1024 * 1024


def test_a_connection_lost_underneath_is_replaced(db: Path) -> None:
    store = _store(db)
    assert _record(store, "a" * 32, os.urandom(32)) == RECORDED
    conn: Any = store._local.conn
    conn.dbapi_connection.close()  # inject the fault: the driver connection dies
    with pytest.raises(StoreError, match="database error"):
        _record(store, "b" * 32, os.urandom(32))
    assert _record(store, "c" * 32, os.urandom(32)) == RECORDED
    assert store.session("c" * 32) is not None and store.session("b" * 32) is None


def test_a_workers_checkpoint_thread_ends_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from veritee.verifier import service

    monkeypatch.setattr(service, "CHECKPOINT_SECONDS", 0.01)
    url = f"sqlite:///{tmp_path / 'verifier.db'}"
    Store(url).create()

    def checkpointing() -> int:
        return sum(t.name == "checkpoint" and t.is_alive() for t in threading.enumerate())

    before = checkpointing()
    verifier = service.Verifier(service.Config(state_dir=str(tmp_path), database_url=url))
    assert checkpointing() == before + 1
    del verifier
    gc.collect()
    deadline = time.monotonic() + 5
    while checkpointing() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointing() == before
