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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol

from grpc.aio import AioRpcError

from .. import _accel
from .errors import ExecutionFailed, Refusal
from .runners import OpenStream, refusal_for

__all__ = ["JSON", "STREAM_HEADERS", "Framer", "OpenStream", "Reply", "fold", "stream"]

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
        self._send = send
        self.started = False

    async def body(self, status: int, body: bytes, content_type: str = JSON, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        if extra:
            headers += extra
        await self.start(status, headers)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def json(self, status: int, payload: Mapping[str, object], allow: str | None = None) -> None:
        await self.body(status, json.dumps(payload).encode(), extra=[(b"allow", allow.encode())] if allow else None)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


# How every error line starts. Inside a JSON string its quotes are escaped,
# so these bytes are an error line wherever they appear in framed output.
ERROR_LINE_START = b'{"type":"error"'


async def stream(reply: Reply, opened: OpenStream, framer: Framer, on_chunk: Callable[[int], None], heartbeat: float = 0.0) -> bool:
    """Stream a runner's answer as NDJSON: one write per runner message (a
    batch of lines), heartbeats in long silences, `on_chunk(size)` before
    each write. The runner call is cancelled however the stream ends: at its
    end, on the client's going away (this task is cancelled), or on an error.
    True when the run completed: no error line was sent."""
    ended = _Ending()
    try:
        await reply.start(200, STREAM_HEADERS)
        try:
            async for chunk in _chunks(opened, framer, heartbeat, ended):
                on_chunk(len(chunk))
                await reply.write(chunk)
        except Exception as error:  # noqa: BLE001 - the stream ends with a line, never a traceback
            log.error("internal error while streaming", exc_info=error)
            ended.failed = True
            if not framer.terminated:
                await reply.write(framer.fail(INTERNAL_ERROR))
        await reply.end()
    finally:
        opened.call.cancel()
    # Dataset runs go on past a failed row; their framer counts error lines.
    return not ended.failed and not getattr(framer, "errors", 0)


class _Ending:
    failed = False


async def _chunks(opened: OpenStream, framer: Framer, heartbeat: float, ended: _Ending) -> AsyncIterator[bytes]:
    try:
        # With the runner slow to start, the response began before its first message.
        waiting_for_first = opened.pending is not None
        message = opened.first
        while waiting_for_first or message is not None:
            if not waiting_for_first:
                chunk = framer.feed(message)  # type: ignore[arg-type]
                if chunk:
                    yield chunk  # a whole batch of lines in one write
                if framer.terminated:
                    # Searched once per stream: only the last batch can end in an error.
                    ended.failed = ERROR_LINE_START in chunk
                    break
            waiting_for_first = False
            if heartbeat <= 0:
                message = await opened.next()
                continue
            # Load balancers close connections that stay silent (nginx after
            # 60 s by default); a dataset item or a slow model can take longer.
            # The read runs as its own task so waiting on it can time out
            # without cancelling the call.
            pending = asyncio.ensure_future(opened.next())
            try:
                while not (await asyncio.wait({pending}, timeout=heartbeat))[0]:
                    yield HEARTBEAT
            finally:
                if not pending.done():
                    pending.cancel()
            message = pending.result()
    except AioRpcError as error:
        ended.failed = True
        yield framer.fail(refusal_for(error, opened.expose_internals).message)
    done = framer.close()
    if done:
        ended.failed = ended.failed or ERROR_LINE_START in done  # "runner ended the stream without finishing"
        yield done


async def fold(opened: OpenStream, kind: str, limit: int) -> tuple[bytes, str | None]:
    """Collect a whole run into its one JSON envelope (non-streaming answers).
    Returns the envelope and the run's trace id, if it had one.

    Unlike a stream, the whole answer is held here, so a runner that never
    finishes would grow the gateway without end: past `limit` bytes of
    runner messages (what the envelope is made of) the run is cancelled and
    the request fails with 502."""
    folder = _accel.EnvelopeFolder(kind)
    received = 0
    try:
        message = opened.first if opened.pending is None else await opened.next()
        while message is not None:
            received += len(message)
            if received > limit:
                raise Refusal(f"Runner answer is larger than max_answer_bytes ({limit} bytes); ask for a stream instead", 502)
            folder.feed(message)
            if folder.terminated:
                break
            message = await opened.next()
    except AioRpcError as error:
        raise refusal_for(error, opened.expose_internals) from None
    finally:
        opened.call.cancel()
    body = folder.close()
    if folder.error is not None:
        raise ExecutionFailed(folder.error)
    return body, folder.trace_id or None
