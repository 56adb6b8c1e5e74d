"""Alerts: stored before they are acknowledged, then delivered with retries.

An accepted alert is committed to the outbox (SQLite in WAL mode, synchronous
commits; or PostgreSQL) before the 200 goes out, one row per sink it is
routed to (`outbox`). A delivery worker in the gateway process claims due
rows under a lease (so several processes on one outbox never deliver a row
at the same time), delivers them, and records the outcome: delivered;
retried later with exponential backoff and jitter; or, after the last
attempt, dead (kept, for `agentmark-gw alerts retry`) (`delivery`).
Delivery is at least once per sink: a process killed after a sink accepted
an alert but before the row was marked will deliver it again.

Sinks (`sinks`): the runner's `HandleAlert`, a Slack incoming webhook, a
generic HTTP endpoint that receives the alert JSON signed with its own
secret, and email over SMTP (STARTTLS or TLS, with login).

What this package builds on, and so never imports it: the alert vocabulary
(`ALERT_TYPES`, `ALERT_STATUSES`) is the event vocabulary's, in `webhook`;
the sink settings (`Sink`, `parse_sinks`, `DEFAULT_SINKS`) are configuration,
in `config`. They are re-exported here for those who import them from here.
"""

from __future__ import annotations

from ..config import DEFAULT_SINKS, SINK_KINDS, Sink, parse_sinks
from ..webhook import ALERT_STATUSES, ALERT_TYPES
from .delivery import Delivery
from .outbox import Outbox
from .sinks import HTTP_SIGNATURE_HEADER, email_message, send_email, slack_message

__all__ = [
    "ALERT_STATUSES",
    "ALERT_TYPES",
    "DEFAULT_SINKS",
    "HTTP_SIGNATURE_HEADER",
    "SINK_KINDS",
    "Delivery",
    "Outbox",
    "Sink",
    "email_message",
    "parse_sinks",
    "send_email",
    "slack_message",
]
