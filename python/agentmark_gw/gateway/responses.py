"""Runner answers become HTTP answers: the one place a runner message turns
into NDJSON lines (streaming) or a JSON envelope (non-streaming).

The bytes themselves are made by `_accel`'s framers (Rust, or the Python
twin); this module decides when to write them and what a failure looks like:
before the first byte it is an HTTP status with `{"message": ...}`; after
it, a terminal `{"type":"error",...}` line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from grpc.aio import AioRpcError
from quart import Response

from .. import _accel
from .errors import ExecutionFailed
from .runners import refusal_for

STREAM_HEADERS = {"AgentMark-Streaming": "true", "Content-Type": "application/x-ndjson"}
JSON = "application/json"


class Framer(Protocol):
    terminated: bool

    def feed(self, batch: bytes) -> bytes: ...
    def close(self) -> bytes: ...


async def _read(call: grpc.aio.UnaryStreamCall) -> bytes | None:
    """The next raw message, or None at the end of the stream."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message


async def stream(call: grpc.aio.UnaryStreamCall, framer: Framer) -> Response:
    """Stream a runner's answer as NDJSON. Waits for the first message, so a
    runner that cannot be reached is an HTTP error, not a 200 with an error line."""
    try:
        first = await _read(call)
    except AioRpcError as error:
        raise refusal_for(error) from None
    except BaseException:
        call.cancel()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in _chunks(call, framer, first):
                yield chunk
        finally:
            # The client went away, the run ended, or it failed: either way
            # the runner should stop working on it.
            call.cancel()

    response = Response(body(), status=200, headers=STREAM_HEADERS)
    response.timeout = None  # deadlines are the runner call's business
    return response


async def _chunks(call: grpc.aio.UnaryStreamCall, framer: Framer, message: bytes | None) -> AsyncIterator[bytes]:
    try:
        while message is not None:
            chunk = framer.feed(message)
            if chunk:
                yield chunk  # one write per runner message: a whole batch of lines
            if framer.terminated:
                break
            message = await _read(call)
    except AioRpcError as error:
        yield _accel.error_line(refusal_for(error).message)
    done = framer.close()
    if done:
        yield done


async def fold(call: grpc.aio.UnaryStreamCall, kind: str) -> Response:
    """Collect a whole run into its one JSON envelope (non-streaming answers)."""
    folder = _accel.EnvelopeFolder(kind)
    try:
        while not folder.terminated and (message := await _read(call)) is not None:
            folder.feed(message)
    except AioRpcError as error:
        raise refusal_for(error) from None
    finally:
        call.cancel()
    body = folder.close()
    if folder.error is not None:
        raise ExecutionFailed(folder.error)
    return Response(body, status=200, content_type=JSON)
