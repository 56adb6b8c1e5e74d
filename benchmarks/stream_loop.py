"""The streaming loop's own cost per runner message, in-process: the
gateway's `responses.stream` over a runner whose every read suspends once
(one event-loop turn, the least a message coming in costs) and a client that
takes every write at once, so what is timed is the loop (read, frame, write,
heartbeat bookkeeping, one loop turn), not gRPC or Hypercorn. One text delta
per message, as a model streams; heartbeats on (the default 15 s), uvloop.

    .venv/bin/python -m benchmarks.stream_loop [--messages 20000] [--repeats 7] [--baseline REV]

With --baseline, the same is run on the gateway's Python code as at REV (in a
process of its own, this checkout's Rust extension) and the two are printed
side by side; each figure is the best of --repeats runs (the least disturbed
by other work), interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The checkout: the child runs as `python -m benchmarks.stream_loop` from it.
ROOT = Path(__file__).resolve().parents[1]


def _once(messages: int) -> float:
    """Seconds per message of one run of `responses.stream`."""
    import uvloop

    from agentmark_gw import _accel
    from agentmark_gw.gateway import responses
    from agentmark_gw.protocol import runner_pb2 as pb
    from agentmark_gw.runner import events

    batches = [pb.RunnerEvents(events=[events.text_delta(f"tok{i:05d} ")]).SerializeToString() for i in range(messages)]

    class Call:
        def cancel(self) -> None:
            pass

    class Opened:
        """A runner call whose every read waits once for the event loop (as
        grpc.aio's read waits for a message to come in), then has it."""

        runner = "bench"

        def __init__(self) -> None:
            # Before RunnerStream (a --baseline revision), `stream` took the
            # first message from `first` and called `call.cancel()`.
            self.call, self.first, self.pending = Call(), batches[0], None
            self._next = iter(batches if hasattr(responses, "RunnerStream") else batches[1:])

        def cancel(self) -> None:
            self.call.cancel()

        async def next(self) -> bytes | None:
            await asyncio.sleep(0)
            return next(self._next, None)

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run() -> float:
        opened = Opened()
        started = time.perf_counter()
        await responses.stream(responses.Reply(send), opened, _accel.PromptFramer("text"), lambda size: None, 15.0)  # type: ignore[arg-type]
        return (time.perf_counter() - started) / messages

    return uvloop.run(run())


def _child(messages: int, repeats: int) -> None:
    print(json.dumps([_once(messages) for _ in range(repeats)]))


def _measure(pythonpath: str | None, messages: int, repeats: int) -> list[float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.stream_loop", "--child", "--messages", str(messages), "--repeats", str(repeats)],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", metavar="REV", help="also measure the gateway's python/ as at REV")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.messages = max(100, min(args.messages, 1_000_000))
    args.repeats = max(1, min(args.repeats, 50))
    if args.child:
        _child(args.messages, args.repeats)
        return 0
    from benchmarks import e2e  # here, not at the top: the child needs none of it

    rows: dict[str, list[float]] = {"working tree": []}
    with tempfile.TemporaryDirectory(prefix="stream-loop-") as workdir:
        baseline = str(e2e.baseline_tree(args.baseline, Path(workdir))) if args.baseline else None
        if baseline:
            rows[f"baseline {args.baseline}"] = []
        # One run at a time, alternating, so that other work on the machine hits both alike.
        for _ in range(args.repeats):
            rows["working tree"] += _measure(None, args.messages, 1)
            if baseline:
                rows[f"baseline {args.baseline}"] += _measure(baseline, args.messages, 1)
    best = {name: min(values) for name, values in rows.items()}
    print(f"responses.stream, {args.messages} messages of one text delta, heartbeat 15 s, uvloop; "
          f"best and median of {args.repeats} (µs per message), load {os.getloadavg()[0]:.2f}")
    for name, values in rows.items():
        ordered = sorted(values)
        print(f"  {name}: best {1e6 * best[name]:.2f}, median {1e6 * ordered[len(ordered) // 2]:.2f}")
    if baseline:
        print(f"  working tree ÷ baseline (best): {best['working tree'] / best[f'baseline {args.baseline}']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
