"""Alerts: stored before they are acknowledged, then delivered with retries.

An accepted alert is committed to the outbox (SQLite in WAL mode, synchronous
commits) before the 200 goes out, one row per sink it is routed to. A
delivery worker in the gateway process claims due rows under a lease (so
several processes on one outbox never deliver a row at the same time),
delivers them, and records the outcome: delivered; retried later with
exponential backoff and jitter; or, after the last attempt, dead (kept, for
`agentmark-gw alerts retry`). Delivery is at least once per sink: a process
killed after a sink accepted an alert but before the row was marked will
deliver it again.

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

Sinks: the runner's `HandleAlert`, a Slack incoming webhook, a generic HTTP
endpoint that receives the alert JSON signed with its own secret, and email
over SMTP (STARTTLS or TLS, with login).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import logging
import os
import random
import smtplib
import sqlite3
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from .observability import logged_id

log = logging.getLogger("agentmark_gw.alerts")

ALERT_TYPES = ("cost", "latency", "error_rate")
ALERT_STATUSES = ("triggered", "resolved")
SINK_KINDS = ("runner", "http", "slack", "email")
STATES = ("pending", "delivered", "dead", "suppressed")
MAX_BACKOFF = 300.0
HTTP_SIGNATURE_HEADER = "x-agentmark-gw-signature-256"

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


@dataclass(frozen=True)
class Sink:
    """Where alerts go, and which ones: empty `types`/`statuses` match all."""

    name: str
    kind: str
    url: str = ""
    secret: str = ""
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    # email: `url` is smtp://HOST:PORT (or smtps:// for TLS from the start).
    to: tuple[str, ...] = ()
    sender: str = ""
    username: str = ""
    password: str = ""
    starttls: bool = False
    ca_file: str = ""

    def wants(self, alert_type: str, status: str) -> bool:
        return (not self.types or alert_type in self.types) and (not self.statuses or status in self.statuses)


DEFAULT_SINKS = (Sink(name="runner", kind="runner"),)


def parse_sinks(raw: Any, where: str) -> tuple[Sink, ...]:
    """Sinks from config: a list of tables with `kind`, and `url`/`secret` as the kind needs."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: alert_sinks must be a list of tables")
    sinks = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: alert_sinks[{i}] must be a table")
        kind = entry.get("kind")
        if kind not in SINK_KINDS:
            raise ValueError(f"{where}: alert_sinks[{i}].kind must be one of {', '.join(SINK_KINDS)}")
        url = str(entry.get("url", ""))
        if kind in ("http", "slack") and not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}: alert_sinks[{i}] ({kind}) needs an http(s) url")
        if kind == "http" and not entry.get("secret"):
            raise ValueError(f"{where}: alert_sinks[{i}] (http) needs a secret to sign with")
        if kind == "email" and (not url.startswith(("smtp://", "smtps://")) or not entry.get("to") or not entry.get("sender")):
            raise ValueError(f"{where}: alert_sinks[{i}] (email) needs an smtp:// or smtps:// url, `to` and `sender`")
        unknown = set(entry) - {"name", "kind", "url", "secret", "types", "statuses", "to", "sender", "username", "password", "starttls", "ca_file"}
        if unknown:
            raise ValueError(f"{where}: alert_sinks[{i}]: unknown keys {', '.join(sorted(unknown))}")
        types, statuses = tuple(entry.get("types", ())), tuple(entry.get("statuses", ()))
        if set(types) - set(ALERT_TYPES) or set(statuses) - set(ALERT_STATUSES):
            raise ValueError(f"{where}: alert_sinks[{i}]: types are {', '.join(ALERT_TYPES)}; statuses {', '.join(ALERT_STATUSES)}")
        sinks.append(Sink(
            str(entry.get("name") or f"{kind}-{i}"), kind, url, str(entry.get("secret", "")), types, statuses,
            to=tuple(entry.get("to", ())), sender=str(entry.get("sender", "")), username=str(entry.get("username", "")),
            password=str(entry.get("password", "")), starttls=bool(entry.get("starttls", False)), ca_file=str(entry.get("ca_file", "")),
        ))
    names = [s.name for s in sinks]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: alert sink names must be unique")
    return tuple(sinks)


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


