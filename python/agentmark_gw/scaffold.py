"""`agentmark-gw init runner DIR`: a new Python runner project.

The project is AgentMark's runtime with the OpenAI executor (the ten-line
runner), a test that serves it and runs the conformance kit's checks that
need no model, a pyproject and a README. It refuses to write over files.
"""

from __future__ import annotations

from pathlib import Path

# Not 50051: that is where `make up` / `agentmark-gw up` put their runner.
DEFAULT_LISTEN = "127.0.0.1:50052"

RUNNER = '''\
"""{name}: an AgentMark runner for agentmark-gw."""

import argparse
import sys
from pathlib import Path

from agentmark.prompt_core import FileLoader, create_agentmark

from agentmark_gw.runner import BUILTIN_SCORERS, AgentMarkRunner, OpenAIExecutor, connect_agentmark, serve

# Your evals, by the names your prompts' test_settings.evals use
# (exact_match and exact_match_json are built in).
SCORERS = {{
    **BUILTIN_SCORERS,
    "non_empty": lambda p: {{"score": int(bool(p["output"])), "passed": bool(p["output"])}},
}}

# Datasets resolve under data/ beside this file, wherever it is run from; with the
# dashboard's AGENTMARK_API_KEY and AGENTMARK_APP_ID set, they come from AgentMark
# instead, and every run is traced to its dashboard.
DATA = Path(__file__).resolve().parent / "data"
loader = connect_agentmark(FileLoader(str(DATA)))
runner = AgentMarkRunner(create_agentmark(loader=loader, scorers=SCORERS), OpenAIExecutor())

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve this runner over gRPC for agentmark-gw.")
    parser.add_argument("--listen", default="{listen}", metavar="HOST:PORT", help="default {listen}")
    listen = parser.parse_args().listen
    try:
        serve(runner, listen)
    except OSError as exc:  # a port in use, or an address that is not this machine's: one line, no traceback
        sys.exit(f"error: {{exc}} (use --listen HOST:PORT to choose another)")
'''

TEST = '''\
"""The runner answers the conformance kit's checks that need no model."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentmark_gw import conformance  # noqa: E402
from agentmark_gw.runner import start  # noqa: E402
from runner import runner  # noqa: E402


def test_conformance_without_a_model() -> None:
    async def check() -> list:
        server, port = await start(runner, "127.0.0.1:0")
        try:
            return await conformance.run_kit(f"127.0.0.1:{{port}}", only={{"health", "get-evals", "alert", "malformed-ast"}})
        finally:
            await server.stop(0)

    results = asyncio.run(check())
    assert [r.reason for r in results if not r.passed] == []
'''

PYPROJECT = '''\
[project]
name = "{name}"
version = "0.1.0"
description = "An AgentMark runner for agentmark-gw"
requires-python = ">=3.12"
dependencies = ["agentmark-gw"]

[project.optional-dependencies]
test = ["pytest>=8"]
'''

README = '''\
# {name}

An AgentMark runner: AgentMark's runtime (your prompts, datasets and evals)
with the OpenAI executor, served over gRPC for agentmark-gw.

agentmark-gw is not on PyPI: use the Python it is installed in (in its
checkout, `.venv/bin/python`), or install it into yours from the checkout
with `python -m pip install -e /path/to/agentmark-gw`.

```bash
python -m pytest                                # the conformance checks that need no model
OPENAI_API_KEY=... python runner.py             # listens on {listen}; --listen HOST:PORT for another
agentmark-gw serve --runner {listen}    # in front of it (needs AGENTMARK_WEBHOOK_SECRET)
agentmark-gw conformance --write-dataset data && agentmark-gw conformance --runner {listen}
```

- `data/`: datasets (`.jsonl`) that dataset runs name; paths outside it are refused.
- `SCORERS` in `runner.py`: your evals (`exact_match` and `exact_match_json` are built in).
- Tools: `OpenAIExecutor(tools={{"name": Tool(description, json_schema, function)}})`.
'''


def scaffold_runner(directory: str | Path) -> list[Path]:
    """Write the project into `directory` (created if needed). Returns the files written."""
    root = Path(directory)
    name = root.resolve().name.replace("_", "-") or "agentmark-runner"
    files = {
        root / "runner.py": RUNNER.format(name=name, listen=DEFAULT_LISTEN),
        root / "tests" / "test_runner.py": TEST.format(),
        root / "pyproject.toml": PYPROJECT.format(name=name),
        root / "README.md": README.format(name=name, listen=DEFAULT_LISTEN),
        root / "data" / ".gitkeep": "",
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise FileExistsError(f"will not overwrite {', '.join(existing)}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)


def next_steps(directory: str, python: str) -> list[str]:
    """Commands that work as printed from where `init runner` was run: with
    `python`, the interpreter that has agentmark-gw (it is not on PyPI, so a
    plain `pip install` of the project could not resolve it)."""
    import importlib.util
    import shlex

    py = shlex.quote(python)
    steps = [f"cd {shlex.quote(directory)}"]
    if importlib.util.find_spec("pytest") is None:
        steps.append(f"{py} -m pip install pytest")
    steps += [f"{py} -m pytest -q", f"OPENAI_API_KEY=... {py} runner.py"]
    return steps
