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

from .conftest import SECRET, free_port, wait_for_port
from .servers.fake_openai import FakeOpenAI
from .servers.scripted_runner import ScriptedRunner
from .test_cli import EXE, TEXT_EVENT, environment, run

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "agentmark"


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
