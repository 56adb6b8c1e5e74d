"""A fake OpenAI-compatible HTTP server for tests, served by Hypercorn on loopback.

It stands in for the model API (the only stand-in the tests use): the real
`openai` client in the runner talks to it over HTTP. Answers are scripted by
the last user message:

- "fail:<status>": an API error with that status;
- otherwise a streamed completion of the words in `reply` (settable per test),
  with usage in the final chunk when `stream_options.include_usage` is set.

Every request body is kept in `requests` so tests can check what the runner sent.
"""

from __future__ import annotations

import json
import time
from typing import Any

from quart import Quart, Response, request


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply = "2 + 2 = 4"
        self.object_reply: dict[str, Any] = {"answer": "4"}
        self.app = self._build()

    def _build(self) -> Quart:
        app = Quart("fake_openai")

        @app.post("/v1/chat/completions")
        async def completions() -> Response:
            body = await request.get_json()
            self.requests.append(body)
            users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
            last = users[-1] if users else ""
            if isinstance(last, str) and last.startswith("fail:"):
                status = int(last.split(":", 1)[1])
                return Response(
                    json.dumps({"error": {"message": f"scripted failure {status}", "type": "test", "code": None}}),
                    status=status,
                    content_type="application/json",
                )
            structured = "response_format" in body
            text = json.dumps(self.object_reply) if structured else self.reply
            pieces = [text[i : i + 4] for i in range(0, len(text), 4)] if structured else _words(text)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Response(_sse(body["model"], pieces, include_usage), content_type="text/event-stream")

        return app


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


async def _sse(model: str, pieces: list[str], include_usage: bool):  # type: ignore[no-untyped-def]
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

    def event(payload: dict[str, Any]) -> bytes:
        return f"data: {json.dumps({**base, **payload})}\n\n".encode()

    yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    for piece in pieces:
        yield event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        yield event({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)}})
    yield b"data: [DONE]\n\n"
