"""Dataset runs the gateway reads itself (issue 14): for runners that take
items (`Describe` → `rendered_prompts`), the gateway reads the dataset from
its source, samples it with AgentMark's sampler, renders each row's prompt
with AgentMark's runtime and sends each item by `RunDatasetItem`, spread over
the runners, retried on another when one dies. Real gateway (Hypercorn on
loopback), real grpc.aio runners, a real AgentMark API stand-in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentmark.prompt_core import create_agentmark

from agentmark_gw.agentmark_api import AgentMarkCloud
from agentmark_gw.gateway import create_app
from agentmark_gw.gateway.datasets import AgentMarkDatasets, DatasetError
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import DatasetItem, events, start

from .conftest import AGENTMARK, HttpServer, agentmark_json, gateway_config, signed
from .servers.fake_agentmark_api import FakeAgentMarkApi
from .servers.scripted_runner import ScriptedRunner
from .test_gateway_e2e import stream_lines

pytestmark = pytest.mark.e2e

DATASET_EVENT = agentmark_json("events/dataset-run.json")


class ItemRunner(ScriptedRunner):
    """A runner with no template code and no dataset reader: it answers each
    item with its rendered user message, and records what it was sent."""

    wants_rendered_prompts = True

    def __init__(self, name: str = "items", seconds: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.seconds = seconds
        self.items: list[DatasetItem] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        self.items.append(item)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.seconds:
                await asyncio.sleep(self.seconds)
            said = [part.text for m in item.rendered.messages for part in m.content if m.role == "user"]
            return events.dataset_row(
                input=item.input, expected_output=item.expected_output, actual_output={"said": said, "by": self.name},
                run_id=item.run_id, run_name=item.run_name, trace_id=f"{self.name}-{item.index}",
                evals=[{"name": n, "score": 1} for n in item.eval_names],
            )
        finally:
            self.in_flight -= 1


def write_dataset(folder: Path, rows: int, name: str = "big.jsonl") -> str:
    with open(folder / name, "w") as out:
        for i in range(rows):
            out.write(json.dumps({"input": {"text": f"row {i}"}, "expected_output": f"answer {i}"}) + "\n")
    return name


def dataset_event(dataset: str | None = None, **data: Any) -> dict[str, Any]:
    event = json.loads(json.dumps(DATASET_EVENT))
    if dataset is not None:
        event["event"]["data"]["datasetPath"] = dataset
    event["event"]["data"].update(data)
    return event


async def run(url: str, event: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    async with httpx.AsyncClient(timeout=60) as client:
        response, lines = await stream_lines(client, url + "/", event)
    return response.status_code, lines


async def serve_runners(*runners: ItemRunner) -> list[tuple[Any, str]]:
    started = [await start(r, "127.0.0.1:0") for r in runners]
    return [(server, f"127.0.0.1:{port}") for server, port in started]


async def test_a_dataset_run_arrives_as_items_rendered_as_agentmark_renders_each_row() -> None:
    runner = ItemRunner()
    [(server, target)] = await serve_runners(runner)
    try:
        config = gateway_config(target, datasets_dir=str(AGENTMARK / "datasets"))
        async with HttpServer(create_app(config)) as gateway:
            status, lines = await run(gateway.url, dataset_event())
    finally:
        await server.stop(0)
    assert status == 200
    rows = [line for line in lines if line["type"] == "dataset"]
    source = [json.loads(line) for line in (AGENTMARK / "datasets" / "sentiment.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == len(source) == len(runner.items)
    assert runner.seen == []  # never a RunExperiment: the runner reads no dataset
    # Each item: the row's own input and expected output, rendered by AgentMark with the input as props.
    agentmark = create_agentmark()
    prompt = await agentmark.load_object_prompt(DATASET_EVENT["event"]["data"]["ast"])
    for item in sorted(runner.items, key=lambda i: i.index):
        assert item.input == source[item.index]["input"] and item.expected_output == source[item.index]["expected_output"]
        formatted = (await prompt.format(props=item.input)).model_dump(by_alias=False)
        assert [(m.role, "".join(p.text for p in m.content)) for m in item.rendered.messages] == [
            (m["role"], m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"])) for m in formatted["messages"]
        ]
        assert json.loads(item.rendered.schema_json) == formatted["object_config"]["schema_"]
        assert item.eval_names == ["exact_match_json"] and item.dataset_path == "sentiment.jsonl"
        assert item.run_name == DATASET_EVENT["event"]["data"]["experimentId"] and item.prompt_name == "classify-sentiment"
        assert len(item.item_name) == 12  # AgentMark's item name: 12 hex digits of the input's MD5
    assert len({item.run_id for item in runner.items}) == 1
    # The rows as the framer writes them: each row's trace id, input, evals.
    assert sorted(r["traceId"] for r in rows) == sorted(f"items-{i}" for i in range(len(source)))
    assert all(r["result"]["evals"] == [{"name": "exact_match_json", "score": 1}] for r in rows)


async def test_sampling_is_agentmarks_and_its_refusals_are_error_rows(tmp_path: Path) -> None:
    name = write_dataset(tmp_path, 20)
    runner = ItemRunner()
    [(server, target)] = await serve_runners(runner)
    try:
        async with HttpServer(create_app(gateway_config(target, datasets_dir=str(tmp_path)))) as gateway:
            _, picked = await run(gateway.url, dataset_event(name, sampling={"rows": [2, 5, 19]}))
            picked_inputs = sorted(item.input["text"] for item in runner.items)
            runner.items.clear()
            _, seeded = await run(gateway.url, dataset_event(name, sampling={"sample": 50, "seed": 7}))
            seeded_inputs = sorted(item.input["text"] for item in runner.items)
            _, out_of_range = await run(gateway.url, dataset_event(name, sampling={"rows": [3, 20]}))
            _, missing = await run(gateway.url, dataset_event("nope.jsonl"))
            _, escaping = await run(gateway.url, dataset_event("../../etc/passwd.jsonl"))
    finally:
        await server.stop(0)
    assert picked_inputs == ["row 19", "row 2", "row 5"] and len(picked) == 3
    from agentmark.prompt_core.sampling import apply_sampling

    expected = apply_sampling([{"i": i} for i in range(20)], {"sample": 50, "seed": 7})
    assert seeded_inputs == sorted(f"row {r['i']}" for r in expected)
    assert [line["type"] for line in out_of_range] == ["error"]
    assert out_of_range[0]["error"] == "cannot load the dataset: Row index 20 is out of bounds for dataset with 20 rows"
    assert missing[0]["error"].startswith("cannot load the dataset: Dataset not found: nope.jsonl")
    assert escaping[0]["error"] == "cannot load the dataset: Access denied: path outside allowed directory"


async def test_a_run_spreads_over_three_runners_and_survives_one_dying(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    name = write_dataset(tmp_path, 60)
    runners = [ItemRunner(f"r{i}", seconds=0.05) for i in range(3)]
    served = await serve_runners(*runners)
    config = gateway_config(served[0][1], datasets_dir=str(tmp_path), health_interval=0.2)
    config = type(config)(**{**config.__dict__, "runners": tuple(t for _, t in served)})
    try:
        async with HttpServer(create_app(config)) as gateway:
            await asyncio.sleep(0.5)  # every runner healthy and described

            async def kill_the_second() -> None:
                while len(runners[1].items) < 4:
                    await asyncio.sleep(0.01)
                await served[1][0].stop(0)  # mid-item: its calls end unanswered

            killer = asyncio.create_task(kill_the_second())
            status, lines = await run(gateway.url, dataset_event(name, concurrency=6))
            await asyncio.wait_for(killer, 5)
            async with httpx.AsyncClient(timeout=10) as client:
                metrics = (await client.get(gateway.url + "/metrics")).text
    finally:
        await asyncio.gather(*(server.stop(0) for server, _ in served))
    assert status == 200
    rows = [line["result"] for line in lines if line["type"] == "dataset"]
    answered = sorted(r["input"]["text"] for r in rows)
    assert answered == sorted(f"row {i}" for i in range(60)), [line for line in lines if line["type"] != "dataset"]
    by = {r["actualOutput"]["by"] for r in rows}
    assert by >= {"r0", "r2"} and all(r.most_in_flight <= 6 for r in runners)
    assert sum(r.most_in_flight for r in runners) >= 3  # spread: more than one runner worked at once
    # The dead runner's unanswered items went to another: each still answered once (above).
    assert any("unavailable" in r.getMessage() and "trying the next" in r.getMessage() for r in caplog.records)
    counted = {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("agentmark_gw_dataset_items_total{")}
    assert counted["answered"] == 60 and counted["retried"] >= 1 and counted.get("error", 0) == 0


async def test_concurrency_bounds_items_in_flight_and_one_runner_per_run_when_asked(tmp_path: Path) -> None:
    name = write_dataset(tmp_path, 30)
    runners = [ItemRunner(f"r{i}", seconds=0.02) for i in range(2)]
    served = await serve_runners(*runners)
    config = gateway_config(served[0][1], datasets_dir=str(tmp_path), spread_dataset_runs=False)
    config = type(config)(**{**config.__dict__, "runners": tuple(t for _, t in served)})
    try:
        async with HttpServer(create_app(config)) as gateway:
            _, lines = await run(gateway.url, dataset_event(name, concurrency=3))
    finally:
        await asyncio.gather(*(server.stop(0) for server, _ in served))
    rows = [line["result"] for line in lines if line["type"] == "dataset"]
    assert len(rows) == 30 and len({r["actualOutput"]["by"] for r in rows}) == 1
    assert max(r.most_in_flight for r in runners) == 3


async def test_runners_that_render_themselves_still_get_run_experiment(scripted: tuple[Any, str], scripted_runner: Any) -> None:
    scripted_runner.experiment_script = [events.row_error("the runner read it")]
    async with HttpServer(create_app(gateway_config(scripted[1], datasets_dir=str(AGENTMARK / "datasets")))) as gateway:
        _, lines = await run(gateway.url, dataset_event())
    assert lines[0]["error"] == "the runner read it" and len(scripted_runner.seen) == 1


async def test_no_runner_for_the_first_item_is_a_503_before_the_stream(tmp_path: Path) -> None:
    name = write_dataset(tmp_path, 3)
    runner = ItemRunner()
    [(server, target)] = await serve_runners(runner)
    config = gateway_config(target, datasets_dir=str(tmp_path), health_interval=60.0)
    async with HttpServer(create_app(config)) as gateway:
        await server.stop(0)
        raw, headers = signed(dataset_event(name))
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(gateway.url + "/", content=raw, headers=headers)
    assert response.status_code == 503 and response.json()["message"].startswith("Runner unavailable")


@pytest.fixture
async def agentmark_api() -> AsyncIterator[tuple[FakeAgentMarkApi, str]]:
    api = FakeAgentMarkApi("sk-test-key", "app-1")
    async with HttpServer(api.app) as server:
        yield api, server.url


async def test_datasets_stream_from_agentmarks_api(agentmark_api: tuple[FakeAgentMarkApi, str]) -> None:
    api, url = agentmark_api
    api.datasets["cloud.jsonl"] = [{"input": {"text": f"cloud {i}"}, "expected_output": str(i)} for i in range(5)]
    source = AgentMarkDatasets(AgentMarkCloud("sk-test-key", "app-1", url))
    rows = [row async for row in source.rows("cloud.jsonl")]
    assert [r["input"]["text"] for r in rows] == [f"cloud {i}" for i in range(5)]
    with pytest.raises(DatasetError, match="not found"):
        _ = [row async for row in source.rows("missing.jsonl")]
    wrong = AgentMarkDatasets(AgentMarkCloud("sk-wrong", "app-1", url))
    with pytest.raises(DatasetError) as refused:
        _ = [row async for row in wrong.rows("cloud.jsonl")]
    assert "sk-wrong" not in str(refused.value)


async def test_a_gateway_with_agentmark_credentials_reads_datasets_from_agentmark(
    agentmark_api: tuple[FakeAgentMarkApi, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, url = agentmark_api
    api.datasets["sentiment.jsonl"] = [{"input": {"text": "only in AgentMark"}, "expected_output": "{}"}]
    monkeypatch.setenv("AGENTMARK_API_KEY", "sk-test-key")
    monkeypatch.setenv("AGENTMARK_APP_ID", "app-1")
    monkeypatch.setenv("AGENTMARK_BASE_URL", url)
    runner = ItemRunner()
    [(server, target)] = await serve_runners(runner)
    try:
        async with HttpServer(create_app(gateway_config(target))) as gateway:
            _, lines = await run(gateway.url, dataset_event())
    finally:
        await server.stop(0)
    assert [line["result"]["input"] for line in lines if line["type"] == "dataset"] == [{"text": "only in AgentMark"}]


def test_the_spread_benchmark_runs() -> None:
    """`make bench-datasets`, tiny: every run answers every row."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dataset_spread", "--rows", "12", "--model-seconds", "0.01", "--concurrency", "4", "--capacity", "2"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 4 and all(line.split("|")[3].strip() == "12" for line in table), done.stdout


