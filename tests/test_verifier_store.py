"""The verifier's store on a real SQLite file: what sessions promise, under lock contention
and a connection lost underneath it."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from veritee.verifier.errors import NonceAlreadyUsed
from veritee.verifier.store import COMPLETE, WAITING, Store, StoreError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "verifier.db"
    Store(f"sqlite:///{path}").create()
    return path


def _store(db: Path) -> Store:
    return Store(f"sqlite:///{db}")


def _finish(store: Store, sid: str) -> bool:
    return store.finish_session(
        sid,
        status=COMPLETE,
        media_type="application/x",
        evidence=b"evidence",
        result="ear",
        outcome="affirming",
        failure=None,
    )


def test_a_session_takes_one_submission_and_outlives_a_restart(db: Path) -> None:
    store = _store(db)
    nonce = os.urandom(32)
    store.create_session("s1", nonce, time.time(), time.time() + 60)
    with pytest.raises(NonceAlreadyUsed):
        store.create_session("s2", nonce, time.time(), time.time() + 60)
    record, generation = _store(db).session_and_generation(
        "s1"
    )  # another worker, or after a restart
    assert record is not None and record.status == WAITING and record.nonce == nonce
    assert generation >= 1
    assert _finish(store, "s1")
    assert not _finish(_store(db), "s1")  # the one submission is taken
    assert store.session_and_generation("nobody") == (None, generation)


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
    _store(db).create_session("s", os.urandom(32), time.time(), time.time() + 60)
    assert released.is_set() and time.monotonic() - start >= 0.3
    holder.close()


def test_a_connection_lost_underneath_is_replaced(db: Path) -> None:
    store = _store(db)
    store.create_session("a", os.urandom(32), time.time(), time.time() + 60)
    store._local.conn.dbapi_connection.close()  # inject the fault: the driver connection dies
    with pytest.raises(StoreError, match="database error"):
        store.create_session("b", os.urandom(32), time.time(), time.time() + 60)
    store.create_session("c", os.urandom(32), time.time(), time.time() + 60)
    assert store.session("c") is not None and store.session("b") is None
