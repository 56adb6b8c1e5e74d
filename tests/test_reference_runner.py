"""The reference runner end to end: AgentMark's runtime with the OpenAI
executor, behind the real gateway, its real `openai` client talking to the
fake model server. Every AgentMark prompt fixture, the dataset run with its
eval, tools, provider errors, retries and concurrency."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from agentmark_gw.gateway import create_app
from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, Tool, start

from .conftest import AGENTMARK, HttpServer, agentmark_json, exact_match_json, gateway_config, signed
from .servers.fake_openai import IMAGE_BYTES, SPEECH_BYTES, FakeOpenAI, sentiment_of
from .test_gateway_e2e import stream_lines

pytestmark = pytest.mark.e2e


def prompt_run(fixture: str, props: dict[str, Any] | None = None, stream: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"ast": agentmark_json(f"ast/{fixture}.json"), "options": {"shouldStream": stream}}
    if props is not None:
        data["customProps"] = props
    return {"event": {"type": "prompt-run", "data": data}}


async def post_json(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    raw, headers = signed(body)
    return await client.post(url, content=raw, headers=headers)


# --- every AgentMark prompt fixture --------------------------------------------------


async def test_text_fixture(any_gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply = "four"
    _, lines = await stream_lines(client, any_gateway + "/", prompt_run("text", {"userMessage": "What is 2+2?"}))
    assert lines[0] == {"type": "text", "result": "four"}
    assert lines[-1]["finishReason"] == "stop"


@pytest.mark.parametrize("fixture", ["math", "attachments"])
async def test_object_fixtures(fixture: str, gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.object_reply = {"answer": "8"}
    response = await post_json(client, gateway + "/", prompt_run(fixture, {"userMessage": "4+4", "imageLink": "https://example.com/a.png"}, stream=False))
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "object" and body["result"] == {"answer": "8"} and body["finishReason"] == "stop"
    sent = fake_openai.requests[-1]
    assert sent["response_format"]["json_schema"]["strict"] is True
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["answer"]
    assert sent["temperature"] == 0.5


async def test_sentiment_fixture_with_its_test_props(any_gateway: str, client: httpx.AsyncClient) -> None:
    # No customProps: AgentMark formats with the prompt's own test_settings.props.
    response = await post_json(client, any_gateway + "/", prompt_run("sentiment", stream=False))
    assert response.json()["result"] == {"sentiment": "positive"}


async def test_image_fixture(any_gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    response = await post_json(client, any_gateway + "/", prompt_run("image"))
    assert response.status_code == 200
    assert response.json() == {"type": "image", "result": [{"mimeType": "image/png", "base64": base64.b64encode(IMAGE_BYTES).decode()}]}
    sent = fake_openai.requests[-1]
    assert (sent["model"], sent["n"], sent["size"], sent["response_format"]) == ("test-model", 1, "1024x1024", "b64_json")


async def test_speech_fixture(any_gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    response = await post_json(client, any_gateway + "/", prompt_run("speech"))
    assert response.status_code == 200
    assert response.json() == {"type": "speech", "result": {"mimeType": "audio/mpeg", "base64": base64.b64encode(SPEECH_BYTES).decode(), "format": "mp3"}}
    sent = fake_openai.requests[-1]
    assert (sent["voice"], sent["response_format"]) == ("nova", "mp3")


async def test_image_provider_error_is_a_500_with_its_message(gateway: str, client: httpx.AsyncClient) -> None:
    # The image prompt text comes from the AST's <ImagePrompt>; script a failure through it.
    text = json.dumps(prompt_run("image")).replace("This is a test for the image prompt to be drawn.", "fail:400")
    raw, headers = signed(text.encode())
    response = await client.post(gateway + "/", content=raw, headers=headers)
    assert response.status_code == 500
    assert response.json() == {"message": "model API error 400: scripted failure 400"}


# --- the dataset run ----------------------------------------------------------------


async def test_dataset_run_scores_each_row_with_the_prompts_eval(gateway: str, client: httpx.AsyncClient) -> None:
    response, lines = await stream_lines(client, gateway + "/", agentmark_json("events/dataset-run.json"))
    assert response.status_code == 200 and response.headers["agentmark-streaming"] == "true"
    dataset = [json.loads(line) for line in (AGENTMARK / "datasets" / "sentiment.jsonl").read_text().splitlines()]
    rows = [line for line in lines if line["type"] == "dataset"]
    assert len(rows) == len(dataset) and not [line for line in lines if line["type"] == "error"]
    by_input = {json.dumps(row["input"], sort_keys=True): row for row in dataset}
    for row in rows:
        assert set(row) == {"type", "result", "runId", "runName"}  # no traceId without tracing
        assert row["runName"] == "sentiment-baseline"
        result = row["result"]
        assert set(result) == {"input", "expectedOutput", "actualOutput", "tokens", "evals"}
        source = by_input[json.dumps(result["input"], sort_keys=True)]
        assert result["expectedOutput"] == source["expected_output"]
        assert result["actualOutput"] == {"sentiment": sentiment_of(source["input"]["text"])}
        assert isinstance(result["tokens"], int) and result["tokens"] > 0
        (evaluation,) = result["evals"]
        should_pass = json.loads(source["expected_output"]) == result["actualOutput"]
        assert evaluation == {"name": "exact_match_json", "score": int(should_pass), "passed": should_pass, "label": "match" if should_pass else "mismatch"}
    assert len({row["runId"] for row in rows}) == 1


async def test_dataset_run_honours_the_requested_concurrency(fake_openai: FakeOpenAI, client: httpx.AsyncClient, tmp_path: Any) -> None:
    from agentmark.prompt_core import FileLoader, create_agentmark

    (tmp_path / "slow.jsonl").write_text("\n".join(json.dumps({"input": {"userMessage": "slow:0.3"}}) for _ in range(6)) + "\n")
    model = openai.AsyncOpenAI(api_key="k", base_url=fake_openai.url, max_retries=0)  # type: ignore[attr-defined]
    runner = AgentMarkRunner(create_agentmark(loader=FileLoader(str(tmp_path))), OpenAIExecutor(model))
    server, port = await start(runner, "127.0.0.1:0")
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
            for concurrency in (1, 3):
                event = {"type": "dataset-run", "data": {"ast": agentmark_json("ast/text.json"), "datasetPath": "slow.jsonl", "concurrency": concurrency}}
                fake_openai.reset_peak()
                _, lines = await stream_lines(client, gateway.url + "/", event)
                assert [line["type"] for line in lines] == ["dataset"] * 6
                assert fake_openai.peak_parallel == concurrency
    finally:
        await server.stop(0)
        await model.close()


async def test_a_dataset_path_outside_the_data_dir_is_refused(any_gateway: str, client: httpx.AsyncClient) -> None:
    event = agentmark_json("events/dataset-run.json")
    event["event"]["data"]["datasetPath"] = "../../../etc/passwd.jsonl"
    _, lines = await stream_lines(client, any_gateway + "/", event)
    assert lines == [{"type": "error", "error": "cannot load the dataset: Access denied: path outside allowed directory"}]


# --- tools, errors, retries -----------------------------------------------------------


async def test_tools_named_in_the_frontmatter_are_called_and_answered(fake_openai: FakeOpenAI, client: httpx.AsyncClient) -> None:
    from agentmark.prompt_core import create_agentmark

    calls: list[Any] = []

    async def weather(args: dict[str, Any]) -> dict[str, Any]:
        calls.append(args)
        return {"forecast": "sunny", "city": args["city"]}

    tools = {"get_weather": Tool("The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}}, weather)}
    model = openai.AsyncOpenAI(api_key="k", base_url=fake_openai.url, max_retries=0)  # type: ignore[attr-defined]
    server, port = await start(AgentMarkRunner(create_agentmark(), OpenAIExecutor(model, tools=tools)), "127.0.0.1:0")
    ast = agentmark_json("ast/text.json")
    ast["children"][0]["value"] = "name: weather\ntext_config:\n  model_name: test-model\n  tools:\n    - get_weather"
    event = {"type": "prompt-run", "data": {"ast": ast, "customProps": {"userMessage": "tool:get_weather"}}}
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway:
            _, lines = await stream_lines(client, gateway.url + "/", event)
    finally:
        await server.stop(0)
        await model.close()
    assert calls == [{"city": "Paris"}]
    assert lines[0] == {"type": "text", "toolCall": {"toolCallId": "call_1", "toolName": "get_weather", "args": {"city": "Paris"}}}
    assert lines[1] == {"type": "text", "toolResult": {"toolCallId": "call_1", "toolName": "get_weather", "result": {"forecast": "sunny", "city": "Paris"}}}
    assert "".join(line.get("result", "") for line in lines[2:]) == 'tool said {"forecast": "sunny", "city": "Paris"}'
    assert lines[-1]["finishReason"] == "stop"
    assert lines[-1]["usage"]["inputTokens"] == 5 + 12  # summed over both model calls
    offered = fake_openai.requests[-2]["tools"][0]["function"]
    assert offered["name"] == "get_weather" and offered["parameters"]["properties"]["city"] == {"type": "string"}


async def test_an_unregistered_tool_is_a_clear_error(gateway: str, client: httpx.AsyncClient) -> None:
    ast = agentmark_json("ast/text.json")
    ast["children"][0]["value"] = "name: weather\ntext_config:\n  model_name: test-model\n  tools:\n    - get_weather"
    _, lines = await stream_lines(client, gateway + "/", {"type": "prompt-run", "data": {"ast": ast}})
    assert lines == [{"type": "error", "error": "tools not registered with the executor: get_weather"}]


@pytest.mark.parametrize(("message", "expected"), [
    ("fail:401", "model API error 401: scripted failure 401"),
    ("fail:500", "model API error 500: scripted failure 500"),
])
async def test_provider_errors_before_the_first_token(message: str, expected: str, any_gateway: str, client: httpx.AsyncClient) -> None:
    _, lines = await stream_lines(client, any_gateway + "/", prompt_run("text", {"userMessage": message}))
    assert lines == [{"type": "error", "error": expected}]


async def test_provider_dropping_the_stream_midway(gateway: str, client: httpx.AsyncClient) -> None:
    _, lines = await stream_lines(client, gateway + "/", prompt_run("text", {"userMessage": "midstream"}))
    assert lines[0] == {"type": "text", "result": "partial"}
    assert lines[-1] == {"type": "error", "error": "model API error: Connection error."}
    assert len(lines) == 2


async def test_rate_limits_are_retried_before_the_first_token(gateway: str, client: httpx.AsyncClient, fake_openai: FakeOpenAI) -> None:
    # Keys of their own: the fake counts attempts per message for the whole session.
    recovers, gives_up = f"flaky:2:{uuid.uuid4().hex}", f"flaky:5:{uuid.uuid4().hex}"
    _, lines = await stream_lines(client, gateway + "/", prompt_run("text", {"userMessage": recovers}))
    assert lines[0] == {"type": "text", "result": "recovered"}
    assert fake_openai.attempts[recovers] == 3
    _, lines = await stream_lines(client, gateway + "/", prompt_run("text", {"userMessage": gives_up}))
    assert lines == [{"type": "error", "error": "model API error 429: scripted failure 429"}]
    assert fake_openai.attempts[gives_up] == 3  # the first try and two retries


def test_the_ten_line_runner_example_builds() -> None:
    import runpy
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "runner.py"
    namespace = runpy.run_path(str(example), run_name="not_main")
    assert isinstance(namespace["runner"], AgentMarkRunner)
    assert len([line for line in example.read_text().splitlines() if line.strip() and not line.startswith("#")]) <= 12
    assert exact_match_json({"output": {"a": 1}, "expectedOutput": '{"a": 1}'})["passed"]


async def test_agentmark_sdk_spans_join_the_callers_trace_and_reach_the_done_line(fake_openai: FakeOpenAI) -> None:
    import asyncio
    import os
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.scripts.sdk_tracing", fake_openai.url,  # type: ignore[attr-defined]
        cwd=root, env={**os.environ, "AGENTMARK_WEBHOOK_SECRET": ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    # Spans and trace contexts exit in the task that entered them.
    assert "Failed to detach context" not in err.decode()
    report = json.loads(out)
    (prompt_span,) = [s for s in report["spans"] if s["name"] == "math"]
    assert prompt_span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # the caller's trace
    assert prompt_span["parent"] == "b7ad6b7169203331"
    assert report["lines"][-1] == {"type": "done", "traceId": "0af7651916cd43dd8448eb211c80319c"}


async def test_dataset_run_on_the_rust_runner(rust_gateway: str, client: httpx.AsyncClient) -> None:
    """The gateway in front of the thin Rust runner reads the dataset from its
    `datasets_dir` and sends the rows as rendered items; the runner answers
    each with its row, the prompt's eval scored."""
    response, lines = await stream_lines(client, rust_gateway + "/", agentmark_json("events/dataset-run.json"))
    assert response.status_code == 200
    rows = [line for line in lines if line["type"] == "dataset"]
    assert len(rows) == 6 and len(lines) == 6
    for row in rows:
        assert row["runName"] == "sentiment-baseline"
        result = row["result"]
        assert result["actualOutput"] == {"sentiment": sentiment_of(result["input"]["text"])}
        should_pass = json.loads(result["expectedOutput"]) == result["actualOutput"]
        label = "match" if should_pass else "mismatch"
        assert result["evals"] == [{"name": "exact_match_json", "score": int(should_pass), "passed": should_pass, "label": label}]
    assert len({row["runId"] for row in rows}) == 1


