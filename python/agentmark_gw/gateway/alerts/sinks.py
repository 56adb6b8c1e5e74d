"""How an alert reaches each kind of sink: the runner's `HandleAlert` (through
the gateway's own call), a Slack incoming webhook, a generic HTTP endpoint
that receives the alert JSON signed with its own secret, and email over SMTP
(STARTTLS or TLS, with login). Which sinks exist is configuration
(`config.Sink`); this module only sends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import smtplib
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import httpx

from ..config import Sink

HTTP_SIGNATURE_HEADER = "x-agentmark-gw-signature-256"


async def send(
    sink: Sink, data: dict[str, Any], http: httpx.AsyncClient, to_runner: Callable[[dict[str, Any]], Awaitable[Any]]
) -> None:
    """One delivery to `sink`; raises on any failure, which the worker retries."""
    if sink.kind == "runner":
        await to_runner(data)
        return
    if sink.kind == "email":
        await asyncio.to_thread(send_email, sink, data, http.timeout.connect or 10.0)
        return
    if sink.kind == "slack":
        body = json.dumps(slack_message(data)).encode()
        headers = {"content-type": "application/json"}
    else:
        body = json.dumps(data, separators=(",", ":")).encode()
        signature = "sha256=" + hmac.new(sink.secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"content-type": "application/json", HTTP_SIGNATURE_HEADER: signature}
    response = await http.post(sink.url, content=body, headers=headers)
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
