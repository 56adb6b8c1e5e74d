"""A small HTTP/1.1 client on raw asyncio streams, for `benchmarks/e2e.py`:
the correctness check (one request, whole body), the time-to-first-chunk
runs (N requests over C keep-alive connections back to back, bounded in
count and time), paced runs (open loop: requests due at a fixed rate) and
waves of paced streams (`paced_streams`: many slow token streams at once,
each token's arrival timed).

Raw sockets rather than httpx so that the client spends as little CPU as
possible on a 2-core machine it shares with the servers, and so that "first
chunk" means the first body bytes off the socket, not whatever a library
buffers. Handles Content-Length, chunked and close-delimited bodies (the
AgentMark peer streams until it closes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    first_byte_s: float | None  # request written -> first body bytes read
    total_s: float  # request written -> last body byte read
    keep_alive: bool


class ProtocolError(Exception):
    pass


class Connection:
    """One keep-alive connection; reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Reply:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        started = time.perf_counter()
        try:
            reply = await self._read_reply(reader, started)
        except BaseException:
            await self.close()
            raise
        if not reply.keep_alive:
            await self.close()
        return reply

    async def _read_reply(self, reader: asyncio.StreamReader, started: float) -> Reply:
        try:
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError("connection closed before a response") from exc
        lines = raw_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ProtocolError(f"bad status line {lines[0]!r}")
        version, status = parts[0], int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection == "keep-alive" if version == "HTTP/1.0" else connection != "close"
        chunks: list[bytes] = []
        first: float | None = None

        def got(data: bytes) -> None:
            nonlocal first
            if data:
                if first is None:
                    first = time.perf_counter() - started
                chunks.append(data)

        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                data = await reader.readexactly(size + 2)
                got(data[:-2])
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                data = await reader.read(min(remaining, 1 << 16))
                if not data:
                    raise ProtocolError("connection closed inside the body")
                remaining -= len(data)
                got(data)
        elif status in (204, 304) or 100 <= status < 200:
            pass
        else:
            keep_alive = False  # the body ends when the server closes
            while data := await reader.read(1 << 16):
                got(data)
        return Reply(status, headers, b"".join(chunks), first, time.perf_counter() - started, keep_alive)


@dataclass
class LoadResult:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    first_byte_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    body_sizes: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    stopped_by_time: bool = False
    # Paced runs: how long after its due time each request went out.
    late_s: list[float] = field(default_factory=list)

    def add(self, reply: Reply) -> None:
        self.requests += 1
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        if reply.first_byte_s is not None:
            self.first_byte_s.append(reply.first_byte_s)
        self.total_s.append(reply.total_s)
        self.body_sizes.append(len(reply.body))


CLIENT_ERRORS = (OSError, ProtocolError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError)


