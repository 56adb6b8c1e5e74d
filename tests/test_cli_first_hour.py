"""The CLI's first hour (issue 16, items 5-7, and issue 17 L1, L2): what a
new user runs, run as they run it, as subprocesses on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentmark_gw.runner import events

from .conftest import SECRET
from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner
from .support.processes import free_port, wait_for_port
from .test_cli import EXE, TEXT_EVENT, environment, run

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "agentmark"


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.asynccontextmanager
async def up(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[tuple[int, list[bytes]]]:
    """`agentmark-gw up` on free ports; yields its port and, once it has stopped, its output."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *EXE, "up", "--bind", f"127.0.0.1:{port}", "--runner-listen", f"127.0.0.1:{free_port()}", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output: list[bytes] = []
    try:
        await wait_for_port(port, timeout=30)
        yield port, output
    finally:
        process.terminate()
        printed, _ = await asyncio.wait_for(process.communicate(), 20)
        output.append(printed)


# --- init runner ------------------------------------------------------------------


async def test_init_runner_next_steps_work_as_printed(tmp_path: Path) -> None:
    """Run from where the user stands, each printed step must succeed; the
    runner it makes does not take `make up`'s port 50051."""
    env = environment(tmp_path)
    process = await asyncio.create_subprocess_exec(
        *EXE, "init", "runner", "my-runner", cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    steps = [line[2:] for line in out.decode().splitlines() if line.startswith("  ")]
    assert steps[0] == "cd my-runner" and steps[-1].endswith("runner.py"), steps
    assert "pip install -e '.[test]'" not in out.decode()
    assert "50051" not in (tmp_path / "my-runner" / "runner.py").read_text()
    # Every step but the last (the runner, which serves until stopped), in one shell, as printed.
    shell = await asyncio.create_subprocess_exec(
        "bash", "-c", " && ".join(steps[:-1]), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    printed, _ = await asyncio.wait_for(shell.communicate(), 180)
    assert shell.returncode == 0, printed.decode()[-2000:]
    # The last step, on a free port (the printed default may be taken on a shared machine).
    port = free_port()
    runner = await asyncio.create_subprocess_exec(
        "bash", "-c", f"{steps[0]} && {steps[-1]} --listen 127.0.0.1:{port}", cwd=tmp_path, env=env,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        await wait_for_port(port, timeout=30)
    finally:
        os.killpg(runner.pid, signal.SIGTERM)  # bash and the runner it started
        await asyncio.wait_for(runner.communicate(), 20)


async def test_the_scaffolded_runner_reports_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    code, _, err = await run("init", "runner", str(tmp_path / "r"), env=environment(tmp_path))
    assert code == 0, err
    with listening() as port:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "runner.py", "--listen", f"127.0.0.1:{port}", cwd=tmp_path / "r",
            env=environment(tmp_path), stderr=asyncio.subprocess.PIPE,
        )
        _, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    assert one_line_error(err_bytes.decode()) == f"error: port {port} on 127.0.0.1 is in use (use --listen HOST:PORT to choose another)"


@pytest.mark.parametrize("command", ["runner", "serve", "up", "up-runner"])
async def test_a_port_in_use_is_one_line_naming_the_flag(command: str, tmp_path: Path) -> None:
    env = environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=SECRET)
    with listening() as port:
        busy = f"127.0.0.1:{port}"
        args = {
            "runner": ["runner", "--listen", busy],
            "serve": ["serve", "--bind", busy],
            "up": ["up", "--bind", busy, "--runner-listen", f"127.0.0.1:{free_port()}"],
            "up-runner": ["up", "--bind", f"127.0.0.1:{free_port()}", "--runner-listen", busy],
        }[command]
        code, _, err = await run(*args, env=env)
    flag = {"runner": "--listen", "serve": "--bind", "up": "--bind", "up-runner": "--runner-listen"}[command]
    assert code != 0
    assert one_line_error(err) == f"error: port {port} on 127.0.0.1 is in use (something else listens there; use {flag} to choose another)"


# --- instances ------------------------------------------------------------------


async def test_two_gateways_keep_their_own_state(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    """Two `up`s under one XDG_STATE_HOME: two secrets, two outboxes; each
    command reads the instance it is pointed at; `config check` agrees with
    `up`; the dataset example is scored; no Hypercorn warning."""
    env = environment(tmp_path, OPENAI_API_KEY="test-key", OPENAI_BASE_URL=fake_openai.url)  # type: ignore[attr-defined]
    async with up(tmp_path, env, "--data-dir", str(EXAMPLES)) as (a, a_output), up(tmp_path, env) as (b, b_output):
        state = tmp_path / "state" / "agentmark-gw"
        secret_a, secret_b = (state / f"gateway-{p}" / "webhook-secret" for p in (a, b))
        assert secret_a.read_text() != secret_b.read_text()
        url_a, url_b = f"http://127.0.0.1:{a}/", f"http://localhost:{b}/"

        for url in (url_a, url_b):
            code, out, err = await run("send", TEXT_EVENT, "--url", url, env=env)
            assert code == 0, err
        code, sig_a, _ = await run("sign", TEXT_EVENT, "--url", url_a, env=env)
        code, sig_b, _ = await run("sign", TEXT_EVENT, "--url", url_b, env=env)
        assert sig_a != sig_b

        # An alert through A is in A's outbox only.
        code, body, _ = await run("event", "alert", "--type", "cost", "--status", "triggered", "--id", "only-in-a", env=env)
        (tmp_path / "alert.json").write_text(body)
        code, _, err = await run("send", str(tmp_path / "alert.json"), "--url", url_a, env=env)
        assert code == 0, err
        code, out, err = await run("alerts", "list", "--url", url_a, env=env)
        assert code == 0 and "only-in-a" in out, err
        code, out, err = await run("alerts", "list", "--bind", f"127.0.0.1:{b}", env=env)
        assert "only-in-a" not in out
        code, out, err = await run("alerts", "list", "--state-dir", str(secret_a.parent), "--json", env=env)
        assert [r["alert_id"] for r in json.loads(out)] == ["only-in-a"]

        # `config check` sees what `up` uses, and says where it came from.
        code, out, err = await run("config", "check", "--bind", f"127.0.0.1:{a}", env=env)
        assert code == 0, err
        assert json.loads(out)["secrets"] == "<1 secret(s) hidden>" and json.loads(out)["state_dir"] == str(secret_a.parent)
        assert str(secret_a) in err and secret_a.read_text().strip() not in out + err

        # A's secret against B: the 401 names the file it came from, not the secret.
        code, _, err = await run("send", TEXT_EVENT, "--url", url_b, "--state-dir", str(secret_a.parent), env=env)
        assert code == 1
        assert one_line_error(err).startswith(f"HTTP 401: Invalid signature (signed with the secret from the file {secret_a} (sha256 ")
        assert secret_a.read_text().strip() not in err

        # The example dataset, scored by the built-in exact_match_json.
        code, body, err = await run("event", "dataset-run", "--ast", str(EXAMPLES / "sentiment.prompt.json"), "--dataset", "sentiment.jsonl", env=env)
        (tmp_path / "dataset.json").write_text(body)
        code, out, err = await run("send", str(tmp_path / "dataset.json"), "--url", url_a, env=env)
        assert code == 0, err
        assert re.search(r"exact_match_json \| \d/4 \(\d+%\) \| +\d\.\d\d", out), out

        # A refused dataset run: the error, and no empty table.
        refused = json.loads(body)
        refused["event"]["data"]["datasetPath"] = "missing.jsonl"
        (tmp_path / "refused.json").write_text(json.dumps(refused))
        code, out, err = await run("send", str(tmp_path / "refused.json"), "--url", url_a, env=env)
        assert code == 1 and "error" in err
        assert "rows" not in out and "errors" not in out, out
    for port, output in ((a, a_output[0]), (b, b_output[0])):
        log = output.decode()
        assert f"state in {state / f'gateway-{port}'}" in log
        assert "has no affect" not in log


def test_the_state_dir_setting_and_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentmark_gw.gateway.config import load_config

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = load_config(env={}, bind="0.0.0.0:9001")
    assert config.state_dir == str(tmp_path / "agentmark-gw" / "gateway-9001")
    assert config.alerts_db == str(tmp_path / "agentmark-gw" / "gateway-9001" / "alerts.sqlite3")
    config = load_config(env={"AGENTMARK_GW_STATE_DIR": str(tmp_path / "mine")})
    assert config.alerts_db == str(tmp_path / "mine" / "alerts.sqlite3")
    config = load_config(env={"AGENTMARK_GW_STATE_DIR": str(tmp_path / "mine"), "AGENTMARK_GW_ALERTS_DB": "/elsewhere.db"})
    assert (config.state_dir, config.alerts_db) == (str(tmp_path / "mine"), "/elsewhere.db")


def test_an_outbox_from_before_per_instance_state_is_pointed_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from agentmark_gw.cli import log_state
    from agentmark_gw.gateway.config import load_config

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    with caplog.at_level("INFO", logger="agentmark_gw"):
        log_state(load_config(env={}))
        assert "shared by all gateways" not in caplog.text
        (tmp_path / "agentmark-gw").mkdir()
        (tmp_path / "agentmark-gw" / "alerts.sqlite3").touch()
        log_state(load_config(env={}))
    assert f"state in {tmp_path / 'agentmark-gw' / 'gateway-8080'}" in caplog.text
    assert f"before per-instance state is at {tmp_path / 'agentmark-gw' / 'alerts.sqlite3'}; set alerts_db to it" in caplog.text


# --- send -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("sentiment.prompt.mdx", (EXAMPLES / "sentiment.prompt.mdx").read_bytes(), "is a prompt source (MDX with frontmatter), not an event"),
        ("frontmatter.json", b"---\nname: x\n---\n", "is a prompt source (MDX with frontmatter), not an event"),
        ("empty.json", b"", "error: empty body: "),
        ("blank.json", b" \n", "error: empty body: "),
    ],
)
async def test_send_refuses_what_cannot_be_an_event(name: str, body: bytes, expected: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(body)
    # No secret anywhere: the body is the mistake to name first.
    code, out, err = await run("send", str(path), "--url", f"http://127.0.0.1:{free_port()}/", env=environment(tmp_path))
    line = one_line_error(err)
    assert code == 2 and expected in line and out == ""
    if "prompt source" in expected:
        ast = tmp_path / "sentiment.prompt.json" if name.endswith(".mdx") else "file.prompt.json"
        assert f"agentmark-gw event prompt-run --ast {ast} | agentmark-gw send -" in line
        assert "System" not in line  # the file is not echoed


async def test_line_separators_inside_answers_survive_send(tmp_path: Path, scripted: tuple[ScriptedRunner, str], scripted_runner: ScriptedRunner) -> None:
    """Issue 17 L1: NDJSON is split on \\n only."""
    from agentmark_gw.gateway import create_app

    from .conftest import HttpServer, gateway_config

    text = "a\u2028b\u2029c\u0085d"
    scripted_runner.script = [events.started("t"), events.text_delta(text), events.finish("stop")]
    env = environment(tmp_path, AGENTMARK_WEBHOOK_SECRET=SECRET)
    async with HttpServer(create_app(gateway_config(scripted[1]))) as server:
        code, out, err = await run("send", TEXT_EVENT, "--url", server.url + "/", "--raw", env=env)
        assert code == 0, err
        lines = out.split("\n")[:-1]
        assert [json.loads(line) for line in lines][0] == {"type": "text", "result": text}
        code, out, err = await run("send", TEXT_EVENT, "--url", server.url + "/", env=env)
    assert code == 0, err
    assert out.startswith(text + "\n")


def test_ndjson_lines_split_on_newlines_only() -> None:
    from agentmark_gw.cli import ndjson_lines

    chunks = [b'{"a":"x\xe2\x80', b'\xa8y"}\n{"b"', b":1}\n\n", b'{"c":2}']
    assert list(ndjson_lines(chunks)) == [b'{"a":"x\xe2\x80\xa8y"}', b'{"b":1}', b"", b'{"c":2}']


# --- alerts list ----------------------------------------------------------------


async def test_alerts_list_escapes_what_a_terminal_would_act_on(tmp_path: Path) -> None:
    """Issue 17 L2: ids and errors are shown escaped, one row per line."""
    from agentmark_gw.gateway.alerts import DEFAULT_SINKS, Outbox

    db = tmp_path / "alerts.sqlite3"
    with Outbox(db) as outbox:
        outbox.accept("evil\x1b[2J\nid", "cost", "triggered", "{}", DEFAULT_SINKS, 0)
        (row,) = outbox.claim(10, 30)
        outbox.failed(row["id"], "boom\x1b]0;title\x07\r\nforged row\u2028", 1, 1.0)
    code, out, err = await run("alerts", "list", env=environment(tmp_path, AGENTMARK_GW_ALERTS_DB=str(db)))
    assert code == 0, err
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "\u2028" not in out
    header, shown = out.splitlines()
    assert "evil\\u001b[2J\\nid"[:20] in shown and "boom\\u001b]0;title\\u0007\\r\\nforged row\\u2028" in shown


# --- pipes and help ---------------------------------------------------------------


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    big = tmp_path / "big.prompt.json"
    big.write_text(json.dumps({"type": "root", "children": [{"type": "text", "value": "x" * 1_000_000}]}))
    command = f"{' '.join(EXE)} event prompt-run --ast {big} | head -c 10 >/dev/null; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environment(tmp_path), timeout=60)
    assert done.stdout.strip() in ("0", "141")
    assert done.stderr == ""


def test_every_parser_says_what_it_does() -> None:
    import argparse

    from agentmark_gw.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")

    parsers = dict(walk(build_parser(), "agentmark-gw"))
    assert {"agentmark-gw alerts list", "agentmark-gw config check", "agentmark-gw init runner", "agentmark-gw event get-evals"} <= set(parsers)
    assert [path for path, parser in parsers.items() if not (parser.description or "").strip()] == []


# --- scorers, make up, install ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "output", "expected", "passed"),
    [
        ("exact_match", "Paris", "Paris", True),
        ("exact_match", "Paris ", "Paris", True),
        ("exact_match", "paris", "Paris", False),
        ("exact_match_json", {"sentiment": "positive"}, '{"sentiment": "positive"}', True),
        ("exact_match_json", '{"b": 1, "a": 2}', {"a": 2, "b": 1}, True),
        ("exact_match_json", {"sentiment": "negative"}, '{"sentiment": "positive"}', False),
        ("exact_match_json", "not json", '{"a": 1}', False),
        ("exact_match_json", {"a": 1}, "not json", False),
    ],
)
def test_builtin_scorers(name: str, output: object, expected: object, passed: bool) -> None:
    from agentmark_gw.runner import BUILTIN_SCORERS

    result = BUILTIN_SCORERS[name]({"input": None, "output": output, "expectedOutput": expected})
    assert (result["passed"], result["score"]) == (passed, int(passed))


