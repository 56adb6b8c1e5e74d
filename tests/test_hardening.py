"""Issue 17's findings, each with a test that failed before its fix: real
gateways and runners on loopback, as the other end-to-end tests use."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agentmark_gw.gateway import create_app
from agentmark_gw.runner import events

from .conftest import BODY_LIMIT, RUNNER_CLIENTS, SECRET, HttpServer, agentmark_json, gateway_config, signed
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port
from .test_gateway_e2e import stream_lines

pytestmark = pytest.mark.e2e
TEXT_EVENT = agentmark_json("events/prompt-run-text.json")


async def _stalled_body(port: int, declared: int, sent: int) -> asyncio.StreamWriter:
    """A connection that declares a body of `declared` bytes, sends `sent` of them, and stops."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST / HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {declared}\r\n\r\n"
    writer.write(head.encode() + b" " * sent)
    await writer.drain()
    return writer


async def _statuses_until(client: httpx.AsyncClient, url: str, wanted: int, tries: int = 100) -> httpx.Response:
    """POST an unsigned body until the answer has status `wanted` (bounded)."""
    response = None
    for _ in range(tries):
        response = await client.post(url, content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"})
        if response.status_code == wanted:
            return response
        await asyncio.sleep(0.05)
    assert response is not None
    return response


# --- M1: unverified body bytes in flight are bounded ---------------------------


async def test_unverified_bodies_in_flight_are_bounded_with_503(scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient) -> None:
    config = replace(gateway_config(scripted[1]), max_unverified_body_bytes=2 * BODY_LIMIT)
    async with HttpServer(create_app(config)) as server:
        stalled = [await _stalled_body(server.port, BODY_LIMIT, BODY_LIMIT - 1000) for _ in range(2)]
        busy = await _statuses_until(client, server.url + "/", 503)
        assert busy.status_code == 503
        assert busy.json() == {
            "message": "The gateway is busy: unverified request bodies in flight are over max_unverified_body_bytes; retry shortly"
        }
        for writer in stalled:
            writer.close()
        # The stalled bodies' bytes are given back when their clients leave.
        assert (await _statuses_until(client, server.url + "/", 401)).status_code == 401


def test_the_unverified_budget_must_hold_one_whole_body() -> None:
    from agentmark_gw.gateway.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="max_unverified_body_bytes must be at least max_body_bytes"):
        load_config(env={"AGENTMARK_WEBHOOK_SECRET": "s" * 32, "AGENTMARK_GW_MAX_UNVERIFIED_BODY_BYTES": "1000"})


# --- M2: a non-streaming answer is capped ---------------------------------------


