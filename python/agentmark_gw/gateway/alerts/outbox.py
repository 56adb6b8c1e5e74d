"""The outbox: every accepted alert, one row per sink, stored before the
gateway answers; claimed under a lease by the delivery worker, and read and
operated on by `agentmark-gw alerts`.

Dedupe: an alert id seen again with the status it last had, within
`alert_dedupe_window` seconds, is a duplicate (a webhook retry): answered,
not stored or delivered again. Anything else is a new occurrence and is
delivered: the id under another status than last time (triggered, resolved,
triggered again), or the same status after the window. The row of an
earlier occurrence with that status is reused (the schema keeps one row per
alert id, status and sink), so `alerts show` holds the latest. Cooldown: an
alert id seen within `alert_cooldown` seconds under another status is stored
as suppressed (visible, not delivered), so a flapping alert does not page
twice.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import Sink

STATES = ("pending", "delivered", "dead", "suppressed")
MAX_BACKOFF = 300.0

# One schema for both stores; the types that differ are filled in per dialect.
SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id {serial},
    alert_id TEXT NOT NULL,
    status TEXT NOT NULL,
    type TEXT NOT NULL,
    sink TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL,
    lease_until {real} NOT NULL DEFAULT 0,
    last_error TEXT,
    received_at {real} NOT NULL,
    delivered_at {real},
    UNIQUE (alert_id, status, sink)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (state, next_attempt_at)
"""