def test_make_up_serves_the_example_data_directory() -> None:
    def dry_run(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    assert "agentmark-gw up --data-dir examples/agentmark" in dry_run("up")
    assert "agentmark-gw up --data-dir /srv/data" in dry_run("up", "DATA_DIR=/srv/data")
    assert (ROOT / "examples/agentmark/sentiment.jsonl").is_file()


def test_the_install_says_what_it_is_doing() -> None:
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    steps = re.findall(r'^step "([^"]+)"', script, re.MULTILINE)
    assert len(steps) >= 2 and any("Rust" in s and "minute" in s for s in steps)
    # Each quiet pip call is announced by a step just before it.
    lines = script.splitlines()
    assert all(lines[i - 1].startswith("step ") for i, line in enumerate(lines) if "pip install --quiet" in line)


def test_the_readme_shows_what_send_prints_by_default_and_with_raw() -> None:
    readme = (ROOT / "README.md").read_text()
    default, raw = readme.index("`send` shows the answer as it streams"), readme.index("`send --raw` prints AgentMark's NDJSON")
    # The default sample ends as the renderer ends a text answer (tests/test_cli.py checks that format).
    assert re.search(r"^finish: stop, \d+ in / \d+ out tokens$", readme[default:raw], re.MULTILINE)
    assert '{"type":"text","result":' in readme[raw:] and '{"type":"text","result":' not in readme[default:raw]