async def test_a_long_answer_in_a_dataset_row(any_gateway: str, client: httpx.AsyncClient, tmp_path: Any) -> None:
    """Thousands of chunks in one item (the Rust runner once stalled on a full channel)."""
    event = {"type": "dataset-run", "data": {"ast": agentmark_json("ast/text.json"), "datasetPath": "math.jsonl"}}
    ast = event["data"]["ast"]
    ast["children"][0]["value"] = ast["children"][0]["value"].replace("userMessage: \"What is 2+2?\"", "userMessage: long:3000")
    # math.jsonl's items carry their own userMessage; point one prompt at the long answer instead.
    ast["children"][2]["children"][0]["children"] = [{"type": "text", "value": "long:3000"}]
    _, lines = await stream_lines(client, any_gateway + "/", event)
    rows = [line for line in lines if line["type"] == "dataset"]
    assert rows and all(len(row["result"]["actualOutput"]) == 6000 for row in rows)


# --- the thin Rust runner, directly over gRPC -----------------------------------------


async def _rust_item(rust_runner: str, user_message: str, **fields: Any) -> list[Any]:
    """The Rust runner's answer to one dataset item of the text fixture, rendered as the gateway renders it."""
    import grpc

    from agentmark_gw.gateway import rendering
    from agentmark_gw.protocol import runner_pb2 as pb
    from agentmark_gw.protocol import runner_pb2_grpc

    item = {"userMessage": user_message}
    request = pb.DatasetItemRequest(
        kind=pb.PROMPT_KIND_TEXT, index=3, input_json=json.dumps(item), rendered=await rendering.render("text", agentmark_json("ast/text.json"), item),
        run_id="run-1", run_name="nightly", **fields,
    )
    async with grpc.aio.insecure_channel(rust_runner) as channel:
        answer = await runner_pb2_grpc.RunnerStub(channel).RunDatasetItem(request, timeout=10)
    return list(answer.events)


