"""Alerts end to end: stored before the 200, delivered to routed sinks with
retries, deduplicated, suppressed in cooldown, dead-lettered and retried, and
never lost when the gateway is killed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from quart import Quart, Response, request

from agentmark_gw.gateway import create_app
from agentmark_gw.gateway.alerts import HTTP_SIGNATURE_HEADER, Outbox, Sink

from .conftest import SECRET, HttpServer, agentmark_json, gateway_config, signed
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port, wait_for_port
from .test_cli import environment, run

pytestmark = pytest.mark.e2e


class SinkServer:
    """A webhook receiver on loopback: records bodies, fails the first `failures` requests."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        self.failures = 0
        self.app = Quart("sink")

        @self.app.post("/<path:name>")
        async def hook(name: str) -> Response:
            if self.failures > 0:
                self.failures -= 1
                return Response("busy", status=503)
            body = await request.get_data()
            self.received.append((name, json.loads(body), {k.lower(): v for k, v in request.headers.items()}))
            return Response("ok")


@pytest.fixture
async def sink() -> AsyncIterator[tuple[SinkServer, str]]:
    receiver = SinkServer()
    async with HttpServer(receiver.app) as server:
        yield receiver, server.url


def alert_event(alert_id: str = "alrt_1", kind: str = "cost", status: str = "triggered") -> dict[str, Any]:
    event = agentmark_json("events/alert-triggered-cost.json")
    event["event"]["data"]["alert"].update(id=alert_id, type=kind, status=status)
    return event


async def post(client: httpx.AsyncClient, url: str, event: dict[str, Any]) -> httpx.Response:
    raw, headers = signed(event)
    return await client.post(url + "/", content=raw, headers=headers)


