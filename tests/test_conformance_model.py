"""The kit with its model in the loop (`--serve-model`): runners that do it
right pass, and runners with the classic faults fail the check that names
the fault, saying what to fix.

Every runner here is real: the reference runner (AgentMark's runtime and the
OpenAI executor), or a grpc.aio servicer written below whose model calls go
through the real `openai` client to the kit's model on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmark_gw import conformance
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.protocol import runner_pb2_grpc
from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, Runner, events, start
from agentmark_gw.runner.server import SERVER_OPTIONS
from agentmark_gw.runner.service import DatasetItem

from .conftest import RUST_RUNNER_TARGET, free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MODEL_CHECKS = {check_id for check_id, _, _ in conformance.Kit.MODEL_CHECKS}


def model_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


async def kit(target: str, port: int, only: set[str]) -> dict[str, conformance.Result]:
    results = await conformance.run_kit(target, timeout=10, only=only, serve_model=port)
    return {r.id: r for r in results}


# --- runners done right ------------------------------------------------------------


async def test_the_reference_runner_passes_with_the_model_in_the_loop(tmp_path: Path) -> None:
    from agentmark.prompt_core import FileLoader, create_agentmark

    port = free_port()
    conformance.write_dataset(tmp_path)
    model = openai.AsyncOpenAI(api_key="k", base_url=model_url(port), max_retries=0)
    server, runner_port = await start(AgentMarkRunner(create_agentmark(loader=FileLoader(str(tmp_path))), OpenAIExecutor(model)), "127.0.0.1:0")
    try:
        results = await conformance.run_kit(f"127.0.0.1:{runner_port}", timeout=20, serve_model=port)
    finally:
        await server.stop(0)
        await model.close()
    assert [r.id for r in results] == list(conformance.CHECK_IDS)
    assert [f"{r.id}: {r.reason}" for r in results if not r.passed] == []
    # The reference runner renders for itself, so the gateway never sends it items.
    assert [r.id for r in results if r.skipped] == ["dataset-item"]
    assert results[-5].reason.endswith("(the runner's own rendering)")


class ThinRunner(runner_pb2_grpc.RunnerServicer):
    """A runner with no template code, as one would write it in any language:
    it asks for rendered prompts, sends their messages to the model as they
    are, and keeps its datasets inside its data directory."""

    rendered_prompts = True

    def __init__(self, model_port: int, data_dir: Path) -> None:
        self.model = openai.AsyncOpenAI(api_key="k", base_url=model_url(model_port), max_retries=0)
        self.data_dir = data_dir.resolve()
        self.background: set[asyncio.Task[Any]] = set()

    async def close(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.model.close()

    async def Describe(self, request: pb.DescribeRequest, context: Any) -> pb.RunnerInfo:  # noqa: N802
        return pb.RunnerInfo(rendered_prompts=self.rendered_prompts, name=type(self).__name__, version="0")

    def messages(self, request: pb.RunPromptRequest) -> list[dict[str, str]]:
        return [{"role": m.role, "content": "".join(p.text for p in m.content)} for m in request.rendered.messages]

    async def ask(self, model: str, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        stream = await self.model.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[call-overload]
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield choice.delta.content

    async def RunPrompt(self, request: pb.RunPromptRequest, context: Any) -> AsyncIterator[pb.RunnerEvents]:  # noqa: N802
        # Cancelling the call cancels this coroutine, and with it the model stream.
        async for text in self.ask(request.rendered.model_name, self.messages(request)):
            yield pb.RunnerEvents(events=[events.text_delta(text)])
        yield pb.RunnerEvents(events=[events.finish("stop")])

    def dataset_file(self, dataset_path: str) -> Path | None:
        path = (self.data_dir / dataset_path).resolve()
        return path if path.is_relative_to(self.data_dir) else None

    async def RunExperiment(self, request: pb.RunExperimentRequest, context: Any) -> AsyncIterator[pb.ExperimentEvents]:  # noqa: N802
        path = self.dataset_file(request.dataset_path)
        if path is None or not path.is_file():
            yield pb.ExperimentEvents(events=[events.row_error(f"no dataset {request.dataset_path!r} in the data directory")])
            return
        for line in path.read_text().splitlines():
            item = json.loads(line)
            yield pb.ExperimentEvents(events=[events.dataset_row(input=item["input"], expected_output=item.get("expected_output"),
                                                                 actual_output="4", run_id="r", run_name=request.experiment_id)])

    async def RunDatasetItem(self, request: pb.DatasetItemRequest, context: Any) -> pb.ExperimentEvents:  # noqa: N802
        prompt = pb.RunPromptRequest(rendered=request.rendered)
        output = "".join([text async for text in self.ask(request.rendered.model_name, self.messages(prompt))])
        return pb.ExperimentEvents(events=[events.dataset_row(
            input=json.loads(request.input_json), expected_output=json.loads(request.expected_output_json or "null"),
            actual_output=output, run_id=request.run_id, run_name=request.run_name,
        )])


async def serve(servicer: ThinRunner, options: list[tuple[str, Any]] | None = None) -> tuple[grpc.aio.Server, str]:
    """A grpc.aio server with the runner and SERVING health, on a loopback port."""
    server = grpc.aio.server(options=SERVER_OPTIONS if options is None else options)
    runner_pb2_grpc.add_RunnerServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, f"127.0.0.1:{port}"


async def check(
    servicer_class: type[ThinRunner], tmp_path: Path, only: set[str], options: list[tuple[str, Any]] | None = None
) -> dict[str, conformance.Result]:
    port = free_port()
    runner = servicer_class(port, tmp_path)
    server, target = await serve(runner, options)
    try:
        return await kit(target, port, only)
    finally:
        await server.stop(0)
        await runner.close()


async def test_a_runner_without_template_code_passes_with_rendered_prompts(tmp_path: Path) -> None:
    results = await check(ThinRunner, tmp_path, MODEL_CHECKS | {"health"})
    assert {k: r.reason for k, r in results.items() if not r.passed or r.skipped} == {}
    assert results["rendered"].reason.endswith("(RunPromptRequest.rendered)")
    assert results["dataset-item"].reason == "one row, of the request's run"


class Unstreamed(ThinRunner):
    """Asks the model for whole answers, even for a streaming run."""

    async def ask(self, model: str, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        answer = await self.model.chat.completions.create(model=model, messages=messages)  # type: ignore[call-overload]
        yield answer.choices[0].message.content or ""


async def test_a_runner_asking_for_whole_answers_is_checked_for_cancellation_too(tmp_path: Path) -> None:
    """The kit's model holds a slow unstreamed answer as long as a slow stream,
    so cancelling such a runner's call is seen closing its request."""
    results = await check(Unstreamed, tmp_path, {"cancel-model", "rendered"})
    assert {k: r.reason for k, r in results.items() if not r.passed} == {}


