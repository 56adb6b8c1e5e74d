"""The runner SDK: subclass `Runner`, yield events, `serve(...)` it.

A runner's methods are async generators of the events in `.events`. The
servicer here turns them into the gRPC `Runner` service and batches them:
the runner's generator fills a queue, and each gRPC message carries the
first event that arrives plus whatever else is already queued. Latency never
waits for a batch to fill; throughput rises when events come in bursts.

Never imports the gateway: a runner service needs only this package's
`runner` and `protocol` modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import grpc
from google.protobuf.message import Message

from ..protocol import runner_pb2 as pb
from ..protocol import runner_pb2_grpc
from . import events
from .helpers import normalize_error

log = logging.getLogger("agentmark_gw.runner")

KINDS = {pb.PROMPT_KIND_TEXT: "text", pb.PROMPT_KIND_OBJECT: "object", pb.PROMPT_KIND_IMAGE: "image", pb.PROMPT_KIND_SPEECH: "speech"}


@dataclass(frozen=True)
class PromptRequest:
    """One prompt run, with its JSON fields parsed."""

    kind: str
    ast: dict[str, Any]
    props: dict[str, Any]
    should_stream: bool
    prompt_path: str
    data_json: str = ""
    # The caller's W3C trace context (`traceparent`, `tracestate`), from gRPC
    # metadata: make it the parent of the runner's spans.
    trace_context: dict[str, str] = field(default_factory=dict)
    # Seconds left before the gateway's deadline for this run (None: no deadline).
    time_remaining: float | None = None
    # The prompt as AgentMark's runtime rendered it, for a runner whose
    # `wants_rendered_prompts` is true (None otherwise).
    rendered: pb.RenderedPrompt | None = None

    @cached_property
    def data(self) -> dict[str, Any]:
        """The whole event `data` object. Parsed on first use: it repeats the
        AST (unless the runner asked for rendered prompts), and most runners never look."""
        return _object(self.data_json, "data_json")


@dataclass(frozen=True)
class ExperimentRequest:
    kind: str
    ast: dict[str, Any]
    experiment_id: str
    dataset_path: str
    concurrency: int
    prompt_path: str
    commit_sha: str
    sampling: Any
    data_json: str = ""
    trace_context: dict[str, str] = field(default_factory=dict)
    time_remaining: float | None = None

    @cached_property
    def data(self) -> dict[str, Any]:
        return _object(self.data_json, "data_json")


@dataclass(frozen=True)
class DatasetItem:
    """One dataset item the gateway read, sampled and rendered, for a runner
    whose `wants_rendered_prompts` is true: call the model with `rendered`,
    score `eval_names`, answer its row (`events.dataset_row`, with `run_id`
    and `run_name` as given) or an `events.row_error`."""

    kind: str
    index: int
    input: Any
    expected_output: Any  # None when the row has none
    rendered: pb.RenderedPrompt
    eval_names: list[str]
    run_id: str
    run_name: str
    dataset_path: str
    item_name: str
    prompt_name: str
    prompt_path: str
    commit_sha: str
    trace_context: dict[str, str] = field(default_factory=dict)
    time_remaining: float | None = None


@dataclass(frozen=True)
class AlertRequest:
    id: str
    type: str
    status: str
    data: dict[str, Any]


class Runner:
    """Base class for runners. Override what you support.

    Set `wants_rendered_prompts` to have the gateway render each prompt with
    AgentMark's own engine and send it as `request.rendered`; by default a
    runner renders the AST itself (AgentMark's runtime does, in
    `AgentMarkRunner`)."""

    wants_rendered_prompts: bool = False

    async def describe(self) -> pb.RunnerInfo:
        """What the gateway learns of this runner when it becomes healthy."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            sdk_version = version("agentmark-gw")
        except PackageNotFoundError:
            sdk_version = ""
        return pb.RunnerInfo(
            rendered_prompts=self.wants_rendered_prompts, name=type(self).__name__, version=sdk_version,
            eval_names=list(await self.get_evals()),
        )

    # An exception from the runner's own code reaches the gateway, and from
    # there HTTP clients, as its type only ("runner error: KeyError (the
    # runner's log has the details)"); its text, which can hold paths, keys
    # or data, is logged. True sends the text too (handy while developing).
    expose_errors: bool = False

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        yield events.error(f"{type(self).__name__} does not run prompts")

    async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
        yield events.row_error(f"{type(self).__name__} does not run dataset experiments")

    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        """One item of a dataset run the gateway reads itself (only for a
        runner with `wants_rendered_prompts`); its row or its error."""
        return events.row_error(f"{type(self).__name__} does not run dataset items")

    async def get_evals(self) -> Sequence[str]:
        return []

    async def handle_alert(self, alert: AlertRequest) -> str:
        log.info("alert %.64r: %s %s", alert.id, alert.type, alert.status)  # its id cut: it is the caller's text
        return "logged"


