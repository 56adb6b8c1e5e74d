"""Runner answers become HTTP answers: the one place a runner message turns
into NDJSON lines (streaming) or a JSON envelope (non-streaming).

The bytes themselves are made by `_accel`'s framers (Rust, or the Python
twin); this module decides when to write them and what a failure looks like:
before the first byte it is an HTTP status with `{"message": ...}` (raised
by the runner pool); after it, a terminal `{"type":"error",...}` line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from grpc.aio import AioRpcError
from quart import Response

from .. import _accel
from .errors import ExecutionFailed
from .runners import OpenStream, refusal_for

__all__ = ["JSON", "STREAM_HEADERS", "Framer", "OpenStream", "fold", "stream"]

STREAM_HEADERS = {
    "AgentMark-Streaming": "true",
    "Content-Type": "application/x-ndjson",
    # nginx buffers proxied responses unless told otherwise; a stream must not wait.
    "X-Accel-Buffering": "no",
}
JSON = "application/json"


class Framer(Protocol):
    @property
    def terminated(self) -> bool: ...
    @property
    def trace_id(self) -> str: ...
    def feed(self, batch: bytes) -> bytes: ...
    def fail(self, message: str) -> bytes: ...
    def close(self) -> bytes: ...


HEARTBEAT = b"\n"  # AgentMark's clients skip blank lines


def stream(
    opened: OpenStream,
    framer: Framer,
    on_chunk: Callable[[int], None] = lambda size: None,
    on_end: Callable[[bool], None] = lambda complete: None,
    heartbeat: float = 0.0,
) -> Response:
    """Stream a runner's answer as NDJSON, one write per runner message.
    `on_chunk(size)` follows each write; `on_end(complete)` the last one, or
    the client's going away (complete=False)."""

    ended = False

    def end(complete: bool) -> None:
        # The client went away, the run ended, or it failed: either way the
        # runner should stop working on it. Runs once.
        nonlocal ended
        if not ended:
            ended = True
            opened.call.cancel()
            on_end(complete)

    async def body() -> AsyncIterator[bytes]:
        complete = False
        try:
            async for chunk in _chunks(opened, framer, heartbeat):
                on_chunk(len(chunk))
                yield chunk
            complete = True
        finally:
            end(complete)

    # If the client is gone before the body is even started, Quart never
    # iterates (or closes) it: end the run when the request's task ends.
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(lambda _: end(False))

    response = Response(body(), status=200, headers=STREAM_HEADERS)
    response.timeout = None  # deadlines are the runner call's business
    return response


async def _chunks(opened: OpenStream, framer: Framer, heartbeat: float) -> AsyncIterator[bytes]:
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
        yield framer.fail(refusal_for(error).message)
    done = framer.close()
    if done:
        yield done


async def fold(opened: OpenStream, kind: str) -> tuple[Response, str | None]:
    """Collect a whole run into its one JSON envelope (non-streaming answers).
    Returns the response and the run's trace id, if it had one."""
    folder = _accel.EnvelopeFolder(kind)
    try:
        message = opened.first if opened.pending is None else await opened.next()
        while message is not None:
            folder.feed(message)
            if folder.terminated:
                break
            message = await opened.next()
    except AioRpcError as error:
        raise refusal_for(error) from None
    finally:
        opened.call.cancel()
    body = folder.close()
    if folder.error is not None:
        raise ExecutionFailed(folder.error)
    return Response(body, status=200, content_type=JSON), folder.trace_id or None
