"""The conformance kit: the reference runner passes every check, and broken
runners fail the checks that describe what they break."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from agentmark_gw import conformance
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, Runner, events, start
from agentmark_gw.runner.service import DatasetItem, PromptRequest

from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner

pytestmark = pytest.mark.e2e


@pytest.fixture
async def reference_runner(fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[str]:
    from agentmark.prompt_core import FileLoader, create_agentmark

    conformance.write_dataset(tmp_path)
    model = openai.AsyncOpenAI(api_key="k", base_url=fake_openai.url, max_retries=0)  # type: ignore[attr-defined]
    server, port = await start(AgentMarkRunner(create_agentmark(loader=FileLoader(str(tmp_path))), OpenAIExecutor(model)), "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await model.close()


@pytest.fixture(params=["python", "rust"])
def any_runner(request: pytest.FixtureRequest) -> str:
    """The Python reference runner and the Rust example runner, in turn."""
    return request.getfixturevalue("reference_runner" if request.param == "python" else "rust_runner")


async def test_both_reference_runners_pass_every_check(any_runner: str) -> None:
    results = await conformance.run_kit(any_runner, timeout=20)
    assert [(r.id, r.check) for r in results] == [(check_id, name) for check_id, name, _ in conformance.Kit.CHECKS]
    failures = [f"{r.check}: {r.reason}" for r in results if not r.passed]
    assert failures == []


async def test_the_command_prints_a_table_and_json(reference_runner: str) -> None:
    env = {**os.environ}
    args = [sys.executable, "-m", "agentmark_gw.cli", "conformance", "--runner", reference_runner, "--check", "health", "--check", "get-evals"]
    process = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert "health" in out.decode() and "PASS" in out.decode() and "2 passed, 0 failed" in out.decode()
    process = await asyncio.create_subprocess_exec(*args, "--json", env=env, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert json.loads(out)["passed"] is True


class Chatty(Runner):
    """Sends text after finish, and invalid JSON in a tool call."""

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        bad = events.tool_call("c1", "lookup", {})
        bad.tool_call.args_json = "{oops"
        yield events.text_delta("hi")
        yield bad
        yield events.finish("stop")


class Unfinished(Runner):
    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        yield events.text_delta("and then nothing")


class Crashing(Runner):
    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        raise RuntimeError("boom")
        yield  # pragma: no cover - makes this an async generator


@pytest.mark.parametrize(
    ("runner", "check", "reason"),
    [
        (Chatty(), "text prompt, streaming", "tool_call.args_json is not valid JSON"),
        (Unfinished(), "text prompt, streaming", "the stream ended without `finish` or `error`"),
        (Crashing(), "text prompt, streaming", "the runner answered with an error: runner error: RuntimeError (the runner's log has the details)"),
        (Runner(), "object prompt", "the runner answered with an error: Runner does not run prompts"),
        (Runner(), "dataset run", "only error rows: Runner does not run dataset experiments"),
    ],
)
async def test_broken_runners_fail_the_check_that_names_their_fault(runner: Runner, check: str, reason: str) -> None:
    server, port = await start(runner, "127.0.0.1:0")
    try:
        (result,) = await conformance.run_kit(f"127.0.0.1:{port}", timeout=5, only={check})
    finally:
        await server.stop(0)
    assert not result.passed
    assert result.reason.startswith(reason)


def test_nothing_may_follow_a_terminal_event() -> None:
    stream = [events.text_delta("a"), events.finish("stop"), events.text_delta("late")]
    with pytest.raises(conformance.Failed, match="1 event"):
        conformance.check_prompt_stream(stream, "text")
    with pytest.raises(conformance.Failed, match="events of another kind: object_final"):
        conformance.check_prompt_stream([events.object_final({}), events.finish("stop")], "text")


class OddRows(Runner):
    async def run_experiment(self, request):  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield events.dataset_row(input={"q": 1}, actual_output="x", run_id="r", run_name=request.experiment_id)


async def test_an_unexpected_answer_is_a_failure_not_a_crash() -> None:
    server, port = await start(OddRows(), "127.0.0.1:0")
    try:
        (result,) = await conformance.run_kit(f"127.0.0.1:{port}", timeout=5, only={"dataset run"})
    finally:
        await server.stop(0)
    assert not result.passed and result.reason == "row inputs are not the dataset's inputs"


def test_no_checks_is_said_plainly() -> None:
    assert conformance.report([], as_json=False).startswith("no checks ran: --check names one of health,")


async def test_checks_are_chosen_by_short_ids_shown_in_the_table(reference_runner: str) -> None:
    """Names such as "text prompt, streaming" hold commas; `--check` takes the id."""
    assert all("," not in check_id and " " not in check_id for check_id in conformance.CHECK_IDS)
    args = [sys.executable, "-m", "agentmark_gw.cli", "conformance", "--runner", reference_runner]
    process = await asyncio.create_subprocess_exec(*args, "--check", "malformed-ast", "--check", "get-evals", "--check", "health",
                                                   stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    rows = out.decode().splitlines()
    assert process.returncode == 0
    assert [row.split()[0] for row in rows[2:5]] == ["health", "get-evals", "malformed-ast"]
    process = await asyncio.create_subprocess_exec(*args, "--check", "text prompt", stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().startswith("error: --check text prompt: no such check (ids: health, text-stream,")


class InputlessRows(Runner):
    """Rows whose `input_json` is empty: absent, by the proto's one rule."""

    async def run_experiment(self, request):  # type: ignore[no-untyped-def]
        for _ in conformance.DATASET_ROWS:
            row = events.dataset_row(input={"q": 1}, actual_output="x", run_id="r", run_name=request.experiment_id)
            row.row.input_json = ""
            yield row