async def test_a_folded_answer_past_max_answer_bytes_fails_with_502(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    scripted_runner.script = [events.text_delta("x" * 1000) for _ in range(300)] + [events.finish("stop")]
    config = replace(gateway_config(scripted[1]), max_answer_bytes=64 * 1024)
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(agentmark_json("events/prompt-run-text-nostream.json"))
        response = await client.post(server.url + "/", content=raw, headers=headers)
        # Within the cap, the same run still folds.
        scripted_runner.script = [events.text_delta("x" * 1000) for _ in range(10)] + [events.finish("stop")]
        small = await client.post(server.url + "/", content=raw, headers=headers)
    assert response.status_code == 502
    assert response.json() == {"message": "Runner answer is larger than max_answer_bytes (65536 bytes); ask for a stream instead"}
    assert small.status_code == 200 and small.json()["result"] == "x" * 10_000


# --- M3: a dataset run's concurrency is bounded, in the gateway and the SDK ------


def _dataset_event(**data: object) -> dict:
    event = agentmark_json("events/dataset-run.json")
    event["event"]["data"].update(data)
    return event


async def test_dataset_concurrency_is_lowered_to_max_dataset_concurrency(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    config = replace(gateway_config(scripted[1]), max_dataset_concurrency=8)
    async with HttpServer(create_app(config)) as server:
        for asked, given in ((1_500_000, 8), (2**32 - 1, 8), (3, 3)):
            response, _ = await stream_lines(client, server.url + "/", _dataset_event(concurrency=asked))
            assert response.status_code == 200
            assert scripted_runner.seen[-1].concurrency == given


async def test_the_runner_sdk_bounds_concurrency_whatever_it_is_sent(scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner) -> None:
    import grpc

    from agentmark_gw.protocol import runner_pb2 as pb
    from agentmark_gw.protocol import runner_pb2_grpc
    from agentmark_gw.runner.service import MAX_CONCURRENCY

    ast = agentmark_json("events/dataset-run.json")["event"]["data"]["ast"]
    async with grpc.aio.insecure_channel(scripted[1]) as channel:
        call = runner_pb2_grpc.RunnerStub(channel).RunExperiment(
            pb.RunExperimentRequest(kind=pb.PROMPT_KIND_TEXT, ast_json=json.dumps(ast), concurrency=2**32 - 1), timeout=10
        )
        async for _ in call:
            pass
    assert scripted_runner.seen[-1].concurrency == MAX_CONCURRENCY


# --- L5: valid signed input is a 400 or accepted, never a 500 --------------------


@pytest.mark.parametrize("field", ["promptPath", "experimentId", "datasetPath", "commitSha"])
async def test_a_lone_surrogate_in_a_run_field_is_400(field: str, scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw = json.dumps(_dataset_event(**{field: "x"})).replace('"x"', '"\\ud800"', 1).encode()
    assert b"\\ud800" in raw
    raw, headers = signed(raw)
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"message": f"Lone surrogate escape in {field}: it must be text (UTF-8 cannot carry it)"}


async def test_a_lone_surrogate_in_an_alert_id_is_400(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/alert-triggered-cost.json")
    event["event"]["data"]["alert"]["id"] = "x-surrogate"
    raw = json.dumps(event).replace('"x-surrogate"', '"\\udfff"').encode()
    raw, headers = signed(raw)
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"message": "Lone surrogate escape in alert.id: it must be text (UTF-8 cannot carry it)"}


@pytest.mark.parametrize("value", [True, False, -1, 2.5, "4"])
async def test_a_concurrency_that_is_not_a_count_is_400(value: object, scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw, headers = signed(_dataset_event(concurrency=value))
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"message": "dataset-run `concurrency` must be a non-negative integer (0: the runner's default)"}


async def _raw_post(port: int, body: bytes, headers: dict[str, str], extra: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (httpx refuses some of these headers); status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST / HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: {len(body)}\r\n{head}".encode() + extra + b"\r\n" + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(-1), 20)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "extra",
    [
        b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0\xe9\r\n",
        b"traceparent: " + TRACEPARENT.encode() + b"\x7f\r\n",
        b"traceparent: " + TRACEPARENT.encode() + b"\r\ntracestate: a=\xff\r\n",
        b"traceparent: " + TRACEPARENT.encode() + b"\r\ntracestate: a=b\x7f\r\n",
        b"traceparent: " + TRACEPARENT.encode() + b"\r\ntracestate: " + b",".join(b"k%d=%s" % (i, b"v" * 240) for i in range(50)) + b"\r\n",
    ],
    ids=["non-ascii-traceparent", "del-traceparent", "non-ascii-tracestate", "del-tracestate", "12kb-tracestate"],
)
async def test_a_trace_context_grpc_cannot_carry_is_dropped_not_a_500(extra: bytes, scripted_gateway: str, scripted_runner: ScriptedRunner) -> None:
    scripted_runner.script = [events.text_delta("ok"), events.finish("stop")]
    raw, headers = signed(agentmark_json("events/prompt-run-text-nostream.json"))
    status, body = await _raw_post(int(scripted_gateway.rsplit(":", 1)[1]), raw, headers, extra)
    assert status == 200, body
    sent = scripted_runner.seen[-1].trace_context
    assert all(value.isascii() and value.isprintable() and len(value) <= 512 for value in sent.values())
    if b"tracestate" in extra:
        assert sent.get("traceparent") == TRACEPARENT  # a valid traceparent still goes through


# --- L8: the replay guard forgets every outcome that did not complete -----------


async def test_a_retry_after_a_stream_ending_in_an_error_line_is_not_a_replay(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    config = replace(gateway_config(scripted[1]), replay_window=60)
    async with HttpServer(create_app(config)) as server:
        scripted_runner.script = [events.text_delta("half"), events.error("model API error 429: slow down")]
        failed, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
        scripted_runner.script = [events.text_delta("whole"), events.finish("stop")]
        retried, _ = await stream_lines(client, server.url + "/", TEXT_EVENT)
        replayed, _ = await stream_lines(client, server.url + "/", TEXT_EVENT)
    assert failed.status_code == 200 and lines[-1]["type"] == "error"
    assert retried.status_code == 200
    assert replayed.status_code == 409  # a run that completed is still guarded


async def test_a_retry_after_the_client_left_is_not_a_replay(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    config = replace(gateway_config(scripted[1]), replay_window=60)
    scripted_runner.pause = 0.05
    scripted_runner.script = [events.text_delta(str(i)) for i in range(40)] + [events.finish("stop")]
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(TEXT_EVENT)
        async with client.stream("POST", server.url + "/", content=raw, headers=headers) as response:
            async for _ in response.aiter_lines():
                break  # the client leaves after the first line (499)
        await asyncio.wait_for(scripted_runner.cancelled.wait(), 10)
        scripted_runner.pause = 0.0
        retried, _ = await stream_lines(client, server.url + "/", TEXT_EVENT)
    assert retried.status_code == 200


async def test_a_retry_after_a_failed_dataset_row_is_not_a_replay(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    config = replace(gateway_config(scripted[1]), replay_window=60)
    async with HttpServer(create_app(config)) as server:
        scripted_runner.experiment_script = [events.row_error("item 1 failed")]
        failed, _ = await stream_lines(client, server.url + "/", _dataset_event())
        scripted_runner.experiment_script = [events.dataset_row(input={"i": 1}, actual_output="ok", run_id="r", run_name="n")]
        retried, _ = await stream_lines(client, server.url + "/", _dataset_event())
    assert failed.status_code == 200 and retried.status_code == 200


# --- L9: a runner message over the size limit says so, and is no 429 -----------


@pytest.mark.parametrize("runner_client", RUNNER_CLIENTS)
async def test_a_runner_message_over_the_limit_is_502_not_429(
    runner_client: str,
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    config = replace(gateway_config(scripted[1], runner_client=runner_client), max_runner_message_bytes=64 * 1024)
    message = "Runner sent a message larger than max_runner_message_bytes"
    async with HttpServer(create_app(config)) as server:
        scripted_runner.script = [events.text_delta("x" * 100_000), events.finish("stop")]
        raw, headers = signed(agentmark_json("events/prompt-run-text-nostream.json"))
        folded = await client.post(server.url + "/", content=raw, headers=headers)
        scripted_runner.pause = 0.05  # one gRPC message per event
        scripted_runner.script = [events.text_delta("small"), events.text_delta("x" * 100_000), events.finish("stop")]
        streamed, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
    assert folded.status_code == 502 and folded.json() == {"message": message}
    assert streamed.status_code == 200
    assert lines == [{"type": "text", "result": "small"}, {"type": "error", "error": message}]


# --- L12: `serve` refuses the public fallback key and short secrets --------------


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        ("DEFAULT", "error: webhook secret `DEFAULT` is AgentMark's public fallback key, which anyone can sign with: "
                    "set AGENTMARK_WEBHOOK_SECRET to the secret shown in the AgentMark dashboard"),
        ("x", "error: a webhook secret is shorter than 16 characters: set AGENTMARK_WEBHOOK_SECRET"),
        ("a-long-enough-secret-value,tiny", "error: a webhook secret is shorter than 16 characters"),
    ],
)
async def test_serve_refuses_a_public_or_short_secret(secret: str, expected: str, tmp_path: Path) -> None:
    from .test_cli import EXE, environment

    env = environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=secret)
    process = await asyncio.create_subprocess_exec(
        *EXE, "serve", "--bind", f"127.0.0.1:{free_port()}", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, raw_err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:  # it started serving: the refusal is missing
            process.kill()
            await process.wait()
    err = raw_err.decode()
    assert process.returncode == 2
    assert err.strip().startswith(expected) and "Traceback" not in err
    assert secret.split(",")[-1] not in err.replace("DEFAULT`", "")  # never echoes the secret itself (except the public key)


# --- M6: alert dedupe is within a window, and the answer says so -----------------


async def test_an_alert_triggered_again_after_resolving_is_delivered_again(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient, alerts_db: str
) -> None:
    from .test_alerts import alert_event, post, until

    scripted_runner.alerts.clear()
    answers = []
    async with HttpServer(create_app(gateway_config(scripted[1], alerts_db=alerts_db))) as gateway:
        for n, status in enumerate(("triggered", "resolved", "triggered"), start=1):
            answers.append((await post(client, gateway.url, alert_event("again", status=status))).json())
            await until(lambda n=n: len(scripted_runner.alerts) == n)
        retried = (await post(client, gateway.url, alert_event("again", status="triggered"))).json()
        await asyncio.sleep(0.3)
    assert [a.status for a in scripted_runner.alerts] == ["triggered", "resolved", "triggered"]
    assert all("duplicate" not in answer for answer in answers)
    assert retried == {"message": "Alert processed", "alertId": "again", "status": "triggered", "duplicate": True}


async def test_the_same_alert_after_the_dedupe_window_is_delivered_again(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient, alerts_db: str
) -> None:
    from .test_alerts import alert_event, post, until

    scripted_runner.alerts.clear()
    config = gateway_config(scripted[1], alerts_db=alerts_db, alert_dedupe_window=0.5)
    async with HttpServer(create_app(config)) as gateway:
        await post(client, gateway.url, alert_event("later"))
        await until(lambda: len(scripted_runner.alerts) == 1)
        assert (await post(client, gateway.url, alert_event("later"))).json().get("duplicate") is True
        await asyncio.sleep(0.6)
        assert "duplicate" not in (await post(client, gateway.url, alert_event("later"))).json()
        await until(lambda: len(scripted_runner.alerts) == 2)


# --- M5: each alert sink is delivered independently -----------------------------


async def test_a_hanging_sink_does_not_delay_the_others(scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient, tmp_path: Path) -> None:
    from quart import Quart, Response

    from agentmark_gw.gateway.alerts import Sink

    from .test_alerts import alert_event, post, until

    app, received = Quart("sinks"), []

    @app.post("/fast")
    async def fast() -> Response:
        received.append(asyncio.get_running_loop().time())
        return Response("ok")

    @app.post("/hanging")
    async def hanging() -> Response:
        await asyncio.sleep(30)  # past the sink client's timeout (5 s with alert_lease = 10)
        return Response("late")

    async with HttpServer(app) as sinks:
        config = gateway_config(
            scripted[1], alerts_db=str(tmp_path / "alerts.sqlite3"), alert_lease=10, alert_backoff=30,
            alert_sinks=(Sink("hanging", "http", sinks.url + "/hanging", "s"), Sink("fast", "http", sinks.url + "/fast", "s")),
        )
        async with HttpServer(create_app(config)) as gateway:
            started = asyncio.get_running_loop().time()
            for i in range(40):
                assert (await post(client, gateway.url, alert_event(f"a{i}"))).status_code == 200
            await until(lambda: len(received) == 40, seconds=30)
    # With one loop for all sinks, each batch of rows waited for the hanging
    # sink's 5 s timeout before the next was claimed: the fast sink got the
    # last of 40 alerts 5 s or more after the first was sent.
    assert received[-1] - started < 4.0


# --- M4: YAML alias expansion in the frontmatter is bounded ----------------------


def _alias_bomb_ast(levels: int) -> dict:
    """The text prompt's AST, its frontmatter grown by `levels` of nine-fold aliases (9**levels nodes)."""
    ast = json.loads(json.dumps(agentmark_json("events/prompt-run-text.json")["event"]["data"]["ast"]))
    node = next(child for child in ast["children"] if child["type"] == "yaml")
    names = [f"l{i}" for i in range(levels + 1)]
    bomb = f"{names[0]}: &{names[0]} [x, x, x, x, x, x, x, x, x]\n"
    bomb += "".join(f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]\n" for below, name in zip(names, names[1:], strict=False))
    node["value"] = bomb + node["value"]
    return ast


async def test_the_gateway_refuses_an_alias_bomb_in_the_frontmatter(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/prompt-run-text.json")
    event["event"]["data"]["ast"] = _alias_bomb_ast(8)
    raw, headers = signed(event)
    assert len(raw) < 3000
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"message": "AST frontmatter is too large: more than 100000 YAML nodes once its aliases are expanded"}


async def test_the_reference_runner_refuses_an_alias_bomb_in_the_frontmatter(openai_runner: str) -> None:
    import grpc

    from agentmark_gw.protocol import runner_pb2 as pb
    from agentmark_gw.protocol import runner_pb2_grpc

    request = pb.RunPromptRequest(kind=pb.PROMPT_KIND_TEXT, ast_json=json.dumps(_alias_bomb_ast(6)), should_stream=True)
    async with grpc.aio.insecure_channel(openai_runner) as channel:
        batches = [batch async for batch in runner_pb2_grpc.RunnerStub(channel).RunPrompt(request, timeout=20)]
    received = [event for batch in batches for event in batch.events]
    assert [event.error.message for event in received if event.WhichOneof("event") == "error"] == [
        "cannot render the prompt: the frontmatter has more than 100000 YAML nodes once its aliases are expanded"
    ]


# --- L6: the frontmatter cache is bounded by bytes --------------------------------


def test_the_frontmatter_cache_holds_a_bounded_number_of_bytes() -> None:
    import gc
    import tracemalloc

    from agentmark_gw.gateway.webhook import prompt_kind

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40):
            # Each frontmatter is distinct and 1 MiB; only the cache could keep it.
            frontmatter = f"text_config:\n  model_name: m{i}\npad: '{'x' * (1024 * 1024)}'\n"
            assert prompt_kind({"ast": {"type": "root", "children": [{"type": "yaml", "value": frontmatter}]}}) == "text"
            del frontmatter
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 8 * 1024 * 1024, f"{held / 2**20:.0f} MiB held after 40 distinct 1 MiB frontmatters"


# --- L3, L4: text logs escape control characters; alert ids are cut -------------


async def test_text_logs_escape_control_characters_and_cut_alert_ids(scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient, tmp_path: Path) -> None:
    import io
    import logging

    from agentmark_gw.gateway.observability import configure_logging

    from .test_alerts import alert_event, post

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("text")
    stream = io.StringIO()
    root.handlers[0].stream = stream  # type: ignore[attr-defined]
    long_id = "id\n" + "z" * 100_000
    try:
        config = gateway_config(scripted[1], alerts_db=str(tmp_path / "alerts.sqlite3"))
        async with HttpServer(create_app(config)) as gateway:
            await client.get(gateway.url + "/x%0a2026-01-01 00:00:00 INFO forged: line%1b[31m")
            await client.get(gateway.url + "/y%E2%80%A8z")
            assert (await post(client, gateway.url, alert_event(long_id))).status_code == 200
            await asyncio.sleep(0.3)
    finally:
        root.handlers[:], root.level = saved_handlers, saved_level
    lines = stream.getvalue().splitlines()
    assert not any(line.startswith("2026-01-01 00:00:00 INFO forged") for line in lines)
    assert any("/x\\x0a2026-01-01 00:00:00 INFO forged: line\\x1b[31m" in line for line in lines)
    assert any("/y\\u2028z" in line for line in lines)
    assert "\x1b" not in stream.getvalue() and "\u2028" not in stream.getvalue()
    alert_lines = [line for line in lines if "alert id\\x0azzz" in line]
    assert alert_lines and all(len(line) < 500 and "(100003 chars)" in line for line in alert_lines)


# --- L11: internals stay internal by default --------------------------------------


class _Leaky(ScriptedRunner):
    """Raises with text that must not reach an HTTP client."""

    async def run_prompt(self, request):  # type: ignore[no-untyped-def,override]
        raise RuntimeError("key sk-private at /srv/secret/path")
        yield  # pragma: no cover - makes this an async generator

    async def get_evals(self):  # type: ignore[no-untyped-def,override]
        raise RuntimeError("key sk-private at /srv/secret/path")


async def test_runner_exception_text_and_addresses_stay_out_of_answers(client: httpx.AsyncClient) -> None:
    from agentmark_gw.runner import start

    server, port = await start(_Leaky(), "127.0.0.1:0")
    target = f"127.0.0.1:{port}"
    try:
        async with HttpServer(create_app(gateway_config(target))) as gateway:
            _, lines = await stream_lines(client, gateway.url + "/", TEXT_EVENT)
            raw, headers = signed(agentmark_json("events/get-evals.json"))
            evals = await client.post(gateway.url + "/", content=raw, headers=headers)
            ready = await client.get(gateway.url + "/readyz")
            metrics = (await client.get(gateway.url + "/metrics")).text
    finally:
        await server.stop(0)
    assert lines[-1] == {"type": "error", "error": "runner error: RuntimeError (the runner's log has the details)"}
    assert evals.status_code == 502
    assert evals.json() == {"message": "Runner failed: INTERNAL (the gateway's log has the details)"}
    assert ready.json() == {"status": "ready", "runners": {"healthy": 1, "total": 1}}
    assert 'agentmark_gw_runner_healthy{runner="runner-0"} 1.0' in metrics
    for answer in (json.dumps(lines), evals.text, ready.text, metrics):
        assert "sk-private" not in answer and target not in answer


async def test_expose_internals_and_expose_errors_show_them_again(client: httpx.AsyncClient) -> None:
    from agentmark_gw.runner import start

    runner = _Leaky()
    runner.expose_errors = True
    server, port = await start(runner, "127.0.0.1:0")
    try:
        config = replace(gateway_config(f"127.0.0.1:{port}"), expose_internals=True)
        async with HttpServer(create_app(config)) as gateway:
            _, lines = await stream_lines(client, gateway.url + "/", TEXT_EVENT)
            raw, headers = signed(agentmark_json("events/get-evals.json"))
            evals = await client.post(gateway.url + "/", content=raw, headers=headers)
            ready = await client.get(gateway.url + "/readyz")
    finally:
        await server.stop(0)
    assert lines[-1]["error"] == "runner error: key sk-private at /srv/secret/path"
    assert evals.json() == {"message": "Runner failed: INTERNAL: runner error: key sk-private at /srv/secret/path"}
    assert ready.json()["runners"] == {f"127.0.0.1:{port}": True}


async def test_dataset_error_rows_do_not_show_the_runner_data_directory(fake_openai: object, client: httpx.AsyncClient, tmp_path: Path) -> None:
    import openai
    from agentmark.prompt_core import FileLoader, create_agentmark

    from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, start

    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "broken.jsonl").write_text('{"input": {"userMessage": "hi"}}\n{not json\n')
    model = openai.AsyncOpenAI(api_key="k", base_url=fake_openai.url, max_retries=0)  # type: ignore[attr-defined]
    server, port = await start(AgentMarkRunner(create_agentmark(loader=FileLoader(str(tmp_path))), OpenAIExecutor(model)), "127.0.0.1:0")
    errors = []
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
            for name in ("empty.jsonl", "broken.jsonl"):
                event = {"type": "dataset-run", "data": {"ast": agentmark_json("ast/text.json"), "datasetPath": name}}
                _, lines = await stream_lines(client, gateway.url + "/", event)
                errors += [line["error"] for line in lines if line["type"] == "error"]
    finally:
        await server.stop(0)
        await model.close()
    assert len(errors) == 2 and any("empty.jsonl" in e for e in errors) and any("broken.jsonl" in e for e in errors)
    assert not any(str(tmp_path) in error for error in errors), errors


async def test_the_documented_nginx_config_keeps_operations_routes_private(
    scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient, tmp_path: Path,
) -> None:
    import re
    import shutil
    import subprocess

    from .conftest import wait_for_port

    if shutil.which("nginx") is None:
        pytest.skip("needs Debian's nginx (apt-get install nginx)")
    documented = (Path(__file__).resolve().parent.parent / "docs" / "deploy.md").read_text()
    block = re.search(r"## nginx in front\n\n```nginx\n(.*?)```", documented, re.S)
    assert block is not None
    async with HttpServer(create_app(gateway_config(scripted[1]))) as gateway:
        port = free_port()
        site = re.sub(r"server 10\.0\.0\.\d+:8080[^;]*;", f"server 127.0.0.1:{gateway.port};", block.group(1), count=1)
        site = re.sub(r"\n    server 10\.0\.0\.\d+:8080[^\n]*", "", site)
        site = site.replace("server {", f"server {{\n    listen 127.0.0.1:{port};", 1)
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path}/body;\nproxy_temp_path {tmp_path}/proxy;\n{site}\n}}\n"
        )
        process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
        try:
            await wait_for_port(port, timeout=10)
            hidden = {path: await client.get(f"http://127.0.0.1:{port}{path}") for path in ("/readyz", "/metrics")}
            health = await client.get(f"http://127.0.0.1:{port}/healthz")
            webhook = await client.post(f"http://127.0.0.1:{port}/", content=b"{}", headers={"content-type": "application/json"})
            direct = await client.get(gateway.url + "/readyz")
        finally:
            process.terminate()
            process.communicate(timeout=10)
    for response in hidden.values():
        assert response.status_code == 404
        assert response.json() == {"message": "Not found: AgentMark webhooks are POSTed to / or /api/agentmark"}
    assert webhook.status_code == 401  # webhooks still pass through
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert direct.status_code == 200


