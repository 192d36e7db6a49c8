"""Persistent request cache and spend ledger for the ``openai`` engine, in one sqlite file.

Both live in the same file so a single transaction can store a response and settle what it
cost: after a kill, either both happened or neither did. The file is shared safely by several
processes on one machine (WAL journal, busy timeout, ``BEGIN IMMEDIATE`` for every write so
two writers serialise instead of deadlocking on a lock upgrade).

Durability: ``synchronous=NORMAL`` in WAL mode means a committed transaction survives the
death of the process (kill -9) but not necessarily a power cut; that is the failure the
budget has to survive, and skipping the fsync per commit is what keeps thousands of calls a
second affordable.

With no path the ledger lives in an in-memory database (per engine) and nothing is cached.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    scope TEXT PRIMARY KEY,
    calls INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Settlement:
    """The outcome of one reserved attempt, written in one batch with others.

    ``key``/``value``: a response to cache (None for a failed attempt). ``token_delta``:
    actual tokens minus the tokens reserved (<= 0 when the reservation was an upper bound).
    ``call_refund``: 1 when the attempt provably never reached the server.
    """

    key: str | None = None
    value: str | None = None
    token_delta: int = 0
    call_refund: int = 0


class RequestStore:
    """Cache (key -> JSON response) and ledger (scope -> calls, tokens spent) in sqlite.

    A run uses it from its event-loop thread; the lock only makes a ``stats()`` read from
    another thread safe (one sqlite connection, one statement at a time).
    """

    def __init__(self, path: str | None, scope: str, *, busy_timeout_s: float = 60.0) -> None:
        self.path = path
        self.scope = scope
        self.persistent = path is not None
        self._lock = threading.Lock()
        self._last_spent = (0, 0)
        self._closed = False
        if path is not None:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the module's implicit
        # transactions would start them lazily and as DEFERRED).
        self._db = sqlite3.connect(
            path or ":memory:", isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        # Switching a new file to WAL needs an exclusive lock and sqlite does not wait for it
        # (no busy handler there): processes starting together retry instead of failing.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                self._setup(scope)
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + 0.05 * random.random())

    def _setup(self, scope: str) -> None:
        if self.persistent:
            if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO ledger(scope, calls, tokens) VALUES (?, 0, 0)", (scope,))

    # -- cache -------------------------------------------------------------------------
    def get(self, key: str) -> dict[str, Any] | None:
        if not self.persistent:
            return None
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- ledger ------------------------------------------------------------------------
    def spent(self) -> tuple[int, int]:
        """(calls, tokens) charged so far in this scope, by every process, reservations included
        (after close(): the last value read)."""
        with self._lock:
            if self._closed:
                return self._last_spent
            row = self._db.execute("SELECT calls, tokens FROM ledger WHERE scope = ?", (self.scope,)).fetchone()
        self._last_spent = (int(row[0]), int(row[1])) if row else (0, 0)
        return self._last_spent

    def reserve(self, token_amounts: list[int], max_calls: int | None, max_tokens: int | None) -> list[bool]:
        """Charge one call and ``t`` tokens for each amount, in order, while the budget allows.

        One committed transaction for the whole batch: when this returns True for an attempt, the
        charge is on disk, so the attempt may be sent. The first refusal refuses the rest too
        (the run is stopping anyway; granting a smaller later one would only reorder work).
        """
        granted: list[bool] = []
        with self._write():
            row = self._db.execute("SELECT calls, tokens FROM ledger WHERE scope = ?", (self.scope,)).fetchone()
            calls, tokens = int(row[0]), int(row[1])
            for t in token_amounts:
                fits = (max_calls is None or calls + 1 <= max_calls) and (
                    max_tokens is None or tokens + t <= max_tokens
                )
                if not fits or (granted and not granted[-1]):
                    granted.append(False)
                    continue
                calls, tokens = calls + 1, tokens + t
                granted.append(True)
            self._db.execute(
                "UPDATE ledger SET calls = ?, tokens = ? WHERE scope = ?", (calls, tokens, self.scope)
            )
        return granted

    def settle(self, items: list[Settlement]) -> None:
        """Store responses and replace reservations by actual usage, all in one transaction."""
        rows = [(s.key, s.value, time.time()) for s in items if s.key is not None and s.value is not None]
        token_delta = sum(s.token_delta for s in items)
        call_refund = sum(s.call_refund for s in items)
        with self._write():
            if rows and self.persistent:
                self._db.executemany("INSERT OR REPLACE INTO responses(key, value, created) VALUES (?, ?, ?)", rows)
            if token_delta or call_refund:
                self._db.execute(
                    "UPDATE ledger SET calls = calls - ?, tokens = MAX(0, tokens + ?) WHERE scope = ?",
                    (call_refund, token_delta, self.scope),
                )

    def close(self) -> None:
        if self._closed:
            return
        self.spent()
        with self._lock:
            self._closed = True
            try:
                self._db.close()
            except sqlite3.Error:
                pass

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rollback on error): takes the write lock up front."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