class Delivery:
    """The delivery worker: claims due rows and hands each to its sink.

    One loop per sink (and one for rows of sinks no longer configured), so a
    slow or hanging sink holds back only its own deliveries: with one loop,
    each batch of 32 waited for its slowest row, whatever its sink."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[Sink],
        deliver_to_runner: Callable[[dict[str, Any]], Awaitable[Any]],
        *,
        max_attempts: int,
        backoff: float,
        lease: float = 30.0,
        on_outcome: Callable[[str], None] = lambda outcome: None,
        poll: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.sinks = {s.name: s for s in sinks}
        self._to_runner = deliver_to_runner
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._on_outcome = on_outcome
        self._poll = poll
        self._lease = lease
        # One wake-up event per loop: a new alert may be for any sink.
        self._wakes: list[asyncio.Event] = []
        # A delivery must end well inside its lease, or another process could take it meanwhile.
        self._http = httpx.AsyncClient(timeout=max(0.5, min(10.0, lease * 0.5)))
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        names = tuple(self.sinks)
        claims = [{"sink": name} for name in names] + [{"other_than": names}]
        for claim in claims:
            wake = asyncio.Event()
            self._wakes.append(wake)
            self._tasks.append(asyncio.create_task(self._loop(wake, **claim)))

    def wake(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def stop(self, grace: float = 5.0) -> None:
        """Let deliveries under way finish for `grace` seconds; what is left
        stays in the outbox for the next start."""
        if self._tasks:
            self._stopping = True
            self.wake()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._tasks)), grace)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    _stopping = False

    async def _loop(self, wake: asyncio.Event, **which: Any) -> None:
        while not self._stopping:
            try:
                rows = await asyncio.to_thread(self.outbox.claim, 32, self._lease, **which)
                if rows:
                    await asyncio.gather(*(self._deliver(row) for row in rows))
                    continue  # there may be more due
            except Exception:  # noqa: BLE001 - the worker outlives any one failure
                log.exception("alert delivery loop failed; retrying")
            wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self._poll)

    async def _deliver(self, row: dict[str, Any]) -> None:
        sink = self.sinks.get(row["sink"])
        described = f"alert {logged_id(row['alert_id'])} ({row['type']} {row['status']}) to {row['sink']}"
        try:
            if sink is None:
                raise RuntimeError(f"no sink named {row['sink']} is configured any more")
            await self._send(sink, json.loads(row["payload"]))
        except Exception as error:  # noqa: BLE001 - every failure is retried, then kept
            reason = getattr(error, "message", None) or str(error) or type(error).__name__
            state = await asyncio.to_thread(self.outbox.failed, row["id"], reason, self._max_attempts, self._backoff)
            self._on_outcome("dead" if state == "dead" else "retried")
            log.warning("%s failed (%s): %s", described, "dead letter" if state == "dead" else "will retry", reason)
            return
        await asyncio.to_thread(self.outbox.delivered, row["id"])
        self._on_outcome("delivered")
        log.info("%s delivered", described)

    async def _send(self, sink: Sink, data: dict[str, Any]) -> None:
        if sink.kind == "runner":
            await self._to_runner(data)
            return
        if sink.kind == "email":
            await asyncio.to_thread(send_email, sink, data, self._http.timeout.connect or 10.0)
            return
        if sink.kind == "slack":
            body = json.dumps(slack_message(data)).encode()
            headers = {"content-type": "application/json"}
        else:
            body = json.dumps(data, separators=(",", ":")).encode()
            signature = "sha256=" + hmac.new(sink.secret.encode(), body, hashlib.sha256).hexdigest()
            headers = {"content-type": "application/json", HTTP_SIGNATURE_HEADER: signature}
        response = await self._http.post(sink.url, content=body, headers=headers)
        if response.status_code >= 300:
            raise RuntimeError(f"{sink.kind} sink answered HTTP {response.status_code}")


def slack_message(data: dict[str, Any]) -> dict[str, Any]:
    """A Slack Block Kit message with the alert's type, status, value, threshold and window."""
    alert = data.get("alert", {})
    status = str(alert.get("status", ""))
    title = f"{'🚨' if status == 'triggered' else '✅'} AgentMark alert: {alert.get('type')} {status}"
    fields = [
        ("Type", alert.get("type")), ("Status", status), ("Current value", alert.get("currentValue")),
        ("Threshold", alert.get("threshold")), ("Window", alert.get("timeWindow")), ("Alert", alert.get("id")),
    ]
    return {
        "text": title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "text": {"type": "mrkdwn", "text": str(data.get("message", ""))}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}:*\n{value}"} for name, value in fields]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": str(data.get("timestamp", ""))}]},
        ],
    }


def _alert_fields(data: dict[str, Any]) -> list[tuple[str, Any]]:
    alert = data.get("alert", {})
    return [
        ("Type", alert.get("type")), ("Status", alert.get("status")), ("Current value", alert.get("currentValue")),
        ("Threshold", alert.get("threshold")), ("Window", alert.get("timeWindow")), ("Alert", alert.get("id")),
        ("Message", data.get("message")), ("Time", data.get("timestamp")),
    ]


def email_message(sink: Sink, data: dict[str, Any]) -> EmailMessage:
    """Subject `AgentMark Alert: <type> - <status>`; a plain-text and an HTML body with the same fields."""
    alert = data.get("alert", {})
    message = EmailMessage()
    message["Subject"] = f"AgentMark Alert: {alert.get('type')} - {alert.get('status')}"
    message["From"] = sink.sender
    message["To"] = ", ".join(sink.to)
    fields = _alert_fields(data)
    message.set_content("\n".join(f"{name}: {value}" for name, value in fields) + "\n")
    rows = "".join(f"<tr><th align=left>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>" for name, value in fields)
    message.add_alternative(f"<html><body><h2>{html.escape(message['Subject'])}</h2><table>{rows}</table></body></html>", subtype="html")
    return message


def send_email(sink: Sink, data: dict[str, Any], timeout: float) -> None:
    """Over SMTP: TLS from the start (smtps://) or STARTTLS, then login when a username is set."""
    parsed = urllib.parse.urlsplit(sink.url)
    host, implicit_tls = parsed.hostname or "localhost", parsed.scheme == "smtps"
    context = ssl.create_default_context(cafile=sink.ca_file or None)
    port = parsed.port or (465 if implicit_tls else 25)
    smtp: smtplib.SMTP = (
        smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) if implicit_tls else smtplib.SMTP(host, port, timeout=timeout)
    )
    with smtp:
        if sink.starttls and not implicit_tls:
            smtp.starttls(context=context)
        if sink.username:
            smtp.login(sink.username, sink.password)
        smtp.send_message(email_message(sink, data))
