"""Connected to AgentMark: the reference runner with the dashboard's API key
and app ID loads datasets through AgentMark's API loader and traces every run
to AgentMark, against a stand-in of AgentMark's API on loopback.

The runner runs as its own process (`agentmark-gw runner`): AgentMark's
tracing sets OpenTelemetry's global provider, which a process takes once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmark_gw.agentmark_api import AgentMarkCloud, ConnectionSettingsError
from agentmark_gw.gateway import create_app

from .conftest import AGENTMARK, HttpServer, agentmark_json, gateway_config, signed
from .servers.fake_agentmark_api import FakeAgentMarkApi
from .servers.fake_openai import FakeOpenAI
from .support.processes import free_port, wait_for_port

pytestmark = pytest.mark.e2e

API_KEY = "sk-agentmark-test-7f3a9c"
APP_ID = "app_gateway_tests"
CLOUD_DATASET = "cloud-only/sentiment.jsonl"  # exists only in the stand-in


def sentiment_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (AGENTMARK / "datasets" / "sentiment.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
async def agentmark_api() -> AsyncIterator[FakeAgentMarkApi]:
    api = FakeAgentMarkApi(API_KEY, APP_ID)
    api.datasets[CLOUD_DATASET] = sentiment_rows()
    async with HttpServer(api.app) as server:
        api.url = server.url
        yield api


class RunnerProcess:
    """`agentmark-gw runner` as a user starts it, with the environment given."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.env = env
        self.data_dir = data_dir
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = ""

    async def __aenter__(self) -> RunnerProcess:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmark_gw.cli", "runner", "--listen", self.address, "--data-dir", str(self.data_dir),
            "--metrics", f"127.0.0.1:{self.metrics_port}",
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        await wait_for_port(self.port, timeout=30)
        return self

    async def stop(self) -> str:
        """SIGTERM, as an orchestrator stops it; what it logged."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.process.communicate(), 30)
        self.stderr = err.decode(errors="replace")
        return self.stderr

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def runner_env(fake_openai: FakeOpenAI, **agentmark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK", "OPENAI"))}
    env.update(OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake_openai.url)  # type: ignore[attr-defined]
    env.update(agentmark)
    return env


def connected(api: FakeAgentMarkApi, **extra: str) -> dict[str, str]:
    return {"AGENTMARK_API_KEY": API_KEY, "AGENTMARK_APP_ID": APP_ID, "AGENTMARK_BASE_URL": api.url, **extra}


async def post_lines(gateway: str, event: dict[str, Any]) -> list[dict[str, Any]]:
    raw, headers = signed(event)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(gateway + "/", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.split("\n") if line.strip()]


def dataset_event(path: str) -> dict[str, Any]:
    event = agentmark_json("events/dataset-run.json")
    event["event"]["data"]["datasetPath"] = path
    return event


# --- settings ----------------------------------------------------------------------


def test_half_the_credentials_is_refused_with_what_to_set() -> None:
    with pytest.raises(ConnectionSettingsError, match="AGENTMARK_API_KEY is set but AGENTMARK_APP_ID is not"):
        AgentMarkCloud.from_env({"AGENTMARK_API_KEY": API_KEY})
    assert AgentMarkCloud.from_env({}) is None
    cloud = AgentMarkCloud.from_env({"AGENTMARK_API_KEY": API_KEY, "AGENTMARK_APP_ID": APP_ID})
    assert cloud is not None and cloud.base_url == "https://api.agentmark.co"
    assert API_KEY not in repr(cloud) and API_KEY not in cloud.describe()


# --- connected -----------------------------------------------------------------------


async def test_a_dataset_only_in_agentmark_runs_and_every_row_and_run_is_traced_there(
    agentmark_api: FakeAgentMarkApi, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with RunnerProcess(runner_env(fake_openai, **connected(agentmark_api)), tmp_path) as runner:
        async with HttpServer(create_app(gateway_config(runner.address))) as gateway:
            rows = await post_lines(gateway.url, dataset_event(CLOUD_DATASET))
            prompt_lines = await post_lines(gateway.url, agentmark_json("events/prompt-run-text.json"))
        log = await runner.stop()

    dataset_rows = [row for row in rows if row.get("type") == "dataset"]
    assert len(dataset_rows) == len(sentiment_rows()), rows
    row_traces = {row.get("traceId") for row in dataset_rows}
    assert all(row_traces) and len(row_traces) == len(dataset_rows), (dataset_rows, log[-3000:])
    assert prompt_lines[-1]["type"] == "done" and prompt_lines[-1]["traceId"]
    # Shutdown flushed the batch processor: every trace reached AgentMark.
    received = agentmark_api.trace_ids()
    assert row_traces <= received, (row_traces - received, log[-2000:])
    assert prompt_lines[-1]["traceId"] in received
    # The loader and the exporter sent AgentMark's own headers.
    paths = {(method, path) for method, path, _ in agentmark_api.requests}
    assert ("GET", "/v1/templates") in paths and ("POST", "/v1/traces") in paths
    assert all(h.get("authorization") == API_KEY and h.get("x-agentmark-app-id") == APP_ID for _, _, h in agentmark_api.requests)
    assert f"connected to AgentMark: app {APP_ID} at {agentmark_api.url}" in log
    assert API_KEY not in log


async def test_wrong_credentials_are_an_error_row_with_agentmarks_message(
    agentmark_api: FakeAgentMarkApi, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    wrong = connected(agentmark_api, AGENTMARK_API_KEY="sk-wrong-key-123")
    async with RunnerProcess(runner_env(fake_openai, **wrong), tmp_path) as runner:
        async with HttpServer(create_app(gateway_config(runner.address))) as gateway:
            rows = await post_lines(gateway.url, dataset_event(CLOUD_DATASET))
        log = await runner.stop()
    errors = [row for row in rows if row.get("type") == "error"]
    assert errors and "Invalid API key or app ID" in errors[0]["error"], rows
    assert "sk-wrong-key-123" not in json.dumps(rows) and "sk-wrong-key-123" not in log


async def test_a_dataset_missing_from_agentmark_is_an_error_row(
    agentmark_api: FakeAgentMarkApi, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    async with RunnerProcess(runner_env(fake_openai, **connected(agentmark_api)), tmp_path) as runner:
        async with HttpServer(create_app(gateway_config(runner.address))) as gateway:
            rows = await post_lines(gateway.url, dataset_event("nowhere.jsonl"))
        await runner.stop()
    errors = [row for row in rows if row.get("type") == "error"]
    assert errors and "Dataset not found: nowhere.jsonl" in errors[0]["error"], rows


async def test_agentmark_down_fails_no_run_and_is_logged_once(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = runner_env(fake_openai, AGENTMARK_API_KEY=API_KEY, AGENTMARK_APP_ID=APP_ID, AGENTMARK_BASE_URL=down)
    async with RunnerProcess(env, tmp_path) as runner:
        async with HttpServer(create_app(gateway_config(runner.address))) as gateway:
            first = await post_lines(gateway.url, agentmark_json("events/prompt-run-text.json"))
            second = await post_lines(gateway.url, agentmark_json("events/prompt-run-text.json"))
            rows = await post_lines(gateway.url, dataset_event(CLOUD_DATASET))
        failed = 0.0
        async with httpx.AsyncClient() as client:
            for _ in range(100):  # the batch processor exports every 5 s: wait for its first try
                metrics = (await client.get(f"http://127.0.0.1:{runner.metrics_port}/metrics")).text
                failed = next((float(line.split()[-1]) for line in metrics.splitlines()
                               if line.startswith('agentmark_gw_runner_trace_exports_total{outcome="failed"}')), 0.0)
                if failed:
                    break
                await asyncio.sleep(0.1)
        log = await runner.stop()
    assert failed >= 1  # counted in the runner's metrics
    for lines in (first, second):
        assert any(line.get("finishReason") == "stop" for line in lines), lines  # the runs answered
    assert [row for row in rows if row.get("type") == "error"], rows  # the dataset cannot be loaded: said so
    assert log.count("AgentMark did not accept") == 1, log[-3000:]
    assert API_KEY not in log


async def test_masking_settings_are_honoured(agentmark_api: FakeAgentMarkApi, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    env = runner_env(fake_openai, **connected(agentmark_api, AGENTMARK_HIDE_INPUTS="true", AGENTMARK_HIDE_OUTPUTS="true"))
    async with RunnerProcess(env, tmp_path) as runner:
        async with HttpServer(create_app(gateway_config(runner.address))) as gateway:
            await post_lines(gateway.url, dataset_event(CLOUD_DATASET))
        await runner.stop()
    assert agentmark_api.spans
    # AgentMark's input and output keys, and the two its runner records.
    from agentmark_sdk.masking_processor import INPUT_KEYS, OUTPUT_KEYS

    keys = INPUT_KEYS | OUTPUT_KEYS | {"agentmark.input", "agentmark.output"}
    hidden = {key: value for span in agentmark_api.spans for key, value in span["attributes"].items() if key in keys}
    assert {"agentmark.dataset_input", "agentmark.output"} <= hidden.keys(), [s["attributes"].keys() for s in agentmark_api.spans]
    assert set(hidden.values()) == {"[REDACTED]"}, hidden
    inputs = json.dumps([{k: v for k, v in span["attributes"].items() if k != "agentmark.dataset_expected_output"} for span in agentmark_api.spans])
    for row in sentiment_rows():
        assert row["input"]["text"] not in inputs


async def test_runner_check_reaches_agentmark_once(agentmark_api: FakeAgentMarkApi, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    async def check(**agentmark: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentmark_gw.cli", "runner", "--check", env=runner_env(fake_openai, **agentmark),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode()

    code, out = await check(**connected(agentmark_api))
    assert code == 0 and f"app {APP_ID} at {agentmark_api.url} accepted the credentials" in out
    code, out = await check(**connected(agentmark_api, AGENTMARK_API_KEY="sk-nope"))
    assert code == 1 and "refused the credentials: HTTP 401: Invalid API key or app ID" in out and "sk-nope" not in out
    code, out = await check()
    assert code == 0 and out.startswith("local mode")
