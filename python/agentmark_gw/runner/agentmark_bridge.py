"""AgentMark's own Python runtime, served as the gRPC `Runner`.

Give it the client from `create_agentmark` (its loader, its evals) and any
AgentMark `Executor`; everything AgentMark already does stays AgentMark's:
prompt rendering (templatedx), dataset loading and sampling
(`format_with_dataset`), eval scoring (the client's registry), the
concurrency pool and span hooks. This module only turns AgentMark's events
into the runner protocol's; item names are AgentMark's formula, computed by
the project's own core (`item_name`).

    client = create_agentmark(loader=FileLoader("."), scorers={"exact_match": exact_match})
    serve(AgentMarkRunner(client, OpenAIExecutor()), "127.0.0.1:50051")

Tracing: with `agentmark-sdk` installed and configured, its span hooks are
used (as AgentMark's `create_webhook_runner` does), so the trace id reaches
the platform and the gateway's `done` line; the W3C trace context the
gateway sends becomes the parent of those spans.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import yaml
from agentmark.prompt_core import AgentMark
from agentmark.prompt_core.executor import (
    ErrorEvent,
    ExecCtx,
    FinishEvent,
    ObjectDeltaEvent,
    ObjectFinalEvent,
    ReasoningDeltaEvent,
    TextDeltaEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from agentmark.prompt_core.experiment import run_dataset_pool
from agentmark.prompt_core.template_engines import get_front_matter
from agentmark.prompt_core.webhook_runner import ExperimentItemParams, PromptSpanParams
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._accel import dataset_item_name
from ..frontmatter import TooManyNodes, check_expansion
from ..protocol import runner_pb2 as pb
from . import events
from .helpers import normalize_error
from .service import AlertRequest, ExperimentRequest, PromptRequest, Runner

DEFAULT_CONCURRENCY = 4
# The longest string or list one template expression may make: `"ab" * N`
# allocates what N asks (an 872-byte request allocated about 100 MB), and
# `+` can double a value per step.
MAX_TEMPLATE_VALUE = 1024 * 1024


def _bound_template_values() -> None:
    """Make templatedx's `*` and `+` refuse, before allocating, a string or
    list longer than MAX_TEMPLATE_VALUE; the render then fails with a clear
    error ("cannot render the prompt: ..."). Applied once, when a runner is made."""
    from templatedx.expression import EvaluationError, ExpressionEvaluator

    evaluator: Any = ExpressionEvaluator
    if getattr(evaluator, "_agentmark_gw_bounded", False):
        return
    evaluate_binary = evaluator._evaluate_binary

    def _evaluate_binary(self: Any, node: Any) -> Any:
        if node.operator in ("*", "+"):
            left, right = self._evaluate_node(node.left), self._evaluate_node(node.right)
            length = _result_length(node.operator, left, right)
            if length > MAX_TEMPLATE_VALUE:
                raise EvaluationError(f"a template expression would make a value of {length} items (the limit is {MAX_TEMPLATE_VALUE})")
            return left * right if node.operator == "*" else left + right
        return evaluate_binary(self, node)

    evaluator._evaluate_binary = _evaluate_binary
    evaluator._agentmark_gw_bounded = True


def _result_length(operator: str, left: Any, right: Any) -> int:
    """How long `left OP right` would be, for strings and lists; 0 otherwise."""
    sequences = (str, list, tuple)
    if operator == "+":
        return len(left) + len(right) if isinstance(left, sequences) and isinstance(right, sequences) else 0
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, sequences) and isinstance(count, int) and not isinstance(count, bool):
            return len(sequence) * max(count, 0)
    return 0


class _RunFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _NoSpan:
    trace_id: str | None = None

    def set_attribute(self, key: str, value: str | int) -> None:
        pass


@asynccontextmanager
async def _no_span(_params: Any) -> AsyncIterator[_NoSpan]:
    yield _NoSpan()


class _SpanRecord:
    """What AgentMark's runner records on a prompt or item span: the rendered
    input, the model, the LLM classification, the output and the usage. The
    platform's trace views read these. Uses prompt-core's own helpers (the
    format is theirs); without them, spans simply carry fewer attributes."""

    def __init__(self, span: Any) -> None:
        self.span = span

    def start(self, formatted: Any, ast: Any) -> None:
        with contextlib.suppress(Exception):
            from agentmark.prompt_core import webhook_runner as reference

            reference._set_span_input(self.span, formatted)
            reference._set_span_model(self.span, ast)
            reference._classify_span_as_llm(self.span)

    def finish(self, output: Any, usage: Any) -> None:
        with contextlib.suppress(Exception):
            from agentmark.prompt_core import webhook_runner as reference

            if output is not None and output != "":
                text = output if isinstance(output, str) else json.dumps(output, default=str)
                self.span.set_attribute("agentmark.output", text)
            reference._set_span_usage(self.span, usage)


def _agentmark_sdk_hooks() -> tuple[Any, Any]:
    """AgentMark's own span hooks when `agentmark-sdk` is installed."""
    with contextlib.suppress(ImportError):
        from agentmark_sdk import create_agentmark_span_hooks

        hooks = create_agentmark_span_hooks()
        return hooks["prompt_span_hook"], hooks["item_span_hook"]
    return None, None


