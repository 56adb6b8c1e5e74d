"""Constructors for the events a runner streams back.

Each returns a generated protobuf message; `_json` fields are filled with
`json.dumps` of the value given, so runner code passes plain Python values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..protocol import runner_pb2 as pb

__all__ = [
    "dataset_row",
    "error",
    "finish",
    "image",
    "object_delta",
    "object_final",
    "reasoning_delta",
    "row_error",
    "speech",
    "started",
    "text_delta",
    "tool_call",
    "tool_result",
]


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def started(trace_id: str = "") -> pb.RunnerEvent:
    return pb.RunnerEvent(started=pb.Started(trace_id=trace_id))


def text_delta(text: str) -> pb.RunnerEvent:
    return pb.RunnerEvent(text_delta=pb.TextDelta(text=text))


def reasoning_delta(text: str) -> pb.RunnerEvent:
    return pb.RunnerEvent(reasoning_delta=pb.ReasoningDelta(text=text))


def tool_call(id: str, name: str, args: Any) -> pb.RunnerEvent:
    return pb.RunnerEvent(tool_call=pb.ToolCall(id=id, name=name, args_json=_json(args)))


def tool_result(id: str, name: str, result: Any, *, is_error: bool = False) -> pb.RunnerEvent:
    return pb.RunnerEvent(tool_result=pb.ToolResult(id=id, name=name, result_json=_json(result), is_error=is_error))


def object_delta(partial: Any) -> pb.RunnerEvent:
    return pb.RunnerEvent(object_delta=pb.ObjectDelta(partial_json=_json(partial)))


def object_final(value: Any) -> pb.RunnerEvent:
    return pb.RunnerEvent(object_final=pb.ObjectFinal(value_json=_json(value)))


def finish(
    reason: str = "stop",
    *,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
) -> pb.RunnerEvent:
    """`finish`, with usage when the model reported input and output tokens."""
    event = pb.Finish(reason=reason)
    if input_tokens is not None and output_tokens is not None:
        event.usage.CopyFrom(pb.Usage(input_tokens=input_tokens, output_tokens=output_tokens))
        if total_tokens is not None:
            event.usage.total_tokens = total_tokens
    return pb.RunnerEvent(finish=event)


def error(message: str) -> pb.RunnerEvent:
    return pb.RunnerEvent(error=pb.Error(message=message))


def image(items: Iterable[tuple[str, str]]) -> pb.RunnerEvent:
    """Images as (mime type, base64) pairs."""
    return pb.RunnerEvent(image=pb.Image(items=[pb.ImageItem(mime_type=m, base64=b) for m, b in items]))


def speech(mime_type: str, base64: str, format: str) -> pb.RunnerEvent:
    return pb.RunnerEvent(speech=pb.Speech(mime_type=mime_type, base64=base64, format=format))


_ABSENT: Any = object()


def dataset_row(
    *,
    input: Any,
    run_id: str,
    run_name: str,
    expected_output: Any = _ABSENT,
    actual_output: Any = _ABSENT,
    tokens: int | None = None,
    evals: list[dict[str, Any]] | None = None,
    trace_id: str = "",
) -> pb.ExperimentEvent:
    row = pb.DatasetRow(
        input_json=_json(input),
        evals_json=_json(evals or []),
        trace_id=trace_id,
        run_id=run_id,
        run_name=run_name,
    )
    if expected_output is not _ABSENT and expected_output is not None:
        row.expected_output_json = _json(expected_output)
    if actual_output is not _ABSENT and actual_output is not None:
        row.actual_output_json = _json(actual_output)
    if tokens is not None:
        row.tokens = tokens
    return pb.ExperimentEvent(row=row)


def row_error(message: str) -> pb.ExperimentEvent:
    return pb.ExperimentEvent(error=pb.Error(message=message))