async def test_the_rust_runner_answers_a_dataset_item_with_one_scored_row(rust_runner: str, fake_openai: FakeOpenAI) -> None:
    saved, fake_openai.reply = fake_openai.reply, " 4 "
    try:
        (event,) = await _rust_item(rust_runner, "What is 2+2?", expected_output_json='"4"', eval_names=["exact_match", "exact_match_json", "tone"])
    finally:
        fake_openai.reply = saved
    row = event.row
    assert (row.input_json, row.expected_output_json, row.actual_output_json) == ('{"userMessage": "What is 2+2?"}', '"4"', '" 4 "')
    assert (row.run_id, row.run_name, row.tokens, row.trace_id) == ("run-1", "nightly", 12 + 3, "")  # " 4 " comes in three pieces
    # Scored as the Python SDK's built-ins score them; an eval it does not know is left out.
    assert json.loads(row.evals_json) == [
        {"name": "exact_match", "score": 1, "passed": True, "label": "match"},
        {"name": "exact_match_json", "score": 1, "passed": True, "label": "match"},
    ]
    assert fake_openai.requests[-1]["messages"][1] == {"role": "user", "content": "What is 2+2?"}


async def test_a_model_failure_is_an_error_event_for_that_item(rust_runner: str) -> None:
    (event,) = await _rust_item(rust_runner, "fail:500", eval_names=["exact_match"])
    assert event.WhichOneof("event") == "error" and event.error.message == "model API error 500: scripted failure 500"


