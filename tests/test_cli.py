"""The `agentmark-gw` command, run as users run it: as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from agentmark_gw.runner import events

from .conftest import AGENTMARK, agentmark_json
from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port, wait_for_port
from .test_signature import oracle

pytestmark = pytest.mark.e2e
EXE = [sys.executable, "-m", "agentmark_gw.cli"]
TEXT_EVENT = str(AGENTMARK / "events" / "prompt-run-text.json")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK_", "OPENAI_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.update(extra)
    return env


async def run(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(*EXE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("command", ["serve", "runner", "up", "sign", "send", "config", "conformance", "event", "init", "alerts"])
async def test_every_command_has_help_with_an_example(command: str, tmp_path: Path) -> None:
    code, out, _ = await run(command, "--help", env=environment(tmp_path))
    assert code == 0 and "example: agentmark-gw" in out.replace("OPENAI_API_KEY=... ", "").replace("AGENTMARK_WEBHOOK_SECRET=... ", "")


async def test_sign_prints_the_header_value(tmp_path: Path) -> None:
    code, out, _ = await run("sign", TEXT_EVENT, env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET="s3cret"))
    assert code == 0
    assert out.strip() == oracle("s3cret", Path(TEXT_EVENT).read_bytes())


async def test_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    code, _, err = await run("serve", env=environment(tmp_path))
    assert code == 2
    assert "AGENTMARK_WEBHOOK_SECRET" in err and "Traceback" not in err


async def test_serve_and_send_on_the_pure_python_twin(tmp_path: Path, scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner) -> None:
    """`serve` + `send` end to end, with the byte work forced onto the Python twin."""
    scripted_runner.script = [events.started("trace-1"), events.text_delta("hi"), events.finish("stop")]
    port = free_port()
    env = environment(tmp_path, AGENTMARK_WEBHOOK_SECRET="s3cret-long-enough-for-serve", AGENTMARK_GW_PURE_PYTHON="1")
    gateway = await asyncio.create_subprocess_exec(
        *EXE, "serve", "--runner", scripted[1], "--bind", f"127.0.0.1:{port}", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_for_port(port, timeout=30)
        code, out, err = await run("send", TEXT_EVENT, "--url", f"http://127.0.0.1:{port}/", "--raw", env=env)
        assert code == 0, err
        assert [json.loads(line) for line in out.splitlines()] == [
            {"type": "text", "result": "hi"},
            {"type": "text", "finishReason": "stop"},
            {"type": "done", "traceId": "trace-1"},
        ]
        code, _, err = await run("send", TEXT_EVENT, "--url", f"http://127.0.0.1:{port}/", env={**env, "AGENTMARK_WEBHOOK_SECRET": "wrong"})
        assert code == 1 and err.strip().startswith("HTTP 401: Invalid signature (signed with the secret from AGENTMARK_WEBHOOK_SECRET (sha256 ")
        assert "wrong" not in err
    finally:
        gateway.terminate()
        _, log = await asyncio.wait_for(gateway.communicate(), 20)
    assert "pure-Python twin" in log.decode()


async def test_up_generates_a_secret_that_send_uses(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """The README's first command: gateway and OpenAI runner on embedded defaults."""
    fake_openai.reply = "four"
    port, runner_port = free_port(), free_port()
    env = environment(tmp_path, OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake_openai.url)  # type: ignore[attr-defined]
    up = await asyncio.create_subprocess_exec(
        *EXE, "up", "--bind", f"127.0.0.1:{port}", "--runner-listen", f"127.0.0.1:{runner_port}",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await wait_for_port(port, timeout=30)
        saved = (tmp_path / "state" / "agentmark-gw" / f"gateway-{port}" / "webhook-secret")
        assert saved.stat().st_mode & 0o777 == 0o600
        code, out, err = await run("send", TEXT_EVENT, "--url", f"http://127.0.0.1:{port}/", env=env)
        assert code == 0, err
        assert out.splitlines() == ["four", "finish: stop, 12 in / 1 out tokens"]
    finally:
        up.terminate()
        printed, _ = await asyncio.wait_for(up.communicate(), 20)
    assert saved.read_text().strip() in printed.decode()
    assert agentmark_json("events/prompt-run-text.json")["event"]["type"] == "prompt-run"


async def test_send_reports_a_missing_file_without_a_traceback(tmp_path: Path) -> None:
    code, _, err = await run("send", str(tmp_path / "absent.json"), env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET="s"))
    assert code == 2
    assert err.strip() == f"error: cannot read {tmp_path / 'absent.json'}: No such file or directory"


async def test_sign_uses_the_first_of_several_secrets(tmp_path: Path) -> None:
    code, out, _ = await run("sign", TEXT_EVENT, env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET="new, old"))
    assert code == 0 and out.strip() == oracle("new", Path(TEXT_EVENT).read_bytes())


async def test_send_fails_when_the_stream_ends_in_an_error(tmp_path: Path, scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner) -> None:
    from agentmark_gw.gateway import create_app

    from .conftest import SECRET, HttpServer, gateway_config

    scripted_runner.script = [events.text_delta("a"), events.error("model refused")]
    async with HttpServer(create_app(gateway_config(scripted[1]))) as server:
        code, out, err = await run("send", TEXT_EVENT, "--url", server.url + "/", "--raw", env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=SECRET))
        assert code == 1
        assert out.splitlines()[-1] == '{"type":"error","error":"model refused"}'
        code, out, err = await run("send", TEXT_EVENT, "--url", server.url + "/", env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=SECRET))
    assert code == 1
    assert out.splitlines() == ["a"] and err.strip() == "error: model refused"


async def test_init_runner_scaffolds_a_project_whose_test_passes(tmp_path: Path) -> None:
    target = tmp_path / "my-runner"
    code, out, err = await run("init", "runner", str(target), env=environment(tmp_path))
    assert code == 0, err
    assert {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} == {
        "runner.py", "tests/test_runner.py", "pyproject.toml", "README.md", "data/.gitkeep",
    }
    test = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=target,
        env=environment(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(test.communicate(), 120)
    assert test.returncode == 0, output.decode()[-2000:]
    code, _, err = await run("init", "runner", str(target), env=environment(tmp_path))
    assert code == 2 and "will not overwrite" in err


async def test_sign_loads_neither_quart_nor_grpc(tmp_path: Path) -> None:
    """A command that only reads the settings stays light: the app (Quart,
    gRPC, OpenTelemetry) loads only for the commands that serve."""
    probe = (
        "import sys; from agentmark_gw.cli import main; code = main(['sign', sys.argv[1]]); "
        "heavy = sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('quart', 'grpc', 'hypercorn')}); "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, TEXT_EVENT, env=environment(tmp_path, AGENTMARK_WEBHOOK_SECRET="s3cret-for-sign-tests"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert "HEAVY []" in err.decode()
