"""AgentMark's own golden vectors, unchanged, through the Rust core and its
Python twin (`core` runs each test on both); and the two byte for byte alike."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest

from agentmark_gw import _core, _fallback
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner.agentmark_bridge import item_name

from .agentmark_events import batch, dataset_row, envelope_events, runner_event
from .conftest import agentmark_json


def cases(name: str) -> list[Any]:
    vectors = agentmark_json(f"vectors/{name}")
    return [pytest.param(case, id=case["name"]) for case in vectors["cases"]]


def both(call: Any) -> bytes:
    """`call(module)` on both implementations; they must agree to the byte."""
    rust, python = call(_core), call(_fallback)
    assert rust == python
    return rust


@pytest.mark.parametrize("case", cases("wire-chunks.json"))
def test_wire_chunks(case: dict[str, Any], core: ModuleType) -> None:
    raw = runner_event(case["event"]).SerializeToString()
    line = core.frame_event(case["kind"], raw)
    if case["expected"] is None:
        assert line is None
    else:
        assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
        assert json.loads(line) == case["expected"]
    assert line == both(lambda m: m.frame_event(case["kind"], raw))


@pytest.mark.parametrize("case", cases("wire-chunks.json"))
def test_wire_chunks_in_a_batch(case: dict[str, Any], core: ModuleType) -> None:
    framer = core.PromptFramer(case["kind"])
    out = framer.feed(batch(runner_event(case["event"])))
    expected = b"" if case["expected"] is None else None
    if expected is not None:
        assert out == expected
    else:
        assert json.loads(out) == case["expected"]
    assert framer.terminated == (case["event"]["type"] in ("finish", "error"))


@pytest.mark.parametrize("case", cases("response-envelopes.json"))
def test_response_envelopes(case: dict[str, Any], core: ModuleType) -> None:
    def fold(module: ModuleType) -> bytes:
        folder = module.EnvelopeFolder(case["kind"])
        for event in envelope_events(case["kind"], case["args"]):
            folder.feed(batch(event))  # one message per event, as a runner may send
        body = folder.close()
        assert folder.error is None
        return body

    assert json.loads(fold(core)) == case["expected"]
    both(fold)


@pytest.mark.parametrize("case", cases("dataset-rows.json"))
def test_dataset_rows(case: dict[str, Any], core: ModuleType) -> None:
    raw = pb.ExperimentEvents(events=[dataset_row(case["args"])]).SerializeToString()
    framer = core.ExperimentFramer()
    line = framer.feed(raw)
    assert json.loads(line) == case["expected"]
    assert (framer.rows, framer.errors) == (1, 0)
    both(lambda m: m.ExperimentFramer().feed(raw))


@pytest.mark.parametrize("case", cases("control-plane.json"))
def test_get_evals_payload(case: dict[str, Any], core: ModuleType) -> None:
    body = core.evals_payload(case["evalNames"])
    assert json.loads(body) == case["expected"]
    # Byte-exact: compact, sorted, non-ASCII kept as UTF-8.
    expected_result = json.dumps(case["expected"]["result"], ensure_ascii=False)
    assert body == f'{{"type":"evals","result":{expected_result},"traceId":""}}'.encode()
    both(lambda m: m.evals_payload(case["evalNames"]))


def test_protocol_catalog_events_all_have_a_runner_event() -> None:
    catalog = agentmark_json("vectors/protocol-catalog.json")
    samples = {
        "text-delta": {"text": "x"},
        "reasoning-delta": {"text": "x"},
        "tool-call": {"id": "i", "name": "n"},
        "tool-result": {"id": "i", "name": "n"},
        "object-delta": {"partial": {}},
        "object-final": {"value": {}},
        "finish": {"reason": "stop"},
        "error": {"error": "e"},
    }
    assert set(catalog["agentEvents"]) == set(samples)
    for name, fields in samples.items():
        assert runner_event({"type": name, **fields}).WhichOneof("event") == name.replace("-", "_")


def test_done_line_only_with_a_trace_id(core: ModuleType) -> None:
    from agentmark_gw.runner import events

    with_trace = core.PromptFramer("text")
    with_trace.feed(batch(events.started("abc"), events.finish("stop")))
    assert with_trace.close() == b'{"type":"done","traceId":"abc"}\n'
    without = core.PromptFramer("text")
    without.feed(batch(events.started(""), events.finish("stop")))
    assert without.close() == b""


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        ([], "runner ended the stream without finishing"),
        (["finish"], "runner finished without producing speech"),
        (["error"], "boom"),
    ],
)
def test_speech_folding_failures(stream: list[str], error: str, core: ModuleType) -> None:
    from agentmark_gw.runner import events

    folder = core.EnvelopeFolder("speech")
    for name in stream:
        folder.feed(batch(events.finish("stop") if name == "finish" else events.error("boom")))
    assert folder.close() == b""
    assert folder.error == error


@pytest.mark.parametrize("kind", ["text", "object"])
def test_a_stream_cut_short_ends_with_an_error(kind: str, core: ModuleType) -> None:
    from agentmark_gw.runner import events

    framer = core.PromptFramer(kind)
    framer.feed(batch(events.started("t1"), events.text_delta("partial")))
    assert not framer.terminated
    assert framer.close() == (
        b'{"type":"error","error":"runner ended the stream without finishing"}\n'
        b'{"type":"done","traceId":"t1"}\n'
    )
    folder = core.EnvelopeFolder(kind)
    folder.feed(batch(events.text_delta("partial")))
    assert folder.close() == b"" and folder.error == "runner ended the stream without finishing"


# Not protobuf; a truncated message; a string field that is not UTF-8.
@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05\x12\x03", b"\x0a\x06\x12\x04\x0a\x02\xc3\x28"])
def test_undecodable_messages_become_one_error_line(garbage: bytes, core: ModuleType) -> None:
    framer = core.PromptFramer("text")
    assert framer.feed(garbage) == b'{"type":"error","error":"runner sent a message that is not a valid event batch"}\n'
    assert framer.terminated and framer.feed(batch()) == b""
    folder = core.EnvelopeFolder("text")
    folder.feed(garbage)
    assert folder.error == "runner sent a message that is not a valid event batch"


def test_unknown_kind_is_a_value_error(core: ModuleType) -> None:
    with pytest.raises(ValueError, match="unknown prompt kind 'video'"):
        core.PromptFramer("video")


@pytest.mark.parametrize("case", cases("dataset-item-name.json"))
def test_dataset_item_names(case: dict[str, Any], core: ModuleType) -> None:
    text = json.dumps(case["input"], ensure_ascii=False)
    assert core.dataset_item_name(text, case["index"]) == case["expected"]
    both(lambda m: m.dataset_item_name(text, case["index"]).encode())


@pytest.mark.parametrize("case", cases("dataset-item-name.json"))
def test_the_reference_runner_names_items_as_agentmark_does(case: dict[str, Any]) -> None:
    # The runner hands the input as AgentMark's loader made it (a Python value), not JSON text.
    assert item_name(case["input"], case["index"]) == case["expected"]


@pytest.mark.parametrize("text", ["{", "NaN", "[1,]", "1" * 4301, "[" * 129 + "]" * 129])
def test_dataset_item_name_refuses_what_python_cannot_name(text: str, core: ModuleType) -> None:
    with pytest.raises(ValueError):
        core.dataset_item_name(text, 0)
