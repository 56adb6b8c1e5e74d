"""A runner whose answers are scripted by the test, served by the real SDK.

`script` is what the next run yields: a list of RunnerEvents (or
ExperimentEvents for dataset runs). `pause` delays each event, for tests
that need a run to stay open. Every request seen is kept in `seen`.

Run as a module (`python -m tests.servers.scripted_runner --help`) it serves
`PacedRunner` instead: deterministic runs paced by flags, in a process of its
own, for tests that kill runner processes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import AlertRequest, ExperimentRequest, PromptRequest, Runner, events


class ScriptedRunner(Runner):
    def __init__(self) -> None:
        self.script: list[Any] = []
        self.experiment_script: list[Any] = []
        self.pause = 0.0
        self.evals: list[str] = []
        self.seen: list[Any] = []
        self.alerts: list[AlertRequest] = []
        self.alert_seen = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        self.seen.append(request)
        try:
            for event in list(self.script):
                if self.pause:
                    await asyncio.sleep(self.pause)
                yield event
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
        self.seen.append(request)
        for event in list(self.experiment_script):
            yield event

    async def get_evals(self) -> Sequence[str]:
        return self.evals

    async def handle_alert(self, alert: AlertRequest) -> str:
        self.alerts.append(alert)
        self.alert_seen.set()
        return "ok"


# --- as a process of its own ---------------------------------------------------
#
# `python -m tests.servers.scripted_runner --listen 127.0.0.1:50061 --name r0`
# serves a deterministic runner over the real gRPC contract, for tests (and
# scripts/scale_out.py) that run runners as separate processes and kill them.


class PacedRunner(Runner):
    """Every prompt run streams its identity line, `deltas` numbered deltas
    `pause` seconds apart, then `finish`; every dataset run streams `rows`
    rows, each after `row_pause` seconds. A request overrides these defaults
    with a `scripted` object: in `customProps` for a prompt run, in the
    event's `data` for a dataset run.

    The identity, `NAME:PID:N`, tells a client which runner process served it
    and how many runs that process has served (N counts this one)."""

    def __init__(self, name: str, deltas: int = 5, pause: float = 0.0, rows: int = 2, row_pause: float = 0.0) -> None:
        self.name = name
        self.defaults = {"deltas": deltas, "pause": pause, "rows": rows, "row_pause": row_pause}
        self.served = 0

    def _start(self, overrides: Any) -> tuple[str, dict[str, Any]]:
        self.served += 1
        settings = dict(self.defaults)
        if isinstance(overrides, dict):
            settings.update({k: v for k, v in overrides.items() if k in settings and isinstance(v, int | float)})
        return f"{self.name}:{os.getpid()}:{self.served}", settings

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        identity, settings = self._start(request.props.get("scripted"))
        yield events.text_delta(identity)
        for i in range(int(settings["deltas"])):
            await asyncio.sleep(settings["pause"])
            yield events.text_delta(str(i))
        yield events.finish("stop")

    async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
        identity, settings = self._start(request.data.get("scripted"))
        for i in range(int(settings["rows"])):
            await asyncio.sleep(settings["row_pause"])
            yield events.dataset_row(input={"i": i}, actual_output=identity, run_id=request.experiment_id, run_name=request.experiment_id)

    async def get_evals(self) -> Sequence[str]:
        return [f"{self.name}:{os.getpid()}:{self.served}"]


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import logging

    from agentmark_gw.runner import serve_async

    parser = argparse.ArgumentParser(prog="python -m tests.servers.scripted_runner", description=PacedRunner.__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT")
    parser.add_argument("--name", default="runner", help="first part of the identity line")
    parser.add_argument("--deltas", type=int, default=5, help="text deltas per prompt run (default 5)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds before each delta (default 0)")
    parser.add_argument("--rows", type=int, default=2, help="rows per dataset run (default 2)")
    parser.add_argument("--row-pause", type=float, default=0.0, help="seconds before each row (default 0)")
    parser.add_argument("--grace", type=float, default=1.0, help="seconds in-flight runs get after SIGTERM (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = PacedRunner(args.name, args.deltas, args.pause, args.rows, args.row_pause)
    asyncio.run(serve_async(runner, args.listen, grace=args.grace))


if __name__ == "__main__":
    main()
