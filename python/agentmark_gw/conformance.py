"""The runner conformance kit: is this runner right?

`agentmark-gw conformance --runner HOST:PORT` drives a runner directly over
gRPC with a scripted set of requests and checks every answer against the
runner contract (protos/agentmark/runner/v1/runner.proto, docs/runners.md):

- each prompt kind (text streaming and not, object, image, speech) ends in
  exactly one `finish`, nothing follows it, and every `_json` field is JSON;
- a dataset run yields complete rows (or error rows) from one run id;
- get-evals and an alert are answered;
- a cancelled stream and expired deadlines leave the runner healthy and answering;
- a malformed AST is refused cleanly: an error event or INVALID_ARGUMENT.

With `--serve-model PORT` the kit also serves the model (conformance_model,
an OpenAI-compatible server on loopback that the runner's OPENAI_BASE_URL
points at) and checks what the runner actually sent it:

- prompts with expressions, filters, conditionals and loops reach the model
  exactly as AgentMark's own runtime renders them;
- a cancelled stream closes the runner's model request within CANCEL_BOUND;
- a 5 MiB request is accepted (gRPC's default 4 MiB receive limit is not enough);
- a dataset path leaving the data directory is refused, never read;
- a runner that asks for rendered prompts answers `RunDatasetItem` with
  exactly one row of the request's run.

A runner whose `Describe` asks for rendered prompts gets them as the gateway
sends them: `rendered` by AgentMark's engine beside the AST, and the dataset
check as one `RunDatasetItem` per row of the kit's dataset.

The runner needs a model to answer with (a real one, or a fake
OpenAI-compatible server) and, for the dataset check, the kit's dataset in
its data directory: `agentmark-gw conformance --write-dataset DIR` puts it there.

Knows runners only through the protocol, like the gateway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .conformance_model import SLOW_MARKER, KitModel, message_text
from .protocol import runner_pb2 as pb
from .protocol import runner_pb2_grpc

DATASET_NAME = "agentmark-gw-conformance.jsonl"
DATASET_ROWS: list[dict[str, Any]] = [
    {"input": {"question": "What is 2+2?"}, "expected_output": "4"},
    {"input": {"question": "What is the capital of France?"}, "expected_output": "Paris"},
    {"input": {"question": "Name a primary colour."}, "expected_output": "red"},
]
SERVICE = "agentmark.runner.v1.Runner"
CALL_TIMEOUT = 60.0
# How soon a cancelled call must close its model request (the gateway cancels
# when the platform's client leaves; a runner that does not keeps paying for tokens).
CANCEL_BOUND = 5.0
# gRPC's default receive limit in Go and Java is 4 MiB; the gateway sends more.
LARGE_REQUEST_BYTES = 5 * 1024 * 1024
# The least receive limit to tell runners: the gateway sends up to 3 x its
# body limit + 1 MiB (31 MiB with the default 10 MiB body limit).
RECEIVE_LIMIT_MIB = 32
# Statuses that refuse a dataset path plainly (an error row does too).
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION)


def write_dataset(directory: str | Path) -> Path:
    """Write the kit's dataset into a runner's data directory, made if missing."""
    path = Path(directory) / DATASET_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in DATASET_ROWS))
    return path


def _ast(config: str, *children: dict[str, Any]) -> dict[str, Any]:
    return {"type": "root", "children": [{"type": "yaml", "value": config}, *children]}


def _tag(name: str, *inline: dict[str, Any]) -> dict[str, Any]:
    return {"type": "mdxJsxFlowElement", "name": name, "attributes": [], "children": [{"type": "paragraph", "children": list(inline)}]}


def _text(value: str) -> dict[str, Any]:
    return {"type": "text", "value": value}


def _prop(name: str) -> dict[str, Any]:
    return {"type": "mdxTextExpression", "value": f"props.{name}"}


TEXT_AST = _ast(
    "name: conformance-text\ntext_config:\n  model_name: conformance-model",
    _tag("System", _text("Answer briefly.")),
    _tag("User", _prop("question")),
)
OBJECT_AST = _ast(
    "name: conformance-object\nobject_config:\n  model_name: conformance-model\n  schema:\n    type: object\n"
    "    properties:\n      answer:\n        type: string\n    required: [answer]",
    _tag("System", _text("Answer as JSON.")),
    _tag("User", _prop("question")),
)
IMAGE_AST = _ast("name: conformance-image\nimage_config:\n  model_name: conformance-model\n  num_images: 1\n  size: 256x256",
                 _tag("ImagePrompt", _text("A small red square.")))
SPEECH_AST = _ast("name: conformance-speech\nspeech_config:\n  model_name: conformance-model\n  voice: alloy\n  output_format: mp3",
                  _tag("SpeechPrompt", _text("Hello.")))
QUESTION = {"question": "What is 2+2?"}
_KIND_NAMES = {pb.PROMPT_KIND_TEXT: "text", pb.PROMPT_KIND_OBJECT: "object", pb.PROMPT_KIND_IMAGE: "image", pb.PROMPT_KIND_SPEECH: "speech"}


# -- templates, for the rendering check (--serve-model) ------------------------
# Trees as AgentMark's build writes them (mdast with MDX nodes), using its
# template language: expressions, filters, If/ElseIf/Else and ForEach. What the
# model must receive is whatever AgentMark's runtime renders from them; the kit
# never states it by hand. Props are plain strings and lists: AgentMark's
# runtime also compiles each prompt once with empty props, where `>` or
# `round()` on a missing prop fails.


def _attr(name: str, expression: str) -> dict[str, Any]:
    return {"type": "mdxJsxAttribute", "name": name, "value": {"type": "mdxJsxAttributeValueExpression", "value": expression}}


def _element(name: str, children: list[dict[str, Any]], **attributes: str) -> dict[str, Any]:
    return {"type": "mdxJsxFlowElement", "name": name, "attributes": [_attr(k, v) for k, v in attributes.items()], "children": children}


def _para(*inline: dict[str, Any]) -> dict[str, Any]:
    return {"type": "paragraph", "children": list(inline)}


def _expr(expression: str) -> dict[str, Any]:
    return {"type": "mdxTextExpression", "value": expression}


def _run_line() -> dict[str, Any]:
    # Each run's nonce is a prop, rendered into the system message: the kit
    # finds the run's model request by it, and a runner must substitute it.
    return _element("System", [_para(_text("Conformance run "), _expr("props.nonce"), _text("."))])


def templated_prompts(nonce: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None, str]]:
    """(label, AST, customProps, the run's nonce) of the rendering check; None
    props: the frontmatter's `test_settings.props` apply, as AgentMark does."""
    expressions = _ast(
        "name: conformance-expressions\ntext_config:\n  model_name: conformance-model",
        _run_line(),
        _element("User", [_para(
            _text("Hello "), _expr("upper(props.name)"), _text("! Full name: "), _expr('props.name + " " + props.surname'),
            _text(". Tags: "), _expr('join(props.tags, " / ")'), _text(". City: "), _expr("capitalize(lower(props.city))"),
            _text(". Motto: "), _expr("truncate(props.motto, 9)"), _text(" "), _expr('replace(props.name, "a", "4")'),
        )]),
    )
    conditionals = _ast(
        "name: conformance-conditionals\ntext_config:\n  model_name: conformance-model",
        _run_line(),
        _element("User", [
            _element("If", [_para(_text("VIP customer."))], condition="props.vip"),
            _element("Else", [_para(_text("Regular customer."))]),
            _element("If", [_para(_text("Gold tier."))], condition='props.tier == "gold"'),
            _element("ElseIf", [_para(_text("Silver tier."))], condition='props.tier == "silver"'),
            _element("Else", [_para(_text("No tier."))]),
        ]),
    )
    loop_body = {"type": "mdxFlowExpression", "value": "(item, i) => item",
                 "children": [_para(_expr("i + 1"), _text(". "), _expr("upper(item.name)"), _text(" x"), _expr("item.qty"))]}
    loops = _ast(
        "name: conformance-loops\ntext_config:\n  model_name: conformance-model\ntest_settings:\n  props:\n"
        f"    nonce: {nonce}-loops\n    items:\n      - {{name: tea, qty: 2}}\n      - {{name: cake, qty: 1}}",
        _run_line(),
        _element("User", [_para(_text("Order:")), _element("ForEach", [loop_body], arr="props.items"), _para(_text("Thanks."))]),
    )
    person = {"name": "ada", "surname": "Lovelace", "tags": ["math", "engines"], "city": "lONDON", "motto": "carpe diem always"}
    return [
        ("expressions and filters", expressions, {"nonce": f"{nonce}-expressions", **person}, f"{nonce}-expressions"),
        ("conditionals (true branches)", conditionals, {"nonce": f"{nonce}-if", "vip": True, "tier": "silver"}, f"{nonce}-if"),
        ("conditionals (else branches)", conditionals, {"nonce": f"{nonce}-else", "vip": False, "tier": "bronze"}, f"{nonce}-else"),
        ("a loop, props from test_settings", loops, None, f"{nonce}-loops"),
    ]


@dataclass
class Result:
    check: str
    passed: bool
    reason: str
    seconds: float
    id: str = ""  # the check's short id, as `--check` takes it
    skipped: bool = False  # not for this runner (the reason says why); counts as passed


class Failed(Exception):
    """A contract violation; the message says which."""


class Skipped(Exception):
    """The check does not apply to this runner; the message says why."""


def _prompt_request(kind: pb.PromptKind, ast: Any, *, stream: bool = True, props: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> pb.RunPromptRequest:
    """A prompt run; `extra` adds fields to the event `data` (`data_json`)."""
    ast_json = ast if isinstance(ast, str) else json.dumps(ast)
    props_json = json.dumps(props if props is not None else QUESTION)
    data = {"ast": ast if not isinstance(ast, str) else None, "customProps": props, "conformance": True, **(extra or {})}
    return pb.RunPromptRequest(
        kind=kind, ast_json=ast_json, custom_props_json=props_json, should_stream=stream, prompt_path="conformance.prompt.mdx", data_json=json.dumps(data)
    )


def _valid_json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise Failed(f"{field} is not valid JSON: {text[:80]!r}") from None


def check_prompt_stream(events: list[pb.RunnerEvent], kind: str) -> str:
    """The contract of one prompt run's events; returns a summary, raises Failed."""
    if not events:
        raise Failed("the stream carried no event")
    names = [e.WhichOneof("event") for e in events]
    if None in names:
        raise Failed("an event with no member of the oneof set")
    if "started" in names[1:]:
        raise Failed("`started` must come first, if at all")
    terminals = [i for i, n in enumerate(names) if n in ("finish", "error")]
    if not terminals:
        raise Failed("the stream ended without `finish` or `error`")
    if terminals[0] != len(names) - 1:
        raise Failed(f"{len(names) - 1 - terminals[0]} event(s) after `{names[terminals[0]]}`")
    if names[-1] == "error":
        raise Failed(f"the runner answered with an error: {events[-1].error.message}")
    allowed = {
        "text": {"started", "text_delta", "reasoning_delta", "tool_call", "tool_result", "finish"},
        "object": {"started", "object_delta", "object_final", "finish"},
        "image": {"started", "image", "finish"},
        "speech": {"started", "speech", "finish"},
    }[kind]
    stray = sorted(set(names) - allowed)
    if stray:
        raise Failed(f"{kind} run sent events of another kind: {', '.join(stray)}")
    calls: set[str] = set()
    for event, name in zip(events, names, strict=True):
        # The proto's one rule, as the gateway applies it: an empty `_json`
        # field means "absent", unless its comment says it is required;
        # anything else must be JSON.
        if name == "tool_call":
            calls.add(event.tool_call.id)
            if not event.tool_call.args_json:
                raise Failed('tool_call.args_json is empty: it is required, send the arguments as JSON ("{}" for none); '
                             "the gateway ends the client's stream on an empty one")
            _valid_json(event.tool_call.args_json, "tool_call.args_json")
        elif name == "tool_result":
            if event.tool_result.id not in calls:
                raise Failed(f"tool_result {event.tool_result.id!r} answers no earlier tool_call")
            if event.tool_result.result_json:
                _valid_json(event.tool_result.result_json, "tool_result.result_json")
        elif name == "object_delta" and event.object_delta.partial_json:
            _valid_json(event.object_delta.partial_json, "object_delta.partial_json")
        elif name == "object_final":
            if not event.object_final.value_json:
                raise Failed("object_final carries no value")
            _valid_json(event.object_final.value_json, "object_final.value_json")
        elif name == "image":
            if not event.image.items:
                raise Failed("an image event with no image")
            for item in event.image.items:
                _check_media(item.mime_type, item.base64, "image")
        elif name == "speech":
            _check_media(event.speech.mime_type, event.speech.base64, "speech")
            if not event.speech.format:
                raise Failed("speech.format is empty")
    finish = events[-1].finish
    if not finish.reason:
        raise Failed("finish.reason is empty")
    if kind == "object" and "object_final" not in names:
        raise Failed("an object run without `object_final`")
    if kind == "object" and "object_delta" in names[names.index("object_final"):]:
        raise Failed("object_delta after object_final")
    if kind in ("image", "speech") and kind not in names:
        raise Failed(f"a {kind} run without a `{kind}` event")
    if kind == "text" and "text_delta" not in names:
        raise Failed("a text run without any `text_delta`")
    usage = f", usage {finish.usage.input_tokens}+{finish.usage.output_tokens}" if finish.HasField("usage") else ""
    return f"{len(events)} events, finish {finish.reason!r}{usage}"


def _check_media(mime_type: str, data: str, what: str) -> None:
    if not mime_type or "/" not in mime_type:
        raise Failed(f"{what} mime type {mime_type!r} is not a MIME type")
    try:
        if not base64.b64decode(data, validate=True):
            raise Failed(f"{what} base64 is empty")
    except ValueError:
        raise Failed(f"{what} base64 does not decode") from None


class Kit:
    def __init__(self, target: str, dataset: str = DATASET_NAME, timeout: float = CALL_TIMEOUT, model: KitModel | None = None) -> None:
        self.target = target
        self.dataset = dataset
        self.timeout = timeout
        self.model = model
        # As large as the gateway's messages can be, both ways (the 5 MiB check sends one).
        self.channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ])
        self.stub = runner_pb2_grpc.RunnerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._rendered: bool | None = None  # what `Describe` said, once asked

    async def close(self) -> None:
        await self.channel.close()

    async def _wants_rendered(self) -> bool:
        """Whether the runner asks (`Describe`) for prompts rendered by the
        gateway. UNIMPLEMENTED, a runner older than `Describe`, means no."""
        if self._rendered is None:
            try:
                info = await self.stub.Describe(pb.DescribeRequest(), timeout=self.timeout)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._rendered = False
            else:
                self._rendered = info.rendered_prompts
        return self._rendered

    async def _as_gateway_sends(self, request: pb.RunPromptRequest) -> pb.RunPromptRequest:
        """`request` with `rendered`, for a runner that asks for it."""
        if not await self._wants_rendered():
            return request
        try:
            rendered = await _render(request.kind, json.loads(request.ast_json), json.loads(request.custom_props_json or "{}"))
        except (ValueError, Failed):
            # The malformed-AST check: a gateway would refuse it (400); sent
            # unrendered, the runner must still refuse it cleanly.
            return request
        sent = pb.RunPromptRequest()
        sent.CopyFrom(request)
        sent.rendered.CopyFrom(rendered)
        return sent

    async def _events(self, request: pb.RunPromptRequest) -> list[pb.RunnerEvent]:
        events: list[pb.RunnerEvent] = []
        async for batch in self.stub.RunPrompt(await self._as_gateway_sends(request), timeout=self.timeout):
            events.extend(batch.events)
        return events

    async def _serving(self) -> None:
        for service in (SERVICE, ""):
            try:
                response = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and service:
                    continue
                raise Failed(f"health check failed: {error.code().name}") from None
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise Failed(f"health status is {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}")
            return
        raise Failed("no grpc.health.v1 status for the runner")

    # -- the checks ---------------------------------------------------------------

    async def health_check(self) -> str:
        await self._serving()
        return "SERVING"

    async def text_streaming(self) -> str:
        return check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST)), "text")

    async def text_not_streaming(self) -> str:
        return check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST, stream=False)), "text")

    async def object_prompt(self) -> str:
        events = await self._events(_prompt_request(pb.PROMPT_KIND_OBJECT, OBJECT_AST))
        summary = check_prompt_stream(events, "object")
        final = next(e for e in events if e.WhichOneof("event") == "object_final")
        if not isinstance(json.loads(final.object_final.value_json), dict):
            raise Failed("object_final is not a JSON object, as the prompt's schema asks")
        return summary

    async def image_prompt(self) -> str:
        return check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_IMAGE, IMAGE_AST, stream=False, props={})), "image")

    async def speech_prompt(self) -> str:
        return check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_SPEECH, SPEECH_AST, stream=False, props={})), "speech")

    async def dataset_run(self) -> str:
        items = await self._dataset_items() if await self._wants_rendered() else None
        # Items are the kit's own rows, whatever --dataset names: such a runner reads no dataset.
        events, ours = items or [], True
        if items is None:  # the runner reads the dataset itself
            request = pb.RunExperimentRequest(
                kind=pb.PROMPT_KIND_TEXT, ast_json=json.dumps(TEXT_AST), experiment_id="conformance", dataset_path=self.dataset,
                concurrency=2, data_json=json.dumps({"datasetPath": self.dataset}),
            )
            events = [event async for batch in self.stub.RunExperiment(request, timeout=self.timeout) for event in batch.events]
            ours = self.dataset == DATASET_NAME
        rows = [event.row for event in events if event.WhichOneof("event") == "row"]
        errors = [event.error.message for event in events if event.WhichOneof("event") == "error"]
        if errors and not rows:
            hint = ""
            if items is None and ours and "dataset" in errors[0].lower():
                hint = " (write the kit's dataset into the runner's data directory: agentmark-gw conformance --write-dataset DIR)"
            raise Failed(f"only error rows: {errors[0]}{hint}")
        if len(rows) + len(errors) != len(DATASET_ROWS) and ours:
            raise Failed(f"{len(rows)} rows and {len(errors)} error rows for a dataset of {len(DATASET_ROWS)}")
        if errors:
            raise Failed(f"{len(errors)} error row(s): {errors[0]}")
        for row in rows:
            # The proto's one rule, as the gateway applies it: an empty `_json`
            # field is absent (a row's input is then null).
            _valid_json(row.input_json or "null", "row.input_json")
            evals = _valid_json(row.evals_json or "[]", "row.evals_json")
            if not isinstance(evals, list) or not all(isinstance(e, dict) and "name" in e for e in evals):
                raise Failed("row.evals_json must be an array of {name, ...} objects")
            for field in ("expected_output_json", "actual_output_json"):
                if row.HasField(field) and getattr(row, field):
                    _valid_json(getattr(row, field), f"row.{field}")
            if not row.run_id or row.run_name != "conformance":
                raise Failed(f"run_id must be set and run_name must be the experiment id (got {row.run_name!r})")
        if len({row.run_id for row in rows}) != 1:
            raise Failed("rows of one run carry different run ids")
        inputs = sorted(json.dumps(json.loads(r.input_json or "null"), sort_keys=True) for r in rows)
        if ours and inputs != sorted(json.dumps(r["input"], sort_keys=True) for r in DATASET_ROWS):
            raise Failed("row inputs are not the dataset's inputs")
        return f"{len(rows)} rows, run id {rows[0].run_id[:8]}…"

    async def _dataset_items(self) -> list[pb.ExperimentEvent]:
        """The kit's dataset as a gateway with a dataset source sends it to a
        runner that asks for rendered prompts: one `RunDatasetItem` per row,
        each answered by exactly one event."""
        run_id = str(uuid.uuid4())
        # The kit's three rows in flight at once, as a gateway keeps a run's items.
        return list(await asyncio.gather(*(self._send_item(i, row["input"], row["expected_output"], run_id, "conformance")
                                           for i, row in enumerate(DATASET_ROWS))))

    async def _send_item(self, index: int, item_input: dict[str, Any], expected: Any, run_id: str, run_name: str) -> pb.ExperimentEvent:
        """One dataset item as the gateway sends it (rendered with its input as
        the props); the runner's one answer, a row or an error event."""
        request = pb.DatasetItemRequest(
            kind=pb.PROMPT_KIND_TEXT, index=index, input_json=json.dumps(item_input), expected_output_json=json.dumps(expected),
            rendered=await _render(pb.PROMPT_KIND_TEXT, TEXT_AST, item_input), run_id=run_id, run_name=run_name,
            dataset_path=DATASET_NAME, prompt_name="conformance-text",
        )
        try:
            answer = await self.stub.RunDatasetItem(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise Failed("RunDatasetItem is UNIMPLEMENTED: a runner that asks for rendered prompts gets dataset runs as items "
                             "from a gateway with a dataset source (datasets_dir); implement it") from None
            raise
        if len(answer.events) != 1 or answer.events[0].WhichOneof("event") not in ("row", "error"):
            raise Failed(f"RunDatasetItem must answer exactly one row or error event, got {[e.WhichOneof('event') for e in answer.events]}")
        return answer.events[0]

    async def get_evals(self) -> str:
        response = await self.stub.GetEvals(pb.GetEvalsRequest(), timeout=self.timeout)
        names = list(response.names)
        if len(set(names)) != len(names):
            raise Failed("eval names repeat")
        return f"{len(names)} eval(s)"

    async def alert(self) -> str:
        data = {"alert": {"id": "conformance-1", "type": "cost", "status": "triggered", "currentValue": 2, "threshold": 1, "timeWindow": "1h"},
                "message": "conformance kit", "timestamp": "2026-01-01T00:00:00Z"}
        await self.stub.HandleAlert(pb.AlertRequest(id="conformance-1", type="cost", status="triggered", data_json=json.dumps(data)), timeout=self.timeout)
        return "acknowledged"

    async def cancelled_stream(self) -> str:
        call = self.stub.RunPrompt(await self._as_gateway_sends(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST)), timeout=self.timeout)
        first = await call.read()
        call.cancel()
        if first is grpc.aio.EOF:
            raise Failed("the stream ended before its first message")
        await asyncio.sleep(0.2)
        await self._serving()
        check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST)), "text")
        return "cancelled after the first message; the runner answers the next run"

    async def deadlines(self) -> str:
        request = await self._as_gateway_sends(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST))
        for _ in range(5):
            try:
                async for _batch in self.stub.RunPrompt(request, timeout=0.001):
                    pass
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Failed(f"an expired deadline gave {error.code().name}, not DEADLINE_EXCEEDED") from None
        await self._serving()
        check_prompt_stream(await self._events(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST)), "text")
        return "5 expired deadlines; the runner answers the next run"

    async def malformed_ast(self) -> str:
        outcomes = []
        for label, ast in (("not JSON", "{not json"), ("no frontmatter", {"type": "root", "children": []})):
            try:
                events = await self._events(_prompt_request(pb.PROMPT_KIND_TEXT, ast))
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                    raise Failed(f"{label}: gRPC {error.code().name}; expected an error event or INVALID_ARGUMENT") from None
                outcomes.append(f"{label}: {error.code().name}")
                continue
            names = [e.WhichOneof("event") for e in events]
            if not names or names[-1] != "error" or "finish" in names:
                raise Failed(f"{label}: expected an error event or INVALID_ARGUMENT, got {names}")
            outcomes.append(f"{label}: error event")
        await self._serving()
        return "; ".join(outcomes)

    # -- with the kit's model in the loop (--serve-model) ---------------------------

    def _need_model(self) -> KitModel:
        assert self.model is not None  # run() keeps these checks for a kit serving its model
        return self.model

    def _no_call(self, what: str, outcome: str = "") -> Failed:
        said = f" (the run ended with {outcome if len(outcome) <= 120 else outcome[:119] + '…'})" if outcome else ""
        return Failed(f"the runner never called the kit's model for {what}{said}: start the runner with "
                      f"OPENAI_BASE_URL={self._need_model().url} (any OPENAI_API_KEY) so its model calls come to the kit")

    async def _model_request(self, nonce: str, what: str) -> Any:
        found = await self._need_model().wait_for(nonce, timeout=min(self.timeout, 15))
        if found is None:
            raise self._no_call(what)
        return found

    async def rendered_templates(self) -> str:
        model = self._need_model()
        nonce = f"kit-{uuid.uuid4().hex[:12]}"
        mode = "RunPromptRequest.rendered" if await self._wants_rendered() else "the runner's own rendering"
        prompts = templated_prompts(nonce)
        for label, ast, props, run_nonce in prompts:
            # What AgentMark's runtime renders, through the gateway's own module (the same call the gateway makes).
            rendered = await _render(pb.PROMPT_KIND_TEXT, ast, props or {})
            expected = [(m.role, "".join(part.text for part in m.content if part.WhichOneof("part") == "text")) for m in rendered.messages]
            request = _prompt_request(pb.PROMPT_KIND_TEXT, ast, stream=False, props=props or {})  # `_events` adds `rendered` for a runner that asks
            try:
                check_prompt_stream(await self._events(request), "text")
            except (Failed, grpc.aio.AioRpcError) as failure:
                # A run that failed before reaching the kit's model most often
                # means the runner's model is somewhere else.
                outcome = str(failure) if isinstance(failure, Failed) else f"gRPC {failure.code().name}: {failure.details()}"
                if not model.find(run_nonce):
                    raise self._no_call(f"the prompt with {label}", outcome) from None
                raise Failed(f"{label}: {outcome}") from None
            found = model.find(run_nonce)
            if not found:
                raise self._no_call(f"the prompt with {label}")
            body = found[-1].body
            sent = [(str(m.get("role")), message_text(m)) for m in body.get("messages") or [] if isinstance(m, dict)]
            if sent != expected:
                raise Failed(f"{label}: {_first_difference(expected, sent)}. Render prompts with AgentMark's engine, or answer "
                             "Describe with rendered_prompts: true and send RunPromptRequest.rendered's messages to the model as they are.")
            if body.get("model") != rendered.model_name:
                raise Failed(f"{label}: the model was asked for {body.get('model')!r}, the prompt names {rendered.model_name!r}: "
                             "send the frontmatter's model_name (RenderedPrompt.model_name) as the model.")
        return f"{len(prompts)} prompts reached the model as AgentMark renders them ({mode})"

    async def cancel_stops_model(self) -> str:
        model = self._need_model()
        nonce = f"kit-{uuid.uuid4().hex[:12]}"
        request = await self._as_gateway_sends(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST, props={"question": f"{SLOW_MARKER} {nonce}"}))
        await self._serving()  # an unreachable runner is reported as such, not as a model elsewhere
        call = self.stub.RunPrompt(request, timeout=self.timeout)
        first = asyncio.ensure_future(call.read())
        arrived = asyncio.ensure_future(model.wait_for(nonce, timeout=min(self.timeout, 15)))
        try:
            await asyncio.wait({first, arrived}, return_when=asyncio.FIRST_COMPLETED)
            error = first.exception() if first.done() else None
            if isinstance(error, grpc.aio.AioRpcError) and not model.find(nonce):
                raise self._no_call("a streaming run", f"gRPC {error.code().name}: {error.details()}")
            record = await arrived
            if record is None:
                raise self._no_call("a streaming run")
            # The model is answering (slowly); give the runner a moment to pass the first piece on.
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                await asyncio.wait_for(asyncio.shield(first), 2)
        finally:
            cancelled_at = time.monotonic()
            call.cancel()
            arrived.cancel()
            await asyncio.gather(first, arrived, return_exceptions=True)
        try:
            await asyncio.wait_for(record.done.wait(), CANCEL_BOUND)
        except TimeoutError:
            raise Failed(f"the runner's model request was still open {CANCEL_BOUND:.0f} s after the gateway cancelled the call: "
                         "when a call is cancelled, abort its model request (in Go, make the HTTP request with the stream's "
                         "Context; in Java, cancel it from a Context.CancellationListener).") from None
        if record.finished:
            raise Failed("the model's slow answer was read to its end although the call was cancelled: abort the model request on cancellation.")
        await self._serving()
        closed = record.closed if record.closed is not None else time.monotonic()  # set with `done`
        return f"the model request closed {max(0.0, closed - cancelled_at):.2f} s after the call was cancelled"

    async def large_request(self) -> str:
        filler = "x" * LARGE_REQUEST_BYTES
        request = await self._as_gateway_sends(_prompt_request(pb.PROMPT_KIND_TEXT, TEXT_AST, extra={"conformanceFiller": filler}))
        try:
            events = await self._events(request)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise Failed(f"the runner refused a {request.ByteSize() / 2**20:.1f} MiB request (RESOURCE_EXHAUSTED): raise its gRPC "
                             f"receive limit to at least {RECEIVE_LIMIT_MIB} MiB (gRPC's default is 4 MiB; Go: grpc.MaxRecvMsgSize, "
                             "Java: maxInboundMessageSize, Node: grpc.max_receive_message_length).") from None
            raise
        check_prompt_stream(events, "text")
        return f"a {request.ByteSize() / 2**20:.1f} MiB request was answered"

    async def dataset_escape(self) -> str:
        # A file outside any data directory: if a runner returns its row, it read it.
        trap_dir = Path(tempfile.mkdtemp(prefix="agentmark-gw-conformance-"))
        try:
            trap = trap_dir / "outside.jsonl"
            trap.write_text(json.dumps({"input": {"question": f"outside-{uuid.uuid4().hex[:8]}"}, "expected_output": "4"}) + "\n")
            climb = "../" * 40 + str(trap).lstrip("/")  # enough `..` to reach / from any data directory
            paths = ["../../etc/passwd.jsonl", "/etc/passwd.jsonl", str(trap), climb]
            for path in paths:
                await self._refused(path)
        finally:
            shutil.rmtree(trap_dir, ignore_errors=True)
        return f"{len(paths)} paths outside the data directory refused"

    async def _refused(self, path: str) -> None:
        request = pb.RunExperimentRequest(
            kind=pb.PROMPT_KIND_TEXT, ast_json=json.dumps(TEXT_AST), experiment_id="conformance", dataset_path=path,
            concurrency=1, data_json=json.dumps({"datasetPath": path}),
        )
        shown = path if len(path) < 60 else path[:25] + "…" + path[-30:]
        errors, rows = 0, 0
        try:
            async for batch in self.stub.RunExperiment(request, timeout=self.timeout):
                for event in batch.events:
                    which = event.WhichOneof("event")
                    rows += which == "row"
                    errors += which == "error"
        except grpc.aio.AioRpcError as error:
            if error.code() in REFUSALS:
                return
            await self._items_only(error)
            raise
        if rows:
            raise Failed(f"datasetPath {shown!r} gave {rows} row(s): the runner read a file outside its data directory. Resolve "
                         "dataset paths inside the data directory and answer an error row for any that leaves it (.. or absolute).")
        if not errors:
            raise Failed(f"datasetPath {shown!r} got no answer: refuse a path outside the data directory with an error row.")

    async def _items_only(self, error: grpc.aio.AioRpcError) -> None:
        """Skipped, for a runner that asks for rendered prompts and leaves
        RunExperiment UNIMPLEMENTED: it runs dataset items only, and reads no
        dataset file (the gateway reads them, from its dataset source)."""
        if error.code() == grpc.StatusCode.UNIMPLEMENTED and await self._wants_rendered():
            raise Skipped("the runner runs dataset items only (RunExperiment is UNIMPLEMENTED): "
                          "its dataset runs need a dataset source on the gateway") from None

    async def dataset_item(self) -> str:
        if not await self._wants_rendered():
            raise Skipped("the runner does not ask for rendered prompts (Describe), so the gateway never calls RunDatasetItem")
        nonce = f"kit-{uuid.uuid4().hex[:12]}"
        item_input = {"question": f"What is 2+2? ({nonce})"}
        run_id, run_name = str(uuid.uuid4()), f"conformance-{nonce}"
        event = await self._send_item(0, item_input, "4", run_id, run_name)
        if event.WhichOneof("event") == "error":
            raise Failed(f"RunDatasetItem answered an error for a plain item: {event.error.message!r}. A runner that asks "
                         "for rendered prompts gets dataset runs item by item: call the model with the item's rendered prompt and answer its row.")
        if (event.row.run_id, event.row.run_name) != (run_id, run_name):
            raise Failed(f"the row's run_id/run_name are {event.row.run_id!r}/{event.row.run_name!r}: "
                         "copy the request's run_id and run_name into the row.")
        if json.loads(event.row.input_json or "null") != item_input:
            raise Failed("the row's input_json is not the item's input: copy the request's input_json into the row.")
        await self._model_request(nonce, "the dataset item")
        return "one row, of the request's run"

    # (id, name, method). The id is short, stable and comma-free, for `--check`;
    # the name is for people (and still accepted by `--check`).
    CHECKS: tuple[tuple[str, str, str], ...] = (
        ("health", "health", "health_check"),
        ("text-stream", "text prompt, streaming", "text_streaming"),
        ("text-envelope", "text prompt, not streaming", "text_not_streaming"),
        ("object", "object prompt", "object_prompt"),
        ("image", "image prompt", "image_prompt"),
        ("speech", "speech prompt", "speech_prompt"),
        ("dataset-run", "dataset run", "dataset_run"),
        ("get-evals", "get-evals", "get_evals"),
        ("alert", "alert", "alert"),
        ("cancel", "cancelled stream", "cancelled_stream"),
        ("deadlines", "deadlines", "deadlines"),
        ("malformed-ast", "malformed AST", "malformed_ast"),
    )

    # Checks that need the kit's model (--serve-model): they read what the runner sent it.
    MODEL_CHECKS: tuple[tuple[str, str, str], ...] = (
        ("rendered", "templates rendered as AgentMark renders them", "rendered_templates"),
        ("cancel-model", "cancellation stops the model request", "cancel_stops_model"),
        ("large-request", "5 MiB request", "large_request"),
        ("dataset-escape", "dataset path outside the data directory", "dataset_escape"),
        ("dataset-item", "RunDatasetItem", "dataset_item"),
    )

    async def run(self, only: set[str] | None = None) -> list[Result]:
        results = []
        for check_id, name, method in self.CHECKS + self.MODEL_CHECKS:
            chosen = not only or check_id in only or name in only
            if not chosen:
                continue
            if self.model is None and (check_id, name, method) in self.MODEL_CHECKS:
                if only:  # asked for by name: say why it cannot run
                    results.append(Result(name, False, "this check needs the kit's model: add --serve-model PORT", 0.0, check_id))
                continue
            results.append(await self._one(check_id, name, getattr(self, method)))
        return results

    async def _one(self, check_id: str, name: str, check: Callable[[], Awaitable[str]]) -> Result:
        started = time.perf_counter()
        try:
            reason = await asyncio.wait_for(check(), self.timeout + 10)
            passed = True
        except Failed as failure:
            passed, reason = False, str(failure)
        except Skipped as skipped:
            return Result(name, True, f"skipped: {skipped}", round(time.perf_counter() - started, 3), check_id, skipped=True)
        except grpc.aio.AioRpcError as error:
            passed, reason = False, f"gRPC {error.code().name}: {error.details()}"
        except TimeoutError:
            passed, reason = False, f"no answer within {self.timeout + 10:.0f} s"
        except Exception as error:  # noqa: BLE001 - an answer the kit cannot even read is a failure, not a crash
            passed, reason = False, f"unreadable answer: {type(error).__name__}: {error}"
        return Result(name, passed, reason, round(time.perf_counter() - started, 3), check_id)


