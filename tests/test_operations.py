"""The operations surface: runner failover and health, readiness, metrics,
request logs, the replay guard, and runners dying mid-stream."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import httpx
import pytest

from agentmark_gw.gateway import create_app
from agentmark_gw.runner import events, start

from .conftest import HttpServer, agentmark_json, gateway_config, signed
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port
from .test_gateway_e2e import stream_lines

pytestmark = pytest.mark.e2e
TEXT_EVENT = agentmark_json("events/prompt-run-text.json")


async def test_a_runner_that_is_down_is_skipped_for_the_next(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    scripted_runner.script = [events.text_delta("from the live one"), events.finish("stop")]
    down = f"127.0.0.1:{free_port()}"
    config = replace(gateway_config(down), runners=(down, scripted[1]), expose_internals=True)
    async with HttpServer(create_app(config)) as server:
        for _ in range(4):  # round-robin lands on the dead one at least once
            response, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
            assert response.status_code == 200
            assert lines[0] == {"type": "text", "result": "from the live one"}
        ready = await client.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["runners"] == {down: False, scripted[1]: True}


async def test_all_runners_down_is_503_naming_them(client: httpx.AsyncClient) -> None:
    down = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    config = replace(gateway_config(down[0]), runners=tuple(down), expose_internals=True)
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(TEXT_EVENT)
        response = await client.post(server.url + "/", content=raw, headers=headers)
        ready = await client.get(server.url + "/readyz")
    assert response.status_code == 503
    message = response.json()["message"]
    assert message.startswith("Runner unavailable: tried ") and all(target in message for target in down)
    assert ready.status_code == 503
    assert ready.json()["message"] == "No runner is healthy"


async def test_a_runner_dying_mid_stream_ends_it_with_an_error_line(client: httpx.AsyncClient) -> None:
    runner = ScriptedRunner()
    runner.pause = 0.05
    runner.script = [events.text_delta(str(i)) for i in range(100)]
    server, port = await start(runner, "127.0.0.1:0")
    async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
        raw, headers = signed(TEXT_EVENT)
        lines = []
        async with client.stream("POST", gateway.url + "/", content=raw, headers=headers) as response:
            async for line in response.aiter_lines():
                lines.append(json.loads(line))
                if len(lines) == 3:
                    await server.stop(0)  # the runner goes away mid-stream
    assert response.status_code == 200
    assert lines[:3] == [{"type": "text", "result": str(i)} for i in range(3)]
    assert lines[-1]["type"] == "error" and lines[-1]["error"].startswith("Runner failed: ")
    assert len(lines) < 100


async def test_metrics_count_requests_failures_and_streams(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.text_delta("a"), events.finish("stop")]
    await stream_lines(client, scripted_gateway + "/", TEXT_EVENT)
    await client.post(scripted_gateway + "/", content=b"{}", headers={"content-type": "application/json"})
    text = (await client.get(scripted_gateway + "/metrics")).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values['agentmark_gw_requests_total{event_type="prompt-run",status="200"}'] >= 1
    assert values['agentmark_gw_requests_total{event_type="-",status="401"}'] >= 1
    assert values["agentmark_gw_signature_failures_total"] >= 1
    assert values['agentmark_gw_stream_chunks_total{event_type="prompt-run"}'] >= 1
    assert values['agentmark_gw_time_to_first_chunk_seconds_count{event_type="prompt-run"}'] >= 1
    assert values["agentmark_gw_inflight_streams"] == 0
    assert any(k.startswith("agentmark_gw_runner_healthy{") and v == 1 for k, v in values.items())


async def test_one_structured_log_line_per_request_without_body_or_secret(
    scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    from agentmark_gw.gateway.observability import JsonFormatter

    scripted_runner.script = [events.started("trace-42"), events.text_delta("secret-answer"), events.finish("stop")]
    with caplog.at_level(logging.INFO, logger="agentmark_gw"):
        await stream_lines(client, scripted_gateway + "/api/agentmark", TEXT_EVENT)
        await asyncio.sleep(0.05)
    records = [r for r in caplog.records if r.name == "agentmark_gw.requests"]
    assert len(records) == 1
    line = JsonFormatter().format(records[0])
    entry = json.loads(line)
    assert {k: entry[k] for k in ("method", "path", "event_type", "status", "trace_id")} == {
        "method": "POST", "path": "/api/agentmark", "event_type": "prompt-run", "status": 200, "trace_id": "trace-42",
    }
    assert entry["runner"] and entry["duration_ms"] >= 0 and entry["bytes"] > 0
    everything = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for leaked in ("test-secret", "What is 2+2?", "secret-answer", "You are a helpful math tutor"):
        assert leaked not in everything


async def test_replay_guard_refuses_the_same_body_within_the_window(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    scripted_runner.script = [events.finish("stop")]
    config = replace(gateway_config(scripted[1]), replay_window=60)
    async with HttpServer(create_app(config)) as server:
        first, _ = await stream_lines(client, server.url + "/", TEXT_EVENT)
        again, _ = await stream_lines(client, server.url + "/", TEXT_EVENT)
        raw, headers = signed(TEXT_EVENT)
        body = (await client.post(server.url + "/", content=raw, headers=headers)).json()
    assert first.status_code == 200
    assert again.status_code == 409
    assert body == {"message": "Replayed request: this exact signed body was already received within the replay window"}


async def test_replay_guard_is_off_by_default(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.finish("stop")]
    for _ in range(2):
        response, _ = await stream_lines(client, scripted_gateway + "/", TEXT_EVENT)
        assert response.status_code == 200


def test_replay_window_expires() -> None:
    from agentmark_gw.gateway.replay import ReplayGuard

    guard = ReplayGuard(window=10, max_entries=3)
    a, b, c, d = (ReplayGuard.digest(x) for x in (b"a", b"b", b"c", b"d"))
    assert not guard.is_replay(a, now=0)
    assert guard.is_replay(a, now=5)
    assert not guard.is_replay(a, now=11)  # expired, seen afresh
    for digest in (b, c, d):
        assert not guard.is_replay(digest, now=12)
    assert not guard.is_replay(a, now=12)  # evicted: the guard's memory is bounded
    guard.forget(a)
    assert not guard.is_replay(a, now=13)  # forgotten after a failure: a retry is let through


async def test_a_span_per_webhook_and_its_context_reaches_the_runner(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    scripted_runner.script = [events.started("am-trace"), events.text_delta("x"), events.finish("stop")]
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with HttpServer(create_app(gateway_config(scripted[1]), tracer_provider=provider)) as server:
        raw, headers = signed(TEXT_EVENT)
        async with client.stream("POST", server.url + "/", content=raw, headers={**headers, "traceparent": caller}) as response:
            body = [line async for line in response.aiter_lines()]
        await asyncio.sleep(0.05)
    assert len(body) == 3 and body[-1] == '{"type":"done","traceId":"am-trace"}'
    (span,) = exporter.get_finished_spans()
    context = span.get_span_context()
    assert format(context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"  # joined the caller's trace
    assert span.parent is not None and format(span.parent.span_id, "016x") == "b7ad6b7169203331"
    assert span.attributes["agentmark.event_type"] == "prompt-run"
    assert span.attributes["agentmark.trace_id"] == "am-trace"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["agentmark.bytes_streamed"] > 0
    sent = scripted_runner.seen[-1].trace_context["traceparent"]
    assert sent == f"00-{context.trace_id:032x}-{context.span_id:016x}-01"


async def test_without_tracing_the_callers_context_is_passed_on(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.finish("stop")]
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    raw, headers = signed(TEXT_EVENT)
    await client.post(scripted_gateway + "/", content=raw, headers={**headers, "traceparent": caller})
    assert scripted_runner.seen[-1].trace_context == {"traceparent": caller}


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    from agentmark_gw.gateway.tracing import tracing_configured

    assert not tracing_configured({})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"})


async def test_the_deadline_per_event_type_reaches_the_runner(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    from agentmark_gw.gateway.config import Deadlines

    scripted_runner.script = [events.finish("stop")]
    scripted_runner.experiment_script = []
    config = replace(gateway_config(scripted[1]), deadlines=Deadlines(prompt_run=42, dataset_run=4200))
    async with HttpServer(create_app(config)) as server:
        await stream_lines(client, server.url + "/", TEXT_EVENT)
        await stream_lines(client, server.url + "/", agentmark_json("events/dataset-run.json"))
    prompt, experiment = scripted_runner.seen[-2:]
    # gRPC sends deadlines on the wire in coarse units, rounded up (seen: 42 s
    # arriving as 42.1 s, 4,200 s as 4,210 s), so only nearness is checked.
    assert 40 < prompt.time_remaining < 43
    assert 4190 < experiment.time_remaining < 4211


async def test_a_dns_target_resolves_to_the_runner(scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.text_delta("via dns"), events.finish("stop")]
    port = scripted[1].rsplit(":", 1)[1]
    async with HttpServer(create_app(gateway_config(f"dns:///localhost:{port}"))) as server:
        response, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
    assert response.status_code == 200 and lines[0] == {"type": "text", "result": "via dns"}


async def test_a_silent_stream_gets_heartbeats_and_every_line(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    scripted_runner.pause = 0.5
    scripted_runner.script = [events.text_delta("a"), events.text_delta("b"), events.finish("stop")]
    config = replace(gateway_config(scripted[1]), heartbeat_interval=0.15)
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(TEXT_EVENT)
        async with client.stream("POST", server.url + "/", content=raw, headers=headers) as response:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
    lines = body.split(b"\n")
    assert lines.count(b"") >= 4  # heartbeats (and the final newline's empty tail)
    assert [json.loads(line) for line in lines if line] == [
        {"type": "text", "result": "a"}, {"type": "text", "result": "b"}, {"type": "text", "finishReason": "stop"},
    ]


async def test_a_runner_slow_to_start_is_answered_with_heartbeats(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    """Headers and heartbeats go out before the first row, so a proxy never sees a silent connection."""
    scripted_runner.pause = 0.6
    scripted_runner.script = [events.text_delta("late"), events.finish("stop")]
    config = replace(gateway_config(scripted[1]), heartbeat_interval=0.15)
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(TEXT_EVENT)
        started = asyncio.get_running_loop().time()
        async with client.stream("POST", server.url + "/", content=raw, headers=headers) as response:
            headers_after = asyncio.get_running_loop().time() - started
            body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.status_code == 200 and headers_after < 0.5
    assert body.startswith(b"\n")  # a heartbeat came first
    assert [json.loads(line) for line in body.split(b"\n") if line] == [
        {"type": "text", "result": "late"}, {"type": "text", "finishReason": "stop"},
    ]


async def test_a_restarted_runner_is_used_again_without_restarting_the_gateway(client: httpx.AsyncClient) -> None:
    class Named(ScriptedRunner):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.script = [events.text_delta(name), events.finish("stop")]

    first, first_port = await start(Named("first"), "127.0.0.1:0")
    second, second_port = await start(Named("second"), "127.0.0.1:0")
    targets = (f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}")
    config = replace(gateway_config(targets[0]), runners=targets, health_interval=0.2, health_timeout=0.5)

    async def served_by() -> str:
        _, lines = await stream_lines(client, gateway.url + "/", TEXT_EVENT)
        return str(lines[0]["result"])

    async with HttpServer(create_app(config)) as gateway:
        assert {await served_by() for _ in range(4)} == {"first", "second"}
        await first.stop(0)
        assert {await served_by() for _ in range(4)} == {"second"}  # the dead one is skipped
        restarted, _ = await start(Named("first again"), targets[0])
        try:
            deadline = asyncio.get_running_loop().time() + 15
            seen: set[str] = set()
            while "first again" not in seen:
                assert asyncio.get_running_loop().time() < deadline, "the restarted runner was never used"
                seen.add(await served_by())
                await asyncio.sleep(0.1)
        finally:
            await restarted.stop(0)
    await second.stop(0)


async def test_a_hanging_runner_meets_the_deadline_and_nothing_stays_in_flight(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    from agentmark_gw.gateway.config import Deadlines

    scripted_runner.pause = 30  # accepts the call, never answers in time
    scripted_runner.script = [events.text_delta("never")]
    config = replace(gateway_config(scripted[1]), deadlines=Deadlines(prompt_run=0.6), heartbeat_interval=0.2)
    async with HttpServer(create_app(config)) as server:
        response, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
        metrics = (await client.get(server.url + "/metrics")).text
    assert response.status_code == 200  # headers went out at the heartbeat interval
    assert lines == [{"type": "error", "error": "Runner did not answer before the deadline"}]
    assert "agentmark_gw_inflight_streams 0.0" in metrics
    await asyncio.wait_for(scripted_runner.cancelled.wait(), 5)