class SdkItems(Runner):
    """The Python SDK's way: a `Runner` that asks for rendered prompts and
    answers `run_dataset_item`."""

    wants_rendered_prompts = True

    def __init__(self, model_port: int) -> None:
        self.model = openai.AsyncOpenAI(api_key="k", base_url=model_url(model_port), max_retries=0)

    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        messages = [{"role": m.role, "content": "".join(p.text for p in m.content)} for m in item.rendered.messages]
        answer = await self.model.chat.completions.create(model=item.rendered.model_name, messages=messages)  # type: ignore[arg-type]
        return events.dataset_row(input=item.input, expected_output=item.expected_output, actual_output=answer.choices[0].message.content,
                                  run_id=item.run_id, run_name=item.run_name)


class SdkWithoutItems(SdkItems):
    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        return await Runner.run_dataset_item(self, item)


@pytest.mark.parametrize(("runner", "passed", "reason"), [
    (SdkItems, True, "one row, of the request's run"),
    (SdkWithoutItems, False, "RunDatasetItem answered an error for a plain item: 'SdkWithoutItems does not run dataset items'. A runner"),
])
async def test_the_sdks_dataset_items_are_checked(runner: type[SdkItems], passed: bool, reason: str) -> None:
    port = free_port()
    sdk_runner = runner(port)
    server, runner_port = await start(sdk_runner, "127.0.0.1:0")
    try:
        results = await kit(f"127.0.0.1:{runner_port}", port, {"dataset-item"})
    finally:
        await server.stop(0)
        await sdk_runner.model.close()
    assert results["dataset-item"].passed is passed
    assert results["dataset-item"].reason.startswith(reason)