CHECK_IDS = tuple(check_id for check_id, _, _ in Kit.CHECKS + Kit.MODEL_CHECKS)


def unknown_checks(names: set[str]) -> list[str]:
    """The `--check` values that name no check, by id or by name."""
    every = Kit.CHECKS + Kit.MODEL_CHECKS
    known = {check_id for check_id, _, _ in every} | {name for _, name, _ in every}
    return sorted(names - known)


async def _render(kind: pb.PromptKind, ast: dict[str, Any], props: dict[str, Any]) -> pb.RenderedPrompt:
    """The prompt as the gateway renders it for a runner that asked: its own
    rendering module, AgentMark's runtime underneath. Failed when it cannot."""
    from .gateway.errors import Refusal
    from .gateway.rendering import render

    try:
        return await render(_KIND_NAMES[kind], ast, props)
    except Refusal as refusal:
        raise Failed(refusal.message) from None


def _first_difference(expected: list[tuple[str, str]], sent: list[tuple[str, str]]) -> str:
    """Where the model's messages first differ from AgentMark's render, shortly."""
    if len(sent) != len(expected):
        got, want = ", ".join(r for r, _ in sent) or "none", ", ".join(r for r, _ in expected)
        return f"the model got {len(sent)} message(s) ({got}), AgentMark renders {len(expected)} ({want})"
    for index, ((want_role, want), (got_role, got)) in enumerate(zip(expected, sent, strict=True)):
        if want_role != got_role:
            return f"message {index + 1} has role {got_role!r}, AgentMark renders {want_role!r}"
        if want != got:
            return f"message {index + 1} ({want_role}) reached the model as {_clip(got)}, AgentMark renders {_clip(want)}"
    return "the messages differ"


