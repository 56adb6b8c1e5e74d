"""Micro-benchmarks of the byte work: the Rust core, its pure-Python twin,
and the best pure-Python route, side by side in one run.

    make bench                       # or: .venv/bin/python -m pytest benchmarks --benchmark-only
    .venv/bin/python benchmarks/report.py .benchmarks/latest.json   # the ratio table

Each benchmark first checks that what it times is right (same bytes as the
Rust path, or the same parsed JSON for the orjson route), so a fast wrong
answer cannot win.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from agentmark_gw import _core, _fallback
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import events

SECRET = "whsec_benchmark_secret"


# --- signature check ----------------------------------------------------------


def stdlib_verify(secret: str, header: str, body: bytes) -> bool:
    """What a Python gateway would write: hexdigest, then a constant-time compare."""
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


VERIFIERS: dict[str, Callable[[str, str, bytes], bool]] = {
    "rust": lambda s, h, b: _core.verify([s], h, b),
    "python-twin": lambda s, h, b: _fallback.verify([s], h, b),
    "stdlib-hmac": stdlib_verify,
}


@pytest.mark.parametrize("size", [1024, 64 * 1024, 1024 * 1024], ids=["1KiB", "64KiB", "1MiB"])
@pytest.mark.parametrize("impl", list(VERIFIERS))
def test_verify(benchmark: Any, impl: str, size: int) -> None:
    body = (b'{"event":{"type":"prompt-run","data":{"pad":"' + b"x" * size)[:size - 3] + b'"}}'
    header = _core.sign(SECRET, body)
    verify = VERIFIERS[impl]
    assert verify(SECRET, header, body) and not verify(SECRET, header, body + b" ")
    benchmark.group = f"verify {size // 1024} KiB"
    benchmark.extra_info["impl"] = impl
    assert benchmark(verify, SECRET, header, body)


# --- framing ----------------------------------------------------------------------

ARGS_2KIB = {"query": "weather in " + "x" * 1900, "units": "metric", "days": [1, 2, 3], "nested": {"deep": True}}
EVENTS = {
    "text-delta": ("text", events.text_delta("Hello, this is a typical streamed token")),
    "tool-call 2KiB": ("text", events.tool_call("call_abc123", "get_weather", ARGS_2KIB)),
    "finish+usage": ("text", events.finish("stop", input_tokens=1234, output_tokens=567, total_tokens=1801)),
}
ROW = pb.ExperimentEvents(
    events=[
        events.dataset_row(
            input={"text": "I love this product, it works perfectly!"},
            expected_output={"sentiment": "positive"},
            actual_output={"sentiment": "positive"},
            tokens=42,
            evals=[{"name": "exact_match_json", "score": 1, "passed": True}],
            trace_id="0af7651916cd43dd8448eb211c80319c",
            run_id="run-123",
            run_name="sentiment-baseline",
        )
    ]
).SerializeToString()


def _usage(u: pb.Usage) -> dict[str, int]:
    usage = {"inputTokens": u.input_tokens, "outputTokens": u.output_tokens}
    if u.HasField("total_tokens"):
        usage["totalTokens"] = u.total_tokens
    usage.update(promptTokens=u.input_tokens, completionTokens=u.output_tokens)
    return usage


def orjson_frame(kind: str, raw: bytes) -> bytes | None:
    """The best pure-Python route: generated classes to decode, orjson to encode
    (JSON fields parsed and re-encoded: orjson has no way to splice raw text)."""
    event = pb.RunnerEvent.FromString(raw)
    which = event.WhichOneof("event")
    if which == "text_delta":
        chunk: dict[str, Any] = {"type": "text", "result": event.text_delta.text}
    elif which == "tool_call":
        c = event.tool_call
        chunk = {"type": "text", "toolCall": {"toolCallId": c.id, "toolName": c.name, "args": orjson.loads(c.args_json)}}
    elif which == "finish":
        chunk = {"type": "text", "finishReason": event.finish.reason}
        if event.finish.HasField("usage"):
            chunk["usage"] = _usage(event.finish.usage)
    else:
        return None
    return orjson.dumps(chunk) + b"\n"


def orjson_row(raw: bytes) -> bytes:
    lines = []
    for event in pb.ExperimentEvents.FromString(raw).events:
        r = event.row
        result: dict[str, Any] = {"input": orjson.loads(r.input_json)}
        if r.HasField("expected_output_json"):
            result["expectedOutput"] = orjson.loads(r.expected_output_json)
        if r.HasField("actual_output_json"):
            result["actualOutput"] = orjson.loads(r.actual_output_json)
        if r.HasField("tokens"):
            result["tokens"] = r.tokens
        result["evals"] = orjson.loads(r.evals_json or "[]")
        chunk: dict[str, Any] = {"type": "dataset", "result": result}
        if r.trace_id:
            chunk["traceId"] = r.trace_id
        chunk.update(runId=r.run_id, runName=r.run_name)
        lines.append(orjson.dumps(chunk) + b"\n")
    return b"".join(lines)


FRAMERS: dict[str, Callable[[str, bytes], bytes | None]] = {
    "rust": _core.frame_event,
    "python-twin": _fallback.frame_event,
    "python-orjson": orjson_frame,
}


@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize("impl", list(FRAMERS))
def test_frame(benchmark: Any, impl: str, event: str) -> None:
    kind, message = EVENTS[event]
    raw = message.SerializeToString()
    frame = FRAMERS[impl]
    line = frame(kind, raw)
    assert line is not None
    if impl == "python-orjson":
        assert json.loads(line) == json.loads(_core.frame_event(kind, raw) or b"")
    else:
        assert line == _core.frame_event(kind, raw)
    benchmark.group = f"frame {event}"
    benchmark.extra_info["impl"] = impl
    benchmark(frame, kind, raw)


ROW_FRAMERS: dict[str, Callable[[bytes], bytes]] = {
    "rust": lambda raw: _core.ExperimentFramer().feed(raw),
    "python-twin": lambda raw: _fallback.ExperimentFramer().feed(raw),
    "python-orjson": orjson_row,
}


@pytest.mark.parametrize("impl", list(ROW_FRAMERS))
def test_frame_dataset_row(benchmark: Any, impl: str) -> None:
    frame = ROW_FRAMERS[impl]
    assert json.loads(frame(ROW)) == json.loads(_core.ExperimentFramer().feed(ROW))
    benchmark.group = "frame dataset row"
    benchmark.extra_info["impl"] = impl
    benchmark(frame, ROW)


# --- folding ----------------------------------------------------------------------

STREAM = [
    pb.RunnerEvents(events=[events.started("0af7651916cd43dd8448eb211c80319c")]).SerializeToString(),
    *[pb.RunnerEvents(events=[events.text_delta(f"token {i} ")]).SerializeToString() for i in range(998)],
    pb.RunnerEvents(events=[events.finish("stop", input_tokens=10, output_tokens=998)]).SerializeToString(),
]


def fold_with(module: Any) -> Callable[[], bytes]:
    def fold() -> bytes:
        folder = module.EnvelopeFolder("text")
        for message in STREAM:
            folder.feed(message)
        return folder.close()

    return fold


@pytest.mark.parametrize("impl", ["rust", "python-twin"])
def test_fold_1000_events(benchmark: Any, impl: str) -> None:
    fold = fold_with(_core if impl == "rust" else _fallback)
    assert fold() == fold_with(_core)()
    benchmark.group = "fold 1000 events"
    benchmark.extra_info["impl"] = impl
    benchmark(fold)
