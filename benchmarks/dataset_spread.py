"""Wall time of one dataset run spread over 1 and 3 runners (issue 14).

A 200-row dataset, a model that takes 200 ms per call, the run's
`concurrency` items in flight. The gateway (the real `serve`, Hypercorn on
loopback) reads and renders the items and sends each by `RunDatasetItem` to
runners built on the SDK, whose model is a 200 ms wait. Two kinds of runner:

- `unbounded`: the runner takes every item it is sent at once (a hosted
  model API): wall time is set by the run's concurrency, whatever the runner
  count, so spreading buys resilience, not speed;
- `capacity N`: each runner's model takes at most N calls at once (a model
  served beside the runner, or a per-key rate limit): then the pool's size
  sets the speed, and 3 runners should take a third of the time.

Ideal = rows × 0.2 s / (in flight), in flight = min(concurrency, runners ×
capacity). Everything runs in this one process: the model waits are sleeps,
so the figures are scheduling, reading, rendering and gRPC, not CPU races.

    python -m benchmarks.dataset_spread [--rows 200] [--model-seconds 0.2] [--concurrency 12] [--capacity 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from agentmark_gw import _accel
from agentmark_gw.gateway.config import GatewayConfig
from agentmark_gw.gateway.server import serve
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import DatasetItem, Runner, events, start
from tests.support.processes import free_port, wait_ok

SECRET = "benchmark-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
EVENT = ROOT / "tests" / "fixtures" / "agentmark" / "events" / "dataset-run.json"


class ModelRunner(Runner):
    """Answers each item after `seconds`, at most `capacity` at once (0: no limit)."""

    wants_rendered_prompts = True

    def __init__(self, seconds: float, capacity: int) -> None:
        self.seconds = seconds
        self._model = asyncio.Semaphore(capacity) if capacity else None
        self.items = 0

    async def run_dataset_item(self, item: DatasetItem) -> pb.ExperimentEvent:
        if self._model is not None:
            async with self._model:
                await asyncio.sleep(self.seconds)
        else:
            await asyncio.sleep(self.seconds)
        self.items += 1
        return events.dataset_row(input=item.input, expected_output=item.expected_output, actual_output="ok", run_id=item.run_id, run_name=item.run_name)


async def one_run(runners: int, capacity: int, args: argparse.Namespace, datasets: Path) -> dict[str, Any]:
    models = [ModelRunner(args.model_seconds, capacity) for _ in range(runners)]
    servers = [await start(m, "127.0.0.1:0") for m in models]
    port = free_port()
    config = GatewayConfig(
        secrets=(SECRET,), runners=tuple(f"127.0.0.1:{p}" for _, p in servers), bind=f"127.0.0.1:{port}",
        datasets_dir=str(datasets), health_interval=0.5, log_format="text",
        alerts_db=str(datasets / f"alerts-{runners}-{capacity}.sqlite3"),
    )
    stop = asyncio.Event()
    gateway = asyncio.create_task(serve(config, shutdown_trigger=stop.wait))
    try:
        await wait_ok("gateway", f"http://127.0.0.1:{port}/readyz", [])
        await asyncio.sleep(1.0)  # every runner healthy and described
        event = json.loads(EVENT.read_text())
        event["event"]["data"].update(datasetPath="rows.jsonl", concurrency=args.concurrency)
        body = json.dumps(event).encode()
        headers = {"content-type": "application/json", "x-agentmark-signature-256": _accel.sign(SECRET, body)}
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=600) as client, client.stream("POST", f"http://127.0.0.1:{port}/", content=body, headers=headers) as response:
            rows = len([line async for line in response.aiter_lines() if line.startswith('{"type":"dataset"')])
        wall = time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(gateway, 30)
        await asyncio.gather(*(server.stop(0) for server, _ in servers))
    in_flight = min(args.concurrency, runners * capacity) if capacity else args.concurrency
    ideal = args.rows * args.model_seconds / in_flight
    return {"runners": runners, "capacity": capacity or "unbounded", "rows": rows, "wall": wall, "ideal": ideal,
            "per_runner": [m.items for m in models]}


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="agentmark-gw-spread-") as folder:
        datasets = Path(folder)
        with open(datasets / "rows.jsonl", "w") as out:
            for i in range(args.rows):
                out.write(json.dumps({"input": {"text": f"row {i}"}, "expected_output": "{\"sentiment\": \"neutral\"}"}) + "\n")
        results = [await one_run(n, capacity, args, datasets) for capacity in (0, args.capacity) for n in (1, 3)]
    print(f"\n{args.rows} rows, model {args.model_seconds * 1000:.0f} ms per call, concurrency {args.concurrency}\n")
    print("| runners | runner's model capacity | rows answered | wall time | ideal | wall / ideal | items per runner |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        ratio = r["wall"] / r["ideal"]
        print(f"| {r['runners']} | {r['capacity']} | {r['rows']} | {r['wall']:.2f} s | {r['ideal']:.2f} s | {ratio:.2f}× | {r['per_runner']} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--model-seconds", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--capacity", type=int, default=4, help="calls one runner's model takes at once, for the bounded case")
    asyncio.run(main(parser.parse_args()))