class InvalidRequest(ValueError):
    pass


def _parse(text: str, field_name: str, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidRequest(f"{field_name} is not valid JSON") from None


def _object(text: str, field_name: str) -> dict[str, Any]:
    value = _parse(text, field_name, {})
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field_name} must be a JSON object")
    return value


TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")
# The most workers one dataset run gets, whatever the request asks: runners
# (AgentMark's pool among them) start that many at once, and a caller could
# ask for 2^32 - 1. The gateway lowers it further (`max_dataset_concurrency`).
MAX_CONCURRENCY = 256


def _call_details(context: grpc.aio.ServicerContext | None) -> dict[str, Any]:
    """What the call itself carries: the trace context and the deadline."""
    if context is None:
        return {}
    metadata = context.invocation_metadata() or ()
    return {
        "trace_context": {k: v for k, v in metadata if k in TRACE_CONTEXT_KEYS and isinstance(v, str)},
        "time_remaining": context.time_remaining(),
    }


def prompt_request(message: pb.RunPromptRequest, context: grpc.aio.ServicerContext | None = None) -> PromptRequest:
    if message.kind not in KINDS:
        raise InvalidRequest("kind is not set")
    return PromptRequest(
        kind=KINDS[message.kind],
        ast=_object(message.ast_json, "ast_json"),
        props=_object(message.custom_props_json, "custom_props_json"),
        should_stream=message.should_stream,
        prompt_path=message.prompt_path,
        data_json=message.data_json,
        rendered=message.rendered if message.HasField("rendered") else None,
        **_call_details(context),
    )


def experiment_request(message: pb.RunExperimentRequest, context: grpc.aio.ServicerContext | None = None) -> ExperimentRequest:
    if message.kind not in KINDS:
        raise InvalidRequest("kind is not set")
    return ExperimentRequest(
        kind=KINDS[message.kind],
        ast=_object(message.ast_json, "ast_json"),
        experiment_id=message.experiment_id or "experiment",
        dataset_path=message.dataset_path,
        concurrency=min(message.concurrency, MAX_CONCURRENCY),
        prompt_path=message.prompt_path,
        commit_sha=message.commit_sha,
        sampling=_parse(message.sampling_json, "sampling_json", None),
        data_json=message.data_json,
        **_call_details(context),
    )


def dataset_item(message: pb.DatasetItemRequest, context: grpc.aio.ServicerContext | None = None) -> DatasetItem:
    if message.kind not in KINDS:
        raise InvalidRequest("kind is not set")
    return DatasetItem(
        kind=KINDS[message.kind],
        index=message.index,
        input=_parse(message.input_json, "input_json", None),
        expected_output=_parse(message.expected_output_json, "expected_output_json", None),
        rendered=message.rendered,
        eval_names=list(message.eval_names),
        run_id=message.run_id,
        run_name=message.run_name,
        dataset_path=message.dataset_path,
        item_name=message.item_name,
        prompt_name=message.prompt_name,
        prompt_path=message.prompt_path,
        commit_sha=message.commit_sha,
        **_call_details(context),
    )


_END: Any = object()

# Back-pressure and message size: a runner that produces faster than the
# client reads waits once this many events are queued, and one gRPC message
# carries at most this many events or bytes (well under gRPC's size limits).
QUEUE_EVENTS = 1024
BATCH_EVENTS = 512
BATCH_BYTES = 1024 * 1024


