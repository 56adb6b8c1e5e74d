"""Slow clients against the gateway as it runs in production: `agentmark-gw
serve` as a process of its own (so /proc shows its memory and descriptors),
in front of a real grpc.aio runner in this process.

- slowloris: request headers a byte at a time are cut off by the keep-alive
  timeout (Hypercorn counts a connection as idle until its headers are in);
- slow bodies: headers in, then the body dribbles or stops: 408 with a JSON
  message after `body_timeout`, and the connection closed;
- slow readers: a client reading a large stream a byte a second holds a
  bounded amount of the gateway's memory, because the gateway writes only as
  fast as the client reads and reads from the runner only as fast as it writes
  (gRPC's flow control holds the runner back); when the client leaves, the
  runner call is cancelled. One that never leaves is cut off from the runner
  at the deadline, but its connection stays open.

Each test watches other clients get normal answers meanwhile, and the
gateway's open file descriptors come back to where they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmark_gw.runner import events, start

from .conftest import SECRET, agentmark_json, signed
from .servers.scripted_runner import ScriptedRunner
from .support.processes import wait_until
from .support.stack import GatewayProcess

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
KEEP_ALIVE = 2.0  # the gateway's keep_alive_timeout here
BODY_TIMEOUT = 2.0  # and its body_timeout
MARGIN = 3.0  # for a shared 2-core machine
TEXT_EVENT = agentmark_json("events/prompt-run-text.json")
NORMAL = [events.text_delta("fine"), events.finish("stop")]
# The large answer a slow reader asks for: 16,384 deltas of 16 KiB, 256 MiB of NDJSON.
BIG = "big"
BIG_DELTA = events.text_delta("x" * 16 * 1024)
BIG_COUNT = 16384
BIG_BYTES = BIG_COUNT * BIG_DELTA.text_delta.ByteSize()
# What one slow reader may add to the gateway's RSS. The gateway holds the
# runner message it is writing (the SDK batches up to 1 MiB), its NDJSON in
# the transport's buffer and the server's framing (about as much again,
# each), and what the gRPC stream's flow-control window let in before the
# gateway stopped reading. grpc-core sizes that window from its
# bandwidth-delay probe (and memory pressure), so it varies from run to run:
# growth measured here was 11-29 MiB on either server (about 9 MiB with
# the probe off). The bound is 64 MiB: twice the most measured, a quarter
# of the answer, which a gateway that buffered would hold. That the growth
# stops (a plateau) and that the runner is held back are checked on their own.
SLOW_READER_RSS_BOUND_KIB = 64 * 1024


class BigAnswerRunner(ScriptedRunner):
    """The scripted runner; a prompt whose userMessage is BIG gets the large
    answer, and `big_yielded` counts how much of it the runner produced."""

    def __init__(self) -> None:
        super().__init__()
        self.big_yielded = 0
        self.big_started = asyncio.Event()
        self.big_ended_early = asyncio.Event()

    async def run_prompt(self, request: Any) -> AsyncIterator[Any]:
        if request.props.get("userMessage") != BIG:
            async for event in super().run_prompt(request):
                yield event
            return
        self.big_started.set()
        finished = False
        try:
            for _ in range(BIG_COUNT):
                yield BIG_DELTA
                self.big_yielded += 1
            yield events.finish("stop")
            finished = True
        finally:
            # Cancelled at an await, or closed at a yield: either way the call ended early.
            if not finished:
                self.big_ended_early.set()

    def reset(self) -> None:
        self.script, self.big_yielded = NORMAL, 0
        self.seen.clear()
        for flag in (self.big_started, self.big_ended_early, self.cancelled):
            flag.clear()


def big_event() -> dict[str, Any]:
    event = json.loads(json.dumps(TEXT_EVENT))
    event["event"]["data"]["customProps"]["userMessage"] = BIG
    return event


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[tuple[BigAnswerRunner, str]]:
    runner = BigAnswerRunner()
    server, port = await start(runner, f"{HOST}:0")
    yield runner, f"{HOST}:{port}"
    await server.stop(0)


@pytest.fixture
def scripted(runner: tuple[BigAnswerRunner, str]) -> BigAnswerRunner:
    runner[0].reset()
    return runner[0]


@pytest.fixture(scope="module", params=["hypercorn", "granian"])
def server(request: pytest.FixtureRequest) -> str:
    """Each HTTP server the gateway can run on (`server` setting)."""
    return str(request.param)


def gateway_process(runner: str, server: str, workdir: Path, **settings: str) -> GatewayProcess:
    defaults = {"SERVER": server, "KEEP_ALIVE_TIMEOUT": f"{KEEP_ALIVE:g}", "BODY_TIMEOUT": f"{BODY_TIMEOUT:g}"}
    return GatewayProcess(runner, SECRET, workdir, {**defaults, **settings})


@pytest.fixture(scope="module")
async def gateway(runner: tuple[BigAnswerRunner, str], server: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayProcess]:
    async with gateway_process(runner[1], server, tmp_path_factory.mktemp("slow-clients")) as process:
        yield process


async def quiet_fds(gateway: GatewayProcess) -> int:
    """The gateway's open descriptors once every connection is closed and idle ones have timed out."""
    await asyncio.sleep(KEEP_ALIVE + 0.5)
    return gateway.fds()


