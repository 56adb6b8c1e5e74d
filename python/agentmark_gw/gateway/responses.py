"""Runner answers become HTTP answers: the one place a runner message turns
into NDJSON lines (streaming) or a JSON envelope (non-streaming).

The bytes themselves are made by `_accel`'s framers (Rust, or the Python
twin); this module decides when to write them and what a failure looks like:
before the first byte it is an HTTP status with `{"message": ...}` (raised
by the runner pool); after it, a terminal `{"type":"error",...}` line.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

from .. import _accel
from .errors import ExecutionFailed, Refusal
from .hypercorn_body import BodyWriter, direct_body
from .runners import RunnerStream

__all__ = ["JSON", "STREAM_HEADERS", "Framer", "Reply", "RunnerStream", "fold", "stream"]

log = logging.getLogger("agentmark_gw.gateway")

JSON = "application/json"
STREAM_HEADERS = [
    (b"agentmark-streaming", b"true"),
    (b"content-type", b"application/x-ndjson"),
    # nginx buffers proxied responses unless told otherwise; a stream must not wait.
    (b"x-accel-buffering", b"no"),
]
HEARTBEAT = b"\n"  # AgentMark's clients skip blank lines
INTERNAL_ERROR = "Internal gateway error"


class Framer(Protocol):
    @property
    def terminated(self) -> bool: ...
    @property
    def trace_id(self) -> str: ...
    def feed(self, batch: bytes) -> bytes: ...
    def fail(self, message: str) -> bytes: ...
    def close(self) -> bytes: ...


class Reply:
    """One HTTP answer over ASGI `send`: a whole body, or a stream of writes."""

    def __init__(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        self.send = send  # the server's ASGI send
        self.started = False

    async def body(self, status: int, body: bytes, content_type: str = JSON, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        if extra:
            headers += extra
        await self.start(status, headers)
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def json(self, status: int, payload: Mapping[str, object], allow: str | None = None) -> None:
        await self.body(status, json.dumps(payload).encode(), extra=[(b"allow", allow.encode())] if allow else None)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    def send_body(self, body: bytes, more: bool) -> Awaitable[None]:
        """A part of the body (`more`), or its last. A plain function returning
        the server's awaitable: no coroutine of its own on the per-token path."""
        return self.send({"type": "http.response.body", "body": body, "more_body": more})


# How every error line starts. Inside a JSON string its quotes are escaped,
# so these bytes are an error line wherever they appear in framed output.
ERROR_LINE_START = b'{"type":"error"'


async def stream(reply: Reply, opened: RunnerStream, framer: Framer, on_chunk: Callable[[int], None], heartbeat: float = 0.0) -> bool:
    """Stream a runner's answer as NDJSON: one write per runner message (a
    batch of lines), heartbeats in long silences, `on_chunk(size)` before
    each write. The runner call is cancelled however the stream ends: at its
    end, on the client's going away (this task is cancelled), or on an error.
    True when the run completed: no error line was sent.

    This task reads the runner and writes each message's lines itself, with
    no helper task or timer per message (a model streams tokens one message
    each, so the per-message cost is the per-token cost); heartbeats come
    from `_Writes`' one per-stream deadline."""
    out = _Writes(reply, on_chunk, heartbeat)
    failed = False
    try:
        await out.start()
        try:
            try:
                # With the runner slow to start, the response began before its
                # first message; `out`'s heartbeats cover the wait.
                message = await opened.next()
                while message is not None:
                    chunk = framer.feed(message)
                    if chunk:
                        # A whole batch of lines in one write; mostly written
                        # at once, with nothing to await (see `_Writes.write`).
                        pending = out.write(chunk)
                        if pending is not None:
                            await pending
                    if framer.terminated:
                        # Searched once per stream: only the last batch can end in an error.
                        failed = ERROR_LINE_START in chunk
                        break
                    message = await opened.next()
            except Refusal as refusal:  # the runner failed mid-stream
                failed = True
                await out.write_all(framer.fail(refusal.message))
            done = framer.close()
            if done:
                failed = failed or ERROR_LINE_START in done  # "runner ended the stream without finishing"
                await out.write_all(done)
        except Exception as error:  # noqa: BLE001 - the stream ends with a line, never a traceback
            log.error("internal error while streaming", exc_info=error)
            failed = True
            if not framer.terminated:
                await out.write_all(framer.fail(INTERNAL_ERROR))
        await out.end()
    finally:
        out.close()
        opened.cancel()
    # Dataset runs go on past a failed row; their framer counts error lines.
    return not failed and not getattr(framer, "errors", 0)


