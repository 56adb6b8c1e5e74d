"""The webhook endpoint: where a signed HTTP request becomes a runner call
and the runner's answer goes back out.

It speaks ASGI directly and sits in front of the Quart app, through Quart's
own middleware hook (`app.asgi_app`). The webhook is the gateway's one hot
route, and Quart's per-request machinery (request and response objects,
contexts, hooks, two tasks per request) cost more CPU than all the work the
gateway itself does on a request (benchmarks/README.md). Quart keeps the
operations routes, the error pages for other paths, and the serving
lifecycle.

The order on every request is fixed: method, content type, body (no larger
than `max_body_bytes`, no slower than `body_timeout`), signature over the raw
bytes, replay guard, parse. A request that fails any step never reaches a
runner. Every refusal is `{"message": ...}`; no traceback and no request
body is ever sent or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import _accel
from . import responses
from .alerts import Delivery, Outbox
from .config import GatewayConfig
from .errors import Refusal, Unauthorized
from .observability import Metrics, RequestRecord, logged_id
from .replay import ReplayGuard
from .runners import RunnerPool
from .tracing import Tracing, usable_context
from .webhook import Alert, DatasetRun, Event, GetEvals, PromptRun, parse_event

log = logging.getLogger("agentmark_gw.gateway")
request_log = logging.getLogger("agentmark_gw.requests")

WEBHOOK_PATHS = frozenset({"/", "/api/agentmark"})
SIGNATURE_HEADER = "x-agentmark-signature-256"
EVENT_TYPES = {PromptRun: "prompt-run", DatasetRun: "dataset-run", GetEvals: "get-evals", Alert: "alert"}
# Request headers the endpoint reads; the rest are never decoded.
_WANTED_HEADERS = frozenset({b"content-type", b"content-length", SIGNATURE_HEADER.encode(), b"traceparent", b"tracestate"})
# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499
# What the docs promise for request headers. Hypercorn's own limit applies to
# headers still incomplete; ones that arrive in one read (up to 64 KiB) passed.
MAX_HEADER_BYTES = 16 * 1024
# Streamed chunks counted into the metrics at once (see `_stream`).
CHUNKS_PER_COUNT = 64

# ASGI, loosely typed: the server (Hypercorn) checks the messages' shapes.
Scope = Any
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Serving:
    """What starts when serving starts and stops with it."""

    pool: RunnerPool
    outbox: Outbox
    delivery: Delivery


class _ClientGone(Exception):
    """The client closed the connection before its body arrived."""


class WebhookEndpoint:
    def __init__(self, config: GatewayConfig, metrics: Metrics, tracing: Tracing) -> None:
        self.config = config
        self.metrics = metrics
        self.tracing = tracing
        self.serving: Serving | None = None  # set when serving starts
        self._secrets = list(config.secrets)
        self._replay = ReplayGuard(config.replay_window) if config.replay_window > 0 else None
        # Body bytes read but not yet signature-checked, across every request
        # in flight in this process: anyone can send them, so their total is
        # bounded (`max_unverified_body_bytes`), not just each body's size.
        self._unverified = 0

    def in_front_of(self, app: ASGIApp) -> ASGIApp:
        """An ASGI app that serves the webhook paths here and the rest with `app`."""

        async def route(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"] in WEBHOOK_PATHS:
                await self(scope, receive, send)
            else:
                await app(scope, receive, send)

        return route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = RequestRecord(scope["method"], scope["path"])
        headers = _read_headers(scope["headers"])
        if "traceparent" in headers or "tracestate" in headers:
            usable_context(headers)
        span = self.tracing.start(record.method, record.path, headers) if record.method == "POST" else None
        if span is not None:
            record.otel_trace_id = format(span.get_span_context().trace_id, "032x")
            record.on_finish.append(lambda r: self.tracing.finish(span, _span_attributes(r), r.status))
        reply = responses.Reply(send)
        digest: bytes | None = None
        task = asyncio.current_task()
        assert task is not None
        watcher: asyncio.Future[Any] | None = None
        client_gone = False
        completed = False  # the whole answer went out, and it was not a failure

        def on_message(message: asyncio.Future[Any]) -> None:
            # The body is in; what the server sends next is the client leaving.
            nonlocal client_gone
            if not message.cancelled() and message.exception() is None and message.result()["type"] == "http.disconnect":
                client_gone = True
                task.cancel()

        try:
            if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
                raise Refusal(f"Request headers are larger than the limit of {MAX_HEADER_BYTES} bytes", 431)
            if record.method != "POST":
                raise Refusal("Method not allowed", 405)
            if not _is_json(headers.get("content-type")):
                raise Refusal("Content-Type must be application/json", 415)
            body = await self._read_body(receive, headers.get("content-length"))
            try:
                verified = _accel.verify(self._secrets, headers.get(SIGNATURE_HEADER), body)
            finally:
                self._unverified -= len(body)
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_message)
            if not verified:
                self.metrics.signature_failures.inc()
                raise Unauthorized("Invalid signature")
            if self._replay is not None:
                digest = self._replay.digest(body)
                if self._replay.is_replay(digest):
                    digest = None  # the first request's outcome decides, not this one's
                    raise Refusal("Replayed request: this exact signed body was already received within the replay window", 409)
            event = parse_event(body)
            record.event_type = EVENT_TYPES[type(event)]
            completed = await self._dispatch(event, record, reply, self.tracing.runner_metadata(span, headers))
        except Refusal as refusal:
            await self._refuse(reply, record, refusal.status, refusal.message)
        except _ClientGone:
            record.status, record.aborted = CLIENT_CLOSED, True
        except asyncio.CancelledError:
            if not client_gone:
                raise  # the server is shutting down
            task.uncancel()
            record.aborted = True
            if not reply.started:
                record.status = CLIENT_CLOSED
        except Exception as error:  # noqa: BLE001 - a client gets a message, never a traceback
            log.error("internal error on %s %s", record.method, record.path, exc_info=error)
            await self._refuse(reply, record, 500, "Internal gateway error")
        finally:
            if watcher is not None:
                watcher.cancel()
            if digest is not None and not completed:
                # Anything short of a complete answer (a 429, a client that
                # left, a stream ending in an error line) may be retried.
                self._replay.forget(digest)  # type: ignore[union-attr]
            record.finish(self.metrics, request_log)

    async def _read_body(self, receive: Receive, content_length: str | None) -> bytes:
        """The whole body. Its bytes count against the unverified budget from
        the moment they arrive; on success the caller releases them (after the
        signature check), on failure this does."""
        limit = self.config.max_body_bytes
        too_large = Refusal(f"Request body is larger than the limit of {limit} bytes", 413)
        if content_length is not None and content_length.isdigit() and int(content_length) > limit:
            raise too_large  # refused unread
        budget = self.config.max_unverified_body_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            # Also bounds a client that sends its headers, then nothing.
            async with asyncio.timeout(self.config.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    if size + len(chunk) > limit:
                        raise too_large
                    if self._unverified + len(chunk) > budget:
                        raise Refusal(
                            "The gateway is busy: unverified request bodies in flight are over max_unverified_body_bytes; retry shortly", 503
                        )
                    size += len(chunk)
                    self._unverified += len(chunk)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self._unverified -= size
            raise Refusal(f"Request body not received within body_timeout ({self.config.body_timeout:g} s)", 408) from None
        except BaseException:
            self._unverified -= size
            raise
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _refuse(self, reply: responses.Reply, record: RequestRecord, status: int, message: str) -> None:
        if reply.started:
            # Cannot happen for refusals (they all come before the answer); an
            # unexpected error mid-stream ends the stream instead (responses.stream).
            log.error("refusal %d after the response started on %s", status, record.path)
            return
        record.status = status
        await reply.json(status, {"message": message}, allow="POST" if status == 405 else None)

    # -- events -------------------------------------------------------------------

    async def _dispatch(self, event: Event, record: RequestRecord, reply: responses.Reply, metadata: tuple[tuple[str, str], ...]) -> bool:
        """The one place an event is sent on: to a runner, or (alerts) to the
        outbox. True when the answer went out whole and was not a failure."""
        serving = self.serving
        if serving is None:
            raise Refusal("The gateway is still starting", 503)
        if isinstance(event, PromptRun):
            opened = await serving.pool.open_prompt_stream(event, metadata)
            record.runner = opened.runner
            if event.should_stream:
                return await self._stream(reply, opened, _accel.PromptFramer(event.kind), record)
            body, trace_id = await responses.fold(opened, event.kind, self.config.max_answer_bytes)
            record.trace_id = trace_id
            record.status = 200
            await reply.body(200, body)
        elif isinstance(event, DatasetRun):
            experiment = await serving.pool.open_experiment_stream(event, metadata)
            record.runner = experiment.runner
            return await self._stream(reply, experiment, _accel.ExperimentFramer(), record)
        elif isinstance(event, GetEvals):
            names = await serving.pool.get_evals(metadata)
            record.status = 200
            await reply.body(200, _accel.evals_payload(names))
        else:
            await self._acknowledge(event, serving, reply, record)
        return True

    async def _stream(self, reply: responses.Reply, opened: responses.RunnerStream, framer: responses.Framer, record: RequestRecord) -> bool:
        metrics = self.metrics
        record.streaming = True
        record.status = 200
        metrics.inflight_streams.inc()
        chunks = metrics.stream_chunks.labels(record.event_type)
        sent = metrics.stream_bytes.labels(record.event_type)
        # Chunks and bytes reach the counters every CHUNKS_PER_COUNT chunks and
        # at the end, not per chunk: a counter's increment takes a lock, and a
        # chunk is a token.
        uncounted = uncounted_bytes = 0

        def count() -> None:
            nonlocal uncounted, uncounted_bytes
            chunks.inc(uncounted)
            sent.inc(uncounted_bytes)
            uncounted = uncounted_bytes = 0

        def on_chunk(size: int) -> None:
            nonlocal uncounted, uncounted_bytes
            if record.first_chunk is None:
                record.first_chunk = time.perf_counter()
                metrics.time_to_first_chunk.labels(record.event_type).observe(record.first_chunk - record.started)
            record.bytes_sent += size
            uncounted += 1
            uncounted_bytes += size
            if uncounted == CHUNKS_PER_COUNT:
                count()

        try:
            return await responses.stream(reply, opened, framer, on_chunk, self.config.heartbeat_interval)
        finally:
            count()
            metrics.inflight_streams.dec()
            record.trace_id = framer.trace_id or None

    async def _acknowledge(self, alert: Alert, serving: Serving, reply: responses.Reply, record: RequestRecord) -> None:
        """Store the alert for each sink it is routed to, then answer; the
        delivery worker takes it from the outbox."""
        config = self.config
        sinks = [sink for sink in config.alert_sinks if sink.wants(alert.type, alert.status)]
        payload = json.dumps(alert.data, separators=(",", ":"))
        stored = await asyncio.to_thread(
            serving.outbox.accept, alert.id, alert.type, alert.status, payload, sinks, config.alert_cooldown, config.alert_dedupe_window
        )
        for state in stored.values():
            self.metrics.alerts.labels("received" if state == "pending" else state).inc()
        serving.delivery.wake()
        log.info("alert %s (%s %s) stored for %s", logged_id(alert.id), alert.type, alert.status,
                 ", ".join(f"{name}: {state}" for name, state in stored.items()) or "no new delivery (a repeat)")
        record.status = 200
        answer: dict[str, object] = {"message": "Alert processed", "alertId": alert.id, "status": alert.status}
        if sinks and not stored:
            # Only then, so other answers stay as they were: tells a person (or
            # a retrying sender) that nothing new was stored or will be delivered.
            answer["duplicate"] = True
        await reply.json(200, answer)


def _read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request headers the endpoint reads (ASGI gives names in lower case)."""
    return {name.decode(): value.decode("latin-1") for name, value in raw if name in _WANTED_HEADERS}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # tolerated: some proxies strip it; the body must still parse
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _span_attributes(record: RequestRecord) -> dict[str, object]:
    return {
        "agentmark.event_type": record.event_type,
        "agentmark.runner": record.runner,
        "agentmark.trace_id": record.trace_id,
        "agentmark.bytes_streamed": record.bytes_sent,
        "agentmark.aborted": record.aborted,
    }