# --- H1: cleartext HTTP/2 refused by default; h2 idle and reset floods bounded ---


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Served:
    """The gateway as `serve` runs it in one process (`server.serve`: its
    Hypercorn settings and corrections), on a loopback port."""

    def __init__(self, config: object) -> None:
        self.config = config
        self._stop = asyncio.Event()

    async def __aenter__(self) -> _Served:
        from agentmark_gw.gateway.server import serve

        from .conftest import wait_for_port

        self.port = int(self.config.bind.rsplit(":", 1)[1])  # type: ignore[attr-defined]
        self._task = asyncio.create_task(serve(self.config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        await wait_for_port(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, 15)


def _served_config(runner: str, **settings: object) -> object:
    return replace(gateway_config(runner), bind=f"127.0.0.1:{free_port()}", shutdown_grace=1, **settings)


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True if the server closes the connection within `seconds` (what it sends before is read and dropped)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False


@pytest.mark.filterwarnings("ignore:The config `workers` has no affect")  # `serve` runs Hypercorn's one worker in-process
async def test_cleartext_http2_is_refused_by_default(scripted: tuple[ScriptedRunner, str]) -> None:
    async with _Served(_served_config(scripted[1])) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # the preface and an empty SETTINGS frame
        await writer.drain()
        prior_knowledge_closed = await _closed_within(reader, 5)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(
            b"GET /healthz HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
            b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        await writer.drain()
        upgrade_answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
    assert prior_knowledge_closed
    assert upgrade_answer.startswith(b"HTTP/1.1 200"), upgrade_answer[:40]


@pytest.mark.filterwarnings("ignore:The config `workers` has no affect")  # `serve` runs Hypercorn's one worker in-process
async def test_allowed_h2c_connections_that_idle_are_closed(scripted: tuple[ScriptedRunner, str]) -> None:
    async with _Served(_served_config(scripted[1], allow_h2c=True, keep_alive_timeout=1.0)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        await writer.drain()
        closed = await _closed_within(reader, 6)
        writer.close()
    assert closed, "an HTTP/2 connection that sent only its preface outlived keep_alive_timeout"


@pytest.mark.filterwarnings("ignore:The config `workers` has no affect")  # `serve` runs Hypercorn's one worker in-process
async def test_an_http2_reset_flood_ends_the_connection_and_others_are_served(scripted: tuple[ScriptedRunner, str], client: httpx.AsyncClient) -> None:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    async with _Served(_served_config(scripted[1], allow_h2c=True)) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        headers = [(":method", "GET"), (":path", "/healthz"), (":scheme", "http"), (":authority", "gw")]
        goaway = None
        for _ in range(12):  # 1,200 open-then-cancel pairs, 100 per write
            if goaway is not None:
                break
            for _ in range(100):
                stream_id = connection.get_next_available_stream_id()
                connection.send_headers(stream_id, headers, end_stream=True)
                connection.reset_stream(stream_id)
            try:
                writer.write(connection.data_to_send())
                await writer.drain()
                data = await asyncio.wait_for(reader.read(65536), 0.5)
            except (ConnectionError, TimeoutError):
                continue
            if not data:
                break
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
        writer.close()
        after = await client.get(f"http://127.0.0.1:{served.port}/healthz")
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert after.status_code == 200


def test_server_log_records_never_hold_connection_bytes() -> None:
    import io
    import logging

    from agentmark_gw.gateway.observability import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    outputs = []
    try:
        for log_format in ("json", "text"):
            configure_logging(log_format)
            stream = io.StringIO()
            root.handlers[0].stream = stream  # type: ignore[attr-defined]
            received = b"\x00\x00\x04\x01 connection-bytes " * 50
            try:
                raise KeyError(received)
            except KeyError:
                logging.getLogger("hypercorn.error").exception("Error in ASGI Framework %r", b"more connection-bytes")
                logging.getLogger("asyncio").error("Task exception was never retrieved\nfuture: <Task exception=%r>", b"connection-bytes")
            outputs.append(stream.getvalue())
    finally:
        root.handlers[:], root.level = saved_handlers, saved_level
    for output in outputs:
        assert "connection-bytes" not in output
        assert "KeyError (its text is not logged)" in output and "Task exception was never retrieved" in output


# --- L10: secrets are not copied into the workers' environments ------------------


# Hypercorn only: Granian forks its workers, and a forked process's
# /proc/PID/environ still shows the environment its parent started with (see
# docs/operations.md). Starting them with `spawn` instead left workers alive
# after SIGKILL of the parent in one run of test_deployment, so it is not done.
@pytest.mark.parametrize("server", ["hypercorn"])
async def test_workers_get_secrets_from_a_private_file_not_their_environment(server: str, scripted: tuple[ScriptedRunner, str]) -> None:
    from .test_deployment import _children, serve, until_a_worker_answers

    sink_secret = "http-sink-secret-0123456789"
    sinks = json.dumps([{"kind": "http", "name": "hook", "url": "http://127.0.0.1:9/x", "secret": sink_secret}])
    async with serve("--runner", scripted[1], "--workers", "2", "--server", server, env={"AGENTMARK_GW_ALERT_SINKS": sinks}) as (process, port):
        await until_a_worker_answers(port)
        workers = _children(process.pid)
        environments = {pid: Path(f"/proc/{pid}/environ").read_bytes() for pid in workers}
        files = {
            value.split(b"=", 1)[1].decode()
            for environ in environments.values() for value in environ.split(b"\0") if value.startswith(b"AGENTMARK_GW__EFFECTIVE_CONFIG_FILE=")
        }
        modes = {path: Path(path).stat().st_mode & 0o777 for path in files}
    assert len(workers) >= 2
    for pid, environ in environments.items():
        assert SECRET.encode() not in environ and sink_secret.encode() not in environ, f"a secret in worker {pid}'s environment"
    assert len(files) == 1 and set(modes.values()) == {0o600}
    assert not any(Path(path).exists() for path in files), "the configuration file outlived the server"


# --- L7: a template expression cannot allocate without bound ----------------------


@pytest.mark.parametrize("expression", ['"ab" * 100000000', "props.userMessage * 50000000", '("x" * 1000000) + ("y" * 100000)'])
async def test_a_template_expression_over_the_size_limit_fails_the_render(expression: str, gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/prompt-run-text.json")
    text = json.dumps(event).replace('"value": "props.userMessage"', json.dumps({"value": expression})[1:-1], 1)
    assert expression.replace('"', '\\"') in text
    _, lines = await stream_lines(client, gateway + "/", json.loads(text))
    errors = [line["error"] for line in lines if line["type"] == "error"]
    assert len(errors) == 1 and errors[0].startswith("cannot render the prompt: ")
    assert "a template expression would make a value of " in errors[0] and errors[0].endswith("(the limit is 1048576)")


# --- Also seen: non-UTF-8 JSON bodies; a world-readable alert database ----------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
async def test_a_body_that_is_not_utf8_json_is_400(encoding: str, scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw, headers = signed(json.dumps(agentmark_json("events/get-evals.json")).encode(encoding))
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"message": "Request body is not valid JSON"}


def test_the_sqlite_alert_outbox_is_created_private(tmp_path: Path) -> None:
    import os

    from agentmark_gw.gateway.alerts import Outbox

    previous = os.umask(0o022)
    try:
        with Outbox(tmp_path / "state" / "alerts.sqlite3") as outbox:
            outbox.accept("a", "cost", "triggered", "{}", (), 0.0)
    finally:
        os.umask(previous)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "state").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name


async def test_webhook_headers_over_16_kib_are_431(scripted_gateway: str) -> None:
    raw, headers = signed(agentmark_json("events/get-evals.json"))
    status, body = await _raw_post(int(scripted_gateway.rsplit(":", 1)[1]), raw, {**headers, "x-padding": "p" * 40_000})
    assert status == 431
    assert json.loads(body) == {"message": "Request headers are larger than the limit of 16384 bytes"}
    status, _ = await _raw_post(int(scripted_gateway.rsplit(":", 1)[1]), raw, {**headers, "x-padding": "p" * 8_000})
    assert status == 200