class _Writes:
    """A stream's body writes, in order: chunks from the stream's task, and a
    bare newline after `interval` seconds without a write (0: never).

    Load balancers close connections that stay silent (nginx after 60 s by
    default); a dataset item or a slow model can take longer. The heartbeat
    is one deadline per stream, `last + interval`, and a chunk only moves
    `last`: one timer is armed per stream and re-armed only when it fires, so
    a message costs no timer and no task. When a heartbeat is due, a task
    writes it (only in a silence); a chunk ready meanwhile waits for that
    write, and no heartbeat starts while a chunk is being written, so the two
    never interleave.

    On Hypercorn's HTTP/1.1 the chunks go straight to the connection
    (`hypercorn_body.direct_body`), and a chunk the socket takes at once is
    written with nothing to await; elsewhere they go through ASGI `send`."""

    __slots__ = ("_reply", "_put", "_on_chunk", "_interval", "_loop", "_last", "_timer", "_beat", "_writing", "_closed", "_error")

    def __init__(self, reply: Reply, on_chunk: Callable[[int], None], interval: float) -> None:
        self._reply = reply
        self._put: BodyWriter = self._through_asgi
        self._on_chunk = on_chunk
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._beat: asyncio.Task[None] | None = None
        self._writing = False
        self._closed = False
        self._error: Exception | None = None

    async def start(self) -> None:
        """The headers; the silence is counted from them."""
        await self._reply.start(200, STREAM_HEADERS)
        self._put = direct_body(self._reply.send) or self._through_asgi
        self._last = self._loop.time()
        if self._interval > 0 and not self._closed:
            self._timer = self._loop.call_at(self._last + self._interval, self._due)

    def _through_asgi(self, chunk: bytes) -> Awaitable[None]:
        return self._reply.send_body(chunk, True)

    def write(self, chunk: bytes) -> Awaitable[None] | None:
        """Write `chunk`; what to await before the next write, or None when
        it is written already (the per-token case: no coroutine at all)."""
        if self._beat is not None or self._error is not None:
            return self.write_all(chunk)  # a heartbeat is going out, or failed
        self._on_chunk(len(chunk))
        pending = self._put(chunk)
        if pending is not None:
            return self._written(pending)
        self._last = self._loop.time()
        return None

    async def write_all(self, chunk: bytes) -> None:
        """Write `chunk` after any heartbeat being written, and wait for it."""
        if self._beat is not None:
            await self._beat  # a heartbeat is going out: the chunk goes after it
        if self._error is not None:
            raise self._error  # a heartbeat's write failed: the connection is no good
        pending = self.write(chunk)
        if pending is not None:
            await pending

    async def _written(self, pending: Awaitable[None]) -> None:
        self._writing = True  # a slow client: not a silence, no heartbeat meanwhile
        try:
            await pending
        finally:
            self._writing = False
        self._last = self._loop.time()

    async def end(self) -> None:
        """The body's end, after a heartbeat being written; none after it."""
        self._stop_timer()
        if self._beat is not None:
            await self._beat
        await self._reply.send_body(b"", False)

    def close(self) -> None:
        """However the stream ended: no heartbeat from now on."""
        self._stop_timer()
        if self._beat is not None:
            self._beat.cancel()

    def _stop_timer(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        if self._writing:
            # A chunk is going out (to a slow client): not a silence.
            self._timer = self._loop.call_at(now + self._interval, self._due)
            return
        due = self._last + self._interval
        if due > now:  # a chunk went out since: the deadline moved
            self._timer = self._loop.call_at(due, self._due)
            return
        self._beat = self._loop.create_task(self._heartbeat())

    async def _heartbeat(self) -> None:
        try:
            self._on_chunk(len(HEARTBEAT))
            pending = self._put(HEARTBEAT)
            if pending is not None:
                await pending
        except Exception as error:  # noqa: BLE001 - raised by the stream's next write
            self._error = error
            return
        finally:
            self._beat = None
        self._last = self._loop.time()
        if not self._closed:
            self._timer = self._loop.call_at(self._last + self._interval, self._due)


async def fold(opened: RunnerStream, kind: str, limit: int) -> tuple[bytes, str | None]:
    """Collect a whole run into its one JSON envelope (non-streaming answers).
    Returns the envelope and the run's trace id, if it had one.

    Unlike a stream, the whole answer is held here, so a runner that never
    finishes would grow the gateway without end: past `limit` bytes of
    runner messages (what the envelope is made of) the run is cancelled and
    the request fails with 502."""
    folder = _accel.EnvelopeFolder(kind)
    received = 0
    try:
        message = await opened.next()
        while message is not None:
            received += len(message)
            if received > limit:
                raise Refusal(f"Runner answer is larger than max_answer_bytes ({limit} bytes); ask for a stream instead", 502)
            folder.feed(message)
            if folder.terminated:
                break
            message = await opened.next()
    finally:
        opened.cancel()
    body = folder.close()
    if folder.error is not None:
        raise ExecutionFailed(folder.error)
    return body, folder.trace_id or None
