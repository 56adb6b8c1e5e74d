"""`agentmark-gw init runner DIR`: a new Python runner project.

The project is AgentMark's runtime with the OpenAI executor (the ten-line
runner), a test that serves it and runs the conformance kit's checks that
need no model, a pyproject and a README. It refuses to write over files.
"""

from __future__ import annotations

from pathlib import Path

RUNNER = '''\
"""{name}: an AgentMark runner for agentmark-gw."""

from agentmark.prompt_core import FileLoader, create_agentmark

from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, serve

# Your evals, by the names your prompts' test_settings.evals use.
SCORERS = {{
    "exact_match": lambda p: {{"score": int(p["output"] == p["expectedOutput"]), "passed": p["output"] == p["expectedOutput"]}},
}}

runner = AgentMarkRunner(create_agentmark(loader=FileLoader("data"), scorers=SCORERS), OpenAIExecutor())

if __name__ == "__main__":
    serve(runner, "127.0.0.1:50051")
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
            return await conformance.run_kit(f"127.0.0.1:{{port}}", only={{"health", "get-evals", "alert", "malformed AST"}})
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

```bash
pip install -e '.[test]'
OPENAI_API_KEY=... python runner.py            # listens on 127.0.0.1:50051
agentmark-gw serve --runner 127.0.0.1:50051    # in front of it (needs AGENTMARK_WEBHOOK_SECRET)
agentmark-gw conformance --write-dataset data && agentmark-gw conformance --runner 127.0.0.1:50051
pytest
```

- `data/`: datasets (`.jsonl`) that dataset runs name; paths outside it are refused.
- `SCORERS` in `runner.py`: your evals.
- Tools: `OpenAIExecutor(tools={{"name": Tool(description, json_schema, function)}})`.
'''


def scaffold_runner(directory: str | Path) -> list[Path]:
    """Write the project into `directory` (created if needed). Returns the files written."""
    root = Path(directory)
    name = root.resolve().name.replace("_", "-") or "agentmark-runner"
    files = {
        root / "runner.py": RUNNER.format(name=name),
        root / "tests" / "test_runner.py": TEST.format(),
        root / "pyproject.toml": PYPROJECT.format(name=name),
        root / "README.md": README.format(name=name),
        root / "data" / ".gitkeep": "",
    }
    existing = [str(p) for p in files if p.exists()]
    if existing:
        raise FileExistsError(f"will not overwrite {', '.join(existing)}")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