async def back_to(gateway: GatewayProcess, fds: int) -> bool:
    return await wait_until(lambda: gateway.fds() <= fds, KEEP_ALIVE + MARGIN)


async def normal_prompt_run(gateway: GatewayProcess) -> None:
    """Another client's signed prompt-run gets its whole answer."""
    raw, headers = signed(TEXT_EVENT)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(gateway.url + "/", content=raw, headers=headers)
    assert response.status_code == 200
    assert [json.loads(line) for line in response.text.splitlines() if line] == [
        {"type": "text", "result": "fine"}, {"type": "text", "finishReason": "stop"},
    ]


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends until it closes (a reset counts as closed)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


async def dribble(port: int, first: bytes, slowly: bytes, interval: float, limit: float) -> tuple[float, bytes]:
    """Send `first` at once, then `slowly` a byte every `interval` seconds,
    until the gateway closes the connection. Returns the seconds from the end
    of `first` to the close, and everything the gateway sent."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    closed = asyncio.ensure_future(read_to_eof(reader))
    try:
        writer.write(first)
        await writer.drain()
        sent = loop.time()
        for byte in slowly:
            if (await asyncio.wait({closed}, timeout=interval))[0]:
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
        answer = await asyncio.wait_for(closed, max(0.0, sent + limit - loop.time()))
        return loop.time() - sent, answer
    finally:
        closed.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line))
    return int(lines[0].split()[1]), headers, body


# --- slowloris --------------------------------------------------------------------------


async def test_slowloris_headers_are_cut_off_by_the_keep_alive_timeout(gateway: GatewayProcess, scripted: BigAnswerRunner) -> None:
    connections = 50
    baseline = await quiet_fds(gateway)
    rss_before = gateway.rss_kib()
    partial = b"POST / HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nX-Slow: "
    dribblers = [
        asyncio.create_task(dribble(gateway.port, b"", partial + b"a" * 200, interval=0.2, limit=KEEP_ALIVE + MARGIN))
        for _ in range(connections)
    ]
    await asyncio.sleep(0.5)
    held = gateway.fds() - baseline
    await normal_prompt_run(gateway)
    assert not any(task.done() for task in dribblers), "a slowloris connection ended before the normal request did"
    results = await asyncio.gather(*dribblers)
    rss_grew = gateway.rss_kib() - rss_before

    assert held >= connections * 0.9  # they were all connected at once
    for seconds, answer in results:
        assert KEEP_ALIVE - 0.5 <= seconds <= KEEP_ALIVE + MARGIN
        assert answer == b""  # closed without an answer
    assert rss_grew < 8 * 1024
    assert await back_to(gateway, baseline)


# --- slow bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dribbling", "stopped"])
async def test_a_slow_body_is_answered_408_with_a_json_message(gateway: GatewayProcess, scripted: BigAnswerRunner, how: str) -> None:
    connections = 10
    baseline = await quiet_fds(gateway)
    body, headers = signed(TEXT_EVENT)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": "gateway", "Content-Length": str(len(body))}.items())
    first = b"POST / HTTP/1.1\r\n" + head.encode() + b"\r\n" + body[:10]
    slowly = body[10:] if how == "dribbling" else b""
    clients = [
        asyncio.create_task(dribble(gateway.port, first, slowly, interval=0.2, limit=BODY_TIMEOUT + MARGIN))
        for _ in range(connections)
    ]
    await asyncio.sleep(0.5)
    await normal_prompt_run(gateway)
    assert not any(task.done() for task in clients)
    results = await asyncio.gather(*clients)

    for seconds, answer in results:
        assert BODY_TIMEOUT - 0.5 <= seconds <= BODY_TIMEOUT + MARGIN
        status, response_headers, response_body = split_response(answer)
        assert status == 408
        assert response_headers["content-type"] == "application/json"
        message = json.loads(response_body)
        assert list(message) == ["message"] and isinstance(message["message"], str) and message["message"]
    assert len(scripted.seen) == 1  # nothing reached the runner but the normal request
    assert await back_to(gateway, baseline)


# --- slow readers -------------------------------------------------------------------------


class SlowReader:
    """A client with a small receive buffer that reads one byte a second.

    Plain non-blocking socket calls: asyncio's streams would read ahead."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: sets the window
        self.sock.setblocking(False)
        self.received = b""

    async def send(self, event: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.sock, (HOST, self.port))
        body, headers = signed(event)
        head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": "gateway", "Content-Length": str(len(body))}.items())
        await loop.sock_sendall(self.sock, b"POST / HTTP/1.1\r\n" + head.encode() + b"\r\n" + body)

    async def status_line(self) -> bytes:
        """The first bytes of the answer, read at once: b"HTTP/1.1 200"."""
        while len(self.received) < 12:
            self.received += await asyncio.get_running_loop().sock_recv(self.sock, 12 - len(self.received))
        return self.received

    async def read_slowly(self, seconds: int) -> None:
        for _ in range(seconds):
            self.received += await asyncio.get_running_loop().sock_recv(self.sock, 1)
            await asyncio.sleep(1)

    def close(self) -> None:
        self.sock.close()  # with unread data: the kernel answers with a reset


