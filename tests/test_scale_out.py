"""Scaled out behind Debian's nginx: nginx on loopback in front of two
gateway processes (each a Hypercorn parent with two workers) and three
runner processes, started by the same code as `python -m scripts.scale_out`
(tests/support/topology.py). Streams pass through unbuffered and spread over
every gateway and runner; a dataset run with 12 s silences survives nginx's
5 s proxy_read_timeout; a gateway, then a runner, is SIGKILLed under load.

The runners are tests/servers/scripted_runner.py's PacedRunner, each in its
own process: every run's first line names the process that served it
(`runner-1:PID:N`), and the request sets its pace (`scripted`)."""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import SECRET, agentmark_json, signed
from .support.processes import Process
from .support.topology import NGINX, Settings, Topology

pytestmark = pytest.mark.e2e

READ_TIMEOUT = 5.0  # nginx's proxy_read_timeout, as the issue has it
SETTINGS = Settings(
    secret=SECRET,
    heartbeat_interval=2.0,  # below the read timeout: silent streams get a newline every 2 s
    health_interval=0.5,
    health_timeout=0.5,
    shutdown_grace=2.0,
    proxy_read_timeout=READ_TIMEOUT,
    fail_timeout=2.0,
    inherit_settings=False,
)
RUNNERS = {f"runner-{i}" for i in range(SETTINGS.runners)}
FINISH = {"type": "text", "finishReason": "stop"}


# --- the topology ------------------------------------------------------------------


@pytest.fixture(scope="module")
def topology() -> Any:
    if not Path(NGINX).exists():
        pytest.skip("these tests need Debian's nginx (apt-get install nginx; make test installs it when root)")
    topology = Topology(SETTINGS).start()
    try:
        yield topology
    finally:
        left = topology.stop()
        assert not left, f"processes outlived the topology: {left}"


@pytest.fixture(autouse=True)
async def whole(topology: Topology, client: httpx.AsyncClient) -> Topology:
    """Every test starts with every process up (a test before may have killed
    one), every gateway seeing every runner, and nginx using every gateway."""
    if await asyncio.to_thread(topology.restore):
        await until(lambda: nginx_uses_every_gateway(topology, client), 15, "nginx never sent to the restarted gateway")
    return topology


async def until(check: Callable[[], Awaitable[bool]], seconds: float, message: str) -> float:
    """Poll `check` until it holds, at most `seconds`; returns how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        assert loop.time() - started < seconds, message
        await asyncio.sleep(0.1)
    return loop.time() - started


async def nginx_uses_every_gateway(topology: Topology, client: httpx.AsyncClient) -> bool:
    seen = {(await client.get(topology.url + "/healthz")).headers["x-upstream"].split(", ")[-1] for _ in range(4)}
    return seen == {g.address for g in topology.gateways}


def workers(gateway: Process) -> list[int]:
    """The Hypercorn workers of a gateway: multiprocessing's spawned children."""
    found = []
    for pid in gateway.members():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


async def metrics(client: httpx.AsyncClient, gateway: Process) -> dict[str, float]:
    text = (await client.get(gateway.url + "/metrics")).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}


def served_prompt_runs(values: dict[str, float]) -> float:
    return values.get('agentmark_gw_requests_total{event_type="prompt-run",status="200"}', 0.0)


def healthy(values: dict[str, float], runner: Process) -> float | None:
    return values.get(f'agentmark_gw_runner_healthy{{runner="{runner.address}"}}')


# --- runs ------------------------------------------------------------------------------


def prompt_run(deltas: int, pause: float) -> dict[str, Any]:
    """A streaming prompt-run whose runner streams `deltas` deltas `pause` seconds apart."""
    event = copy.deepcopy(agentmark_json("events/prompt-run-text.json"))
    event["event"]["data"]["customProps"]["scripted"] = {"deltas": deltas, "pause": pause}
    return event


def dataset_run(rows: int, row_pause: float) -> dict[str, Any]:
    event = copy.deepcopy(agentmark_json("events/dataset-run.json"))
    event["event"]["data"]["scripted"] = {"rows": rows, "row_pause": row_pause}
    return event