class ItemsOnly(ThinRunner):
    """Runs dataset items only: like a generated Go or Java base, it answers
    RunExperiment UNIMPLEMENTED, and so never opens a dataset file."""

    async def RunExperiment(self, request: pb.RunExperimentRequest, context: Any) -> AsyncIterator[pb.ExperimentEvents]:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        yield pb.ExperimentEvents()  # pragma: no cover - makes this a stream handler


class RefusesWholeRuns(ThinRunner):
    """Runs dataset items only, and says so in one error row for a whole run
    (as examples/runner-rust does): the gateway needs a dataset source."""

    async def RunExperiment(self, request: pb.RunExperimentRequest, context: Any) -> AsyncIterator[pb.ExperimentEvents]:  # noqa: N802
        yield pb.ExperimentEvents(events=[events.row_error("this runner runs dataset items: give the gateway a dataset source")])


async def test_a_runner_of_dataset_items_only_has_its_dataset_run_checked_as_items(tmp_path: Path) -> None:
    """Its dataset run is checked the way the gateway would send it, item by
    item; it opens no dataset file, so the path check does not apply."""
    results = await check(ItemsOnly, tmp_path, {"dataset-run", "dataset-escape", "dataset-item"})
    assert {k: (r.passed, r.skipped) for k, r in results.items()} == {
        "dataset-run": (True, False), "dataset-escape": (True, True), "dataset-item": (True, False)}
    assert results["dataset-run"].reason.startswith("3 rows, run id ")
    assert results["dataset-escape"].reason == ("skipped: the runner runs dataset items only (RunExperiment is UNIMPLEMENTED): "
                                                "its dataset runs need a dataset source on the gateway")
    results = await check(RefusesWholeRuns, tmp_path, {"dataset-run", "dataset-escape"})
    assert results["dataset-run"].passed and results["dataset-run"].reason.startswith("3 rows, run id ")
    assert results["dataset-escape"].passed and not results["dataset-escape"].skipped


# --- runners with the classic faults ------------------------------------------------


class IgnoresCancellation(ThinRunner):
    """Reads the model's answer in a task of its own, which the call's
    cancellation never reaches: the model keeps streaming (and billing)."""

    async def RunPrompt(self, request: pb.RunPromptRequest, context: Any) -> AsyncIterator[pb.RunnerEvents]:  # noqa: N802
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        async def read() -> None:
            async for text in self.ask(request.rendered.model_name, self.messages(request)):
                await pieces.put(text)
            await pieces.put(None)

        task = asyncio.create_task(read())
        self.background.add(task)
        while (text := await pieces.get()) is not None:
            yield pb.RunnerEvents(events=[events.text_delta(text)])
        yield pb.RunnerEvents(events=[events.finish("stop")])


