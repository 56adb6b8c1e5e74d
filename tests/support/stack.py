"""The gateway as production runs it, a process of its own, and the
reference stack behind it: `agentmark-gw runner` (AgentMark's runtime and
the OpenAI executor) with its real `openai` client pointed at the fake model
server (tests/servers/fake_openai.py), each a process.

tests/test_slow_clients.py starts a `GatewayProcess` in front of a runner in
the test's own process; benchmarks/soak.py starts the whole stack.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .processes import HOST, ROOT, Process, agentmark_gw, clean_env, fd_count, free_port, process_tree, socket_count, status_kib, wait_ok

DATASETS = ROOT / "tests" / "fixtures" / "agentmark" / "datasets"


def _summed(pid: int, measure: Callable[[int], int]) -> int:
    """`measure(pid)` summed over the process tree under `pid`, 0 for a process already gone."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, KeyError):
            total += measure(member)
    return total


@dataclass
class GatewayProcess:
    """`agentmark-gw serve` as a process of its own, in front of `runner`.
    `settings` are `AGENTMARK_GW_*` variables without the prefix
    (`{"KEEP_ALIVE_TIMEOUT": "2"}`)."""

    runner: str
    secret: str
    workdir: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = clean_env(
            AGENTMARK_WEBHOOK_SECRET=self.secret,
            AGENTMARK_GW_ALERTS_DB=str(self.workdir / "alerts.sqlite3"),
            **{f"AGENTMARK_GW_{key}": value for key, value in self.settings.items()},
        )
        command = agentmark_gw() + ["serve", "--runner", self.runner, "--bind", f"{HOST}:{self.port}"]
        self.process = Process("gateway", command, self.workdir / f"gateway-{self.port}.log", env, self.port)
        self.process.start()

    async def ready(self, timeout: float = 30.0, *others: Process) -> None:
        """Until /readyz answers 200 (a runner passed its health check); fails
        early when the gateway, or one of `others`, exits."""
        assert self.process is not None
        await wait_ok("gateway", self.url + "/readyz", [self.process, *others], timeout)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    async def __aenter__(self) -> GatewayProcess:
        self.start()
        try:
            await self.ready()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    # Over the process tree: Granian serves from a worker process even with one worker.
    def rss_kib(self) -> int:
        return _summed(self.pid, lambda pid: status_kib(pid, "VmRSS")["VmRSS"])

    def anon_kib(self) -> int:
        return _summed(self.pid, lambda pid: status_kib(pid, "RssAnon").get("RssAnon", 0))

    def fds(self) -> int:
        return _summed(self.pid, fd_count)

    def sockets(self) -> int:
        return _summed(self.pid, socket_count)

    async def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics."""
        async with httpx.AsyncClient(timeout=10.0) as http:
            reply = await http.get(self.url + "/metrics")
        for line in reply.text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(f"{name} is not in /metrics")


@dataclass
class ReferenceStack:
    """The fake model, the reference runner in front of it, the gateway in front of that."""

    fake: Process
    runner: Process
    gateway: GatewayProcess

    def stop(self) -> None:
        self.gateway.stop()
        self.runner.stop()
        self.fake.stop()


async def start_reference_stack(workdir: Path, secret: str, gateway_settings: dict[str, str], timeout: float = 60.0) -> ReferenceStack:
    """Start the three processes, the datasets those of tests/fixtures; return once the gateway is ready."""
    fake_port, runner_port = free_port(), free_port()
    fake = Process(
        "fake-openai", [sys.executable, "-m", "tests.servers.fake_openai", "--listen", f"{HOST}:{fake_port}"],
        workdir / "fake-openai.log", clean_env(), fake_port,
    )
    runner = Process(
        "runner", agentmark_gw() + ["runner", "--listen", f"{HOST}:{runner_port}", "--data-dir", str(DATASETS)],
        workdir / "runner.log", clean_env(OPENAI_API_KEY="fake-key", OPENAI_BASE_URL=f"http://{HOST}:{fake_port}/v1"), runner_port,
    )
    gateway = GatewayProcess(f"{HOST}:{runner_port}", secret, workdir, gateway_settings)
    stack = ReferenceStack(fake, runner, gateway)
    try:
        fake.start()
        runner.start()
        gateway.start()
        await gateway.ready(timeout, fake, runner)
    except BaseException:
        stack.stop()
        raise
    return stack