async def inflight(gateway: GatewayProcess) -> float:
    return await gateway.metric("agentmark_gw_inflight_streams")


async def nothing_in_flight(gateway: GatewayProcess) -> bool:
    async def check() -> bool:
        return await inflight(gateway) == 0

    return await wait_until(check, MARGIN)


async def test_a_slow_reader_holds_bounded_memory_and_its_leaving_cancels_the_runner(gateway: GatewayProcess, scripted: BigAnswerRunner) -> None:
    baseline = await quiet_fds(gateway)
    rss_before = gateway.rss_kib()
    reader = SlowReader(gateway.port)
    rss_peak = rss_before
    try:
        await reader.send(big_event())
        assert await asyncio.wait_for(reader.status_line(), 10) == b"HTTP/1.1 200"
        await reader.read_slowly(2)
        rss_early = gateway.rss_kib()
        for _ in range(3):
            await reader.read_slowly(2)
            rss_peak = max(rss_peak, gateway.rss_kib())
        rss_late = gateway.rss_kib()
        assert await inflight(gateway) == 1
        await normal_prompt_run(gateway)
        rss_peak = max(rss_peak, gateway.rss_kib())
        produced = scripted.big_yielded
    finally:
        reader.close()

    grew = rss_peak - rss_before
    print(f"slow reader: gateway RSS +{grew / 1024:.1f} MiB; runner produced {produced} of {BIG_COUNT} deltas "
          f"({produced * BIG_DELTA.ByteSize() / 2**20:.1f} of {BIG_BYTES / 2**20:.0f} MiB)")
    assert grew < SLOW_READER_RSS_BOUND_KIB
    assert rss_late - rss_early < 1024  # a plateau: nothing more is taken in while the client reads
    # Backpressure reached the runner: it was held back, not drained into the gateway.
    assert produced < BIG_COUNT / 4
    # The client leaves: the runner call is cancelled, nothing stays in flight.
    await asyncio.wait_for(scripted.big_ended_early.wait(), MARGIN)
    assert await nothing_in_flight(gateway)
    assert await back_to(gateway, baseline)


async def test_a_slow_reader_that_never_leaves_is_cut_off_from_the_runner_at_the_deadline(
    runner: tuple[BigAnswerRunner, str], server: str, scripted: BigAnswerRunner, tmp_path: Path
) -> None:
    """The runner's deadline bounds the runner's work; nothing bounds the
    connection's life: the gateway waits for the client to take the bytes it
    already wrote, holding one batch of memory, until the client leaves."""
    deadline = 3.0
    async with gateway_process(runner[1], server, tmp_path, DEADLINES_PROMPT_RUN=f"{deadline:g}") as gateway:
        baseline = await quiet_fds(gateway)
        rss_before = gateway.rss_kib()
        reader = SlowReader(gateway.port)
        try:
            await reader.send(big_event())
            assert await asyncio.wait_for(reader.status_line(), 10) == b"HTTP/1.1 200"
            await reader.read_slowly(int(deadline) + 2)
            # The deadline passed: the runner's work ended although the client is still there.
            await asyncio.wait_for(scripted.big_ended_early.wait(), MARGIN)
            await reader.read_slowly(3)
            still_open = gateway.fds() > baseline
            still_inflight = await inflight(gateway)
            grew = gateway.rss_kib() - rss_before
            await normal_prompt_run(gateway)
        finally:
            reader.close()
        print(f"never-leaving slow reader, {deadline:g} s past the deadline: connection open {still_open}, "
              f"in flight {still_inflight:g}, RSS +{grew / 1024:.1f} MiB")
        assert grew < SLOW_READER_RSS_BOUND_KIB
        assert still_open and still_inflight == 1  # the known limit: see the docstring
        assert await nothing_in_flight(gateway)
        assert await back_to(gateway, baseline)


async def test_connections_closed_by_clients_are_released_at_once(runner: tuple[BigAnswerRunner, str], server: str, tmp_path: Path) -> None:
    """A load balancer may open a connection per request: when the client
    closes it, the gateway lets go of it then, not after keep_alive_timeout
    (stock Hypercorn 0.18 held it, in CLOSE-WAIT, for the whole timeout)."""
    async with gateway_process(runner[1], server, tmp_path, KEEP_ALIVE_TIMEOUT="60") as gateway:
        baseline = gateway.fds()
        for _ in range(20):
            async with httpx.AsyncClient(timeout=10) as client:  # a new connection each time, closed after
                assert (await client.get(gateway.url + "/healthz")).status_code == 200
        assert await wait_until(lambda: gateway.fds() <= baseline, 5.0), (gateway.fds(), baseline)
