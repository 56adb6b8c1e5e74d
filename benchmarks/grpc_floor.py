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


async def wave(client: str, port: int, request: bytes, streams: int, ramp: float, limit: float) -> tuple[int, int]:
    """(messages, calls completed) of one wave, bounded by `limit` seconds,
    each call read to its end by `client`: grpc.aio, or the gateway's Rust
    runner client (`RustStream`)."""
    import grpc

    from agentmark_gw.gateway.runners import RustClient, RustStream

    method = "/agentmark.runner.v1.Runner/RunPrompt"
    if client == "rust":
        rust = RustClient()
        channel = rust.hub.channel(f"{HOST}:{port}", 64 << 20, 64 << 20)

        async def read_one() -> int:
            stream = RustStream(rust.hub.open(channel, method, request, [], limit), rust, "runner", False)
            try:
                count = 0
                while (await stream.next()) is not None:
                    count += 1
                return count
            finally:
                stream.cancel()

        async def close() -> None:
            rust.close()
    else:
        aio = grpc.aio.insecure_channel(f"{HOST}:{port}")
        run_prompt = aio.unary_stream(method)

        async def read_one() -> int:
            call = run_prompt(request, timeout=limit)
            try:
                count = 0
                while (await call.read()) is not grpc.aio.EOF:
                    count += 1
                return count
            finally:
                call.cancel()

        async def close() -> None:
            await aio.close()

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    messages = completed = 0

    async def one(k: int) -> None:
        nonlocal messages, completed
        await asyncio.sleep(max(0.0, start + k * ramp / streams - loop.time()))
        count = await read_one()  # awaited first: `messages += await ...` would lose the others' counts
        messages += count
        completed += 1

    try:
        await asyncio.wait_for(asyncio.gather(*(one(k) for k in range(streams)), return_exceptions=True), limit + ramp + 5)
    finally:
        await close()
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
        print(f"{args.client} client alone, {args.tokens} one-delta messages per call, one every {args.gap_ms} ms; load {os.getloadavg()[0]:.2f}")
        for streams in args.stream_counts:
            await e2e.settle({"gateway": servers["gateway"]}, 10.0, 3.0)
            mine0, runner0 = sum(os.times()[:2]), cpu_seconds(runner.pid)
            started = time.perf_counter()
            messages, completed = await wave(args.client, port, request, streams, 1.0, 3 * schedule + 30)
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