async def load(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    total: int,
    time_limit: float,
    request_timeout: float = 30.0,
) -> LoadResult:
    """`total` POSTs over `concurrency` connections, or as many as fit in
    `time_limit` seconds, whichever comes first."""
    result = LoadResult()
    deadline = time.monotonic() + time_limit
    issued = 0

    async def worker() -> None:
        nonlocal issued
        connection = Connection(host, port)
        try:
            while issued < total:
                if time.monotonic() >= deadline:
                    result.stopped_by_time = True
                    return
                issued += 1
                try:
                    reply = await asyncio.wait_for(connection.request("POST", path, body, headers), request_timeout)
                except CLIENT_ERRORS as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    await connection.close()
                    continue
                result.add(reply)
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def paced(
    send: Callable[[int], Awaitable[None]],
    result: LoadResult,
    *,
    lanes: int,
    rate: float,
    total: int,
    time_limit: float,
    request_timeout: float = 30.0,
) -> LoadResult:
    """Open loop: request i is due `i / rate` seconds after the start and goes
    out on lane `i % lanes` (`send(lane)`, one request) when it is due, or
    when that lane's previous request ends if it is still running. At a rate
    the server easily keeps up with, lanes are free when a request is due,
    so the times measured are not queueing; `result.late_s` says how late
    each request went out. Requests due after `time_limit` are not sent;
    each is bounded by `request_timeout`. Errors are counted in `result`."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    deadline = start + time_limit

    async def lane(k: int) -> None:
        for i in range(k, total, lanes):
            due = start + i / rate
            if due >= deadline:
                result.stopped_by_time = True
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            result.late_s.append(max(0.0, loop.time() - due))
            try:
                await asyncio.wait_for(send(k), request_timeout)
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on (HTTP and gRPC errors alike)
                result.errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(lanes)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def load_paced(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    connections: int,
    rate: float,
    total: int,
    time_limit: float,
) -> LoadResult:
    """`paced` POSTs, one keep-alive connection per lane; first, unmeasured,
    one request per lane (connections opened, the server's caches warm)."""
    pool = [Connection(host, port) for _ in range(connections)]

    def sender(result: LoadResult) -> Callable[[int], Awaitable[None]]:
        async def send(lane: int) -> None:
            result.add(await pool[lane].request("POST", path, body, headers))

        return send

    try:
        warmup = LoadResult()
        await paced(sender(warmup), warmup, lanes=connections, rate=rate, total=connections, time_limit=time_limit)
        result = LoadResult()
        return await paced(sender(result), result, lanes=connections, rate=rate, total=total, time_limit=time_limit)
    finally:
        for connection in pool:
            await connection.close()


async def one(host: str, port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    connection = Connection(host, port)
    try:
        return await asyncio.wait_for(connection.request(method, path, body, headers), timeout)
    finally:
        await connection.close()


# --- paced streams: many slow streams at once, each token's arrival timed -----


@dataclass
class PacedResult:
    """What a wave of paced streams looked like from the client."""

    streams: int = 0
    completed: int = 0
    tokens: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Between consecutive tokens of one stream, all streams pooled; tokens
    # read off the socket together are 0 apart.
    gaps_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)  # request written -> first token
    total_s: list[float] = field(default_factory=list)  # request written -> end of the body
    elapsed_s: float = 0.0


class _PacedProtocol(asyncio.Protocol):
    """One request on its own connection, its answer timed token by token.

    A protocol rather than a StreamReader, and no HTTP parsing beyond the
    status: at 1,000 streams of 50 tokens/s the client takes tens of
    thousands of segments a second on the cores the servers use, so it counts
    `token` markers in the raw bytes (a marker split across two segments is
    found through the kept tail) and knows the end by the chunked body's last
    chunk, or the server closing (AgentMark's server ends bodies that way)."""

    def __init__(self, request: bytes, token: bytes, result: PacedResult, done: asyncio.Future[None]) -> None:
        self._request = request
        self._token = token
        self._result = result
        self._done = done
        self._tail = b""
        self._status: int | None = None
        self._sent = 0.0
        self._last: float | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._sent = time.perf_counter()
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        seen = self._tail + data
        if self._status is None:
            if not seen.startswith(b"HTTP/"):
                self._finish(f"ProtocolError: bad status line {seen[:40]!r}")
                return
            self._status = int(seen[9:12])
            self._result.statuses[self._status] = self._result.statuses.get(self._status, 0) + 1
        # Markers wholly inside the kept tail were counted with the last segment.
        count = seen.count(self._token) - self._tail.count(self._token)
        if count:
            result = self._result
            if self._last is None:
                result.first_s.append(now - self._sent)
            else:
                result.gaps_s.append(now - self._last)
            if count > 1:
                result.gaps_s.extend([0.0] * (count - 1))
            result.tokens += count
            self._last = now
        self._tail = seen[-max(len(self._token) - 1, len(_LAST_CHUNK)):]
        if self._tail.endswith(_LAST_CHUNK):
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(f"{type(exc).__name__}: {exc}" if exc else None)

    def _finish(self, error: str | None) -> None:
        if self._done.done():
            return
        if error is None and self._status is not None:
            self._result.completed += 1
            self._result.total_s.append(time.perf_counter() - self._sent)
        else:
            self._result.errors.append(error or "connection closed before a response")
        self._done.set_result(None)
        if self._transport is not None:
            self._transport.close()


_LAST_CHUNK = b"\r\n0\r\n\r\n"  # a chunked body's end; a data chunk ends "\n\r\n"


async def paced_streams(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str], *,
    streams: int, ramp: float, time_limit: float, token: bytes,
) -> PacedResult:
    """`streams` requests, each on a new connection, started evenly over
    `ramp` seconds (so their tokens are not in phase), all held open until
    their answers end, or `time_limit` seconds after the start."""
    loop = asyncio.get_running_loop()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
    result = PacedResult(streams=streams)
    start = loop.time() + 0.05
    deadline = start + time_limit

    async def one(k: int) -> None:
        await asyncio.sleep(max(0.0, start + k * ramp / streams - loop.time()))
        done: asyncio.Future[None] = loop.create_future()
        transport = None
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: _PacedProtocol(request, token, result, done), host, port), max(0.1, deadline - loop.time())
            )
            await asyncio.wait_for(asyncio.shield(done), max(0.1, deadline - loop.time()))
        except (TimeoutError, OSError) as exc:
            if not done.done():
                done.set_result(None)
                result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if transport is not None:
                transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(streams)))
    result.elapsed_s = time.perf_counter() - started
    return result
