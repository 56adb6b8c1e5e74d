"""A stream's body chunks written straight to Hypercorn's HTTP/1.1 connection.

Why: a model streams one token per runner message, so each token is one
body write, and through ASGI a write on Hypercorn passes `HTTPStream.app_send`,
`H11Protocol.stream_send`, h11's state machine and chunked writer, then
`TCPServer.protocol_send` with its lock and drain: about 8 µs of Python
around a 3 µs socket write (benchmarks/README.md). Every one of those
layers only frames the chunk and hands it on. Here the gateway frames the
chunk itself (`_accel.http_chunk`, in Rust) and writes it to the
connection's transport.

Only where it is the same on the wire: Hypercorn's HTTP/1.1 protocol, a
response h11 is sending chunked (not HTTP/1.0's close-delimited body, not
HTTP/2), on the Hypercorn releases this was checked against (PATCHED_HYPERCORN;
tests/test_deployment.py fails on any other). The headers and the body's
end still go through ASGI, so h11 writes them and knows the response is
complete; chunks in between are framing only, which h11 keeps no count of.

Whenever the connection is not simply writable (bytes still queued for a
slow client, another write holding Hypercorn's lock, the connection
closing), the chunk goes through `TCPServer.protocol_send` instead: its
lock, its wait for the client to drain, and its handling of a lost
connection (the app is told `http.disconnect`), exactly as Hypercorn writes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

from .. import _accel
from .server import HYPERCORN_VERSION, PATCHED_HYPERCORN

__all__ = ["BodyWriter", "direct_body"]

# Writes one chunk of a started streamed body; returns what must be awaited
# before the next (None: nothing, the chunk is with the kernel already).
BodyWriter = Callable[[bytes], Awaitable[None] | None]

# Whether this Hypercorn is one whose internals below were checked.
_CHECKED = HYPERCORN_VERSION.startswith(PATCHED_HYPERCORN)


def direct_body(send: Callable[..., Any]) -> BodyWriter | None:
    """A writer of body chunks straight to the connection, for the response
    whose headers went out through `send` (Hypercorn's ASGI send); None
    where ASGI must write them (another server, HTTP/2, HTTP/1.0 clients)."""
    if not _CHECKED:
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, HTTPStream) or stream.state is not ASGIHTTPState.RESPONSE:
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    chunked = type(getattr(protocol.connection, "_writer", None)).__name__ == "ChunkedWriter"
    server = getattr(protocol.send, "__self__", None)
    if not chunked or not isinstance(server, TCPServer):
        return None

    transport = server.writer.transport
    lock = server.send_lock
    protocol_send = server.protocol_send
    http_chunk = _accel.http_chunk

    def write(chunk: bytes) -> Awaitable[None] | None:
        framed = http_chunk(chunk)
        if not framed:
            return None  # nothing to write; an empty chunk would end the body
        if lock.locked() or transport.is_closing() or transport.get_write_buffer_size():
            return protocol_send(RawData(data=framed))  # type: ignore[no-any-return]
        transport.write(framed)
        return None

    return write