def _clip(text: str, limit: int = 90) -> str:
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")



def report(results: list[Result], as_json: bool) -> str:
    if not results:
        return "no checks ran: --check names one of " + ", ".join(CHECK_IDS)
    if as_json:
        return json.dumps({"passed": all(r.passed for r in results), "checks": [asdict(r) for r in results]}, indent=2)
    width = max(len(r.check) for r in results)
    id_width = max(len("id"), *(len(r.id) for r in results))
    lines = [f"{'id':<{id_width}}  {'check':<{width}}  result  reason", f"{'-' * id_width}  {'-' * width}  ------  ------"]
    lines += [f"{r.id:<{id_width}}  {r.check:<{width}}  {'SKIP' if r.skipped else 'PASS' if r.passed else 'FAIL':<6}  {r.reason}" for r in results]
    failed = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    lines.append(f"\n{len(results) - failed - skipped} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return "\n".join(lines)


def model_note(port: int) -> str:
    """What the user must do for --serve-model: the runner's model is the kit's."""
    url = f"http://127.0.0.1:{port}/v1"
    return (f"the kit's model serves {url}: the runner under test must call it, so start the runner with "
            f"OPENAI_BASE_URL={url} (any OPENAI_API_KEY)")


async def run_kit(target: str, dataset: str = DATASET_NAME, timeout: float = CALL_TIMEOUT, only: set[str] | None = None,
                  serve_model: int | None = None) -> list[Result]:
    """Run the checks on the runner at `target`; with `serve_model`, serve the
    kit's model on that loopback port first and add the checks that need it."""
    if serve_model is None:
        return await _run(Kit(target, dataset, timeout), only)
    async with KitModel(serve_model) as model:
        return await _run(Kit(target, dataset, timeout, model), only)


async def _run(kit: Kit, only: set[str] | None) -> list[Result]:
    try:
        return await kit.run(only)
    finally:
        await kit.close()
