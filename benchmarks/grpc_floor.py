"""What grpc.aio alone costs per message on the paced scenario: the floor
under the gateway's CPU per token while its runner client is grpc.aio.

    .venv/bin/python -m benchmarks.grpc_floor [--streams 100,500] [--tokens 150] [--gap-ms 20]

Starts the benchmark's trivial runner, then, for each count, that many
RunPrompt calls at once (the request bytes the gateway builds for the paced
event, calls started evenly over 1 s, one channel as the gateway has), each
read message by message to the end with grpc.aio on uvloop, as the gateway
reads; nothing is framed or written. Prints this process's CPU per message
received (the gateway's figure without Hypercorn, framing and the
endpoint), beside the runner's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import e2e
from tests.support.processes import HOST, cpu_seconds


async def rust_wave(port: int, request: bytes, streams: int, ramp: float, limit: float) -> tuple[int, int]:
    """As `wave`, read by the gateway's Rust runner client (`RustStream`)."""
    from agentmark_gw.gateway.runners import RustClient, RustStream

    client = RustClient()
    channel = client.hub.channel(f"{HOST}:{port}", 64 << 20, 64 << 20)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    messages = completed = 0

    async def one(k: int) -> None:
        nonlocal messages, completed
        await asyncio.sleep(max(0.0, start + k * ramp / streams - loop.time()))
        stream = RustStream(client.hub.open(channel, "/agentmark.runner.v1.Runner/RunPrompt", request, [], limit), client, "runner", False)
        try:
            while (await stream.next()) is not None:
                messages += 1
            completed += 1
        finally:
            stream.cancel()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(streams)), return_exceptions=True), limit + ramp + 5)
    finally:
        client.close()
    return messages, completed


async def wave(port: int, request: bytes, streams: int, ramp: float, limit: float) -> tuple[int, int]:
    """(messages, calls completed) of one wave, bounded by `limit` seconds."""
    import grpc

    channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
    run_prompt = channel.unary_stream("/agentmark.runner.v1.Runner/RunPrompt")
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    messages = completed = 0

    async def one(k: int) -> None:
        nonlocal messages, completed
        await asyncio.sleep(max(0.0, start + k * ramp / streams - loop.time()))
        call = run_prompt(request, timeout=limit)
        try:
            while (await call.read()) is not grpc.aio.EOF:
                messages += 1
            completed += 1
        finally:
            call.cancel()

    try:
        await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(streams)), return_exceptions=True), limit + ramp + 5)
    finally:
        await channel.close()
    return messages, completed


def _per_message(cpu: float, messages: int) -> str:
    return f"{1e6 * cpu / messages:.1f}" if messages else "n/a"


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="grpc-floor-"))
    servers = e2e.build_servers(["gateway"], secrets.token_urlsafe(16), workdir)
    runner = servers["gateway"].procs["runner"]
    runner.start()
    try:
        await asyncio.sleep(2.0)  # the runner's start-up (no readiness route of its own)
        request = await e2e.gateway_prompt_request(e2e.paced_event(args.tokens, args.gap_ms))
        port = servers["gateway"].runner_port
        assert port is not None
        schedule = args.tokens * args.gap_ms / 1000
        read = rust_wave if args.client == "rust" else wave
        print(f"{args.client} client alone, {args.tokens} one-delta messages per call, one every {args.gap_ms} ms; load {os.getloadavg()[0]:.2f}")
        for streams in args.stream_counts:
            await e2e.settle({"gateway": servers["gateway"]}, 10.0, 3.0)
            mine0, runner0 = sum(os.times()[:2]), cpu_seconds(runner.pid)
            started = time.perf_counter()
            messages, completed = await read(port, request, streams, 1.0, 3 * schedule + 30)
            elapsed = time.perf_counter() - started
            mine, theirs = sum(os.times()[:2]) - mine0, cpu_seconds(runner.pid) - runner0
            print(f"  {streams} calls: {messages} messages, {completed} calls completed in {elapsed:.1f} s; "
                  f"client {_per_message(mine, messages)} µs/message, runner {_per_message(theirs, messages)} µs/message; "
                  f"load {os.getloadavg()[0]:.2f}")
    finally:
        runner.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,500")
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--gap-ms", type=int, default=20)
    parser.add_argument("--client", choices=["grpcio", "rust"], default="grpcio", help="grpc.aio, or the Rust runner client")
    args = parser.parse_args()
    args.stream_counts = [max(1, min(int(c), 5000)) for c in args.streams.split(",") if c]
    args.tokens = max(1, min(args.tokens, 10_000))
    args.gap_ms = max(1, min(args.gap_ms, 10_000))
    import uvloop

    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
