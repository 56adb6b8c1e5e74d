"""Shared fixtures: real servers on loopback ports, and the two byte-work
implementations (every test that takes `core` runs on both)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart

from agentmark_gw import _core, _fallback
from agentmark_gw.gateway import GatewayConfig, create_app
from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, start

from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port, wait_for_port

# AgentMark's cross-language vectors, event bodies, prompt ASTs and datasets,
# copied into the repository unchanged (tests/fixtures/agentmark/README.md).
AGENTMARK = Path(__file__).resolve().parent / "fixtures" / "agentmark"
# `serve` refuses secrets shorter than 16 characters (gateway.config.MIN_SECRET_LENGTH).
SECRET = "test-secret-on-loopback-only"
# The Rust example runner's own target directory (see `make test`).
RUST_RUNNER_TARGET = Path(__file__).resolve().parent.parent / "target" / "rust-runner"


def _uses_rust_runner(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    return "rust_runner" in getattr(item, "fixturenames", ()) or "rust" in (params.get("any_runner"), params.get("any_gateway"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the Rust example runner go last, with time to wait for its
    build, which `make test` runs in the background while the rest runs."""
    rust = [item for item in items if _uses_rust_runner(item)]
    for item in rust:
        item.add_marker(pytest.mark.timeout(900))
    items[:] = [item for item in items if not _uses_rust_runner(item)] + rust
BODY_LIMIT = 256 * 1024


def agentmark_json(relative: str) -> Any:
    """A file of AgentMark's vectors, events, ASTs or datasets, unchanged."""
    return json.loads((AGENTMARK / relative).read_text())


