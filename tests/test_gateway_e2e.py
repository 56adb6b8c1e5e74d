"""End to end: real Hypercorn gateway → real grpc.aio runner → (for the
reference runner) the real `openai` client → a fake OpenAI server, all on
loopback. Every AgentMark event body is sent as AgentMark would send it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from agentmark_gw.runner import events

from .conftest import BODY_LIMIT, RUNNER_CLIENTS, agentmark_json, signed
from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner

pytestmark = pytest.mark.e2e


async def stream_lines(client: httpx.AsyncClient, url: str, body: bytes | dict, **kw) -> tuple[httpx.Response, list[dict]]:
    raw, headers = signed(body, **kw)
    async with client.stream("POST", url, content=raw, headers=headers) as response:
        lines = [json.loads(line) async for line in response.aiter_lines() if line.strip()]
    return response, lines


# --- the reference runner, through the real openai client --------------------


async def test_text_prompt_streams_ndjson_from_the_model(gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply = "2 + 2 = 4"
    response, lines = await stream_lines(client, gateway + "/", agentmark_json("events/prompt-run-text.json"))
    assert response.status_code == 200
    assert response.headers["agentmark-streaming"] == "true"
    assert response.headers["content-type"] == "application/x-ndjson"
    assert lines == [
        {"type": "text", "result": "2"},
        {"type": "text", "result": " +"},
        {"type": "text", "result": " 2"},
        {"type": "text", "result": " ="},
        {"type": "text", "result": " 4"},
        {
            "type": "text",
            "finishReason": "stop",
            "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17, "promptTokens": 12, "completionTokens": 5},
        },
    ]
    sent = fake_openai.requests[-1]
    assert sent["model"] == "test-model"
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [
        {"role": "system", "content": "You are a helpful math tutor."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Here's your answer!"},
    ]


async def test_text_prompt_without_streaming_answers_the_text_envelope(gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply = "four"
    raw, headers = signed(agentmark_json("events/prompt-run-text-nostream.json"))
    response = await client.post(gateway + "/api/agentmark", content=raw, headers=headers)
    assert response.status_code == 200
    assert "agentmark-streaming" not in response.headers
    assert response.json() == {
        "type": "text",
        "result": "four",
        "usage": {"inputTokens": 12, "outputTokens": 1, "totalTokens": 13, "promptTokens": 12, "completionTokens": 1},
        "finishReason": "stop",
        "toolCalls": [],
        "toolResults": [],
    }


async def test_object_prompt_streams_the_parsed_object(gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.object_reply = {"answer": "4"}
    response, lines = await stream_lines(client, gateway + "/", agentmark_json("events/prompt-run-object.json"))
    assert response.status_code == 200
    results = [line["result"] for line in lines if "result" in line]
    assert results[0] == {} and results[-1] == {"answer": "4"}  # deltas grow, then the final value
    assert all(set(r) <= {"answer"} for r in results)
    assert lines[-1]["type"] == "object" and lines[-1]["usage"]["inputTokens"] == 12
    assert fake_openai.requests[-1]["response_format"]["type"] == "json_schema"


async def test_model_api_failure_becomes_a_terminal_error_line(gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/prompt-run-text.json")
    event["event"]["data"]["customProps"] = {"userMessage": "fail:500"}
    response, lines = await stream_lines(client, gateway + "/", event)
    assert response.status_code == 200
    assert lines == [{"type": "error", "error": "model API error 500: scripted failure 500"}]


async def test_model_api_failure_without_streaming_is_a_500(gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/prompt-run-text-nostream.json")
    event["event"]["data"]["customProps"] = {"userMessage": "fail:429"}
    raw, headers = signed(event)
    response = await client.post(gateway + "/", content=raw, headers=headers)
    assert response.status_code == 500
    assert response.json() == {"message": "model API error 429: scripted failure 429"}


# --- the gateway's own behaviour, against a scripted runner ------------------


async def test_done_line_follows_a_run_with_a_trace_id(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [
        events.started("0af7651916cd43dd8448eb211c80319c"),
        events.text_delta("hel"),
        events.reasoning_delta("not on the wire"),
        events.tool_call("call_1", "search", {"q": "weather"}),
        events.text_delta("lo"),
        events.finish("stop", input_tokens=1, output_tokens=2),
    ]
    _, lines = await stream_lines(client, scripted_gateway + "/", agentmark_json("events/prompt-run-text.json"))
    assert lines == [
        {"type": "text", "result": "hel"},
        {"type": "text", "toolCall": {"toolCallId": "call_1", "toolName": "search", "args": {"q": "weather"}}},
        {"type": "text", "result": "lo"},
        {"type": "text", "finishReason": "stop", "usage": {"inputTokens": 1, "outputTokens": 2, "promptTokens": 1, "completionTokens": 2}},
        {"type": "done", "traceId": "0af7651916cd43dd8448eb211c80319c"},
    ]


async def test_every_data_field_reaches_the_runner(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/prompt-run-text.json")
    event["event"]["data"]["aFieldFromTheFuture"] = {"x": [1, 2]}
    scripted_runner.script = [events.finish("stop")]
    await stream_lines(client, scripted_gateway + "/", event)
    seen = scripted_runner.seen[-1]
    assert seen.kind == "text" and seen.should_stream
    assert seen.props == {"userMessage": "What is 2+2?"}
    assert seen.prompt_path == "math/text.prompt.mdx"
    assert seen.data == event["event"]["data"]


async def test_both_body_shapes_are_accepted(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.text_delta("x"), events.finish("stop")]
    bare = agentmark_json("events/prompt-run-text.json")["event"]
    response, lines = await stream_lines(client, scripted_gateway + "/", bare)
    assert response.status_code == 200 and lines[0] == {"type": "text", "result": "x"}


async def test_invalid_json_from_the_runner_is_a_clean_error_line(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    bad = events.tool_call("c", "n", None)
    bad.tool_call.args_json = "{not json"
    scripted_runner.script = [events.text_delta("a"), bad, events.text_delta("never sent")]
    _, lines = await stream_lines(client, scripted_gateway + "/", agentmark_json("events/prompt-run-text.json"))
    assert lines == [
        {"type": "text", "result": "a"},
        {"type": "error", "error": "runner sent invalid JSON in tool_call.args_json"},
    ]


async def test_image_and_speech_answer_json_envelopes(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.started("t1"), events.image([("image/png", "aGk=")]), events.finish("stop")]
    raw, headers = signed(agentmark_json("events/prompt-run-image.json"))
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"type": "image", "result": [{"mimeType": "image/png", "base64": "aGk="}], "traceId": "t1"}

    scripted_runner.script = [events.speech("audio/mpeg", "bXAz", "mp3"), events.finish("stop")]
    raw, headers = signed(agentmark_json("events/prompt-run-speech.json"))
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.json() == {"type": "speech", "result": {"mimeType": "audio/mpeg", "base64": "bXAz", "format": "mp3"}}


async def test_dataset_run_streams_rows_and_error_rows(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.experiment_script = [
        events.dataset_row(input={"text": "great"}, expected_output="positive", actual_output="positive", tokens=3, run_id="r1", run_name="sentiment-baseline"),
        events.row_error("item 2 failed"),
    ]
    response, lines = await stream_lines(client, scripted_gateway + "/", agentmark_json("events/dataset-run.json"))
    assert response.headers["agentmark-streaming"] == "true"
    assert lines == [
        {
            "type": "dataset",
            "result": {"input": {"text": "great"}, "expectedOutput": "positive", "actualOutput": "positive", "tokens": 3, "evals": []},
            "runId": "r1",
            "runName": "sentiment-baseline",
        },
        {"type": "error", "error": "item 2 failed"},
    ]
    seen = scripted_runner.seen[-1]
    assert (seen.experiment_id, seen.dataset_path, seen.concurrency, seen.commit_sha) == ("sentiment-baseline", "sentiment.jsonl", 2, "0123abcd")


async def test_get_evals_is_byte_exact(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.evals = ["lot_url_pattern", "lot_count", "10", "café"]
    raw, headers = signed(agentmark_json("events/get-evals.json"))
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 200
    assert response.json() == agentmark_json("vectors/control-plane.json")["cases"][0]["expected"]


@pytest.mark.parametrize("name", ["alert-triggered-cost", "alert-resolved-cost", "alert-triggered-latency", "alert-triggered-error-rate"])
async def test_alerts_are_acknowledged_and_handed_to_the_runner(
    name: str, scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient,
) -> None:
    event = agentmark_json(f"events/{name}.json")
    alert = event["event"]["data"]["alert"]
    scripted_runner.alert_seen.clear()
    raw, headers = signed(event)
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"message": "Alert processed", "alertId": alert["id"], "status": alert["status"]}
    await asyncio.wait_for(scripted_runner.alert_seen.wait(), 5)
    delivered = scripted_runner.alerts[-1]
    assert (delivered.id, delivered.type, delivered.status) == (alert["id"], alert["type"], alert["status"])
    assert delivered.data == event["event"]["data"]


async def test_client_disconnect_cancels_the_runner_call(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.pause = 0.05
    scripted_runner.script = [events.text_delta(str(i)) for i in range(200)]
    raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
    async with client.stream("POST", scripted_gateway + "/", content=raw, headers=headers) as response:
        async for _ in response.aiter_lines():
            break
    await asyncio.wait_for(scripted_runner.cancelled.wait(), 5)


async def test_client_disconnect_cancels_a_non_streaming_run(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.pause = 0.05
    scripted_runner.script = [events.text_delta(str(i)) for i in range(200)]
    raw, headers = signed(agentmark_json("events/prompt-run-text-nostream.json"))
    with pytest.raises(httpx.ReadTimeout):
        await client.post(scripted_gateway + "/", content=raw, headers=headers, timeout=0.5)  # gives up, closing the connection
    await asyncio.wait_for(scripted_runner.cancelled.wait(), 5)


# --- refusals ----------------------------------------------------------------


def _sign_wrong(raw: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "x-agentmark-signature-256": signed(raw, secret="wrong")[1]["x-agentmark-signature-256"]}


REFUSALS = [
    ("missing signature", b'{"type":"get-evals"}', {"content-type": "application/json"}, 401, "Invalid signature"),
    ("malformed signature", b'{"type":"get-evals"}', {"content-type": "application/json", "x-agentmark-signature-256": "sha256=zz"}, 401, "Invalid signature"),
    ("wrong secret", b'{"type":"get-evals"}', _sign_wrong(b'{"type":"get-evals"}'), 401, "Invalid signature"),
    ("invalid JSON", b"{nope", None, 400, "Request body is not valid JSON"),
    ("not an object", b"[1,2]", None, 400, "Request body must be a JSON object"),
    ("missing type", b'{"data":{}}', None, 400, "Missing event type"),
    ("unknown type", b'{"type":"launch-rockets","data":{}}', None, 400, "Unknown event type: launch-rockets"),
    ("missing ast", b'{"type":"prompt-run","data":{}}', None, 400, "Missing ast"),
    (
        "no known config",
        json.dumps({"type": "prompt-run", "data": {"ast": {"type": "root", "children": [{"type": "yaml", "value": "name: x"}]}}}).encode(),
        None,
        400,
        "AST frontmatter has no text_config, object_config, image_config or speech_config",
    ),
    (
        "dataset-run of an image prompt",
        json.dumps(
            {"type": "dataset-run", "data": {"ast": {"type": "root", "children": [{"type": "yaml", "value": "image_config:\n  model_name: m"}]}}}
        ).encode(),
        None,
        400,
        "dataset-run supports text and object prompts, not image",
    ),
    ("non-JSON content type", b'{"type":"get-evals"}', {"content-type": "text/plain"}, 415, "Content-Type must be application/json"),
]


@pytest.mark.parametrize(("case", "raw", "headers", "status", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals_are_json_with_the_right_status(
    case: str, raw: bytes, headers: dict[str, str] | None, status: int, message: str,
    scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient
) -> None:
    if headers is None:
        raw, headers = signed(raw)
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"message": message}
    assert scripted_runner.seen == []


async def test_body_over_the_limit_is_413(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw, headers = signed(b'{"type":"get-evals","pad":"' + b"x" * BODY_LIMIT + b'"}')
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 413
    assert response.json() == {"message": f"Request body is larger than the limit of {BODY_LIMIT} bytes"}


async def test_other_methods_and_paths(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    response = await client.get(scripted_gateway + "/api/agentmark")
    assert response.status_code == 405 and response.json() == {"message": "Method not allowed"}
    assert response.headers["allow"] == "POST"
    response = await client.post(scripted_gateway + "/healthz", content=b"{}")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    response = await client.post(scripted_gateway + "/elsewhere", content=b"{}")
    assert response.status_code == 404 and "message" in response.json()
    health = await client.get(scripted_gateway + "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


async def test_unreachable_runner_is_503(client: httpx.AsyncClient) -> None:
    from agentmark_gw.gateway import create_app

    from .conftest import HttpServer, free_port, gateway_config

    down = f"127.0.0.1:{free_port()}"
    async with HttpServer(create_app(gateway_config(down))) as server:
        raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
        response = await client.post(server.url + "/", content=raw, headers=headers)
    assert response.status_code == 503
    # Runner addresses stay in the log unless expose_internals is set (issue 17, L11).
    assert response.json() == {"message": "Runner unavailable: tried 1 runner(s); the gateway's log names them"}


async def test_good_requests_succeed_after_a_burst_of_bad_ones(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    bad = [client.post(scripted_gateway + "/", content=b"{" * (i % 7), headers={"content-type": "application/json"}) for i in range(60)]
    statuses = {r.status_code for r in await asyncio.gather(*bad)}
    assert statuses == {401}
    scripted_runner.script = [events.text_delta("still fine"), events.finish("stop")]
    response, lines = await stream_lines(client, scripted_gateway + "/", agentmark_json("events/prompt-run-text.json"))
    assert response.status_code == 200 and lines[0] == {"type": "text", "result": "still fine"}


async def test_runner_without_the_method_is_501(client: httpx.AsyncClient) -> None:
    """A gRPC server that is up but is no Runner: UNIMPLEMENTED before any byte."""
    import grpc

    from agentmark_gw.gateway import create_app

    from .conftest import HttpServer, gateway_config

    bare = grpc.aio.server()
    port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as server:
            raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
            response = await client.post(server.url + "/", content=raw, headers=headers)
    finally:
        await bare.stop(0)
    assert response.status_code == 501
    assert response.json()["message"].startswith("Runner failed: UNIMPLEMENTED")


@pytest.mark.parametrize("runner_client", RUNNER_CLIENTS)
async def test_deadline_before_the_first_event_is_504(
    scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner, client: httpx.AsyncClient, runner_client: str
) -> None:
    from dataclasses import replace

    from agentmark_gw.gateway import create_app
    from agentmark_gw.gateway.config import Deadlines

    from .conftest import HttpServer, gateway_config

    scripted_runner.pause = 2.0
    scripted_runner.script = [events.text_delta("too late")]
    config = replace(gateway_config(scripted[1], runner_client=runner_client), deadlines=Deadlines(prompt_run=0.3))
    async with HttpServer(create_app(config)) as server:
        raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
        response = await client.post(server.url + "/", content=raw, headers=headers)
    assert response.status_code == 504
    assert response.json() == {"message": "Runner did not answer before the deadline"}
    await asyncio.wait_for(scripted_runner.cancelled.wait(), 5)


async def test_runner_without_credentials_says_what_to_set(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentmark.prompt_core import create_agentmark

    from agentmark_gw.gateway import create_app
    from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, start
    from agentmark_gw.runner.openai_executor import MISSING_CREDENTIALS

    from .conftest import HttpServer, gateway_config

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    runner, port = await start(AgentMarkRunner(create_agentmark(), OpenAIExecutor()), "127.0.0.1:0")
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as server:
            _, lines = await stream_lines(client, server.url + "/", agentmark_json("events/prompt-run-text.json"))
    finally:
        await runner.stop(0)
    assert lines == [{"type": "error", "error": MISSING_CREDENTIALS}]
    assert "OPENAI_API_KEY" in MISSING_CREDENTIALS and "OPENAI_BASE_URL" in MISSING_CREDENTIALS


async def test_gateway_runs_on_the_rust_core_by_default(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    health = await client.get(scripted_gateway + "/healthz")
    assert health.json()["implementation"] == "rust"


async def test_lone_surrogates_in_the_body_reach_the_runner_intact(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.finish("stop")]
    event = agentmark_json("events/prompt-run-text.json")
    event["event"]["data"]["customProps"] = {"userMessage": "PLACEHOLDER"}
    raw = json.dumps(event).replace("PLACEHOLDER", "odd \\ud800 text").encode()
    response, _ = await stream_lines(client, scripted_gateway + "/", raw)
    assert response.status_code == 200
    assert scripted_runner.seen[-1].props == {"userMessage": "odd \ud800 text"}

    in_frontmatter = json.dumps(event).replace("What is 2+2?", "odd \\ud800 text").encode()
    raw, headers = signed(in_frontmatter)
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400 and response.json() == {"message": "AST frontmatter is not valid YAML"}


async def test_nan_is_not_json(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw, headers = signed(b'{"type":"prompt-run","data":{"x":NaN}}')
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400 and response.json() == {"message": "Request body is not valid JSON"}


async def test_the_readme_example_event_runs(gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    from pathlib import Path

    fake_openai.reply = "Signed payloads arrive"
    example = json.loads((Path(__file__).resolve().parent.parent / "examples" / "prompt-run.json").read_text())
    response, lines = await stream_lines(client, gateway + "/", example)
    assert response.status_code == 200
    assert "".join(line.get("result", "") for line in lines) == "Signed payloads arrive"
    assert fake_openai.requests[-1]["messages"][-1] == {"role": "user", "content": "A haiku about webhooks"}
    assert fake_openai.requests[-1]["model"] == "gpt-4o-mini"


async def test_long_integers_reach_the_runner_exactly(scripted_gateway: str, scripted_runner: ScriptedRunner, client: httpx.AsyncClient) -> None:
    scripted_runner.script = [events.finish("stop")]
    event = agentmark_json("events/prompt-run-text.json")
    event["event"]["data"]["customProps"] = {"id": 123456789012345678901234567890, "small": 7, "price": 0.1}
    response, _ = await stream_lines(client, scripted_gateway + "/", event)
    assert response.status_code == 200
    assert scripted_runner.seen[-1].props == {"id": 123456789012345678901234567890, "small": 7, "price": 0.1}


async def test_a_number_that_overflows_a_double_is_refused(scripted_gateway: str, client: httpx.AsyncClient) -> None:
    raw, headers = signed(b'{"type":"prompt-run","data":{"x":1e400}}')
    response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    assert response.status_code == 400 and response.json() == {"message": "Request body is not valid JSON"}


async def test_an_unexpected_error_mid_stream_ends_it_with_an_error_line() -> None:
    """A bug after the headers went out cannot become a status: the stream's
    last line says so, and the runner call is cancelled."""
    from agentmark_gw import _accel
    from agentmark_gw.gateway import responses

    class BrokenFramer:
        """The real framer, failing on the second message as a bug would."""

        def __init__(self) -> None:
            self.inner = _accel.PromptFramer("text")
            self.fed = 0

        terminated = property(lambda self: self.inner.terminated)
        trace_id = property(lambda self: self.inner.trace_id)

        def feed(self, batch: bytes) -> bytes:
            self.fed += 1
            if self.fed == 2:
                raise RuntimeError("a bug")
            return self.inner.feed(batch)

        def fail(self, message: str) -> bytes:
            return self.inner.fail(message)

        def close(self) -> bytes:
            return self.inner.close()

    class Call:
        cancelled = False

    from agentmark_gw.protocol import runner_pb2 as pb

    batches = iter([pb.RunnerEvents(events=[events.text_delta(text)]).SerializeToString() for text in "ab"])

    class Opened:
        call, runner = Call(), "scripted"

        async def next(self) -> bytes | None:
            return next(batches, None)

        def cancel(self) -> None:
            self.call.cancelled = True

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    opened = Opened()
    await responses.stream(responses.Reply(send), opened, BrokenFramer(), lambda size: None)  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent)  # type: ignore[misc]
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines == [{"type": "text", "result": "a"}, {"type": "error", "error": "Internal gateway error"}]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert opened.call.cancelled
