"""Issued nonces, in SQLite: single use, with an expiry, and kept across restarts.

A release consumes its nonce in the same transaction that checks it, before the evidence is
looked at, so two requests racing with one nonce cannot both pass, and a nonce used before a
restart stays used. Writes are synced (``synchronous=FULL``): a crash must not make a used
nonce usable again.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veritee.secrets.errors import (
    ConfigError,
    NonceExpired,
    NonceUnknown,
    NonceUsed,
    TooManyChallenges,
    TooManyChallengesFromClient,
)

NONCE_BYTES = 32
DB_FILE = "nonces.sqlite3"
# Each challenge costs a row until it expires: an attacker asking for challenges in a loop
# must not fill the disk. At the default 60 s lifetime this allows ~1,600 challenges/s. Each
# client has a smaller cap of its own (``issue``'s ``per_client``), so this one is reached
# only by many clients at once, not by one client's flood.
MAX_OUTSTANDING_NONCES = 100_000
# How a client is named in the store: its source address as the service saw it.
MAX_CLIENT_CHARS = 64
# Spent and expired nonces are kept this long, so a late replay is told "used"/"expired"
# rather than "unknown"; after that they are deleted (either way the nonce is refused).
RETAIN_SECONDS = 24 * 3600.0
PRUNE_INTERVAL_SECONDS = 60.0
# Another process holding the write lock longer than this means something is stuck.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    nonce BLOB PRIMARY KEY,
    expires REAL NOT NULL,
    used_at REAL,
    client TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces (expires);
"""
# A store made before per-client caps has no client column: add it (old rows: no client).
_MIGRATE = "ALTER TABLE nonces ADD COLUMN client TEXT NOT NULL DEFAULT ''"
_CLIENT_INDEX = "CREATE INDEX IF NOT EXISTS nonces_client ON nonces (client, expires)"


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    expires: float  # unix seconds


class NonceStore:
    """Thread-safe; several processes may share the file (SQLite locks the writes)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pruned = 0.0
        fresh = not path.exists()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            if fresh:
                os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(nonces)")}
            if "client" not in columns:
                self._db.execute(_MIGRATE)
            self._db.execute(_CLIENT_INDEX)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the nonce store {path}: {exc}") from None

    def issue(self, ttl: float, client: str = "", per_client: int | None = None) -> Challenge:
        """A fresh random nonce, good once and until ``now + ttl``.

        ``client`` names who asks (its address); with ``per_client``, it may hold at most
        that many unused, unexpired nonces (expired ones no longer count). Raise
        TooManyChallengesFromClient, or TooManyChallenges when the global cap is reached.
        """
        now = self._clock()
        client = client[:MAX_CLIENT_CHARS]
        nonce = secrets.token_bytes(NONCE_BYTES)
        with self._lock:
            self._prune(now)
            if per_client is not None:
                (mine,) = self._db.execute(
                    "SELECT COUNT(*) FROM nonces WHERE client = ? AND expires > ? "
                    "AND used_at IS NULL",
                    (client, now),
                ).fetchone()
                if mine >= per_client:
                    raise TooManyChallengesFromClient(
                        f"this client holds {mine} unused challenges (limit {per_client}); "
                        "use or let them expire before asking for more"
                    )
            (outstanding,) = self._db.execute(
                "SELECT COUNT(*) FROM nonces WHERE expires > ? AND used_at IS NULL", (now,)
            ).fetchone()
            if outstanding >= MAX_OUTSTANDING_NONCES:
                raise TooManyChallenges(
                    f"{outstanding} challenges are outstanding (limit {MAX_OUTSTANDING_NONCES}); "
                    "try again when some have expired"
                )
            self._db.execute(
                "INSERT INTO nonces (nonce, expires, client) VALUES (?, ?, ?)",
                (nonce, now + ttl, client),
            )
        return Challenge(nonce, now + ttl)

    def consume(self, nonce: bytes) -> None:
        """Mark ``nonce`` used; raise NonceUnknown, NonceUsed or NonceExpired if it was not good.

        The nonce is spent even when it turns out expired, and whatever the release's outcome.
        """
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT expires, used_at FROM nonces WHERE nonce = ?", (nonce,)
                ).fetchone()
                if row is not None and row[1] is None:
                    self._db.execute("UPDATE nonces SET used_at = ? WHERE nonce = ?", (now, nonce))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if row is None:
            raise NonceUnknown("this service did not issue that nonce (or it expired long ago)")
        expires, used_at = row
        if used_at is not None:
            raise NonceUsed("that nonce was already presented; ask for a new challenge")
        if now >= expires:
            raise NonceExpired(
                f"that nonce expired {now - expires:.0f} s ago; ask for a new challenge"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_INTERVAL_SECONDS:
            return
        self._pruned = now
        self._db.execute("DELETE FROM nonces WHERE expires < ?", (now - RETAIN_SECONDS,))