async def test_the_thin_rust_runner_says_what_an_older_gateway_lacks(rust_runner: str) -> None:
    """It renders nothing and reads no dataset: an unrendered prompt, or a
    whole dataset run, gets one error saying what the gateway needs."""
    import grpc

    from agentmark_gw.protocol import runner_pb2 as pb
    from agentmark_gw.protocol import runner_pb2_grpc

    async with grpc.aio.insecure_channel(rust_runner) as channel:
        stub = runner_pb2_grpc.RunnerStub(channel)
        info = await stub.Describe(pb.DescribeRequest(), timeout=10)
        text_run = pb.RunPromptRequest(kind=pb.PROMPT_KIND_TEXT, ast_json=json.dumps(agentmark_json("ast/text.json")))
        prompt = [e async for batch in stub.RunPrompt(text_run, timeout=10) for e in batch.events]
        dataset_run = pb.RunExperimentRequest(kind=pb.PROMPT_KIND_TEXT, dataset_path="math.jsonl")
        experiment = [e async for batch in stub.RunExperiment(dataset_run, timeout=10) for e in batch.events]
    assert info.rendered_prompts and list(info.eval_names) == ["exact_match", "exact_match_json"]
    assert [e.WhichOneof("event") for e in prompt] == ["error"] and "rendered by the gateway" in prompt[0].error.message
    assert [e.WhichOneof("event") for e in experiment] == ["error"] and "datasets_dir" in experiment[0].error.message
