"""A runner whose answers are scripted by the test, served by the real SDK.

`script` is what the next run yields: a list of RunnerEvents (or
ExperimentEvents for dataset runs). `pause` delays each event, for tests
that need a run to stay open. Every request seen is kept in `seen`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import AlertRequest, ExperimentRequest, PromptRequest, Runner


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
