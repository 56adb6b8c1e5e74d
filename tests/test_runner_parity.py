"""The Rust example runner, which has no template code, answers every
AgentMark fixture prompt and dataset run exactly as the Python reference
runner does, model failures included.

Each event goes through a real gateway in front of each runner (the Rust one
asks the gateway to render with AgentMark's engine and to read datasets; the
Python one does both with AgentMark's runtime itself), both runners calling
the same fake OpenAI-compatible server. The NDJSON answers must be equal
(dataset rows in any order, their run ids aside), and so must the requests
the model received: that is where a rendering difference would show, since
the fake model's answer does not depend on most of the prompt."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .conftest import AGENTMARK, agentmark_json, signed
from .servers.fake_openai import FakeOpenAI
from .test_rendered_prompts import TEMPLATED

pytestmark = pytest.mark.e2e

# Props for the fixtures whose prompts have no `test_settings.props` of their own.
PROPS = {"userMessage": "What is 4+4?", "imageLink": "https://example.com/a.png"}
NEEDS_PROPS = {"math", "attachments"}


def _event(ast: dict[str, Any], stream: bool, props: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"ast": ast, "options": {"shouldStream": stream}}
    if props is not None:
        data["customProps"] = props
    return {"event": {"type": "prompt-run", "data": data}}


def _cases() -> list[Any]:
    cases = []
    for path in sorted((AGENTMARK / "ast").glob("*.json")):
        ast = json.loads(path.read_text())
        props = PROPS if path.stem in NEEDS_PROPS else None
        for stream in (True, False):
            cases.append(pytest.param(_event(ast, stream, props), id=f"ast-{path.stem}-{'stream' if stream else 'whole'}"))
    for path in sorted((AGENTMARK / "events").glob("prompt-run-*.json")):
        cases.append(pytest.param(json.loads(path.read_text()), id=f"event-{path.stem}"))
    # The model failing: before the first token, mid-stream, and for an image.
    text = json.loads((AGENTMARK / "ast" / "text.json").read_text())
    for message, stream in (("fail:401", True), ("fail:500", False), ("midstream", True), ("midstream", False)):
        cases.append(pytest.param(_event(text, stream, {"userMessage": message}), id=f"model-{message}-{'stream' if stream else 'whole'}"))
    image = (AGENTMARK / "ast" / "image.json").read_text().replace("This is a test for the image prompt to be drawn.", "fail:400")
    cases.append(pytest.param(_event(json.loads(image), False, None), id="model-image-fail"))
    # A filter and a conditional, with the test props and with custom props.
    cases.append(pytest.param(_event(TEMPLATED, True, None), id="templated-test-props"))
    cases.append(pytest.param(_event(TEMPLATED, False, {"name": "bob", "vip": False}), id="templated-custom-props"))
    return cases


async def _answer(url: str, event: dict[str, Any], fake_openai: FakeOpenAI) -> dict[str, Any]:
    """What a client sees, and what the model was sent, for one event."""
    before = len(fake_openai.requests)
    raw, headers = signed(event)
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(url + "/", content=raw, headers=headers)
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    return {
        "status": response.status_code,
        "streaming": response.headers.get("agentmark-streaming"),
        "content-type": response.headers.get("content-type"),
        "answer": lines,
        "model was sent": fake_openai.requests[before:],
    }


@pytest.mark.parametrize("event", _cases())
async def test_rust_runner_answers_fixture_prompts_as_the_python_runner(
    event: dict[str, Any], gateway: str, rust_gateway: str, fake_openai: FakeOpenAI
) -> None:
    python = await _answer(gateway, event, fake_openai)
    rust = await _answer(rust_gateway, event, fake_openai)
    assert python["answer"], python
    assert rust == python


async def test_a_long_streamed_object_grows_by_the_same_steps(gateway: str, rust_gateway: str, fake_openai: FakeOpenAI) -> None:
    """Object deltas come from re-reading the partial JSON as it grows: both
    runners must show the same partial objects, through escapes, surrogate
    pairs (the fake model sends JSON with \\u escapes), numbers and nesting."""
    reply = {"answer": 'say "hi", é and 😀 \\ ' * 8, "steps": [1, 2.5, True, None, {"k": "v"}], "n": -12}
    event = _event(agentmark_json("ast/math.json"), True, PROPS)
    saved, fake_openai.object_reply = fake_openai.object_reply, reply
    try:
        python = await _answer(gateway, event, fake_openai)
        rust = await _answer(rust_gateway, event, fake_openai)
    finally:
        fake_openai.object_reply = saved
    deltas = [line["result"] for line in python["answer"] if "result" in line]
    assert len(deltas) > 5 and deltas[-1] == reply
    assert rust == python


def _dataset_cases() -> list[Any]:
    def run(sampling: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
        event = agentmark_json("events/dataset-run.json")
        event["event"]["data"].update(changes)
        if sampling is not None:
            event["event"]["data"]["sampling"] = sampling
        return event

    return [
        pytest.param(run(), id="sentiment-with-its-eval"),
        pytest.param(run({"rows": [0, 2, 5]}), id="sampled-rows"),
        pytest.param(run({"sample": 50, "seed": 7}), id="seeded-sample"),
        pytest.param(run(ast=agentmark_json("ast/text.json"), datasetPath="math.jsonl", experimentId="math"), id="text-prompt"),
        pytest.param(run(datasetPath="missing.jsonl"), id="missing-dataset"),
        pytest.param(run(ast=agentmark_json("ast/image.json")), id="image-prompt-refused"),
    ]


def _rows(lines: list[dict[str, Any]]) -> tuple[list[str], set[Any]]:
    """A run's lines in a comparable order (rows come in completion order),
    without the run id, which each run draws afresh; and its run ids."""
    run_ids = {line.pop("runId", None) for line in lines}
    return sorted(json.dumps(line, sort_keys=True) for line in lines), run_ids


@pytest.mark.parametrize("event", _dataset_cases())
async def test_rust_runner_answers_dataset_runs_as_the_python_runner(
    event: dict[str, Any], gateway: str, rust_gateway: str, fake_openai: FakeOpenAI
) -> None:
    """The Python runner reads, samples and renders the dataset itself; the
    gateway does that for the Rust runner (its `datasets_dir` holds the same
    fixture datasets), which only calls the model and scores."""
    python = await _answer(gateway, event, fake_openai)
    rust = await _answer(rust_gateway, event, fake_openai)
    python_rows, python_runs = _rows(python.pop("answer"))
    rust_rows, rust_runs = _rows(rust.pop("answer"))
    assert python_rows
    assert rust_rows == python_rows
    assert len(python_runs) == len(rust_runs) == 1
    # Sent in completion order too.
    sent = [sorted(json.dumps(body, sort_keys=True) for body in answer.pop("model was sent")) for answer in (python, rust)]
    assert sent[1] == sent[0]
    assert rust == python


@pytest.mark.parametrize("failures", [2, 5])
async def test_rate_limits_are_retried_as_the_python_runner_retries_them(
    failures: int, gateway: str, rust_gateway: str, fake_openai: FakeOpenAI
) -> None:
    """Two retries before the first token: 2 rate limits are ridden out, 5 are the answer."""
    import uuid

    seen = {}
    for runner, url in (("python", gateway), ("rust", rust_gateway)):
        message = f"flaky:{failures}:{runner}-{uuid.uuid4().hex}"  # the fake counts attempts per message
        answer = await _answer(url, _event(agentmark_json("ast/text.json"), True, {"userMessage": message}), fake_openai)
        seen[runner] = (answer["answer"], fake_openai.attempts[message])
    assert seen["python"][1] == 3
    assert seen["rust"] == seen["python"]