async def batched[E: Message, B](
    source: AsyncIterator[E],
    make_batch: Callable[[list[E]], B],
    on_error: Callable[[Exception], E],
    *,
    terminal: Callable[[E], bool] = lambda _: False,
) -> AsyncIterator[B]:
    """Batches of whatever `source` has produced by the time the previous
    batch went out. An exception in `source` becomes its `on_error` event."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_EVENTS)

    async def produce() -> None:
        try:
            async for event in source:
                await queue.put(event)
                if terminal(event):
                    break  # nothing may follow a terminal event
        except Exception as exc:  # noqa: BLE001 - a runner bug becomes an error event
            log.exception("runner raised while producing events")
            await queue.put(on_error(exc))
        finally:
            # Close the runner's generator here, in the task that ran it, so its
            # context managers (spans, trace contexts) exit where they entered.
            close = getattr(source, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
        # Not reached when cancelled: then no one reads the queue any more.
        await queue.put(_END)

    producer = asyncio.create_task(produce())
    pending: Any = None
    try:
        while True:
            batch = [pending if pending is not None else await queue.get()]
            pending = None
            size = 0 if batch[0] is _END else batch[0].ByteSize()
            while batch[-1] is not _END and len(batch) < BATCH_EVENTS and not queue.empty():
                event = queue.get_nowait()
                if event is not _END:
                    size += event.ByteSize()
                    if size > BATCH_BYTES:
                        pending = event  # starts the next batch
                        break
                batch.append(event)
            done = batch[-1] is _END
            items = [e for e in batch if e is not _END]
            if items:
                yield make_batch(items)
            if done:
                return
    finally:
        # Stop the runner (the client left, or the run ended); its generator
        # is closed inside the producer task, model streams included.
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


def _prompt_terminal(event: pb.RunnerEvent) -> bool:
    return event.WhichOneof("event") in ("finish", "error")


class RunnerServicer(runner_pb2_grpc.RunnerServicer):
    """Adapts a `Runner` to the generated gRPC service."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def _failure(self, exc: Exception) -> str:
        """What a caller is told of an exception raised by the runner's code."""
        if getattr(self._runner, "expose_errors", False):
            return f"runner error: {normalize_error(exc)}"
        return f"runner error: {type(exc).__name__} (the runner's log has the details)"

    async def RunPrompt(self, request: pb.RunPromptRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RunnerEvents]:  # noqa: N802
        try:
            parsed = prompt_request(request, context)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async for batch in batched(
            self._runner.run_prompt(parsed),
            lambda items: pb.RunnerEvents(events=items),
            lambda exc: events.error(self._failure(exc)),
            terminal=_prompt_terminal,
        ):
            yield batch

    async def RunExperiment(self, request: pb.RunExperimentRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExperimentEvents]:  # noqa: N802
        try:
            parsed = experiment_request(request, context)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async for batch in batched(
            self._runner.run_experiment(parsed),
            lambda items: pb.ExperimentEvents(events=items),
            lambda exc: events.row_error(self._failure(exc)),
        ):
            yield batch

    async def RunDatasetItem(self, request: pb.DatasetItemRequest, context: grpc.aio.ServicerContext) -> pb.ExperimentEvents:  # noqa: N802
        try:
            item = dataset_item(request, context)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            answer = await self._runner.run_dataset_item(item)
        except Exception as exc:  # noqa: BLE001 - the item's error row; the run goes on
            log.exception("run_dataset_item failed")
            answer = events.row_error(self._failure(exc))
        return pb.ExperimentEvents(events=[answer])

    async def GetEvals(self, request: pb.GetEvalsRequest, context: grpc.aio.ServicerContext) -> pb.GetEvalsResponse:  # noqa: N802
        try:
            return pb.GetEvalsResponse(names=list(await self._runner.get_evals()))
        except Exception as exc:  # noqa: BLE001 - a clear status, not gRPC's "Unexpected <class>"
            log.exception("get_evals failed")
            await context.abort(grpc.StatusCode.INTERNAL, self._failure(exc))
            raise  # unreachable: abort raises

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.RunnerInfo:  # noqa: N802
        try:
            return await self._runner.describe()
        except Exception as exc:  # noqa: BLE001
            log.exception("describe failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"runner error: {normalize_error(exc)}")
            raise

    async def HandleAlert(self, request: pb.AlertRequest, context: grpc.aio.ServicerContext) -> pb.AlertResponse:  # noqa: N802
        try:
            alert = AlertRequest(request.id, request.type, request.status, _object(request.data_json, "data_json"))
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            return pb.AlertResponse(message=await self._runner.handle_alert(alert))
        except Exception as exc:  # noqa: BLE001
            log.exception("handle_alert failed")
            await context.abort(grpc.StatusCode.INTERNAL, self._failure(exc))
            raise
