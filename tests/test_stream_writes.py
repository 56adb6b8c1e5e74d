"""The streaming loop's per-message path (`responses.stream`): heartbeats
still come in a silence, never in the middle of a chunk's write, and a
message costs no task (issue 15: a model streams one token per message)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest

from agentmark_gw import _accel
from agentmark_gw.gateway import create_app, responses
from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import events

from .conftest import HttpServer, agentmark_json, gateway_config, signed
from .test_gateway_e2e import stream_lines

TEXT_EVENT = agentmark_json("events/prompt-run-text.json")


def _message(text: str) -> bytes:
    return pb.RunnerEvents(events=[events.text_delta(text)]).SerializeToString()


FINISH = pb.RunnerEvents(events=[events.finish("stop")]).SerializeToString()


class _Call:
    cancelled = False


class _Opened:
    """A runner call (a `RunnerStream`): each item of `script` is a message,
    or a silence (seconds)."""

    runner = "scripted"

    def __init__(self, script: list[bytes | float]) -> None:
        self.call = _Call()
        self._script = iter(script)

    def cancel(self) -> None:
        self.call.cancelled = True

    async def next(self) -> bytes | None:
        for item in self._script:
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            await asyncio.sleep(0)  # a message read off the network is an await
            return item
        return None


class _Client:
    """ASGI `send`, each write taking `write_seconds` (or `heartbeat_seconds`
    for a bare newline); it fails the test if two writes ever overlap."""

    def __init__(self, write_seconds: float = 0.0, heartbeat_seconds: float = 0.0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.writing = 0
        self.overlapped = False
        self._write, self._heartbeat = write_seconds, heartbeat_seconds

    async def send(self, message: dict[str, Any]) -> None:
        self.writing += 1
        self.overlapped |= self.writing > 1
        try:
            body = message.get("body", b"")
            await asyncio.sleep(self._heartbeat if body == responses.HEARTBEAT else self._write)
            self.sent.append(message)
        finally:
            self.writing -= 1

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent)


@contextlib.contextmanager
def _counting_tasks(created_in: str | None = None) -> Iterator[list[str]]:
    """The tasks created on the running loop inside the block, each as
    "file:coroutine" so a count that grew can say whose they are. With
    `created_in` (a source file, or a folder of them), only those created
    while its code was running: the tests' loop is the session's, where
    other tests' servers and clients make tasks of their own (Hypercorn
    closing the connections of a test before made 72 in one stream)."""
    loop = asyncio.get_running_loop()
    created: list[str] = []
    previous = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any) -> asyncio.Task[Any]:
        frame = sys._getframe(1)
        while created_in is not None and frame is not None and not frame.f_code.co_filename.startswith(created_in):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is not None:
            code = getattr(coro, "cr_code", None)
            created.append(f"{code.co_filename if code else '?'}:{getattr(coro, '__qualname__', coro)}")
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)  # type: ignore[arg-type]
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


async def _stream(script: list[bytes | float], client: _Client, heartbeat: float) -> tuple[_Opened, list[str], list[int]]:
    """Run `responses.stream` over `script`; the coroutines of the tasks the
    streaming code (responses.py) created meanwhile, and the sizes
    `on_chunk` saw."""
    opened = _Opened(script)
    sizes: list[int] = []
    with _counting_tasks(created_in=responses.__file__) as created:
        await responses.stream(responses.Reply(client.send), opened, _accel.PromptFramer("text"), sizes.append, heartbeat)  # type: ignore[arg-type]
    return opened, [name.rsplit(":", 1)[1] for name in created], sizes


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.split(b"\n") if line]


async def test_many_messages_make_no_task_and_a_silence_gets_heartbeats() -> None:
    tokens = [f"t{i} " for i in range(400)]
    script: list[bytes | float] = [_message(t) for t in tokens[:200]] + [0.55] + [_message(t) for t in tokens[200:]] + [FINISH]
    client = _Client()
    opened, created, sizes = await _stream(script, client, heartbeat=0.15)
    heartbeats = sum(1 for m in client.sent if m.get("body") == responses.HEARTBEAT)
    assert 2 <= heartbeats <= 4  # the 0.55 s silence: at 0.15, 0.30 and 0.45 s
    # A task per heartbeat written, none per message: 401 messages went through.
    assert created == ["_Writes._heartbeat"] * heartbeats, created
    assert _lines(client.body) == [{"type": "text", "result": t} for t in tokens] + [{"type": "text", "finishReason": "stop"}]
    assert client.body.index(responses.HEARTBEAT * heartbeats) > client.body.index(b'"t199 "')  # in the silence, not before
    assert not client.overlapped
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert sizes.count(1) == heartbeats and len(sizes) == len(tokens) + 1 + heartbeats
    assert opened.call.cancelled


async def test_a_heartbeat_being_written_is_not_interleaved_with_a_chunk() -> None:
    # The heartbeat's write takes long; the next message arrives meanwhile.
    script: list[bytes | float] = [_message("a"), 0.15, _message("b"), FINISH]
    client = _Client(heartbeat_seconds=0.2)
    await _stream(script, client, heartbeat=0.1)
    assert not client.overlapped
    assert client.body.startswith(b'{"type":"text","result":"a"}\n\n{"type":"text","result":"b"}\n')


async def test_a_slow_write_is_not_a_silence() -> None:
    # Each chunk takes longer to write than the heartbeat interval: the
    # client is slow, not the runner, so no heartbeat goes in between.
    script: list[bytes | float] = [_message("a"), _message("b"), FINISH]
    client = _Client(write_seconds=0.12)
    await _stream(script, client, heartbeat=0.05)
    assert not client.overlapped
    assert responses.HEARTBEAT not in [m.get("body") for m in client.sent]
    assert [line["result"] for line in _lines(client.body)[:2]] == ["a", "b"]


async def test_a_cancelled_stream_cancels_its_call_and_beats_no_more() -> None:
    client = _Client()
    opened = _Opened([_message("a"), 30.0, _message("never")])
    task = asyncio.ensure_future(
        responses.stream(responses.Reply(client.send), opened, _accel.PromptFramer("text"), lambda size: None, 0.05)  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.18)
    task.cancel()  # the client went away
    await asyncio.gather(task, return_exceptions=True)
    beats = len(client.sent)
    assert beats >= 3  # headers, "a", then heartbeats in the silence
    await asyncio.sleep(0.15)
    assert len(client.sent) == beats  # nothing written after the end
    assert opened.call.cancelled


@pytest.mark.e2e
async def test_through_grpc_and_hypercorn_a_message_makes_no_task(scripted: tuple[Any, str], scripted_runner: Any, client: httpx.AsyncClient) -> None:
    """The same, end to end in one loop (gateway, runner, client): the
    gateway's code starts no coroutine once per message, heartbeats on. Only
    tasks created while the gateway's code runs are counted (the loop also
    serves other tests' servers and clients). A stream of 200 messages may
    still make a few more than one of 2, from work on a clock (health
    probes) while a slow machine streams for longer, so the count is
    compared per coroutine: one per message would be one per write, 120 or
    more."""
    scripted_runner.pause = 0.004  # each delta its own message: the SDK sends what is queued
    config = replace(gateway_config(scripted[1]), heartbeat_interval=5.0)

    async def tasks_for(deltas: int) -> tuple[Counter[str], float]:
        scripted_runner.script = [events.text_delta(str(i)) for i in range(deltas)] + [events.finish("stop")]
        before_chunks = await chunks_written()
        with _counting_tasks(created_in=str(Path(responses.__file__).parent)) as created:  # by the gateway's code
            response, lines = await stream_lines(client, server.url + "/", TEXT_EVENT)
        assert response.status_code == 200 and len(lines) == deltas + 1
        return Counter(created), await chunks_written() - before_chunks

    async def chunks_written() -> float:
        text = (await client.get(server.url + "/metrics")).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("agentmark_gw_stream_chunks_total{"))

    async with HttpServer(create_app(config)) as server:
        await tasks_for(2)  # connections and channels made once
        few, few_writes = await tasks_for(2)
        many, many_writes = await tasks_for(200)
    assert many_writes >= 120  # most deltas came as messages of their own, each one write (a busy machine may batch a few)
    grown = many - few
    # A task per message would add one per write; connections of earlier
    # tests closing in this loop meanwhile add a few, unrelated to messages.
    assert all(more < many_writes / 4 for more in grown.values()), sorted(grown.items(), key=lambda kv: -kv[1])[:3]


@contextlib.contextmanager
def _counting_h11_body_writes() -> Iterator[list[int]]:
    """How many body parts h11 framed (Hypercorn's own write path) in the block."""
    counted = [0]
    send = h11.Connection.send

    def counting(self: h11.Connection, event: Any) -> bytes | None:
        if isinstance(event, h11.Data):
            counted[0] += 1
        return send(self, event)

    h11.Connection.send = counting  # type: ignore[method-assign,assignment]
    try:
        yield counted
    finally:
        h11.Connection.send = send  # type: ignore[method-assign]


async def _raw_post(port: int, version: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A POST over a bare socket; the whole answer as the server wrote it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"POST / {version}\r\nhost: x\r\nconnection: close\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body)
    answer = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return answer


@pytest.mark.e2e
async def test_on_hypercorn_http_1_1_chunks_skip_h11_and_http_1_0_gets_a_plain_body(scripted: tuple[Any, str], scripted_runner: Any) -> None:
    """On Hypercorn's HTTP/1.1 the stream's chunks are framed by the gateway
    and written to the connection (`hypercorn_body`): h11 frames none of them,
    and the wire is what h11 would have written. An HTTP/1.0 client gets the
    close-delimited body h11 chose for it, through ASGI."""
    scripted_runner.pause = 0.004
    deltas = [f"t{i} " for i in range(40)]
    scripted_runner.script = [events.text_delta(text) for text in deltas] + [events.finish("stop")]
    raw, headers = signed(TEXT_EVENT)
    expected = [{"type": "text", "result": text} for text in deltas] + [{"type": "text", "finishReason": "stop"}]
    async with HttpServer(create_app(replace(gateway_config(scripted[1]), heartbeat_interval=5.0))) as server:
        with _counting_h11_body_writes() as framed_by_h11:
            answer_11 = await _raw_post(server.port, "HTTP/1.1", raw, headers)
        assert framed_by_h11 == [0]
        with _counting_h11_body_writes() as framed_by_h11:
            answer_10 = await _raw_post(server.port, "HTTP/1.0", raw, headers)
        assert framed_by_h11[0] >= 20  # each message its own write, through h11

    # Read back by an HTTP/1.1 parser: chunked, complete, every line in order.
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    parser.send(h11.EndOfMessage())
    parser.receive_data(answer_11)
    response = parser.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    assert (b"transfer-encoding", b"chunked") in response.headers
    body = b""
    while not isinstance(event := parser.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    assert _lines(body) == expected

    head, _, body_10 = answer_10.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert _lines(body_10) == expected
