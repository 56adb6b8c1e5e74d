"""The soak, in its two-minute version: the gateway, the reference runner
and a fake OpenAI server as processes, a steady mix of events with injected
faults, the gateway's memory and descriptors watched (benchmarks/soak.py;
`make soak` runs ten minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import markdown, run_soak

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
async def test_two_minutes_of_mixed_events_leave_memory_and_descriptors_where_they_were(tmp_path: Path) -> None:
    # A 10 s keep-alive timeout: Hypercorn holds a connection the client closed
    # that long, and descriptors are counted after it (75 s would not fit).
    report = await run_soak(120, 25, warmup=30, keep_alive_timeout=10, workdir=tmp_path)
    summary = markdown(report)
    print(summary)
    assert report["soak"]["sent"] == 120 * 25
    assert report["criteria"] == dict.fromkeys(report["criteria"], True), summary
