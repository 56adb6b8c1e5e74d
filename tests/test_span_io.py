"""AgentMark's span-io.json vectors, unchanged, through the AgentMark bridge:
what a prompt run records on its span (input, output, model, usage,
classification), streaming or not, and whether the run fails its span."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from agentmark.prompt_core import create_agentmark
from agentmark.prompt_core.executor import (
    ErrorEvent,
    ExecutorCapabilities,
    FinishEvent,
    ObjectDeltaEvent,
    ObjectFinalEvent,
    TextDeltaEvent,
    UsageData,
)

from agentmark_gw.runner import AgentMarkRunner
from agentmark_gw.runner.service import PromptRequest

from .test_vectors import cases


def agentmark_event(event: dict[str, Any]) -> Any:
    kind = event["type"]
    if kind == "text-delta":
        return TextDeltaEvent(event["text"])
    if kind == "object-delta":
        return ObjectDeltaEvent(event["partial"])
    if kind == "object-final":
        return ObjectFinalEvent(event["value"])
    if kind == "finish":
        usage = event.get("usage")
        return FinishEvent(event["reason"], UsageData(usage["inputTokens"], usage["outputTokens"]) if usage else None)
    return ErrorEvent(event["error"])


class Scripted:
    """An AgentMark Executor that replays a vector's events."""

    name = "scripted"

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = script

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities()

    async def execute_text(self, formatted: Any, ctx: Any) -> AsyncIterator[Any]:
        for event in self.script:
            yield agentmark_event(event)

    execute_object = execute_text


class RecordingSpan:
    trace_id = "0af7651916cd43dd8448eb211c80319c"

    def __init__(self) -> None:
        self.attributes: dict[str, Any] = {}
        self.failed = False

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value


def ast_for(case: dict[str, Any]) -> dict[str, Any]:
    config = "text_config:\n  model_name: test" if case["kind"] == "text" else (
        "object_config:\n  model_name: test\n  schema:\n    type: object")
    tags = {"system": "System", "user": "User", "assistant": "Assistant"}
    children = [
        {"type": "mdxJsxFlowElement", "name": tags[m["role"]], "attributes": [],
         "children": [{"type": "paragraph", "children": [{"type": "text", "value": m["content"]}]}]}
        for m in case["messages"]
    ]
    return {"type": "root", "children": [{"type": "yaml", "value": f"name: span-io\n{config}"}, *children]}


@pytest.mark.parametrize("case", cases("span-io.json"))
async def test_span_io(case: dict[str, Any]) -> None:
    spans: list[RecordingSpan] = []

    @asynccontextmanager
    async def hook(params: Any) -> AsyncIterator[RecordingSpan]:
        span = RecordingSpan()
        spans.append(span)
        try:
            yield span
        except BaseException:
            span.failed = True
            raise

    runner = AgentMarkRunner(create_agentmark(), Scripted(case["events"]), prompt_span_hook=hook, item_span_hook=hook)
    request = PromptRequest(kind=case["kind"], ast=ast_for(case), props={"x": 1}, should_stream=case["shouldStream"], prompt_path="")
    emitted = [event.WhichOneof("event") async for event in runner.run_prompt(request)]

    (span,) = spans
    expected = case["expected"]
    attributes = span.attributes
    assert json.loads(attributes["agentmark.input"]) == expected["input"]
    if expected["output"] is None:
        assert "agentmark.output" not in attributes
    elif isinstance(expected["output"], str):
        assert attributes["agentmark.output"] == expected["output"]
    else:
        assert json.loads(attributes["agentmark.output"]) == expected["output"]
    assert attributes["gen_ai.request.model"] == expected["model"]
    if expected["usage"] is None:
        assert "gen_ai.usage.input_tokens" not in attributes and "gen_ai.usage.output_tokens" not in attributes
    else:
        assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
            expected["usage"]["input"], expected["usage"]["output"])
    assert attributes["gen_ai.operation.name"] == expected["classification"]["operationName"]
    assert attributes["agentmark.span.kind"] == expected["classification"]["spanKind"]
    # "throws": the run fails its span; the client hears of it as the stream's error event either way.
    assert span.failed is case["throws"]
    assert emitted[-1] == ("error" if any(e["type"] == "error" for e in case["events"]) else "finish")
