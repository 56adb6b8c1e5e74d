"""The Quart app: routes, status codes and error bodies.

The order on every webhook request is fixed: read the body (no further than
the limit), verify the signature over the raw bytes, then parse. A request
that fails any step never reaches a runner. Every refusal is
`{"message": ...}`; no traceback and no request body is ever sent or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from .. import _accel
from . import responses
from .config import GatewayConfig
from .errors import Refusal, Unauthorized
from .runners import RunnerPool, describe
from .webhook import Alert, DatasetRun, Event, GetEvals, PromptRun, parse_event

log = logging.getLogger("agentmark_gw.gateway")

SIGNATURE_HEADER = "x-agentmark-signature-256"
WEBHOOK_PATHS = ("/", "/api/agentmark")


def create_app(config: GatewayConfig) -> Quart:
    """The gateway app. Runner channels open when serving starts."""
    config.require_secret()
    _accel.announce()
    app = Quart("agentmark_gw")
    app.config.update(
        MAX_CONTENT_LENGTH=config.max_body_bytes,
        # Streams last as long as the runner's deadline allows, not Quart's 60 s.
        RESPONSE_TIMEOUT=None,
        PROPAGATE_EXCEPTIONS=False,
    )
    secrets = list(config.secrets)
    state: dict[str, RunnerPool] = {}
    background: set[asyncio.Task[None]] = set()

    @app.before_serving
    async def open_runners() -> None:
        state["pool"] = RunnerPool(config)

    @app.after_serving
    async def close_runners() -> None:
        for task in list(background):
            task.cancel()
        await state.pop("pool").close()

    async def webhook() -> Response:
        if not _is_json(request.content_type):
            raise Refusal("Content-Type must be application/json", status=415)
        body = await request.get_data(cache=False, as_text=False)
        if not _accel.verify(secrets, request.headers.get(SIGNATURE_HEADER), body):
            raise Unauthorized("Invalid signature")
        return await dispatch(parse_event(body))

    for path in WEBHOOK_PATHS:
        app.add_url_rule(path, f"webhook{path}", webhook, methods=["POST"])

    async def dispatch(event: Event) -> Response:
        pool = state["pool"]
        if isinstance(event, PromptRun):
            call = pool.run_prompt(event)
            if event.should_stream:
                return await responses.stream(call, _accel.PromptFramer(event.kind))
            return await responses.fold(call, event.kind)
        if isinstance(event, DatasetRun):
            return await responses.stream(pool.run_experiment(event), _accel.ExperimentFramer())
        if isinstance(event, GetEvals):
            names = await pool.get_evals()
            return Response(_accel.evals_payload(names), status=200, content_type=responses.JSON)
        return acknowledge(pool, event)

    def acknowledge(pool: RunnerPool, alert: Alert) -> Response:
        """Answer at once; hand the alert to the runner in the background."""
        task = asyncio.create_task(deliver_alert(pool, alert))
        background.add(task)
        task.add_done_callback(background.discard)
        return _json_response({"message": "Alert processed", "alertId": alert.id, "status": alert.status})

    async def deliver_alert(pool: RunnerPool, alert: Alert) -> None:
        try:
            await pool.handle_alert(alert)
        except Exception as error:  # noqa: BLE001 - logged, never raised into the loop
            reason = describe(error) if hasattr(error, "code") else type(error).__name__
            log.warning("alert %s (%s %s) not delivered to the runner: %s", alert.id, alert.type, alert.status, reason)
        else:
            log.info("alert %s (%s %s) delivered to the runner", alert.id, alert.type, alert.status)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json_response({"status": "ok", "implementation": _accel.IMPLEMENTATION})

    @app.errorhandler(Refusal)
    async def refusal(error: Refusal) -> Response:
        log.info("refused %s %s: %d %s", request.method, request.path, error.status, error.message)
        return _json_response({"message": error.message}, error.status)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        message = _HTTP_MESSAGES.get(error.code or 500) or error.name
        if error.code == 413:
            message = f"Request body is larger than the limit of {config.max_body_bytes} bytes"
        response = _json_response({"message": message}, error.code or 500)
        if error.code == 405:
            response.headers["Allow"] = "POST" if request.path in WEBHOOK_PATHS else "GET"
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("internal error on %s %s", request.method, request.path, exc_info=error)
        return _json_response({"message": "Internal gateway error"}, 500)

    return app


_HTTP_MESSAGES = {
    404: "Not found: AgentMark webhooks are POSTed to / or /api/agentmark",
    405: "Method not allowed",
}


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # tolerated: some proxies strip it; the body must still parse
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or mime.endswith("+json")


def _json_response(payload: dict[str, object], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=responses.JSON)