class NaiveRenderer(ThinRunner):
    """Renders for itself by string replacement: `{props.name}` becomes the
    prop, and anything else (`{upper(props.name)}`, <If>, <ForEach>) stays as written."""

    rendered_prompts = False

    def messages(self, request: pb.RunPromptRequest) -> list[dict[str, str]]:
        props = json.loads(request.custom_props_json or "{}")

        def text(node: dict[str, Any]) -> str:
            if node.get("type") == "text":
                return str(node["value"])
            if node.get("type", "").startswith("mdx") and "Expression" in node.get("type", ""):
                return "{" + str(node.get("value")) + "}"
            return "".join(text(child) for child in node.get("children") or [])

        messages = []
        for node in json.loads(request.ast_json)["children"]:
            if node.get("name") in ("System", "User", "Assistant"):
                content = text(node)
                for key, value in props.items():
                    content = content.replace("{props." + key + "}", str(value))
                messages.append({"role": node["name"].lower(), "content": content})
        return messages

    async def RunPrompt(self, request: pb.RunPromptRequest, context: Any) -> AsyncIterator[pb.RunnerEvents]:  # noqa: N802
        frontmatter = json.loads(request.ast_json)["children"][0]["value"]
        model = next(line.split(":", 1)[1].strip() for line in frontmatter.splitlines() if "model_name" in line)
        async for text in self.ask(model, self.messages(request)):
            yield pb.RunnerEvents(events=[events.text_delta(text)])
        yield pb.RunnerEvents(events=[events.finish("stop")])


class ReadsOutside(ThinRunner):
    """Joins the data directory and the dataset path, and reads whatever that names."""

    def dataset_file(self, dataset_path: str) -> Path | None:
        return Path(os.path.join(self.data_dir, dataset_path))


class ForeignRunId(ThinRunner):
    """Answers a dataset item with a run id of its own."""

    async def RunDatasetItem(self, request: pb.DatasetItemRequest, context: Any) -> pb.ExperimentEvents:  # noqa: N802
        answer = await super().RunDatasetItem(request, context)
        answer.events[0].row.run_id = "my-own-run"
        return answer


# gRPC's default receive limit (4 MiB), as a Go or Java server has it unless told otherwise.
DEFAULT_LIMITS: list[tuple[str, Any]] = []


@pytest.mark.parametrize(
    ("runner", "options", "check_id", "reason"),
    [
        (IgnoresCancellation, None, "cancel-model",
         "the runner's model request was still open 5 s after the gateway cancelled the call: when a call is cancelled, abort its model request"),
        (ThinRunner, DEFAULT_LIMITS, "large-request",
         "the runner refused a 5.0 MiB request (RESOURCE_EXHAUSTED): raise its gRPC receive limit to at least 32 MiB"),
        (NaiveRenderer, None, "rendered",
         "expressions and filters: message 2 (user) reached the model as 'Hello {upper(props.name)}! Full name: "),
        (ReadsOutside, None, "dataset-escape", "datasetPath '/tmp/agentmark-gw-conformance-"),
        (ForeignRunId, None, "dataset-item",
         "the row's run_id/run_name are 'my-own-run'/"),
    ],
)
async def test_a_runner_with_a_classic_fault_fails_the_check_that_names_it(
    runner: type[ThinRunner], options: list[tuple[str, Any]] | None, check_id: str, reason: str, tmp_path: Path
) -> None:
    results = await check(runner, tmp_path, {check_id}, options)
    result = results[check_id]
    assert not result.passed, result.reason
    assert result.reason.startswith(reason), result.reason


async def test_what_a_failure_says_to_fix(tmp_path: Path) -> None:
    """Each failure ends with the fix, in plain words."""
    results = await check(ReadsOutside, tmp_path, {"dataset-escape"})
    assert results["dataset-escape"].reason.endswith(
        "the runner read a file outside its data directory. Resolve dataset paths inside the data directory and "
        "answer an error row for any that leaves it (.. or absolute).")
    results = await check(NaiveRenderer, tmp_path, {"rendered"})
    assert results["rendered"].reason.endswith(
        "Render prompts with AgentMark's engine, or answer Describe with rendered_prompts: true and send "
        "RunPromptRequest.rendered's messages to the model as they are.")


