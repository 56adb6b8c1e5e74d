"""The conformance kit's own model: an OpenAI-compatible server on loopback.

`agentmark-gw conformance --serve-model PORT` serves it, and the runner
under test is started with `OPENAI_BASE_URL=http://127.0.0.1:PORT/v1`. The
kit then sees what the runner actually sent the model (the rendered
messages, the model name) and when the runner let go of a model request
(a cancelled run must close it).

It answers the four calls a runner makes (chat completions streamed or not,
structured output, image generation, speech) with fixed, valid answers. A
chat request whose last user message contains `SLOW_MARKER` is answered
slowly, one piece every `SLOW_PIECE_SECONDS`, for the cancellation check.

Request bodies are kept in memory for the kit's checks and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart, Response, request

from ._ports import ensure_free

SLOW_MARKER = "agentmark-gw-conformance:slow"
SLOW_PIECE_SECONDS = 0.25
# A slow answer ends by itself after this many pieces (75 s), so a runner that
# ignores cancellation holds the kit's model for a bounded time only.
SLOW_PIECES = 300
REPLY = "2 + 2 = 4"
OBJECT_REPLY = {"answer": "4"}
# A 1x1 PNG and a few bytes standing for audio: real enough for a runner to pass on.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
AUDIO = b"ID3-conformance-audio"
# Model requests may carry large rendered prompts; the kit's 5 MiB check does not send its filler here.
MAX_BODY = 64 * 1024 * 1024


@dataclass
class ModelRequest:
    """One request the runner made, as the kit's model received it."""

    path: str
    body: dict[str, Any]
    opened: float = field(default_factory=time.monotonic)
    # When the answer stopped: sent whole, or the runner closed the connection.
    closed: float | None = None
    finished: bool = False  # the whole answer was sent
    # Set when the answer stops, either way.
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def text(self) -> str:
        """The body as JSON text, to look for a run's nonce in."""
        return json.dumps(self.body)


