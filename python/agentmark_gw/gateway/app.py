"""The Quart app: routes, status codes and error bodies.

The order on every webhook request is fixed: check the content type, read
the body (no further than the limit), verify the signature over the raw
bytes, then parse. A request that fails any step never reaches a runner.
Every refusal is `{"message": ...}`; no traceback and no request body is ever
sent or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping

from opentelemetry.sdk.trace import TracerProvider
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from .. import _accel
from . import responses
from .config import GatewayConfig
from .errors import Refusal, Unauthorized
from .observability import Metrics, RequestRecord
from .replay import ReplayGuard
from .alerts import Delivery, Outbox
from .runners import Metadata, RunnerPool
from .tracing import Tracing, provider_from_environment
from .webhook import Alert, DatasetRun, Event, GetEvals, PromptRun, parse_event

log = logging.getLogger("agentmark_gw.gateway")
request_log = logging.getLogger("agentmark_gw.requests")

SIGNATURE_HEADER = "x-agentmark-signature-256"
WEBHOOK_PATHS = ("/", "/api/agentmark")
OPERATIONS_PATHS = ("/healthz", "/readyz", "/metrics")
ALERT_DRAIN_SECONDS = 5.0
EVENT_TYPES = {PromptRun: "prompt-run", DatasetRun: "dataset-run", GetEvals: "get-evals", Alert: "alert"}


def create_app(config: GatewayConfig, tracer_provider: TracerProvider | None = None) -> Quart:
    """The gateway app. Runner channels open when serving starts. Spans go to
    `tracer_provider`, or to OTLP when the `OTEL_*` variables ask for it."""
    config.require_secret()
    _accel.announce()
    app = Quart("agentmark_gw")
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        BODY_TIMEOUT=config.body_timeout,
        # Streams last as long as the runner's deadline allows, not Quart's 60 s.
        RESPONSE_TIMEOUT=None,
        PROPAGATE_EXCEPTIONS=False,
    )
    secrets = list(config.secrets)
    metrics = Metrics()
    replay = ReplayGuard(config.replay_window) if config.replay_window > 0 else None
    tracing = Tracing(tracer_provider if tracer_provider is not None else provider_from_environment())
    pools: list[RunnerPool] = []
    outboxes: list[Outbox] = []
    deliveries: list[Delivery] = []

    def runner_health(target: str, healthy: bool) -> None:
        metrics.runner_healthy.labels(target).set(1 if healthy else 0)

    @app.before_serving
    async def open_runners() -> None:
        pool = RunnerPool(config, on_health=runner_health)
        await pool.start()
        pools.append(pool)
        outbox = await asyncio.to_thread(Outbox, config.alerts_db)
        outboxes.append(outbox)

        async def to_runner(data: dict[str, object]) -> None:
            alert = data.get("alert") or {}
            assert isinstance(alert, dict)
            await pool.handle_alert(Alert(data, str(alert.get("id")), str(alert.get("type")), str(alert.get("status"))))

        delivery = Delivery(
            outbox, config.alert_sinks, to_runner, max_attempts=config.alert_max_attempts, backoff=config.alert_backoff,
            lease=config.alert_lease,
            on_outcome=lambda outcome: metrics.alerts.labels(outcome).inc(),
        )
        delivery.start()
        deliveries.append(delivery)

    @app.after_serving
    async def close_runners() -> None:
        # Deliveries under way get a moment; the rest stay in the outbox for the next start.
        for delivery in deliveries:
            await delivery.stop(ALERT_DRAIN_SECONDS)
        for outbox in outboxes:
            outbox.close()
        for pool in pools:
            await pool.close()
        pools.clear()
        tracing.shutdown()

    # -- webhook ---------------------------------------------------------------

    async def webhook() -> Response:
        if not _is_json(request.content_type):
            raise Refusal("Content-Type must be application/json", status=415)
        body: bytes = await request.get_data(cache=False, as_text=False)  # type: ignore[assignment]
        if not _accel.verify(secrets, request.headers.get(SIGNATURE_HEADER), body):
            metrics.signature_failures.inc()
            raise Unauthorized("Invalid signature")
        if replay is not None:
            g.body_digest = replay.digest(body)
        if replay is not None and replay.is_replay(g.body_digest):
            raise Refusal("Replayed request: this exact signed body was already received within the replay window", 409)
        event = parse_event(body)
        g.record.event_type = EVENT_TYPES[type(event)]
        metadata = tracing.runner_metadata(g.get("span"), request.headers)
        return await dispatch(event, g.record, metadata)

    for path in WEBHOOK_PATHS:
        app.add_url_rule(path, f"webhook{path}", webhook, methods=["POST"])

    async def dispatch(event: Event, record: RequestRecord, metadata: Metadata) -> Response:
        pool = pools[0]
        if isinstance(event, PromptRun):
            opened = await pool.open_prompt_stream(event, metadata)
            record.runner = opened.runner
            if event.should_stream:
                return stream(opened, _accel.PromptFramer(event.kind), record)
            response, record.trace_id = await responses.fold(opened, event.kind)
            return response
        if isinstance(event, DatasetRun):
            opened = await pool.open_experiment_stream(event, metadata)
            record.runner = opened.runner
            return stream(opened, _accel.ExperimentFramer(), record)
        if isinstance(event, GetEvals):
            names = await pool.get_evals(metadata)
            return Response(_accel.evals_payload(names), status=200, content_type=responses.JSON)
        return await acknowledge(event)

    def stream(opened: responses.OpenStream, framer: responses.Framer, record: RequestRecord) -> Response:
        record.streaming = True
        record.status = 200
        metrics.inflight_streams.inc()

        def on_chunk(size: int) -> None:
            if record.first_chunk is None:
                record.first_chunk = time.perf_counter()
                metrics.time_to_first_chunk.labels(record.event_type).observe(record.first_chunk - record.started)
            record.bytes_sent += size
            metrics.stream_chunks.labels(record.event_type).inc()
            metrics.stream_bytes.labels(record.event_type).inc(size)

        def on_end(complete: bool) -> None:
            metrics.inflight_streams.dec()
            record.trace_id = framer.trace_id or None
            record.aborted = not complete
            record.finish(metrics, request_log)

        return responses.stream(opened, framer, on_chunk=on_chunk, on_end=on_end, heartbeat=config.heartbeat_interval)

    async def acknowledge(alert: Alert) -> Response:
        """Store the alert for each sink it is routed to, then answer; the
        delivery worker takes it from the outbox."""
        sinks = [sink for sink in config.alert_sinks if sink.wants(alert.type, alert.status)]
        payload = json.dumps(alert.data, separators=(",", ":"))
        stored = await asyncio.to_thread(
            outboxes[0].accept, alert.id, alert.type, alert.status, payload, sinks, config.alert_cooldown
        )
        for state in stored.values():
            metrics.alerts.labels("received" if state == "pending" else state).inc()
        deliveries[0].wake()
        log.info("alert %s (%s %s) stored for %s", alert.id, alert.type, alert.status,
                 ", ".join(f"{name}: {state}" for name, state in stored.items()) or "no new delivery (a repeat)")
        return _json_response({"message": "Alert processed", "alertId": alert.id, "status": alert.status})

    # -- operations --------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers. `worker` tells Hypercorn workers apart."""
        return _json_response({"status": "ok", "implementation": _accel.IMPLEMENTATION, "worker": os.getpid()})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: at least one runner passes its health check."""
        runners = {r.target: r.healthy for r in pools[0].runners} if pools else {}
        ready = any(runners.values())
        body = {"status": "ready" if ready else "unavailable", "runners": runners}
        if not ready:
            body["message"] = "No runner is healthy"
        return _json_response(body, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if outboxes:
            metrics.outbox_depth.set(await asyncio.to_thread(outboxes[0].depth))
        return Response(metrics.exposition(), status=200, content_type="text/plain; version=0.0.4; charset=utf-8")

    # -- bookkeeping and refusals ------------------------------------------------

    @app.before_request
    async def start_record() -> None:
        g.record = record = RequestRecord(request.method, request.path)
        if request.path in WEBHOOK_PATHS and request.method == "POST":
            span = tracing.start(request.method, request.path, request.headers)
            if span is not None:
                g.span = span
                record.otel_trace_id = format(span.get_span_context().trace_id, "032x")
                record.on_finish.append(lambda r: tracing.finish(span, _span_attributes(r), r.status))

    @app.after_request
    async def finish_record(response: Response) -> Response:
        if replay is not None and response.status_code >= 500 and "body_digest" in g:
            replay.forget(g.body_digest)  # a failed request may be retried
        record: RequestRecord | None = g.get("record")
        if record is not None and not record.streaming and request.path not in OPERATIONS_PATHS:
            record.finish(metrics, request_log, response.status_code)
        return response

    @app.errorhandler(Refusal)
    async def refusal(error: Refusal) -> Response:
        return _json_response({"message": error.message}, error.status)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        message = _HTTP_MESSAGES.get(code) or error.name
        if code == 413:
            message = f"Request body is larger than the limit of {config.max_body_bytes} bytes"
        response = _json_response({"message": message}, code)
        if code == 405:
            response.headers["Allow"] = "POST" if request.path in WEBHOOK_PATHS else "GET"
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.path, exc_info=error)
        return _json_response({"message": "Internal gateway error"}, 500)

    app.extensions["agentmark_gw"] = {"metrics": metrics, "pools": pools}
    return app


def _span_attributes(record: RequestRecord) -> dict[str, object]:
    return {
        "agentmark.event_type": record.event_type,
        "agentmark.runner": record.runner,
        "agentmark.trace_id": record.trace_id,
        "agentmark.bytes_streamed": record.bytes_sent,
        "agentmark.aborted": record.aborted,
    }


_HTTP_MESSAGES = {
    400: "Bad request",
    404: "Not found: AgentMark webhooks are POSTed to / or /api/agentmark",
    405: "Method not allowed",
    408: "Request timed out",
}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # tolerated: some proxies strip it; the body must still parse
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _json_response(payload: Mapping[str, object], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=responses.JSON)
