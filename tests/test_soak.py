"""The soak, in its short version (30 s after a 15 s warm-up): the gateway, the reference runner
and a fake OpenAI server as processes, a steady mix of events with injected
faults, the gateway's memory and descriptors watched (benchmarks/soak.py;
`make soak` runs ten minutes; this one keeps `make test` within its
eight-minute budget and still catches a leak per request or per connection).

Run as the command people run, so the tests import nothing from benchmarks/."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from .support.processes import ROOT

pytestmark = pytest.mark.e2e
SECONDS = 30


@pytest.mark.timeout(300)
async def test_a_soak_of_mixed_events_leaves_memory_and_descriptors_where_they_were(tmp_path: Path) -> None:
    # A 6 s keep-alive timeout: descriptors are counted once idle keep-alive
    # connections have timed out (75 s would not fit the suite's budget).
    out, summary = tmp_path / "soak.json", tmp_path / "soak.md"
    soak = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.soak", "--duration", str(SECONDS), "--rate", "25", "--warmup", "15",
        "--keep-alive-timeout", "6", "--out", str(out), "--markdown", str(summary), "--workdir", str(tmp_path / "processes"),
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await soak.communicate()
    finally:
        if soak.returncode is None:  # this test was cancelled or timed out: the soak stops its processes on SIGTERM
            soak.terminate()
            await soak.wait()
    assert out.exists(), err.decode()[-3000:]
    report = json.loads(out.read_text())
    print(summary.read_text())
    assert report["soak"]["sent"] == SECONDS * 25
    assert report["criteria"] == dict.fromkeys(report["criteria"], True), summary.read_text()
    assert soak.returncode == 0, err.decode()[-3000:]