async def test_a_client_going_away_cancels_the_items_in_flight(tmp_path: Path) -> None:
    name = write_dataset(tmp_path, 50)
    runner = ItemRunner(seconds=30.0)  # every item waits: the run is all in flight
    cancelled: list[int] = []
    answer = runner.run_dataset_item

    async def recording(item: DatasetItem) -> pb.ExperimentEvent:
        try:
            return await answer(item)
        except asyncio.CancelledError:
            cancelled.append(item.index)
            raise

    runner.run_dataset_item = recording  # type: ignore[method-assign]
    [(server, target)] = await serve_runners(runner)
    try:
        async with HttpServer(create_app(gateway_config(target, datasets_dir=str(tmp_path), heartbeat_interval=0.2))) as gateway:
            raw, headers = signed(dataset_event(name, concurrency=4))
            async with httpx.AsyncClient(timeout=30) as client, client.stream("POST", gateway.url + "/", content=raw, headers=headers) as response:
                assert response.status_code == 200
                while len(runner.items) < 4:
                    await asyncio.sleep(0.02)
            for _ in range(100):  # the client left: within a second or so, each call is cancelled
                if len(cancelled) == 4:
                    break
                await asyncio.sleep(0.05)
    finally:
        await server.stop(0)
    assert sorted(cancelled) == [0, 1, 2, 3] and len(runner.items) == 4  # nothing more was read or sent