@dataclass
class Run:
    """What a client saw of one webhook: as much as arrived, and how it ended."""

    status: int | None = None
    upstream: str = ""  # the gateway that answered (nginx's X-Upstream: the last one it tried)
    lines: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    heartbeats: int = 0
    body: str = ""  # the answer of a run refused with a status other than 200
    ended: bool = False
    error: Exception | None = None
    first_line: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def identity(self) -> str:
        """`runner-N:PID:COUNT`, the runner process's own first line."""
        return str(self.lines[0]["result"]) if self.lines and "result" in self.lines[0] else ""

    @property
    def runner(self) -> str:
        return self.identity.split(":")[0]

    @property
    def runner_pid(self) -> int:
        return int(self.identity.split(":")[1])

    def complete(self, deltas: int) -> bool:
        """A whole, well-formed prompt stream: identity, every delta, finish."""
        return (
            self.error is None and self.status == 200 and self.runner in RUNNERS
            and self.lines[1:] == [{"type": "text", "result": str(i)} for i in range(deltas)] + [FINISH]
        )


async def send(client: httpx.AsyncClient, url: str, event: dict[str, Any], run: Run | None = None, timeout: float = 30) -> Run:
    run = run or Run()
    raw, headers = signed(event)
    loop = asyncio.get_running_loop()
    try:
        async with client.stream("POST", url + "/", content=raw, headers=headers, timeout=timeout) as response:
            run.status = response.status_code
            run.upstream = response.headers.get("x-upstream", "").split(", ")[-1]
            if response.status_code != 200:  # a refusal, or nginx's own error page
                run.body = (await response.aread()).decode(errors="replace")
                return run
            async for line in response.aiter_lines():
                if not line.strip():
                    run.heartbeats += 1
                    continue
                run.lines.append(json.loads(line))
                run.arrivals.append(loop.time())
                run.first_line.set()
    except httpx.HTTPError as error:
        run.error = error
    finally:
        run.ended = True
        run.first_line.set()  # a run that failed before its first line is not waited for
    return run


async def start_runs(client: httpx.AsyncClient, url: str, event: dict[str, Any], count: int) -> tuple[list[Run], list[asyncio.Task[Run]]]:
    """`count` concurrent runs, returned once each has its first line."""
    runs = [Run() for _ in range(count)]
    tasks = [asyncio.create_task(send(client, url, event, run)) for run in runs]
    await asyncio.wait_for(asyncio.gather(*(run.first_line.wait() for run in runs)), 20)
    return runs, tasks


async def finish(tasks: list[asyncio.Task[Run]], seconds: float) -> None:
    """Every run has ended within `seconds`: nothing hangs."""
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} runs still open after {seconds} s"


# --- the tests -----------------------------------------------------------------------------


async def test_streams_pass_through_unbuffered_and_spread_over_every_gateway_and_runner(topology: Topology, client: httpx.AsyncClient) -> None:
    for gateway in topology.gateways:
        assert len(workers(gateway)) == SETTINGS.workers, f"{gateway.name}: {gateway.members()}"
    before = {g.name: served_prompt_runs(await metrics(client, g)) for g in topology.gateways}

    slow = await send(client, topology.url, prompt_run(deltas=5, pause=0.4))
    assert slow.complete(5), (slow, topology.logs())
    # Each line arrived as the runner wrote it, not all at the end: the
    # runner spaced them over 5 × 0.4 s, and so did their arrivals.
    assert slow.arrivals[-1] - slow.arrivals[0] > 1.5

    runs = [slow]
    for _ in range(3):  # 12 more, 4 at a time
        runs += await asyncio.gather(*(send(client, topology.url, prompt_run(deltas=3, pause=0.05)) for _ in range(4)))
    assert all(run.complete(3) for run in runs[1:]), [run for run in runs if not run.complete(3)]
    assert {run.upstream for run in runs} == {g.address for g in topology.gateways}
    assert {run.runner for run in runs} == RUNNERS
    print("runs per gateway:", collections.Counter(run.upstream for run in runs), "per runner:", collections.Counter(run.runner for run in runs))

    # Each gateway counted what it served (its workers' metrics, merged), and sees every runner healthy.
    async def counted() -> bool:
        after = {g.name: served_prompt_runs(await metrics(client, g)) for g in topology.gateways}
        return sum(after.values()) - sum(before.values()) == len(runs)

    await until(counted, 5, "the gateways' metrics do not add up to the runs sent")
    for gateway in topology.gateways:
        values = await metrics(client, gateway)
        assert served_prompt_runs(values) > before[gateway.name]
        assert [healthy(values, runner) for runner in topology.runners] == [1.0] * len(topology.runners)

    # Through nginx, /healthz answers from the workers of both gateways.
    answers = [await client.get(topology.url + "/healthz") for _ in range(8)]
    by_address = {g.address: g for g in topology.gateways}
    assert {answer.headers["x-upstream"] for answer in answers} == set(by_address)
    for answer in answers:
        assert answer.json()["worker"] in workers(by_address[answer.headers["x-upstream"]])


