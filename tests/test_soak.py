"""The soak, in its short version (30 s after a 15 s warm-up): the gateway, the reference runner
and a fake OpenAI server as processes, a steady mix of events with injected
faults, the gateway's memory and descriptors watched (benchmarks/soak.py;
`make soak` runs ten minutes; this one keeps `make test` within its
eight-minute budget and still catches a leak per request or per connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import markdown, run_soak

pytestmark = pytest.mark.e2e
SECONDS = 30


@pytest.mark.timeout(300)
async def test_a_soak_of_mixed_events_leaves_memory_and_descriptors_where_they_were(tmp_path: Path) -> None:
    # A 6 s keep-alive timeout: descriptors are counted once idle keep-alive
    # connections have timed out (75 s would not fit the suite's budget).
    report = await run_soak(SECONDS, 25, warmup=15, keep_alive_timeout=6, workdir=tmp_path)
    summary = markdown(report)
    print(summary)
    assert report["soak"]["sent"] == SECONDS * 25
    assert report["criteria"] == dict.fromkeys(report["criteria"], True), summary