@pytest.fixture(params=["rust", "python"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The Rust extension and its pure-Python twin, in turn."""
    return _core if request.param == "rust" else _fallback


class HttpServer:
    """A Quart app served by a real Hypercorn on a loopback port, in the test loop."""

    def __init__(self, app: Quart) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HttpServer:
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 1
        self._task = asyncio.create_task(hypercorn_serve(self.app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        await wait_for_port(self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 10)


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    async with HttpServer(fake.app) as server:
        fake.url = server.url + "/v1"  # type: ignore[attr-defined]
        yield fake


def exact_match_json(params: dict[str, Any]) -> dict[str, Any]:
    """The eval the sentiment fixture prompt names: output equals the expected JSON."""
    expected = params["expectedOutput"]
    passed = params["output"] == (json.loads(expected) if isinstance(expected, str) else expected)
    return {"score": 1 if passed else 0, "passed": passed, "label": "match" if passed else "mismatch"}


@pytest.fixture(scope="session")
async def openai_runner(fake_openai: FakeOpenAI) -> AsyncIterator[str]:
    """The reference runner: AgentMark's runtime (datasets from the
    fixtures) and the OpenAI executor, its real client pointed at the fake API."""
    from agentmark.prompt_core import FileLoader, create_agentmark

    client = openai.AsyncOpenAI(api_key="test-key", base_url=fake_openai.url, max_retries=0)  # type: ignore[attr-defined]
    agentmark = create_agentmark(loader=FileLoader(str(AGENTMARK / "datasets")), scorers={"exact_match_json": exact_match_json})
    runner = AgentMarkRunner(agentmark, OpenAIExecutor(client, backoff=0.01))
    server, port = await start(runner, "127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await client.close()


@pytest.fixture(scope="session")
async def scripted() -> AsyncIterator[tuple[ScriptedRunner, str]]:
    runner = ScriptedRunner()
    server, port = await start(runner, "127.0.0.1:0")
    yield runner, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
def scripted_runner(scripted: tuple[ScriptedRunner, str]) -> ScriptedRunner:
    runner = scripted[0]
    runner.script, runner.experiment_script, runner.pause, runner.evals = [], [], 0.0, []
    runner.seen.clear()
    runner.cancelled.clear()
    return runner


def gateway_config(runner: str, **settings: Any) -> GatewayConfig:
    """A test gateway's settings; each gets an alert outbox of its own."""
    import tempfile

    outbox = str(Path(tempfile.mkdtemp(prefix="agentmark-gw-test-")) / "alerts.sqlite3")
    values: dict[str, Any] = {"alerts_db": outbox, **settings}
    return GatewayConfig(secrets=(SECRET,), runners=(runner,), bind="127.0.0.1:0", max_body_bytes=BODY_LIMIT, **values)


# Both readers of streamed runner answers (`runner_client`): the Rust client,
# the default, and its twin, grpc.aio. Every test on the two shared gateways
# below runs on each; gateways a test builds itself use the default.
RUNNER_CLIENTS = ("rust", "grpcio")


@pytest.fixture(scope="session", params=RUNNER_CLIENTS)
async def gateway(openai_runner: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The gateway in front of the OpenAI reference runner. Yields its URL."""
    async with HttpServer(create_app(gateway_config(openai_runner, runner_client=request.param))) as server:
        yield server.url


@pytest.fixture(scope="session", params=RUNNER_CLIENTS)
async def scripted_gateway(scripted: tuple[ScriptedRunner, str], request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The gateway in front of the scripted runner. Yields its URL."""
    async with HttpServer(create_app(gateway_config(scripted[1], runner_client=request.param))) as server:
        yield server.url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def signed(body: bytes | dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """A body and the headers AgentMark would send with it."""
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return raw, {"content-type": "application/json", "x-agentmark-signature-256": _core.sign(secret, raw)}


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
async def rust_runner(fake_openai: FakeOpenAI) -> AsyncIterator[str]:
    """The Rust example runner (examples/runner-rust), built with cargo and run
    as a process, its model calls going to the fake API. A thin runner: it
    reads no datasets, the gateway sends it rendered items."""
    # The same command `make test` starts in the background: waits for that build, or does it.
    build = await asyncio.create_subprocess_exec(
        "cargo", "build", "--quiet", "-p", "agentmark-runner-rust", "--target-dir", str(RUST_RUNNER_TARGET),
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(build.communicate(), 900)
    assert build.returncode == 0, err.decode()[-3000:]
    port = free_port()
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": fake_openai.url}  # type: ignore[attr-defined]
    process = await asyncio.create_subprocess_exec(
        str(RUST_RUNNER_TARGET / "debug" / "agentmark-runner-rust"), "--listen", f"127.0.0.1:{port}",
        env=env, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)


@pytest.fixture(scope="session")
async def rust_gateway(rust_runner: str) -> AsyncIterator[str]:
    """The gateway in front of the Rust example runner, reading dataset runs
    from AgentMark's fixture datasets (`datasets_dir`) and sending them to
    the runner item by item, rendered."""
    async with HttpServer(create_app(gateway_config(rust_runner, datasets_dir=str(AGENTMARK / "datasets")))) as server:
        yield server.url


@pytest.fixture(scope="session")
async def python_gateway(openai_runner: str) -> AsyncIterator[str]:
    """The gateway (default settings) in front of the Python reference runner."""
    async with HttpServer(create_app(gateway_config(openai_runner))) as server:
        yield server.url


@pytest.fixture(params=["python", "rust"])
def any_gateway(request: pytest.FixtureRequest) -> str:
    """The gateway in front of each runner language in turn."""
    return request.getfixturevalue("python_gateway" if request.param == "python" else "rust_gateway")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real PostgreSQL (Debian's) on a loopback port, for the alert outbox.
    Skipped, with the reason printed (pytest runs with -rs), where it cannot
    be started; .ci/run installs it."""
    import glob
    import shutil
    import subprocess

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not binaries or os.geteuid() != 0 or shutil.which("su") is None:
        pytest.skip("PostgreSQL tests need Debian's postgresql package and root to start it (apt-get install postgresql)")
    import tempfile

    bin_dir = binaries[-1]
    # Not under pytest's temporary folder: that is private to root, and the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="agentmark-gw-postgres-"))
    shutil.chown(data, "postgres", "postgres")
    port = free_port()

    def as_postgres(*command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", " ".join(command)], check=True, capture_output=True, timeout=120)

    as_postgres(f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    as_postgres(f"{bin_dir}/pg_ctl", "-D", str(data), "-w", "-l", f"{data}/server.log",
                "-o", f"'-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off'", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        as_postgres(f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def alerts_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty outbox in each store: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "alerts.sqlite3")
    import uuid

    import psycopg

    server = request.getfixturevalue("postgres_server")
    name = f"outbox_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"