@contextlib.contextmanager
def _parent_trace(carrier: dict[str, str]) -> Iterator[None]:
    """Make the caller's W3C trace context current, so new spans are its children."""
    if not carrier:
        yield
        return
    token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def _trace_id(span: Any) -> str:
    """The span's trace id; "" when there is none (tracing not configured
    gives OpenTelemetry's all-zero id, which names no trace)."""
    trace_id = getattr(span, "trace_id", None) or ""
    return trace_id if trace_id.strip("0") else ""


def _plain(value: Any) -> Any:
    """Executors may yield Pydantic models as object values."""
    return value.model_dump() if hasattr(value, "model_dump") else value


def to_runner_event(event: Any) -> pb.RunnerEvent | None:
    """One AgentMark event as a runner event (None for an unknown type)."""
    if isinstance(event, TextDeltaEvent):
        return events.text_delta(event.text)
    if isinstance(event, ReasoningDeltaEvent):
        return events.reasoning_delta(event.text)
    if isinstance(event, ToolCallEvent):
        return events.tool_call(event.id, event.name, event.args)
    if isinstance(event, ToolResultEvent):
        return events.tool_result(event.id, event.name, event.result, is_error=event.is_error)
    if isinstance(event, ObjectDeltaEvent):
        return events.object_delta(_plain(event.partial))
    if isinstance(event, ObjectFinalEvent):
        return events.object_final(_plain(event.value))
    if isinstance(event, FinishEvent):
        usage = event.usage
        if usage is None:
            return events.finish(event.reason)
        return events.finish(event.reason, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, total_tokens=usage.total_tokens)
    if isinstance(event, ErrorEvent):
        return events.error(event.error)
    return None


