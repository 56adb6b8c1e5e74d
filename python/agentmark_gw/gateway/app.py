"""The gateway app: Quart for the operations routes and the serving
lifecycle, with the webhook endpoint (`endpoint`, plain ASGI) in front of it.

Every refusal is `{"message": ...}`; no traceback and no request body is ever
sent or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Mapping

from opentelemetry.sdk.trace import TracerProvider
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from .. import _accel
from . import responses
from .alerts import Delivery, Outbox
from .config import GatewayConfig
from .endpoint import Serving, WebhookEndpoint
from .observability import Metrics, RequestRecord
from .runners import RunnerPool
from .tracing import Tracing, provider_from_environment
from .webhook import Alert

log = logging.getLogger("agentmark_gw.gateway")
request_log = logging.getLogger("agentmark_gw.requests")

OPERATIONS_PATHS = ("/healthz", "/readyz", "/metrics")
ALERT_DRAIN_SECONDS = 5.0


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
    metrics = Metrics()
    tracing = Tracing(tracer_provider if tracer_provider is not None else provider_from_environment())
    endpoint = WebhookEndpoint(config, metrics, tracing)
    app.asgi_app = endpoint.in_front_of(app.asgi_app)  # type: ignore[method-assign,assignment]  # Quart's documented middleware hook

    # Runners are labelled by position unless addresses may be shown; the log
    # says which address each position is.
    runner_labels = {target: target if config.expose_internals else f"runner-{i}" for i, target in enumerate(config.runners)}

    def runner_health(target: str, healthy: bool) -> None:
        metrics.runner_healthy.labels(runner_labels[target]).set(1 if healthy else 0)

    @app.before_serving
    async def start_serving() -> None:
        if not config.expose_internals:
            for target, label in runner_labels.items():
                log.info("%s is %s", label, target)
        pool = RunnerPool(config, on_health=runner_health, on_item=lambda outcome: metrics.dataset_items.labels(outcome).inc())
        await pool.start()
        outbox = await asyncio.to_thread(Outbox, config.alerts_db)

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
        endpoint.serving = Serving(pool, outbox, delivery)

    @app.after_serving
    async def stop_serving() -> None:
        serving, endpoint.serving = endpoint.serving, None
        if serving is not None:
            # Deliveries under way get a moment; the rest stay in the outbox for the next start.
            await serving.delivery.stop(ALERT_DRAIN_SECONDS)
            serving.outbox.close()
            await serving.pool.close()
        tracing.shutdown()

    # -- operations --------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process answers. `worker` tells Hypercorn workers apart."""
        return _json_response({"status": "ok", "implementation": _accel.IMPLEMENTATION, "worker": os.getpid()})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: at least one runner passes its health check."""
        serving = endpoint.serving
        runners = {r.target: r.healthy for r in serving.pool.runners} if serving is not None else {}
        ready = any(runners.values())
        shown: object = runners
        if not config.expose_internals:
            shown = {"healthy": sum(1 for healthy in runners.values() if healthy), "total": len(runners)}
        body = {"status": "ready" if ready else "unavailable", "runners": shown}
        if not ready:
            body["message"] = "No runner is healthy"
        return _json_response(body, 200 if ready else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        if endpoint.serving is not None:
            metrics.outbox_depth.set(await asyncio.to_thread(endpoint.serving.outbox.depth))
        return Response(metrics.exposition(), status=200, content_type="text/plain; version=0.0.4; charset=utf-8")

    # -- bookkeeping and refusals ------------------------------------------------

    # -- bookkeeping and refusals (the webhook endpoint does its own) -------------

    @app.before_request
    async def start_record() -> None:
        g.record = RequestRecord(request.method, request.path)

    @app.after_request
    async def finish_record(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is not None and request.path not in OPERATIONS_PATHS:
            record.finish(metrics, request_log, response.status_code)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        code = error.code or 500
        message = _HTTP_MESSAGES.get(code) or error.name
        response = _json_response({"message": message}, code)
        if code == 405:
            response.headers["Allow"] = "GET"  # every Quart route is an operations route
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.path, exc_info=error)
        return _json_response({"message": "Internal gateway error"}, 500)

    app.extensions["agentmark_gw"] = {"metrics": metrics, "endpoint": endpoint}
    return app


_HTTP_MESSAGES = {
    400: "Bad request",
    404: "Not found: AgentMark webhooks are POSTed to / or /api/agentmark",
    405: "Method not allowed",
    408: "Request timed out",
}


def _json_response(payload: Mapping[str, object], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=responses.JSON)