async def until(condition: Any, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_sinks_are_routed_by_type_and_the_http_sink_is_signed(
    scripted: tuple[ScriptedRunner, str], sink: tuple[SinkServer, str], client: httpx.AsyncClient, alerts_db: str,
) -> None:
    receiver, url = sink
    sinks = (
        Sink("pager", "http", f"{url}/pager", "sink-secret", types=("cost",)),
        Sink("chat", "slack", f"{url}/slack", statuses=("resolved",)),
    )
    config = gateway_config(scripted[1], alert_sinks=sinks, alert_backoff=0.05, alerts_db=alerts_db)
    async with HttpServer(create_app(config)) as gateway:
        assert (await post(client, gateway.url, alert_event("a1", "cost", "triggered"))).status_code == 200
        assert (await post(client, gateway.url, alert_event("a2", "latency", "resolved"))).status_code == 200
        await until(lambda: len(receiver.received) == 2)
    by_name = {name: (body, headers) for name, body, headers in receiver.received}
    body, headers = by_name["pager"]
    assert body["alert"]["id"] == "a1" and body["message"] == "Daily spend $61.25 exceeded $50"
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert headers[HTTP_SIGNATURE_HEADER] == "sha256=" + hmac.new(b"sink-secret", raw, hashlib.sha256).hexdigest()
    slack, _ = by_name["slack"]
    fields = " ".join(f["text"] for f in slack["blocks"][2]["fields"])
    assert "latency" in fields and "resolved" in fields and "61.25" in fields and "*Threshold:*\n50" in fields


async def test_a_repeat_is_delivered_once_and_a_failing_sink_is_retried(
    scripted: tuple[ScriptedRunner, str], sink: tuple[SinkServer, str], client: httpx.AsyncClient, alerts_db: str,
) -> None:
    receiver, url = sink
    receiver.failures = 2
    config = gateway_config(scripted[1], alert_sinks=(Sink("hook", "http", f"{url}/hook", "s"),), alert_backoff=0.05, alerts_db=alerts_db)
    async with HttpServer(create_app(config)) as gateway:
        for _ in range(3):
            assert (await post(client, gateway.url, alert_event("same"))).status_code == 200
        await until(lambda: len(receiver.received) == 1)
        await asyncio.sleep(0.3)
        metrics = (await client.get(gateway.url + "/metrics")).text
    assert len(receiver.received) == 1
    with Outbox(config.alerts_db) as outbox:
        (row,) = outbox.show("same")
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    assert 'agentmark_gw_alerts_total{outcome="retried"} 2.0' in metrics
    assert 'agentmark_gw_alerts_total{outcome="delivered"} 1.0' in metrics
    assert "agentmark_gw_alert_outbox_depth 0.0" in metrics


async def test_dead_letters_are_kept_and_can_be_retried(
    scripted: tuple[ScriptedRunner, str], sink: tuple[SinkServer, str], client: httpx.AsyncClient, tmp_path: Path, alerts_db: str,
) -> None:
    receiver, url = sink
    receiver.failures = 2
    config = gateway_config(scripted[1], alert_sinks=(Sink("hook", "http", f"{url}/hook", "s"),), alert_backoff=0.05, alert_max_attempts=2, alerts_db=alerts_db)
    async with HttpServer(create_app(config)) as gateway:
        await post(client, gateway.url, alert_event("doomed"))
        with Outbox(config.alerts_db) as outbox:
            await until(lambda: outbox.show("doomed")[0]["state"] == "dead")
        env = environment(tmp_path, AGENTMARK_GW_ALERTS_DB=config.alerts_db)
        code, out, _ = await run("alerts", "list", "--status", "dead", env=env)
        assert code == 0 and "doomed" in out and "http sink answered HTTP 503" in out
        code, out, _ = await run("alerts", "retry", "doomed", env=env)
        assert code == 0 and out.startswith("1 dead delivery of doomed queued again")
        await until(lambda: len(receiver.received) == 1)
    code, out, _ = await run("alerts", "show", "doomed", env=environment(tmp_path, AGENTMARK_GW_ALERTS_DB=config.alerts_db))
    (shown,) = json.loads(out)
    assert shown["state"] == "delivered" and shown["payload"]["alert"]["id"] == "doomed"


async def test_cooldown_suppresses_a_flapping_alert_visibly(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient, tmp_path: Path, alerts_db: str,
) -> None:
    config = gateway_config(scripted[1], alert_cooldown=60, alerts_db=alerts_db)
    scripted_runner.alerts.clear()
    async with HttpServer(create_app(config)) as gateway:
        await post(client, gateway.url, alert_event("flap", status="triggered"))
        await post(client, gateway.url, alert_event("flap", status="resolved"))
        await until(lambda: len(scripted_runner.alerts) == 1)
        await asyncio.sleep(0.2)
    assert [a.status for a in scripted_runner.alerts] == ["triggered"]
    code, out, _ = await run("alerts", "list", "--status", "suppressed", "--json", env=environment(tmp_path, AGENTMARK_GW_ALERTS_DB=config.alerts_db))
    (suppressed,) = json.loads(out)
    assert (suppressed["alert_id"], suppressed["status"]) == ("flap", "resolved")
    code, out, _ = await run("alerts", "prune", "--older-than", "0s", env=environment(tmp_path, AGENTMARK_GW_ALERTS_DB=config.alerts_db))
    assert out.startswith("pruned 2 ")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "budget"}, "alert.type must be one of cost, latency, error_rate"),
        ({"status": "pending"}, "alert.status must be one of triggered, resolved"),
        ({"currentValue": "61.25"}, "alert.currentValue must be a number"),
        ({"id": ""}, "alert.id must be a non-empty string"),
    ],
)
async def test_bad_alerts_are_refused_and_not_stored(
    change: dict[str, Any], message: str, scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient,
) -> None:
    config = gateway_config(scripted[1])
    event = alert_event("bad")
    event["event"]["data"]["alert"].update(change)
    async with HttpServer(create_app(config)) as gateway:
        response = await post(client, gateway.url, event)
    assert response.status_code == 400 and response.json() == {"message": message}
    with Outbox(config.alerts_db) as outbox:
        assert outbox.recent() == []