@pytest.mark.timeout(90)
async def test_a_dataset_run_with_12_s_silences_survives_a_5_s_proxy_read_timeout(topology: Topology, client: httpx.AsyncClient) -> None:
    assert topology.settings.proxy_read_timeout == READ_TIMEOUT and topology.settings.heartbeat_interval < READ_TIMEOUT
    started = asyncio.get_running_loop().time()
    run = await send(client, topology.url, dataset_run(rows=2, row_pause=12), timeout=60)
    assert run.error is None and run.status == 200, (run, topology.logs())
    assert [line["type"] for line in run.lines] == ["dataset", "dataset"], run.lines
    assert [line["result"]["input"] for line in run.lines] == [{"i": 0}, {"i": 1}]
    # The silences were real and longer than nginx's timeout; heartbeats filled them.
    assert run.arrivals[0] - started > 2 * READ_TIMEOUT
    assert run.arrivals[1] - run.arrivals[0] > 2 * READ_TIMEOUT
    assert run.heartbeats >= 6, run.heartbeats


async def test_a_gateway_killed_under_load_fails_only_its_streams(topology: Topology, client: httpx.AsyncClient) -> None:
    victim, survivor = topology.gateways
    deltas = 15
    # Slow starts: dataset runs whose first row comes after the gateways'
    # patience (the heartbeat interval); they are still waiting for their
    # headers when the gateway dies, unless the machine is very slow.
    slow_starts = [asyncio.create_task(send(client, topology.url, dataset_run(rows=1, row_pause=3))) for _ in range(4)]
    runs, tasks = await start_runs(client, topology.url, prompt_run(deltas=deltas, pause=0.2), 20)
    assert {run.upstream for run in runs} == {victim.address, survivor.address}

    # (On a very slow machine a run may end before the kill; it is held to the survivors' standard.)
    on_victim = [run for run in runs if run.upstream == victim.address and not run.ended]
    on_survivor = [run for run in runs if run not in on_victim]
    assert on_victim, "no stream was in flight on the gateway to kill"
    group = victim.members()
    assert len(group) >= 1 + SETTINGS.workers
    await asyncio.to_thread(topology.kill, victim)  # SIGKILL to parent and workers at once; reaps them all
    assert not any(Path(f"/proc/{pid}").exists() for pid in group)

    later = await asyncio.gather(*(send(client, topology.url, prompt_run(deltas=3, pause=0.05)) for _ in range(10)))
    await finish([*tasks, *slow_starts], 20)

    for run in on_victim:  # cut off: the client sees the body end before its last chunk
        assert isinstance(run.error, httpx.RemoteProtocolError) and run.status == 200, run
        assert FINISH not in run.lines
    assert all(run.complete(deltas) for run in on_survivor), [run for run in on_survivor if not run.complete(deltas)]
    assert all(run.complete(3) and run.upstream == survivor.address for run in later), [run for run in later if not run.complete(3)]
    # A run the dead gateway had not answered yet is nginx's 502 (a POST that
    # reached a gateway is never sent to another); one it had is cut off.
    outcomes: collections.Counter[str] = collections.Counter()
    for slow in (task.result() for task in slow_starts):
        if slow.upstream == survivor.address and slow.status == 200:
            assert slow.error is None and [line["result"]["input"] for line in slow.lines] == [{"i": 0}], slow
            outcomes["completed"] += 1
        else:
            assert slow.upstream == victim.address and (slow.status == 502 or isinstance(slow.error, httpx.RemoteProtocolError)), slow
            if slow.status == 502:  # nginx's own failure, worded as the gateway's refusals are
                assert json.loads(slow.body)["message"].startswith("Gateway unreachable"), slow.body
            outcomes["502" if slow.status == 502 else "cut off"] += 1
    print(f"{len(on_victim)} streams cut off, {len(on_survivor)} completed on the survivor ({on_victim[0].error!r}); slow starts: {dict(outcomes)}")
    logged = collections.Counter(line.split(", client")[0].split(" ", 5)[-1] for line in (topology.dir / "nginx-error.log").read_text().splitlines())
    print("nginx's error log:", dict(logged))


