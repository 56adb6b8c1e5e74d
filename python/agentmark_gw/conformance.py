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
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .protocol import runner_pb2 as pb
from .protocol import runner_pb2_grpc

DATASET_NAME = "agentmark-gw-conformance.jsonl"
DATASET_ROWS = [
    {"input": {"question": "What is 2+2?"}, "expected_output": "4"},
    {"input": {"question": "What is the capital of France?"}, "expected_output": "Paris"},
    {"input": {"question": "Name a primary colour."}, "expected_output": "red"},
]
SERVICE = "agentmark.runner.v1.Runner"
CALL_TIMEOUT = 60.0


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


@dataclass
class Result:
    check: str
    passed: bool
    reason: str
    seconds: float
    id: str = ""  # the check's short id, as `--check` takes it


class Failed(Exception):
    """A contract violation; the message says which."""


def _prompt_request(kind: pb.PromptKind, ast: Any, *, stream: bool = True, props: dict[str, Any] | None = None) -> pb.RunPromptRequest:
    ast_json = ast if isinstance(ast, str) else json.dumps(ast)
    props_json = json.dumps(props if props is not None else QUESTION)
    data = {"ast": ast if not isinstance(ast, str) else None, "customProps": props, "conformance": True}
    return pb.RunPromptRequest(kind=kind, ast_json=ast_json, custom_props_json=props_json, should_stream=stream, prompt_path="conformance.prompt.mdx", data_json=json.dumps(data))


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
        # An empty `_json` field means "absent"; anything else must be JSON.
        if name == "tool_call":
            calls.add(event.tool_call.id)
            if event.tool_call.args_json:
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
    def __init__(self, target: str, dataset: str = DATASET_NAME, timeout: float = CALL_TIMEOUT) -> None:
        self.target = target
        self.dataset = dataset
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(target)
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
        from .gateway import rendering
        from .gateway.errors import Refusal

        try:
            rendered = await rendering.render(_KIND_NAMES[request.kind], json.loads(request.ast_json), json.loads(request.custom_props_json or "{}"))
        except (ValueError, Refusal):
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
        from .gateway import rendering

        run_id = str(uuid.uuid4())

        async def item(index: int, row: dict[str, Any]) -> pb.ExperimentEvent:
            request = pb.DatasetItemRequest(
                kind=pb.PROMPT_KIND_TEXT, index=index, input_json=json.dumps(row["input"]),
                expected_output_json=json.dumps(row["expected_output"]), rendered=await rendering.render("text", TEXT_AST, row["input"]),
                run_id=run_id, run_name="conformance", dataset_path=DATASET_NAME, prompt_name="conformance-text",
            )
            answer = await self.stub.RunDatasetItem(request, timeout=self.timeout)
            if len(answer.events) != 1 or answer.events[0].WhichOneof("event") not in ("row", "error"):
                raise Failed(f"RunDatasetItem must answer exactly one row or error event, got {[e.WhichOneof('event') for e in answer.events]}")
            return answer.events[0]

        try:
            # The kit's three rows in flight at once, as a gateway keeps a run's items.
            return list(await asyncio.gather(*(item(i, row) for i, row in enumerate(DATASET_ROWS))))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise Failed("RunDatasetItem is UNIMPLEMENTED: a runner that asks for rendered prompts gets dataset runs as items "
                             "from a gateway with a dataset source (datasets_dir); implement it") from None
            raise

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

    async def run(self, only: set[str] | None = None) -> list[Result]:
        results = []
        for check_id, name, method in self.CHECKS:
            if only and check_id not in only and name not in only:
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
        except grpc.aio.AioRpcError as error:
            passed, reason = False, f"gRPC {error.code().name}: {error.details()}"
        except TimeoutError:
            passed, reason = False, f"no answer within {self.timeout + 10:.0f} s"
        except Exception as error:  # noqa: BLE001 - an answer the kit cannot even read is a failure, not a crash
            passed, reason = False, f"unreadable answer: {type(error).__name__}: {error}"
        return Result(name, passed, reason, round(time.perf_counter() - started, 3), check_id)


CHECK_IDS = tuple(check_id for check_id, _, _ in Kit.CHECKS)


def unknown_checks(names: set[str]) -> list[str]:
    """The `--check` values that name no check, by id or by name."""
    known = {check_id for check_id, _, _ in Kit.CHECKS} | {name for _, name, _ in Kit.CHECKS}
    return sorted(names - known)


def report(results: list[Result], as_json: bool) -> str:
    if not results:
        return "no checks ran: --check names one of " + ", ".join(CHECK_IDS)
    if as_json:
        return json.dumps({"passed": all(r.passed for r in results), "checks": [asdict(r) for r in results]}, indent=2)
    width = max(len(r.check) for r in results)
    id_width = max(len("id"), *(len(r.id) for r in results))
    lines = [f"{'id':<{id_width}}  {'check':<{width}}  result  reason", f"{'-' * id_width}  {'-' * width}  ------  ------"]
    lines += [f"{r.id:<{id_width}}  {r.check:<{width}}  {'PASS' if r.passed else 'FAIL':<6}  {r.reason}" for r in results]
    failed = sum(not r.passed for r in results)
    lines.append(f"\n{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


async def run_kit(target: str, dataset: str = DATASET_NAME, timeout: float = CALL_TIMEOUT, only: set[str] | None = None) -> list[Result]:
    kit = Kit(target, dataset, timeout)
    try:
        return await kit.run(only)
    finally:
        await kit.close()
