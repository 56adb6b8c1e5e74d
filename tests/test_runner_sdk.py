"""The runner SDK's own behaviour: batching, back-pressure, errors, binding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import Runner, events, start
from agentmark_gw.runner.service import BATCH_BYTES, BATCH_EVENTS, batched


async def collect(source: AsyncIterator[pb.RunnerEvent]) -> list[list[pb.RunnerEvent]]:
    return [
        list(b.events)
        async for b in batched(
            source,
            lambda items: pb.RunnerEvents(events=items),
            lambda exc: events.error(str(exc)),
            terminal=lambda e: e.WhichOneof("event") in ("finish", "error"),
        )
    ]


async def test_events_ready_together_travel_together_up_to_a_cap() -> None:
    async def burst() -> AsyncIterator[pb.RunnerEvent]:
        for i in range(2000):
            yield events.text_delta(str(i))
        yield events.finish("stop")

    batches = await collect(burst())
    assert max(len(b) for b in batches) <= BATCH_EVENTS
    assert len(batches) < 10  # batched, not one message per event
    flat = [e for b in batches for e in b]
    assert [e.text_delta.text for e in flat[:-1]] == [str(i) for i in range(2000)]


async def test_a_batch_stays_under_the_byte_cap() -> None:
    big = "x" * (BATCH_BYTES // 2)

    async def large() -> AsyncIterator[pb.RunnerEvent]:
        for _ in range(5):
            yield events.text_delta(big)
        yield events.finish("stop")

    batches = await collect(large())
    assert all(pb.RunnerEvents(events=b).ByteSize() <= BATCH_BYTES + 64 for b in batches)
    assert sum(len(b) for b in batches) == 6


async def test_nothing_follows_a_terminal_event() -> None:
    async def chatty() -> AsyncIterator[pb.RunnerEvent]:
        yield events.text_delta("a")
        yield events.error("stop here")
        yield events.text_delta("never sent")

    flat = [e for b in await collect(chatty()) for e in b]
    assert [e.WhichOneof("event") for e in flat] == ["text_delta", "error"]


async def test_an_exception_in_the_runner_becomes_an_error_event() -> None:
    async def broken() -> AsyncIterator[pb.RunnerEvent]:
        yield events.text_delta("a")
        raise RuntimeError("model exploded")

    flat = [e for b in await collect(broken()) for e in b]
    assert flat[-1].error.message == "model exploded"


async def test_a_taken_port_is_a_clear_error() -> None:
    server, port = await start(Runner(), "127.0.0.1:0")
    try:
        with pytest.raises(OSError, match=f"^port {port} on 127.0.0.1 is in use$"):
            await start(Runner(), f"127.0.0.1:{port}")
    finally:
        await server.stop(0)


async def test_a_slow_reader_gets_every_event_and_the_end() -> None:
    from agentmark_gw.runner.service import QUEUE_EVENTS

    async def many() -> AsyncIterator[pb.RunnerEvent]:
        for i in range(QUEUE_EVENTS * 3):
            yield events.text_delta(str(i))
        yield events.finish("stop")

    count = 0
    async for batch in batched(many(), lambda items: pb.RunnerEvents(events=items), lambda exc: events.error(str(exc))):
        count += len(batch.events)
        await asyncio.sleep(0.001)  # slower than the producer: the queue fills
    assert count == QUEUE_EVENTS * 3 + 1