class KitModel:
    """Serve with `async with KitModel(port) as model:`; `model.url` is the base URL."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.url = f"http://{host}:{port}/v1"
        self.requests: list[ModelRequest] = []
        self.arrived = asyncio.Event()  # set on every request; checks clear it before waiting
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.app = self._build()

    def find(self, nonce: str) -> list[ModelRequest]:
        """The requests whose body holds `nonce` (each kit run puts its own in the prompt)."""
        return [r for r in self.requests if nonce in r.text()]

    async def wait_for(self, nonce: str, timeout: float) -> ModelRequest | None:
        """The first request holding `nonce`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(nonce)
            if found:
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(left, 0.5))

    async def __aenter__(self) -> KitModel:
        ensure_free(f"{self.host}:{self.port}")
        logging.getLogger("asyncio").addFilter(_quiet_hang_ups)
        config = HypercornConfig()
        config.bind = [f"{self.host}:{self.port}"]
        config.accesslog = None  # request lines and bodies stay out of any log
        config.errorlog = None
        config.graceful_timeout = 1
        self._task = asyncio.create_task(hypercorn_serve(self.app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        deadline = time.monotonic() + 10
        while True:  # listening before the first check runs
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if self._task.done() or time.monotonic() > deadline:
                    await self._task  # raises what stopped it
                    raise OSError(f"the kit's model could not listen on {self.host}:{self.port}") from None
                await asyncio.sleep(0.02)
            else:
                writer.close()
                await writer.wait_closed()
                return self

    async def __aexit__(self, *exc: object) -> None:
        logging.getLogger("asyncio").removeFilter(_quiet_hang_ups)
        self._stop.set()  # also ends slow answers a runner is still reading
        if self._task is not None:
            # On a timeout wait_for cancels the server: the kit's results stand.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._task, 10)

    # -- the API ------------------------------------------------------------------

    def _build(self) -> Quart:
        app = Quart("agentmark_gw_conformance_model")
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

        @app.post("/v1/chat/completions")
        async def completions() -> Response:
            record = await self._record()
            if record.body.get("stream"):
                return Response(self._stream(record), content_type="text/event-stream")
            if SLOW_MARKER in _last_user_text(record.body):
                await self._slow_wait(record)  # a runner that streams nothing may still be cancelled
            self._close(record, finished=True)
            return _json(_completion(record.body))

        @app.post("/v1/images/generations")
        async def images() -> Response:
            record = await self._record()
            self._close(record, finished=True)
            item = {"b64_json": base64.b64encode(PNG).decode()}
            return _json({"created": int(time.time()), "data": [item] * max(1, int(record.body.get("n") or 1))})

        @app.post("/v1/audio/speech")
        async def speech() -> Response:
            record = await self._record()
            self._close(record, finished=True)
            return Response(AUDIO, content_type="audio/mpeg")

        @app.errorhandler(404)
        async def unknown(_error: Exception) -> Response:
            # A runner using another API (say, the Responses API) learns what the kit serves.
            message = "the conformance kit's model serves POST /v1/chat/completions, /v1/images/generations and /v1/audio/speech"
            return _json({"error": {"message": message, "type": "invalid_request_error", "code": None}}, 404)

        return app

    async def _record(self) -> ModelRequest:
        body = await request.get_json(force=True, silent=True)
        record = ModelRequest(request.path, body if isinstance(body, dict) else {})
        self.requests.append(record)
        self.arrived.set()
        return record

    @staticmethod
    def _close(record: ModelRequest, *, finished: bool) -> None:
        if record.closed is None:
            record.closed, record.finished = time.monotonic(), finished
            record.done.set()

    async def _slow_wait(self, record: ModelRequest) -> None:
        """As long as a slow stream, answering nothing. When the runner closes
        the connection, the server cancels the handler here: noted as closed."""
        try:
            for _ in range(SLOW_PIECES):
                if self._stop.is_set():
                    break
                await asyncio.sleep(SLOW_PIECE_SECONDS)
        except asyncio.CancelledError:
            self._close(record, finished=False)
            raise

    async def _stream(self, record: ModelRequest) -> AsyncIterator[bytes]:
        """Server-sent chunks; slow ones for a request that asks. When the
        runner closes the connection, the server cancels this generator: the
        `finally` notes the time, which the cancellation check reads."""
        body = record.body
        model = str(body.get("model") or "conformance-model")
        slow = SLOW_MARKER in _last_user_text(body)
        finished = False
        try:
            yield _chunk(model, {"role": "assistant", "content": ""})
            if slow:
                for _ in range(SLOW_PIECES):
                    if self._stop.is_set():
                        return  # the kit is done; not `finished`
                    yield _chunk(model, {"content": "."})
                    await asyncio.sleep(SLOW_PIECE_SECONDS)
            else:
                text = json.dumps(OBJECT_REPLY) if body.get("response_format") else REPLY
                for i in range(0, len(text), 4):
                    yield _chunk(model, {"content": text[i : i + 4]})
            yield _chunk(model, {}, finish_reason="stop")
            if (body.get("stream_options") or {}).get("include_usage"):
                yield _event(model, {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self._close(record, finished=finished)


def _quiet_hang_ups(record: logging.LogRecord) -> bool:
    """Drop asyncio's warning about writing to a connection the peer closed:
    runners hanging up mid-answer is what the cancellation checks cause, and
    the kit's table already says how each one went."""
    return record.getMessage() != "socket.send() raised exception."


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


def message_text(message: dict[str, Any]) -> str:
    """A chat message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(OBJECT_REPLY) if body.get("response_format") else REPLY
    return {
        "id": "chatcmpl-conformance", "object": "chat.completion", "created": int(time.time()), "model": str(body.get("model") or ""),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    return _event(model, {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})


def _event(model: str, payload: dict[str, Any]) -> bytes:
    base = {"id": "chatcmpl-conformance", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return f"data: {json.dumps({**base, **payload})}\n\n".encode()


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")