class AgentMarkRunner(Runner):
    def __init__(
        self,
        client: AgentMark,
        executor: Any,
        *,
        prompt_span_hook: Any = None,
        item_span_hook: Any = None,
        default_concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        _bound_template_values()
        if prompt_span_hook is None and item_span_hook is None:
            prompt_span_hook, item_span_hook = _agentmark_sdk_hooks()
        self.client = client
        self.executor = executor
        self._prompt_span = prompt_span_hook or _no_span
        self._item_span = item_span_hook or _no_span
        self._default_concurrency = default_concurrency
        # AgentMark's FileLoader names dataset files by absolute path in its
        # errors (a bad line, an empty file); callers see them relative to it.
        data_dir = getattr(getattr(client, "_loader", None), "_build_dir", None)
        self._data_dir = str(data_dir) if data_dir else None

    def _public(self, message: str) -> str:
        """`message` without the runner's data directory in it."""
        if self._data_dir:
            message = message.replace(self._data_dir + os.sep, "").replace(self._data_dir, "<data-dir>")
        return message

    async def get_evals(self) -> Sequence[str]:
        return self.client.get_eval_names()

    async def handle_alert(self, alert: AlertRequest) -> str:
        handler = getattr(self.executor, "handle_alert", None)
        if handler is None:
            return await super().handle_alert(alert)
        result = handler(alert)
        return str(await result if inspect.isawaitable(result) else result)

    async def _load(self, kind: str, ast: dict[str, Any]) -> Any:
        load = {
            "text": self.client.load_text_prompt,
            "object": self.client.load_object_prompt,
            "image": self.client.load_image_prompt,
            "speech": self.client.load_speech_prompt,
        }[kind]
        return await load(ast)

    # -- prompt runs --------------------------------------------------------------

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        refused = _frontmatter_refused(request.ast)
        if refused:
            yield events.error(refused)
            return
        frontmatter = get_front_matter(request.ast)
        name = frontmatter.get("name") if isinstance(frontmatter, dict) else None
        capabilities = self.executor.capabilities()
        if not getattr(capabilities, request.kind, False):
            yield events.error(f"Executor '{self.executor.name}' does not support {request.kind} prompts.")
            return
        params = PromptSpanParams(
            name=name or "prompt-run", prompt_name=name, commit_sha=_commit_sha(frontmatter), prompt_path=request.prompt_path or None
        )
        with _parent_trace(request.trace_context):
            run = self._run_in_span(request, params, name)
            try:
                async for event in run:
                    yield event
            except _RunFailed as failure:
                # Raised inside the span so it ends as failed (span-io.json: a
                # non-streaming run that errs raises); the client still gets the error.
                yield events.error(failure.message)
            finally:
                # Closed here, in this task: the span and trace context exit where they entered.
                await run.aclose()

    async def _run_in_span(self, request: PromptRequest, params: PromptSpanParams, name: str | None) -> AsyncGenerator[pb.RunnerEvent, None]:
        async with self._prompt_span(params) as span:
            trace_id = _trace_id(span)
            yield events.started(trace_id)
            try:
                prompt = await self._load(request.kind, request.ast)
                props = request.props
                formatted = await prompt.format(props=props) if props else await prompt.format_with_test_props()
            except Exception as exc:  # noqa: BLE001 - AgentMark's renderer raises plain errors
                yield events.error(f"cannot render the prompt: {normalize_error(exc)}")
                return
            ctx = ExecCtx(
                telemetry=request.data.get("telemetry"),
                trace_id=trace_id or None,
                prompt_name=name,
                should_stream=request.should_stream,
                extra={"span": span},
            )
            record = _SpanRecord(span)
            record.start(formatted, request.ast)
            if request.kind in ("text", "object"):
                execute = self.executor.execute_text if request.kind == "text" else self.executor.execute_object
                text, value, usage = "", None, None
                async for event in execute(formatted, ctx):
                    if isinstance(event, ErrorEvent) and not request.should_stream:
                        raise _RunFailed(event.error)  # no output recorded: there is none
                    text, value, usage = _accumulate(event, text, value, usage)
                    if isinstance(event, FinishEvent | ErrorEvent):
                        # Recorded before the last event goes out: the span must
                        # hold the output (partial, for a streamed error) by then.
                        record.finish(text if request.kind == "text" else value, usage)
                    converted = to_runner_event(event)
                    if converted is not None:
                        yield converted
                    if isinstance(event, FinishEvent | ErrorEvent):
                        return
                record.finish(text if request.kind == "text" else value, usage)
                return
            try:
                if request.kind == "image":
                    answer = await self.executor.execute_image(formatted, ctx)
                    yield events.image((i["mimeType"], i["base64"]) for i in answer.get("result", []))
                else:
                    answer = await self.executor.execute_speech(formatted, ctx)
                    result = answer.get("result", {})
                    yield events.speech(result.get("mimeType", ""), result.get("base64", ""), result.get("format", ""))
            except Exception as exc:  # noqa: BLE001 - the provider's message, as an error event
                yield events.error(normalize_error(exc))
                return
            yield events.finish("stop")

    # -- dataset runs ------------------------------------------------------------

    async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
        refused = _frontmatter_refused(request.ast)
        if refused:
            yield events.row_error(refused)
            return
        frontmatter = get_front_matter(request.ast)
        name = frontmatter.get("name") if isinstance(frontmatter, dict) else None
        run_id = str(uuid.uuid4())
        run_name = request.experiment_id
        if request.kind not in ("text", "object"):
            yield events.row_error(f"dataset runs support text and object prompts, not {request.kind}")
            return
        commit_sha = request.commit_sha or _commit_sha(frontmatter)
        try:
            prompt = await self._load(request.kind, request.ast)
            options: dict[str, Any] = {"dataset_path": request.dataset_path or None}
            if request.sampling is not None:
                options["sampling"] = request.sampling
            dataset = await prompt.format_with_dataset(**options)
        except Exception as exc:  # noqa: BLE001 - a missing or refused dataset is one clear error row
            yield events.row_error(f"cannot load the dataset: {self._public(normalize_error(exc))}")
            return
        dataset_path = request.dataset_path or (frontmatter.get("test_settings") or {}).get("dataset")
        registry = self.client.get_eval_registry() or {}
        execute = self.executor.execute_text if request.kind == "text" else self.executor.execute_object

        async def process(item: dict[str, Any], index: int) -> pb.ExperimentEvent:
            if item.get("type") == "error" or "formatted" not in item:
                return events.row_error(self._public(str(item.get("error") or "the dataset item could not be formatted")))
            try:
                return await self._run_item(item, index, execute, registry, run_id, run_name, name, dataset_path, commit_sha, request)
            except Exception as exc:  # noqa: BLE001 - the pool's policy: an error row, and the run goes on
                return events.row_error(self._public(normalize_error(exc)))

        with _parent_trace(request.trace_context):
            concurrency = request.concurrency or self._default_concurrency
            # The pool is typed for NDJSON strings but passes on whatever `process` returns.
            try:
                async for row in run_dataset_pool(dataset.get_reader(), process, concurrency):  # type: ignore[arg-type]
                    yield row  # type: ignore[misc]
            except Exception as exc:  # noqa: BLE001 - the reader failed mid-way (a bad line, an empty file)
                yield events.row_error(f"cannot read the dataset: {self._public(normalize_error(exc))}")

    async def _run_item(
        self,
        item: dict[str, Any],
        index: int,
        execute: Any,
        registry: Any,
        run_id: str,
        run_name: str,
        prompt_name: str | None,
        dataset_path: str | None,
        commit_sha: str | None,
        request: ExperimentRequest,
    ) -> pb.ExperimentEvent:
        dataset = item.get("dataset") or {}
        input_data, expected = dataset.get("input"), dataset.get("expected_output")
        params = ExperimentItemParams(
            index=index,
            experiment_run_id=run_id,
            dataset_run_name=run_name,
            prompt_name=prompt_name,
            dataset_path=dataset_path,
            dataset_item_name=item_name(input_data, index),
            dataset_input=input_data,
            dataset_expected_output=expected,
            commit_sha=commit_sha,
            prompt_path=request.prompt_path or None,
        )
        formatted = item["formatted"]
        async with self._item_span(params) as span:
            ctx = ExecCtx(
                telemetry={"isEnabled": True}, trace_id=_trace_id(span) or None, prompt_name=prompt_name,
                should_stream=False, extra={"span": span},
            )
            record = _SpanRecord(span)
            record.start(formatted, request.ast)
            text, value, usage = "", None, None
            async for event in execute(formatted, ctx):
                if isinstance(event, ErrorEvent):
                    raise RuntimeError(event.error)  # marks the item's span as failed
                text, value, usage = _accumulate(event, text, value, usage)
            output = text if request.kind == "text" else value
            record.finish(output, usage)
            trace_id = _trace_id(span)
        evals = []
        for eval_name in item.get("evals") or []:
            scorer = registry.get(eval_name) if hasattr(registry, "get") else None
            if scorer is None:
                continue
            # As AgentMark's runner does: the eval's input is the rendered prompt.
            eval_input = getattr(formatted, "messages", None) or getattr(formatted, "_raw_messages", None) or getattr(formatted, "user_prompt", None)
            result = scorer({"input": eval_input, "output": output, "expectedOutput": expected})
            result = await result if inspect.isawaitable(result) else result
            evals.append({"name": eval_name, **(result or {})})
        tokens = None
        if usage is not None:
            tokens = usage.total_tokens if usage.total_tokens is not None else usage.input_tokens + usage.output_tokens
        return events.dataset_row(
            input=input_data,
            expected_output=expected,
            actual_output=output,
            tokens=tokens,
            evals=evals,
            trace_id=trace_id,
            run_id=run_id,
            run_name=run_name,
        )


def item_name(dataset_input: Any, index: int) -> str:
    """AgentMark's name for a dataset item (its dataset-item-name vector): the
    first 12 hex digits of the MD5 of the input's sorted, compact JSON; the
    index when the input is empty. By the project's own core rather than
    AgentMark's private helper, so that an upstream rename cannot break
    importing the runner SDK. Like AgentMark's, a value JSON cannot hold is
    written with `str`, and an input that cannot be named (not JSON: NaN;
    nested more than 128 deep; a cycle) is named by its index."""
    try:
        return dataset_item_name(json.dumps(dataset_input, default=str), index)
    except (TypeError, ValueError, RecursionError):
        return str(index)


def _accumulate(event: Any, text: str, value: Any, usage: Any) -> tuple[str, Any, Any]:
    """The answer so far: text, the latest object value, the usage."""
    if isinstance(event, TextDeltaEvent):
        text += event.text
    elif isinstance(event, ObjectFinalEvent):
        value = _plain(event.value)
    elif isinstance(event, ObjectDeltaEvent):
        value = _plain(event.partial)
    elif isinstance(event, FinishEvent):
        usage = event.usage
    return text, value, usage


def _frontmatter_refused(ast: dict[str, Any]) -> str | None:
    """Why the AST's frontmatter must not reach AgentMark's parser (an alias
    bomb), or None. Its syntax errors are left for AgentMark to report."""
    for child in ast.get("children") or ():
        if isinstance(child, dict) and child.get("type") == "yaml" and isinstance(child.get("value"), str):
            try:
                check_expansion(child["value"])
            except TooManyNodes as exc:
                return f"cannot render the prompt: the frontmatter has {exc}"
            except yaml.YAMLError:
                return None
            return None
    return None


def _commit_sha(frontmatter: Any) -> str | None:
    meta = frontmatter.get("agentmark_meta") if isinstance(frontmatter, dict) else None
    sha = meta.get("commit_sha") if isinstance(meta, dict) else None
    return sha if isinstance(sha, str) and sha else None


__all__ = ["AgentMarkRunner", "to_runner_event"]