async def test_a_runner_that_never_calls_the_kits_model_is_told_where_to_point_it(tmp_path: Path) -> None:
    other = free_port()  # the runner's model is elsewhere: nothing answers there
    port = free_port()
    runner = ThinRunner(other, tmp_path)
    server, target = await serve(runner)
    try:
        results = await kit(target, port, {"cancel-model"})
    finally:
        await server.stop(0)
        await runner.close()
    assert not results["cancel-model"].passed
    assert results["cancel-model"].reason == (
        "the runner never called the kit's model for a streaming run (the run ended with gRPC UNKNOWN: Unexpected <class "
        "'openai.APIConnectionError'>: Connection error.): start the runner with "
        f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 (any OPENAI_API_KEY) so its model calls come to the kit")


async def test_model_checks_need_the_model(tmp_path: Path) -> None:
    runner = ThinRunner(free_port(), tmp_path)
    server, target = await serve(runner)
    try:
        results = await conformance.run_kit(target, timeout=5, only={"rendered", "health"})
        everything = await conformance.run_kit(target, timeout=5, only=None)
    finally:
        await server.stop(0)
        await runner.close()
    assert [(r.id, r.passed, r.reason) for r in results] == [
        ("health", True, "SERVING"), ("rendered", False, "this check needs the kit's model: add --serve-model PORT")]
    # Without --serve-model the kit runs the checks it always ran, and no others.
    assert [r.id for r in everything] == [check_id for check_id, _, _ in conformance.Kit.CHECKS]


async def test_the_command_serves_the_model_for_the_reference_runner_process(tmp_path: Path) -> None:
    """As docs/runners.md tells it: `agentmark-gw runner` with OPENAI_BASE_URL
    at the kit's port, then `agentmark-gw conformance --serve-model PORT`."""
    kit_port, runner_port = free_port(), free_port()
    cli = [sys.executable, "-m", "agentmark_gw.cli"]
    env = {**os.environ, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": model_url(kit_port)}
    written = await asyncio.create_subprocess_exec(*cli, "conformance", "--write-dataset", str(tmp_path), stdout=asyncio.subprocess.DEVNULL)
    assert await asyncio.wait_for(written.wait(), 60) == 0
    runner = await asyncio.create_subprocess_exec(*cli, "runner", "--listen", f"127.0.0.1:{runner_port}", "--data-dir", str(tmp_path),
                                                  env=env, stderr=asyncio.subprocess.DEVNULL)
    try:
        await wait_for_port(runner_port, timeout=60)
        process = await asyncio.create_subprocess_exec(
            *cli, "conformance", "--runner", f"127.0.0.1:{runner_port}", "--serve-model", str(kit_port), "--json", "--timeout", "20",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 150)
    finally:
        runner.terminate()
        await asyncio.wait_for(runner.wait(), 20)
    report = json.loads(out)
    assert [f"{c['id']}: {c['reason']}" for c in report["checks"] if not c["passed"]] == []
    assert process.returncode == 0 and report["passed"] is True
    assert {c["id"] for c in report["checks"]} == set(conformance.CHECK_IDS)
    assert f"OPENAI_BASE_URL=http://127.0.0.1:{kit_port}/v1" in err.decode()


async def test_a_taken_model_port_is_one_plain_line() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmark_gw.cli", "conformance", "--runner", "127.0.0.1:1", "--serve-model", str(port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert err.decode().splitlines()[-1] == f"error: --serve-model {port}: port {port} on 127.0.0.1 is in use"


async def test_the_rust_example_passes_with_the_model_in_the_loop(rust_runner: str) -> None:
    """examples/runner-rust, a runner with no template code, passes every
    check with the kit's model in the loop. (`rust_runner` builds it; this
    instance calls the kit's model instead of the fake API.)"""
    port, runner_port = free_port(), free_port()
    env = {**os.environ, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": model_url(port)}
    process = await asyncio.create_subprocess_exec(
        str(RUST_RUNNER_TARGET / "debug" / "agentmark-runner-rust"), "--listen", f"127.0.0.1:{runner_port}",
        env=env, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(runner_port, timeout=30)
        results = await conformance.run_kit(f"127.0.0.1:{runner_port}", timeout=20, serve_model=port)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
    assert [f"{r.id}: {r.reason}" for r in results if not r.passed or r.skipped] == []
    assert [r.id for r in results] == list(conformance.CHECK_IDS)
    assert next(r for r in results if r.id == "rendered").reason.endswith("(RunPromptRequest.rendered)")
