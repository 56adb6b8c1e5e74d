"""AgentMark's vector vocabulary, turned into runner messages.

The shared vectors describe events in AgentMark's TypeScript shape
(`{"type": "text-delta", "text": ...}`); runners send them as protobuf. This
is the one translation, used by every vector test.
"""

from __future__ import annotations

import json
from typing import Any

from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import events


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    if not usage:
        return {}
    result = {"input_tokens": usage["inputTokens"], "output_tokens": usage["outputTokens"]}
    if usage.get("totalTokens") is not None:
        result["total_tokens"] = usage["totalTokens"]
    return result


def runner_event(event: dict[str, Any]) -> pb.RunnerEvent:
    kind = event["type"]
    if kind == "text-delta":
        return events.text_delta(event["text"])
    if kind == "reasoning-delta":
        return events.reasoning_delta(event["text"])
    if kind == "tool-call":
        return events.tool_call(event["id"], event["name"], event.get("args"))
    if kind == "tool-result":
        return events.tool_result(event["id"], event["name"], event.get("result"), is_error=event.get("isError", False))
    if kind == "object-delta":
        return events.object_delta(event["partial"])
    if kind == "object-final":
        return events.object_final(event["value"])
    if kind == "finish":
        return events.finish(event["reason"], **_usage(event.get("usage")))
    if kind == "error":
        return events.error(event["error"])
    raise ValueError(f"no runner event for {kind!r}")


def envelope_events(kind: str, args: dict[str, Any]) -> list[pb.RunnerEvent]:
    """The event stream a runner would send to produce `args` (response-envelopes.json)."""
    stream: list[pb.RunnerEvent] = []
    if args.get("traceId") is not None:
        stream.append(events.started(args["traceId"]))
    if kind == "text":
        if args.get("result"):
            stream.append(events.text_delta(args["result"]))
        for call in args.get("toolCalls", []):
            stream.append(events.tool_call(call["toolCallId"], call["toolName"], call["args"]))
        for result in args.get("toolResults", []):
            stream.append(events.tool_result(result["toolCallId"], result["toolName"], result["result"]))
    elif "result" in args:
        stream.append(events.object_delta({"partial": True}))
        stream.append(events.object_final(args["result"]))
    if "finishReason" in args:
        stream.append(events.finish(args["finishReason"], **_usage(args.get("usage"))))
    return stream


def dataset_row(args: dict[str, Any]) -> pb.ExperimentEvent:
    """The row a runner would send for dataset-rows.json `args`."""
    row = pb.DatasetRow(
        input_json=json.dumps(args["input"]),
        evals_json=json.dumps(args["evals"]),
        trace_id=args.get("traceId", ""),
        run_id=args["runId"],
        run_name=args["runName"],
    )
    if "expectedOutput" in args:
        row.expected_output_json = json.dumps(args["expectedOutput"])
    if "actualOutput" in args:
        row.actual_output_json = json.dumps(args["actualOutput"])
    if "tokens" in args:
        row.tokens = args["tokens"]
    return pb.ExperimentEvent(row=row)


def batch(*stream: pb.RunnerEvent) -> bytes:
    return pb.RunnerEvents(events=list(stream)).SerializeToString()