async def test_a_runner_killed_mid_stream(topology: Topology, client: httpx.AsyncClient) -> None:
    gateway_pids = {g.name: sorted(g.members()) for g in topology.gateways}
    deltas = 30
    runs, tasks = await start_runs(client, topology.url, prompt_run(deltas=deltas, pause=0.1), 6)
    busiest = collections.Counter(run.runner for run in runs if not run.ended).most_common(1)[0][0]
    victim = next(r for r in topology.runners if r.name == busiest)
    old_pid = victim.pid
    cut = [run for run in runs if run.runner == victim.name and not run.ended]
    await asyncio.to_thread(topology.kill, victim)
    await finish(tasks, 20)

    for run in runs:
        if run in cut:  # the stream ends with one terminal error line
            assert run.error is None and run.status == 200, run
            assert run.lines[-1]["type"] == "error" and run.lines[-1]["error"].startswith("Runner failed: "), run.lines[-3:]
            assert run.lines[1:-1] == [{"type": "text", "result": str(i)} for i in range(len(run.lines) - 2)]
        else:
            assert run.complete(deltas), run
    print("the cut stream's last line:", cut[0].lines[-1])

    # New runs go to the others, and every gateway sees the runner down.
    after = [await send(client, topology.url, prompt_run(deltas=2, pause=0)) for _ in range(6)]
    assert all(run.complete(2) and run.runner != victim.name for run in after), after

    async def seen_as(state: bool) -> bool:
        """Every gateway's metrics and readiness say so (each is one worker's view, or the workers' highest)."""
        for gateway in topology.gateways:
            readiness = (await client.get(gateway.url + "/readyz")).json()["runners"][victim.address]
            if healthy(await metrics(client, gateway), victim) != float(state) or readiness is not state:
                return False
        return True

    await until(lambda: seen_as(False), 10, "the gateways never saw the runner down")

    # Restarted on the same port, it is used again; the gateways were not restarted.
    restarted = asyncio.get_running_loop().time()
    await asyncio.to_thread(topology.restart, victim)
    assert victim.pid != old_pid
    healthy_after = await until(lambda: seen_as(True), 20, "the gateways never saw the restarted runner healthy")

    async def serves_again(gateway: Process) -> bool:
        run = await send(client, gateway.url, prompt_run(deltas=1, pause=0))
        assert run.complete(1), run
        return run.runner_pid == victim.pid

    for gateway in topology.gateways:
        await until(functools.partial(serves_again, gateway), 15, f"{gateway.name} never used the restarted runner")
    used_after = asyncio.get_running_loop().time() - restarted
    assert {g.name: sorted(g.members()) for g in topology.gateways} == gateway_pids
    print(f"restarted runner healthy on every gateway after {healthy_after:.1f} s, served by both after {used_after:.1f} s")
