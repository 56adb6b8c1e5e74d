"""A fake OpenAI-compatible HTTP server for tests, served by Hypercorn on loopback.

It stands in for the model API, the only stand-in the tests use: the real
`openai` client in the runner talks to it over HTTP. Chat answers are
scripted by the last user message:

- `fail:<status>`: an API error with that status, every time;
- `flaky:<n>:<key>`: 429 for the first n requests with this message, then an answer;
- `midstream`: a few chunks, then the connection drops;
- `tool:<name>`: a call of tool <name>; once the tool's answer is in the
  conversation, the text `tool said <answer>`;
- `slow:<seconds>`: the answer after a pause (to measure concurrency);
- `long:<n>`: an answer in n pieces;
- a sentiment prompt's text: `{"sentiment": ...}` by a keyword rule (`sentiment_of`);
- otherwise `reply` (text) or `object_reply` (structured output), in pieces,
  with usage in the final chunk when `stream_options.include_usage` is set.

Also `/v1/images/generations` and `/v1/audio/speech`. Every request body is
kept in `requests`; `peak_parallel` is the most chat requests in flight at once.
Run as a module (`python -m tests.servers.fake_openai --listen HOST:PORT`) it
serves as a process of its own.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response, request

SPEECH_BYTES = b"ID3-fake-mp3-audio"
IMAGE_BYTES = b"\x89PNG-fake-image"


def sentiment_of(text: str) -> str:
    lowered = text.lower()
    if any(w in lowered for w in ("best", "happy", "love", "great")):
        return "positive"
    if any(w in lowered for w in ("broke", "terrible", "disappointed", "awful")):
        return "negative"
    return "neutral"


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.reply = "2 + 2 = 4"
        self.object_reply: dict[str, Any] = {"answer": "4"}
        self.in_flight = 0
        self.peak_parallel = 0
        self.attempts: collections.Counter[str] = collections.Counter()
        self.app = self._build()

    def reset_peak(self) -> None:
        self.peak_parallel = 0

    def _build(self) -> Quart:
        app = Quart("fake_openai")

        @app.post("/v1/chat/completions")
        async def completions() -> Response:
            body = await request.get_json()
            self.requests.append(body)
            self.in_flight += 1
            self.peak_parallel = max(self.peak_parallel, self.in_flight)
            try:
                return await self._answer(body)
            finally:
                self.in_flight -= 1

        @app.post("/v1/images/generations")
        async def images() -> Response:
            body = await request.get_json()
            self.requests.append(body)
            if body["prompt"].startswith("fail:"):
                return _error(int(body["prompt"].split(":")[1]))
            item = {"b64_json": base64.b64encode(IMAGE_BYTES).decode()}
            return _json({"created": int(time.time()), "data": [item] * int(body.get("n") or 1)})

        @app.post("/v1/audio/speech")
        async def speech() -> Response:
            body = await request.get_json()
            self.requests.append(body)
            return Response(SPEECH_BYTES, content_type="audio/mpeg")

        return app

    async def _answer(self, body: dict[str, Any]) -> Response:
        messages = body.get("messages", [])
        users = [m["content"] for m in messages if m.get("role") == "user"]
        last = users[-1] if users and isinstance(users[-1], str) else ""
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        model = body["model"]
        if last.startswith("fail:"):
            return _error(int(last.split(":", 1)[1]))
        if last.startswith("flaky:"):
            _, times, _key = last.split(":", 2)
            self.attempts[last] += 1
            if self.attempts[last] <= int(times):
                return _error(429)
            return _stream(model, _words("recovered"), include_usage)
        if last == "midstream":
            return Response(_broken(model), content_type="text/event-stream")
        if last.startswith("long:"):
            return _stream(model, ["x "] * int(last.split(":", 1)[1]), include_usage)
        if last.startswith("slow:"):
            await asyncio.sleep(float(last.split(":", 1)[1]))
        if last.startswith("tool:"):
            answers = [m for m in messages if m.get("role") == "tool"]
            if answers:
                return _stream(model, _words(f"tool said {answers[-1]['content']}"), include_usage)
            return _stream_tool_call(model, last.split(":", 1)[1], include_usage)
        if "response_format" in body:
            system = next((m["content"] for m in messages if m.get("role") == "system"), "")
            value = {"sentiment": sentiment_of(last)} if "sentiment" in str(system).lower() else self.object_reply
            text = json.dumps(value)
            return _stream(model, [text[i : i + 4] for i in range(0, len(text), 4)], include_usage)
        return _stream(model, _words(self.reply), include_usage)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")


def _error(status: int) -> Response:
    return _json({"error": {"message": f"scripted failure {status}", "type": "test", "code": None}}, status)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _event(model: str, payload: dict[str, Any]) -> bytes:
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    return f"data: {json.dumps({**base, **payload})}\n\n".encode()


def _stream(model: str, pieces: list[str], include_usage: bool) -> Response:
    async def events() -> AsyncIterator[bytes]:
        yield _event(model, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        for piece in pieces:
            yield _event(model, {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        yield _event(model, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            usage = {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)}
            yield _event(model, {"choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return Response(events(), content_type="text/event-stream")


def _stream_tool_call(model: str, name: str, include_usage: bool) -> Response:
    async def events() -> AsyncIterator[bytes]:
        start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}
        yield _event(model, {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [start]}, "finish_reason": None}]})
        for piece in ('{"city": ', '"Paris"}'):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            yield _event(model, {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield _event(model, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        if include_usage:
            yield _event(model, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
        yield b"data: [DONE]\n\n"

    return Response(events(), content_type="text/event-stream")


async def _broken(model: str) -> AsyncIterator[bytes]:
    yield _event(model, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "partial"}, "finish_reason": None}]})
    await asyncio.sleep(0.05)
    raise ConnectionResetError("the fake model server drops the connection mid-stream")


def main() -> None:
    """`python -m tests.servers.fake_openai --listen HOST:PORT`: the fake as a
    process of its own (the soak's model), until SIGTERM."""
    import argparse

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    parser = argparse.ArgumentParser(prog="python -m tests.servers.fake_openai", description=main.__doc__)
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    fake = FakeOpenAI()

    async def serving() -> None:
        async def forget() -> None:
            while True:  # it keeps every request body for the tests; a long run must not
                await asyncio.sleep(5)
                fake.requests.clear()

        config = Config()
        config.bind = [args.listen]
        config.accesslog = None
        forgetting = asyncio.create_task(forget())
        await serve(fake.app, config)  # type: ignore[arg-type]
        forgetting.cancel()

    asyncio.run(serving())


if __name__ == "__main__":
    main()