async def test_an_empty_json_field_is_absent_for_the_kit_as_for_the_gateway() -> None:
    """The kit reads an empty `input_json` as the gateway does (null), and
    fails the run for the inputs it lacks, not for a JSON syntax error."""
    server, port = await start(InputlessRows(), "127.0.0.1:0")
    try:
        (result,) = await conformance.run_kit(f"127.0.0.1:{port}", timeout=5, only={"dataset run"})
    finally:
        await server.stop(0)
    assert not result.passed and result.reason == "row inputs are not the dataset's inputs"


async def test_an_empty_required_json_field_fails_the_kit_as_it_fails_the_gateway(
    scripted_gateway: str, scripted_runner: ScriptedRunner, scripted: tuple[ScriptedRunner, str]
) -> None:
    """`tool_call.args_json` is required by its proto comment: the gateway
    ends the client's stream on an empty one, and the kit says so first."""
    from .conftest import agentmark_json, signed

    empty = events.tool_call("c1", "lookup", {})
    empty.tool_call.args_json = ""
    scripted_runner.script = [events.text_delta("a"), empty, events.finish("stop")]
    (result,) = await conformance.run_kit(scripted[1], timeout=5, only={"text-stream"})
    assert not result.passed and result.reason.startswith("tool_call.args_json is empty: it is required")
    raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(scripted_gateway + "/", content=raw, headers=headers)
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1] == {"type": "error", "error": "runner sent invalid JSON in tool_call.args_json"}


class RenderedOnly(Runner):
    """Asks for rendered prompts: the kit renders its prompts as the gateway
    would, and sends its dataset as rendered items."""

    wants_rendered_prompts = True

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        self.seen.append(request)
        if request.rendered is None:
            yield events.error("came unrendered")
            return
        yield events.text_delta(request.rendered.messages[-1].content[0].text)
        yield events.finish("stop")

    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        self.seen.append(item)
        return events.dataset_row(input=item.input, actual_output=item.rendered.messages[-1].content[0].text, run_id=item.run_id, run_name=item.run_name)


async def test_a_runner_that_asks_for_rendered_prompts_gets_them_from_the_kit() -> None:
    runner = RenderedOnly()
    server, port = await start(runner, "127.0.0.1:0")
    try:
        results = await conformance.run_kit(f"127.0.0.1:{port}", timeout=5, only={"text-stream", "dataset-run"})
    finally:
        await server.stop(0)
    assert [(r.id, r.passed) for r in results] == [("text-stream", True), ("dataset-run", True)], results
    prompt, *items = runner.seen
    assert [(m.role, m.content[0].text) for m in prompt.rendered.messages] == [("system", "Answer briefly."), ("user", "What is 2+2?")]
    # Each row of the kit's dataset, rendered with its input as the props.
    assert sorted(item.rendered.messages[-1].content[0].text for item in items) == sorted(row["input"]["question"] for row in conformance.DATASET_ROWS)