class Outbox:
    """The outbox: SQLite (a path; the embedded default) or PostgreSQL (a
    `postgresql://` URL; for several gateway replicas). Same schema, same
    queries, same behaviour; each call runs in a worker thread, one at a time
    per process. Across processes, claims do not overlap: SQLite serialises
    writers, PostgreSQL claims with `FOR UPDATE SKIP LOCKED`."""

    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        self.postgres = self.location.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row

            self._db: Any = psycopg.connect(self.location, autocommit=True, row_factory=dict_row)
            schema = SCHEMA.format(serial="BIGSERIAL PRIMARY KEY", real="DOUBLE PRECISION")
            with self._db.transaction():
                # Replicas starting together must not race to create the table.
                self._db.execute("SELECT pg_advisory_xact_lock(7243112)")
                for statement in schema.split(";"):
                    self._db.execute(statement)
        else:
            path = Path(self.location)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Alerts and their payloads are the operator's business: the file
            # is created readable by its owner only (SQLite gives its -wal and
            # -shm files the same mode), whatever the umask. Only when it does
            # not exist yet: closing any descriptor of an open database drops
            # this process's SQLite locks on it.
            if not path.exists():
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # Committed means on disk: an acknowledged alert survives a crash.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA.format(serial="INTEGER PRIMARY KEY", real="REAL") + ";")
        self._lock = threading.Lock()

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self.postgres else query

    def _execute(self, db: Any, query: str, args: Sequence[Any] = ()) -> Any:
        return db.execute(self._sql(query), tuple(args))

    @contextlib.contextmanager
    def _transaction(self, db: Any) -> Any:
        if self.postgres:
            with db.transaction():
                yield
            return
        db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            return work(self._db)

    # -- writing ------------------------------------------------------------------

    def accept(
        self, alert_id: str, alert_type: str, status: str, payload: str, sinks: Sequence[Sink], cooldown: float, dedupe_window: float = 3600.0
    ) -> dict[str, str]:
        """Store an alert for each sink; returns {sink: state} for the sinks it
        was stored for (none: a duplicate everywhere)."""
        now = time.time()

        def work(db: Any) -> dict[str, str]:
            stored = {}
            with self._transaction(db):
                for sink in sinks:
                    latest = self._execute(
                        db, "SELECT id, status, state, received_at FROM alert_deliveries WHERE alert_id = ? AND sink = ?"
                        " ORDER BY received_at DESC, id DESC LIMIT 1", (alert_id, sink.name),
                    ).fetchone()
                    latest = dict(latest) if latest is not None else None
                    if latest is not None and latest["status"] == status and (
                        now - latest["received_at"] < dedupe_window or latest["state"] == "pending"
                    ):
                        continue  # a retry of the last one (or that one is still on its way)
                    state = "pending"
                    if cooldown > 0 and self._execute(
                        db, "SELECT 1 FROM alert_deliveries WHERE alert_id = ? AND sink = ? AND status != ? AND received_at > ?",
                        (alert_id, sink.name, status, now - cooldown),
                    ).fetchone():
                        state = "suppressed"
                    # A new occurrence: reuse the row of an earlier one with this
                    # status (`received_at` in the condition: if another process
                    # reused it first, this matches nothing), else insert.
                    earlier = self._execute(
                        db, "SELECT id, received_at FROM alert_deliveries WHERE alert_id = ? AND status = ? AND sink = ?",
                        (alert_id, status, sink.name),
                    ).fetchone()
                    if earlier is not None:
                        earlier = dict(earlier)
                        cursor = self._execute(
                            db,
                            "UPDATE alert_deliveries SET type = ?, payload = ?, state = ?, attempts = 0, next_attempt_at = ?, lease_until = 0,"
                            " last_error = NULL, received_at = ?, delivered_at = NULL WHERE id = ? AND received_at = ?",
                            (alert_type, payload, state, now, now, earlier["id"], earlier["received_at"]),
                        )
                    else:
                        cursor = self._execute(
                            db,
                            "INSERT INTO alert_deliveries (alert_id, status, type, sink, payload, state, next_attempt_at, received_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (alert_id, status, alert_type, sink.name, payload, state, now, now),
                        )
                    if cursor.rowcount:
                        stored[sink.name] = state
            return stored

        return self.call(work)

    def claim(self, limit: int, lease: float, sink: str | None = None, other_than: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Due rows, leased to this process so no other delivers them meanwhile:
        of one `sink`, or of any sink but those in `other_than`."""
        now = time.time()
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        which, args = "", []
        if sink is not None:
            which, args = " AND sink = ?", [sink]
        elif other_than:
            which, args = f" AND sink NOT IN ({', '.join('?' * len(other_than))})", list(other_than)

        def work(db: Any) -> list[dict[str, Any]]:
            with self._transaction(db):
                rows = self._execute(
                    db,
                    "UPDATE alert_deliveries SET lease_until = ? WHERE id IN ("
                    f" SELECT id FROM alert_deliveries WHERE state = 'pending' AND next_attempt_at <= ? AND lease_until <= ?{which}"
                    f" ORDER BY next_attempt_at LIMIT ?{skip_locked}) RETURNING *",
                    (now + lease, now, now, *args, limit),
                ).fetchall()
            return [dict(row) for row in rows]

        return self.call(work)

    def delivered(self, row_id: int) -> None:
        self.call(lambda db: self._execute(
            db,
            "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = ?, lease_until = 0,"
            " last_error = NULL WHERE id = ?", (time.time(), row_id)))

    def failed(self, row_id: int, error: str, max_attempts: int, backoff: float) -> str:
        """Record a failed attempt; returns the row's new state (pending or dead)."""

        def work(db: Any) -> str:
            with self._transaction(db):
                row = self._execute(db, "SELECT attempts FROM alert_deliveries WHERE id = ?", (row_id,)).fetchone()
                attempts = (row["attempts"] if isinstance(row, dict) else row[0]) + 1
                state = "dead" if attempts >= max_attempts else "pending"
                delay = min(MAX_BACKOFF, backoff * 2 ** (attempts - 1)) * (0.5 + random.random())
                self._execute(
                    db,
                    "UPDATE alert_deliveries SET state = ?, attempts = ?, last_error = ?, next_attempt_at = ?, lease_until = 0 WHERE id = ?",
                    (state, attempts, error[:500], time.time() + delay, row_id),
                )
            return state

        return self.call(work)

    # -- reading and operating ------------------------------------------------------

    def depth(self) -> int:
        row = self.call(lambda db: self._execute(db, "SELECT COUNT(*) AS n FROM alert_deliveries WHERE state = 'pending'").fetchone())
        return int(row["n"] if isinstance(row, dict) else row[0])

    def recent(self, state: str | None = None, alert_type: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM alert_deliveries WHERE 1 = 1", list[Any]()
        if state:
            query, args = query + " AND state = ?", [*args, state]
        if alert_type:
            query, args = query + " AND type = ?", [*args, alert_type]
        query += " ORDER BY received_at DESC, id DESC LIMIT ?"
        return self.call(lambda db: [dict(r) for r in self._execute(db, query, (*args, limit)).fetchall()])

    def show(self, alert_id: str) -> list[dict[str, Any]]:
        return self.call(lambda db: [dict(r) for r in self._execute(
            db, "SELECT * FROM alert_deliveries WHERE alert_id = ? ORDER BY received_at, id", (alert_id,)).fetchall()])

    def retry(self, alert_id: str) -> int:
        """Dead deliveries of an alert go back to pending; returns how many."""
        return int(self.call(lambda db: self._execute(
            db, "UPDATE alert_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_until = 0"
            " WHERE alert_id = ? AND state = 'dead'", (time.time(), alert_id)).rowcount))

    def prune(self, older_than: float) -> int:
        """Delete delivered and suppressed rows received more than `older_than` seconds ago."""
        return int(self.call(lambda db: self._execute(
            db, "DELETE FROM alert_deliveries WHERE state IN ('delivered', 'suppressed') AND received_at < ?",
            (time.time() - older_than,)).rowcount))


