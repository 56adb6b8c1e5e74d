"""The Rust runner client (rust/src/runner_client.rs) on its own, against a
real grpc.aio runner on loopback: it reads ahead of Python only so far (a
call nobody reads holds the runner back, as grpc.aio's on-demand reads do),
hands every message over in order, and a cancel reaches the runner. The
gateway's end-to-end tests cover it in the pool (see conftest.RUNNER_CLIENTS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmark_gw import _accel
from agentmark_gw.gateway.config import GatewayConfig
from agentmark_gw.gateway.runners import RunnerClient, RustClient, RustStream, _rust_client
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import PromptRequest, Runner, events, start
from agentmark_gw.runner.service import QUEUE_EVENTS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(_accel.core, "RunnerClientHub"), reason="the Rust extension is not built"),
]

DELTA = events.text_delta("x" * 16 * 1024)
COUNT = 2048  # 32 MiB of messages


class Producer(Runner):
    """Streams COUNT deltas of 16 KiB, one message each; counts them."""

    def __init__(self) -> None:
        self.produced = 0
        self.cancelled = asyncio.Event()

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        try:
            for _ in range(COUNT):
                yield DELTA
                self.produced += 1
                await asyncio.sleep(0)  # one message each: the SDK sends what is queued
            yield events.finish("stop")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def producer() -> AsyncIterator[tuple[Producer, str]]:
    runner = Producer()
    server, port = await start(runner, "127.0.0.1:0")
    yield runner, f"127.0.0.1:{port}"
    await server.stop(0)


def request() -> bytes:
    return pb.RunPromptRequest(kind=pb.PROMPT_KIND_TEXT, ast_json="{}", should_stream=True).SerializeToString()


def open_stream(client: RustClient, target: str, timeout: float = 30.0) -> RustStream:
    channel = client.hub.channel(target, 64 << 20, 64 << 20)
    call = client.hub.open(channel, "/agentmark.runner.v1.Runner/RunPrompt", request(), [("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")], timeout)
    return RustStream(call, client, target, False)


async def test_a_call_nobody_reads_holds_its_runner_back_then_gives_every_message_in_order(producer: tuple[Producer, str]) -> None:
    runner, target = producer
    client = RustClient()
    try:
        stream = open_stream(client, target)
        await asyncio.sleep(1.5)  # nothing read meanwhile
        held_back = runner.produced
        messages = []
        while (message := await stream.next()) is not None:
            messages.append(message)
    finally:
        client.close()
    # The SDK queues QUEUE_EVENTS events of its own before it waits; past
    # those, what went on the wire is the client's 1 MiB read-ahead plus
    # HTTP/2's windows: a few MiB, far from all 32.
    sent = held_back - QUEUE_EVENTS
    assert sent * DELTA.ByteSize() < 8 * 1024 * 1024, held_back
    events_read = [e for m in messages for e in pb.RunnerEvents.FromString(m).events]
    assert len(events_read) == COUNT + 1 and events_read[-1].WhichOneof("event") == "finish"


async def test_a_cancelled_call_reaches_the_runner(producer: tuple[Producer, str]) -> None:
    runner, target = producer
    client = RustClient()
    try:
        stream = open_stream(client, target)
        assert await stream.next() is not None
        stream.cancel()
        await asyncio.wait_for(runner.cancelled.wait(), 5)
    finally:
        client.close()


async def test_a_dead_target_fails_at_once_as_unavailable() -> None:
    from agentmark_gw.gateway.errors import Refusal

    client = RustClient()
    try:
        stream = open_stream(client, "127.0.0.1:1")  # nothing listens there
        with pytest.raises(Refusal) as failed:
            await asyncio.wait_for(stream.next(), 10)
    finally:
        client.close()
    assert failed.value.message.startswith("Runner failed: UNAVAILABLE")


async def test_targets_the_client_cannot_take_are_read_with_grpc_aio() -> None:
    config = GatewayConfig(secrets=("s" * 32,), runners=("unix:/tmp/agentmark-gw-none.sock", "127.0.0.1:1"))
    runners = [RunnerClient(target, []) for target in config.runners]
    client: Any = _rust_client(config, runners)
    try:
        assert runners[0].rust_channel is None and runners[1].rust_channel is not None
    finally:
        client.close()
        for runner in runners:
            await runner.channel.close()