async def test_alerts_acknowledged_before_a_sigkill_are_delivered_exactly_once_after_restart(
    scripted: tuple[ScriptedRunner, str], tmp_path: Path, client: httpx.AsyncClient, alerts_db: str
) -> None:
    receiver = SinkServer()
    sink_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMARK_")}
    env.update(
        AGENTMARK_WEBHOOK_SECRET=SECRET,
        AGENTMARK_GW_ALERTS_DB=alerts_db,
        AGENTMARK_GW_ALERT_SINKS=json.dumps([{"kind": "http", "name": "hook", "url": f"http://127.0.0.1:{sink_port}/hook", "secret": "s"}]),
        AGENTMARK_GW_ALERT_BACKOFF="0.05",
        AGENTMARK_GW_ALERT_LEASE="2",  # deliveries the killed process had claimed are free again after this
        AGENTMARK_GW_ALERT_MAX_ATTEMPTS="1000",
        AGENTMARK_GW_LOG_FORMAT="text",
    )

    async def gateway() -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmark_gw.cli", "serve", "--runner", scripted[1], "--bind", f"127.0.0.1:{port}",
            env=env, stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for_port(port, timeout=30)
        return process, f"http://127.0.0.1:{port}"

    first, url = await gateway()  # the sink is down: every delivery fails and waits
    statuses = await asyncio.gather(*(post(client, url, alert_event(f"burst-{i}")) for i in range(20)))
    assert {r.status_code for r in statuses} == {200}
    first.send_signal(signal.SIGKILL)
    await first.wait()

    sink_app = HttpServer(receiver.app)
    sink_app.port, sink_app.url = sink_port, f"http://127.0.0.1:{sink_port}"
    async with sink_app:
        second, _ = await gateway()
        try:
            await until(lambda: len(receiver.received) >= 20, seconds=30)
            await asyncio.sleep(0.5)  # any duplicate would arrive now
        finally:
            second.terminate()
            await second.wait()
    delivered = sorted(body["alert"]["id"] for _, body, _ in receiver.received)
    assert delivered == sorted(f"burst-{i}" for i in range(20))


async def test_two_gateways_on_one_postgresql_outbox_deliver_each_alert_once(
    scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient, sink: tuple[SinkServer, str], request: pytest.FixtureRequest
) -> None:
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"outbox_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    receiver, url = sink
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMARK_")}
    env.update(
        AGENTMARK_WEBHOOK_SECRET=SECRET, AGENTMARK_GW_ALERTS_DB=f"{server}/{name}", AGENTMARK_GW_LOG_FORMAT="text",
        AGENTMARK_GW_ALERT_SINKS=json.dumps([{"kind": "http", "name": "hook", "url": f"{url}/hook", "secret": "s"}]),
    )
    gateways = []
    try:
        for _ in range(2):
            port = free_port()
            gateways.append((await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentmark_gw.cli", "serve", "--runner", scripted[1], "--bind", f"127.0.0.1:{port}",
                env=env, stderr=asyncio.subprocess.DEVNULL), f"http://127.0.0.1:{port}"))
            await wait_for_port(port, timeout=30)
        for batch in range(10):  # 500 alerts, alternately to each gateway, 50 at a time
            answers = await asyncio.gather(*(
                post(client, gateways[i % 2][1], alert_event(f"many-{batch * 50 + i}")) for i in range(50)))
            assert {a.status_code for a in answers} == {200}
        await until(lambda: len(receiver.received) >= 500, seconds=60)
        await asyncio.sleep(1)  # any duplicate would arrive now
    finally:
        for process, _ in gateways:
            process.terminate()
            await process.wait()
    ids = [body["alert"]["id"] for _, body, _ in receiver.received]
    assert len(ids) == 500 and len(set(ids)) == 500


async def test_the_email_sink_sends_over_starttls_with_login(scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient, tmp_path: Path) -> None:
    import ssl as ssl_module

    import trustme
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    authority = trustme.CA()
    server_context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    mailbox: list[Any] = []
    logins: list[tuple[bytes, bytes]] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
            mailbox.append(envelope)
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"alerts", b"hunter2")
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, tls_context=server_context, require_starttls=True,
        authenticator=authenticator, auth_require_tls=True,
    )
    controller.start()
    try:
        sink = Sink("mail", "email", f"smtp://127.0.0.1:{port}", to=("oncall@example.com",), sender="gateway@example.com",
                    username="alerts", password="hunter2", starttls=True, ca_file=str(ca_file))
        config = gateway_config(scripted[1], alert_sinks=(sink,), alert_backoff=0.05)
        async with HttpServer(create_app(config)) as gateway:
            assert (await post(client, gateway.url, alert_event("mail-1", "error_rate", "triggered"))).status_code == 200
            await until(lambda: len(mailbox) == 1)
    finally:
        controller.stop()
    import email
    from email import policy

    message = email.message_from_bytes(mailbox[0].content, policy=policy.default)
    assert message["Subject"] == "AgentMark Alert: error_rate - triggered"
    assert mailbox[0].rcpt_tos == ["oncall@example.com"] and logins == [(b"alerts", b"hunter2")]
    plain = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    rich = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    for expected in ("error_rate", "triggered", "61.25", "50", "1d", "mail-1"):
        assert expected in plain and expected in rich
