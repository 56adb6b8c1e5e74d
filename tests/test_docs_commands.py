"""Every command in README.md and docs/ runs as written, in order.

Each document is read like a user would: its ```bash blocks, top to bottom,
typed into one shell (so `source`, `export` and `cd` carry over), in a
folder that holds the checkout and nothing the docs do not create, with a
fresh HOME and state folder. A command must exit 0; a command ending in `&`
runs in the background and the next one waits for the port it listens on.
The model is the fake OpenAI-compatible server on loopback, reached through
`OPENAI_API_KEY` and `OPENAI_BASE_URL`, as the docs tell a user to set them.

What cannot run here is named in `NOT_RUN_HERE` with its reason, and a
placeholder the reader fills in (`...`) in `PLACEHOLDERS`. Both tables must
match the docs exactly: a command added, changed or removed without them
fails the suite, so docs and code cannot drift apart silently.

Commands named in running text (`agentmark-gw alerts list --status`) are
checked too: the subcommand and every flag must exist.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentmark_gw.cli import build_parser

from .servers.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAKE_UP_PORTS = (8080, 50051)  # the embedded defaults the docs name

# Commands that need what this machine has not got. Keyed by the command as
# written (continuation lines joined); the reason is printed when skipped.
NOT_RUN_HERE: dict[str, str] = {
    "make test": "the suite this test belongs to",
    "docker build": "no Docker engine here; tests/test_deploy_artifacts.py checks the Dockerfile",
    "docker run": "no Docker engine here",
    "kubectl": "no Kubernetes cluster here; tests/test_deploy_artifacts.py checks the manifests",
    "kustomize edit": "edits the checked-in kustomization; tests/test_deploy_artifacts.py builds it",
    "cd deploy/kubernetes": "only for the kubectl and kustomize steps that follow",
    "protoc": "protoc's Go and Java plugins are not here; `make protos` runs protoc on the same file for the Python stubs",
    "npm install": "no npm registry here",
    "go run": "no Go toolchain here; tests/test_conformance_model.py checks a runner built the same way (ThinRunner)",
}

# A value the reader supplies, and what the test supplies for it.
PLACEHOLDERS: dict[str, tuple[str, str]] = {
    "export AGENTMARK_WEBHOOK_SECRET=...": ("...", secrets.token_urlsafe(24)),
}

# Commands that serve until stopped: run in the background, as a reader runs
# them in a shell of their own, and waited for until they listen.
SERVES_UNTIL_STOPPED = ("make up", "agentmark-gw serve", "agentmark-gw runner", "agentmark-gw up", ".venv/bin/agentmark-gw up")

# Documents that begin where another left off: the alerting guide's commands
# talk to the gateway the quick start started.
GIVEN: dict[str, list[str]] = {
    "docs/alerting.md": ["make up &"],
}

COMMAND_TIMEOUT = 240.0  # `make up` may install first on a stale .venv
PORT_TIMEOUT = 240.0


# --- reading the docs ----------------------------------------------------------


@dataclass
class Command:
    document: str
    line: int
    text: str

    @property
    def background(self) -> bool:
        """Ends in `&`, or serves until stopped (the reader opens another shell)."""
        if self.text.endswith("&") and not self.text.endswith("&&"):
            return True
        return any(_starts(self.text, prefix) for prefix in SERVES_UNTIL_STOPPED)

    @property
    def skip_reason(self) -> str | None:
        return next((reason for prefix, reason in NOT_RUN_HERE.items() if _starts(self.text, prefix)), None)


def _without_comment(text: str) -> str:
    return re.sub(r"\s+#.*$", "", text).strip()


def _starts(text: str, prefix: str) -> bool:
    return text == prefix or text.startswith(prefix + " ")


def shell_blocks(path: Path) -> list[Command]:
    """The commands of every ```bash / ```sh block: continuation lines joined,
    comments and blank lines dropped."""
    commands: list[Command] = []
    text = path.read_text()
    relative = str(path.relative_to(ROOT))
    for match in re.finditer(r"^```(bash|sh|shell)\n(.*?)^```", text, re.M | re.S):
        first_line = text.count("\n", 0, match.start(2)) + 1
        pending = ""
        start = first_line
        for offset, raw in enumerate(match.group(2).splitlines()):
            if not pending:
                start = first_line + offset
            line = raw.strip()
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            whole = _without_comment(pending + line)
            pending = ""
            if whole and not whole.startswith("#"):
                commands.append(Command(relative, start, whole))
    return commands


def inline_commands(path: Path) -> list[str]:
    """`agentmark-gw ...` and `make ...` named in running text."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return [span for span in re.findall(r"`([^`\n]+)`", text) if re.match(r"(\.venv/bin/)?agentmark-gw |make [a-z]", span)]


def all_commands() -> list[Command]:
    return [command for document in DOCUMENTS for command in shell_blocks(document)]


# --- checking a command line against the CLI -----------------------------------


def _words(command: str) -> list[list[str]]:
    """The simple commands of a line: split on pipes, `&&`, `;` and `&`."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in ("|", "||", "&&", ";", "&"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return dict(action.choices)
    return {}


def cli_problems(command: str) -> list[str]:
    """What is wrong with the `agentmark-gw` and `make` invocations in a line."""
    problems = []
    makefile = (ROOT / "Makefile").read_text()
    for words in _words(command):
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value before the command
        if not words:
            continue
        if words[0] == "make":
            for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
                if not re.search(rf"^{re.escape(target)}:", makefile, re.M):
                    problems.append(f"make has no target {target!r}")
        elif words[0].endswith("agentmark-gw"):
            parser = build_parser()
            rest = words[1:]
            while rest and rest[0] in _subparsers(parser):
                parser = _subparsers(parser)[rest[0]]
                rest = rest[1:]
            known = {option for action in parser._actions for option in action.option_strings}  # noqa: SLF001
            for word in rest:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and flag not in known:
                    problems.append(f"`{' '.join(words[:2])}` has no option {flag}")
    return problems


# --- a shell session, as a reader would type it ---------------------------------


@dataclass
class Session:
    workdir: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    count: int = 0
    jobs: list[int] = field(default_factory=list)  # process groups of background commands

    async def __aenter__(self) -> Session:
        self.process = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc", cwd=self.workdir, env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        # Job control: each background command in a process group of its own,
        # so stopping it (as Ctrl-C would) reaches everything it started.
        await self._type("set -m\n")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        await self.stop_background()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    async def stop_background(self) -> None:
        """Ctrl-C for every background command, then SIGKILL for what is left."""
        for sig, wait in ((signal.SIGINT, 15.0), (signal.SIGKILL, 5.0)):
            for group in self.jobs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(_group_alive(group) for group in self.jobs):
                await asyncio.sleep(0.1)
        self.jobs.clear()
        await _ports_free(MAKE_UP_PORTS, 20.0)

    async def _type(self, script: str) -> None:
        assert self.process is not None and self.process.stdin
        self.process.stdin.write(script.encode())
        await self.process.stdin.drain()

    async def run(self, command: Command, text: str) -> tuple[int, str]:
        """Type one command; its exit status and what it printed."""
        assert self.process is not None and self.process.stdout
        self.count += 1
        out = self.workdir.parent / f"out-{self.count}.txt"
        marker = f"__done_{self.count}__"
        ports = _ports_of(text) if command.background else ()
        if any(_listening(port) for port in ports):
            # The reader stops what the docs started earlier before starting
            # the next server on the same port.
            await self.stop_background()
        if command.background:
            script = f"{{ {text.rstrip(' &')} ; }} </dev/null >{shlex.quote(str(out))} 2>&1 &\necho {marker} $!\n"
        else:
            script = f"{{ {text}\n}} </dev/null >{shlex.quote(str(out))} 2>&1\necho {marker} $?\n"
        await self._type(script)
        try:
            while True:
                line = (await asyncio.wait_for(self.process.stdout.readline(), COMMAND_TIMEOUT)).decode()
                if not line:
                    raise AssertionError(f"the shell ended during {text!r}")
                if line.startswith(marker):
                    value = int(line.split()[1])
                    break
        except TimeoutError:
            raise AssertionError(f"{command.document}:{command.line}: {text!r} did not finish in {COMMAND_TIMEOUT:.0f} s") from None
        if not command.background:
            return value, out.read_text(errors="replace") if out.exists() else ""
        self.jobs.append(value)
        try:
            await _ports_open(ports, PORT_TIMEOUT)
        except TimeoutError:
            printed = out.read_text(errors="replace") if out.exists() else ""
            raise AssertionError(f"{command.document}:{command.line}: {text!r} never listened on {ports}:\n{printed[-3000:]}") from None
        return 0, out.read_text(errors="replace") if out.exists() else ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _ports_of(command: str) -> tuple[int, ...]:
    if _starts(command.rstrip(" &"), "make up"):
        return MAKE_UP_PORTS
    return tuple(int(port) for port in re.findall(r"--(?:listen|bind) [\w.\[\]:]*:(\d+)", command))


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def _ports_open(ports: tuple[int, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(_listening(port) for port in ports):
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.2)


async def _ports_free(ports: tuple[int, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_listening(port) for port in ports) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def reader_folder(tmp_path: Path) -> Path:
    """A folder that looks like the checkout: every top-level entry linked,
    so files the docs create (rows.json, data/, my-runner/) land here."""
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "target"):
            (work / entry.name).symlink_to(entry)
    return work


def reader_environment(tmp_path: Path, fake_openai: FakeOpenAI) -> dict[str, str]:
    venv_bin = str(ROOT / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK", "OPENAI", "VIRTUAL_ENV", "PYTEST", "XDG_"))}
    home = tmp_path / "home"
    home.mkdir()
    env.update(
        PATH=path,
        HOME=str(home),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=fake_openai.url,  # type: ignore[attr-defined]
        CARGO_HOME=os.environ.get("CARGO_HOME", str(Path.home() / ".cargo")),
        RUSTUP_HOME=os.environ.get("RUSTUP_HOME", str(Path.home() / ".rustup")),
        PYENV_ROOT=os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv")),
        MAKEFLAGS="",
    )
    return env


# --- the tests -------------------------------------------------------------------


def test_the_tables_match_the_docs() -> None:
    """Every skip and placeholder names a command the docs still have."""
    texts = [command.text for command in all_commands()]
    for prefix in NOT_RUN_HERE:
        assert any(_starts(text, prefix) for text in texts), f"NOT_RUN_HERE names {prefix!r}, which no doc has any more"
    for written in PLACEHOLDERS:
        assert written in texts, f"PLACEHOLDERS names {written!r}, which no doc has any more"
    for document in GIVEN:
        assert (ROOT / document).exists(), document
    for written in EXPECTED_OUTPUT:
        assert written in texts, f"EXPECTED_OUTPUT names {written!r}, which no doc has any more"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_commands_exist(document: Path) -> None:
    """Commands in blocks and in running text name real subcommands, flags and make targets."""
    problems = [f"{command.line}: {problem}" for command in shell_blocks(document) for problem in cli_problems(command.text)]
    problems += [f"`{span}`: {problem}" for span in inline_commands(document) for problem in cli_problems(span)]
    assert not problems, f"{document.name}:\n" + "\n".join(problems)


RUNNABLE = [d for d in DOCUMENTS if any(c.skip_reason is None for c in shell_blocks(d))]


@pytest.mark.e2e
@pytest.mark.timeout(900)
@pytest.mark.parametrize("document", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
async def test_documented_commands_run(document: Path, tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    if not (ROOT / ".venv" / "bin" / "agentmark-gw").exists():
        pytest.skip("the docs assume `make install` has made .venv")
    # `make up` installs first when .venv is older than the sources; here that
    # would reinstall the project from the reader's folder into the real .venv.
    stale = subprocess.run(["make", "-q", ".venv/.installed"], cwd=ROOT, capture_output=True, check=False)
    assert stale.returncode == 0, "`.venv` is older than pyproject.toml or the Rust sources: run `make install` (as `make test` does) first"
    busy = [port for port in MAKE_UP_PORTS if _listening(port)]
    assert not busy, f"ports {busy} are taken by something else; the docs' commands need them"
    relative = str(document.relative_to(ROOT))
    given = [Command(relative, 0, text) for text in GIVEN.get(relative, [])]
    commands = given + shell_blocks(document)
    workdir = reader_folder(tmp_path)
    ran: list[str] = []
    async with Session(workdir, reader_environment(tmp_path, fake_openai)) as shell:
        for command in commands:
            if command.skip_reason:
                continue
            text = command.text
            if text in PLACEHOLDERS:
                placeholder, value = PLACEHOLDERS[text]
                text = text.replace(placeholder, value)
            assert "..." not in text, f"{relative}:{command.line}: {text!r} has a placeholder the test does not fill"
            status, printed = await shell.run(command, text)
            ran.append(text)
            assert status == 0, f"{relative}:{command.line}: {text!r} exited {status}:\n{printed[-4000:]}"
            assert "Traceback (most recent call last)" not in printed, f"{relative}:{command.line}: {text!r} printed a traceback:\n{printed[-4000:]}"
            check = EXPECTED_OUTPUT.get(text)
            if check:
                for needle in check:
                    assert needle in printed, f"{relative}:{command.line}: {text!r} should print {needle!r}; it printed:\n{printed[-4000:]}"
    assert ran, f"{relative}: nothing ran"


# What a command must print, beyond exiting 0: the docs promise these.
EXPECTED_OUTPUT: dict[str, list[str]] = {
    # README.md and the quick start show both forms of `send`'s output.
    ".venv/bin/agentmark-gw send examples/prompt-run.json": ["finish: stop, "],
    # docs/runners.md: the kit with its model in the loop runs its model checks.
    "agentmark-gw conformance --runner 127.0.0.1:50051 --serve-model 8765": ["rendered", "cancel-model", "dataset-escape", "0 failed"],
    ".venv/bin/agentmark-gw send examples/prompt-run.json --raw": ['{"type":"text","result":', '"finishReason":"stop"'],
    ".venv/bin/agentmark-gw event dataset-run --ast examples/agentmark/sentiment.prompt.json --dataset sentiment.jsonl"
    " | .venv/bin/agentmark-gw send - --json rows.json": [
        "exact_match_json",
    ],
}
