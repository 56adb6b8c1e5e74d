"""The reference executor: runs AgentMark prompts with the `openai` package.

It implements AgentMark's own `Executor` protocol (`agentmark.prompt_core`),
so it plugs into AgentMark's runtime and into this package's bridge alike.
Prompts arrive rendered by AgentMark (messages and the frontmatter's model
settings); this module only talks to the model API. Any OpenAI-compatible
server works: `OPENAI_BASE_URL` points the client elsewhere.

- text: streaming chat completions; tools named in the frontmatter are
  offered to the model, and its tool calls are run and answered (up to
  `max_calls` rounds), each surfacing as tool-call and tool-result events;
  usage comes from the final chunk and is summed over rounds.
- object: strict JSON-schema structured output, object-delta events from the
  partial JSON as it streams, object-final with the parsed value.
- image: `images.generate`; speech: `audio.speech.create`; both base64.
- errors: the provider's own message as an error event. 429 and 5xx are
  retried with exponential backoff before the first token only: after it,
  a retry would repeat output the client already has.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from agentmark.prompt_core.executor import (
    ErrorEvent,
    ExecCtx,
    ExecutorCapabilities,
    FinishEvent,
    ObjectDeltaEvent,
    ObjectFinalEvent,
    TextDeltaEvent,
    ToolCallEvent,
    ToolResultEvent,
    UsageData,
)

from .helpers import finalize_usage, normalize_error
from .partial_json import NOTHING, parse_partial

MISSING_CREDENTIALS = (
    "The runner has no OpenAI credentials: set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
    "OpenAI-compatible server) in the runner's environment, then restart it."
)
DEFAULT_MAX_CALLS = 5

# Frontmatter settings that map one-to-one onto chat-completion parameters.
_SETTINGS = {
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "top_p": "top_p",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "stop_sequences": "stop",
    "seed": "seed",
}
_SPEECH_MIME = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "pcm": "audio/pcm"}


@dataclass(frozen=True)
class Tool:
    """A tool the model may call: a JSON schema for its arguments, and the
    function that runs it (sync or async, given the parsed arguments)."""

    description: str
    parameters: Mapping[str, Any]
    run: Callable[[Any], Any | Awaitable[Any]]


class OpenAIExecutor:
    def __init__(
        self,
        client: openai.AsyncOpenAI | None = None,
        *,
        tools: Mapping[str, Tool] | None = None,
        retries: int = 2,
        backoff: float = 0.5,
    ) -> None:
        if client is None and os.environ.get("OPENAI_API_KEY"):
            # Retries are ours (before the first token only), not the client's.
            client = openai.AsyncOpenAI(max_retries=0)
        self._client = client
        self._tools = dict(tools or {})
        self._retries = retries
        self._backoff = backoff

    @property
    def name(self) -> str:
        return "openai"

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities(text=True, object=True, image=True, speech=True)

    # -- text -------------------------------------------------------------------

    async def execute_text(self, formatted: Any, ctx: ExecCtx) -> AsyncIterator[Any]:
        if self._client is None:
            yield ErrorEvent(MISSING_CREDENTIALS)
            return
        settings = _settings(formatted, "text_config")
        tools, unknown = self._tools_for(settings.get("tools") or [])
        if unknown:
            yield ErrorEvent(f"tools not registered with the executor: {', '.join(unknown)}")
            return
        messages = _messages(formatted)
        parameters = _parameters(settings, messages)
        if tools:
            parameters["tools"] = [
                {"type": "function", "function": {"name": n, "description": t.description, "parameters": dict(t.parameters)}}
                for n, t in tools.items()
            ]
            choice = settings.get("tool_choice")
            if choice in ("auto", "none", "required"):
                parameters["tool_choice"] = choice
            elif isinstance(choice, dict) and choice.get("tool_name"):
                parameters["tool_choice"] = {"type": "function", "function": {"name": choice["tool_name"]}}
        totals = [0, 0, 0]
        reported = False
        for _ in range(settings.get("max_calls") or DEFAULT_MAX_CALLS):
            calls: dict[int, dict[str, str]] = {}
            said: list[str] = []
            reason = "stop"
            try:
                stream = await self._create(parameters, settings)
                async with stream:
                    async for chunk in stream:
                        for choice in chunk.choices:
                            delta = choice.delta
                            if delta.content:
                                said.append(delta.content)
                                yield TextDeltaEvent(delta.content)
                            for call in delta.tool_calls or []:
                                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                                entry["id"] = call.id or entry["id"]
                                if call.function is not None:
                                    entry["name"] += call.function.name or ""
                                    entry["arguments"] += call.function.arguments or ""
                            if choice.finish_reason:
                                reason = choice.finish_reason
                        if chunk.usage is not None:
                            reported = True
                            totals = [
                                totals[0] + (chunk.usage.prompt_tokens or 0),
                                totals[1] + (chunk.usage.completion_tokens or 0),
                                totals[2] + (chunk.usage.total_tokens or 0),
                            ]
            except (openai.APIError, httpx.HTTPError) as exc:
                yield ErrorEvent(_api_error(exc))
                return
            if not calls:
                yield FinishEvent(reason, _usage(totals) if reported else None)
                return
            # The model asked for tools: run them, answer, and ask again.
            ordered = [calls[i] for i in sorted(calls)]
            messages.append({
                "role": "assistant",
                "content": "".join(said) or None,  # what the model said before calling, kept in the history
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in ordered
                ],
            })
            for call in ordered:
                args = _json_or_text(call["arguments"])
                yield ToolCallEvent(call["id"], call["name"], args)
                result, failed = await _run_tool(tools.get(call["name"]), call["name"], args)
                yield ToolResultEvent(call["id"], call["name"], result, is_error=failed)
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result, default=str)})
        yield FinishEvent("tool-calls", _usage(totals) if reported else None)

    def _tools_for(self, names: list[str]) -> tuple[dict[str, Tool], list[str]]:
        unknown = [n for n in names if n not in self._tools]
        return {n: self._tools[n] for n in names if n in self._tools}, unknown

    # -- object -----------------------------------------------------------------

    async def execute_object(self, formatted: Any, ctx: ExecCtx) -> AsyncIterator[Any]:
        if self._client is None:
            yield ErrorEvent(MISSING_CREDENTIALS)
            return
        settings = _settings(formatted, "object_config")
        parameters = _parameters(settings, _messages(formatted))
        schema, strict = strict_schema(settings.get("schema_") or settings.get("schema") or {})
        parameters["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": settings.get("schema_name") or "output", "schema": schema, "strict": strict},
        }
        text, reason, usage, shown, parsed_at = "", "stop", None, NOTHING, 0
        try:
            stream = await self._create(parameters, settings)
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            text += choice.delta.content
                            # Re-reading the whole prefix costs its length, so read
                            # again only once it has grown by an eighth: the object
                            # still grows visibly, and the total work stays O(n log n).
                            if ctx.should_stream and len(text) - parsed_at >= max(8, parsed_at // 8):
                                parsed_at = len(text)
                                partial = parse_partial(text)
                                if partial is not NOTHING and partial != shown:
                                    shown = partial
                                    yield ObjectDeltaEvent(partial)
                        if choice.finish_reason:
                            reason = choice.finish_reason
                    if chunk.usage is not None:
                        usage = chunk.usage
        except (openai.APIError, httpx.HTTPError) as exc:
            yield ErrorEvent(_api_error(exc))
            return
        try:
            value = json.loads(text)
        except ValueError:
            yield ErrorEvent("the model's structured output is not valid JSON")
            return
        yield ObjectFinalEvent(value)
        yield FinishEvent(reason, _usage_of(usage))

    # -- image and speech ---------------------------------------------------------

    async def execute_image(self, formatted: Any, ctx: ExecCtx) -> dict[str, Any]:
        """AgentMark's image answer: `{"type": "image", "result": [{mimeType, base64}]}`."""
        self._require_client()
        settings = _settings(formatted, "image_config")
        parameters: dict[str, Any] = {"model": settings.get("model_name"), "prompt": settings.get("prompt", ""), "response_format": "b64_json"}
        if settings.get("num_images"):
            parameters["n"] = settings["num_images"]
        if settings.get("size"):
            parameters["size"] = settings["size"]
        response = await self._call(lambda: self._client.images.generate(**parameters), settings)  # type: ignore[union-attr]
        return {"type": "image", "result": [{"mimeType": "image/png", "base64": item.b64_json or ""} for item in response.data or []]}

    async def execute_speech(self, formatted: Any, ctx: ExecCtx) -> dict[str, Any]:
        """AgentMark's speech answer: `{"type": "speech", "result": {mimeType, base64, format}}`."""
        self._require_client()
        settings = _settings(formatted, "speech_config")
        audio_format = settings.get("output_format") or "mp3"
        parameters: dict[str, Any] = {
            "model": settings.get("model_name"),
            "input": settings.get("text", ""),
            "voice": settings.get("voice") or "alloy",
            "response_format": audio_format,
        }
        if settings.get("instructions"):
            parameters["instructions"] = settings["instructions"]
        if settings.get("speed"):
            parameters["speed"] = settings["speed"]
        response = await self._call(lambda: self._client.audio.speech.create(**parameters), settings)  # type: ignore[union-attr]
        audio = response.content if hasattr(response, "content") else await response.aread()
        return {
            "type": "speech",
            "result": {
                "mimeType": _SPEECH_MIME.get(audio_format, "application/octet-stream"),
                "base64": base64.b64encode(audio).decode(),
                "format": audio_format,
            },
        }

    async def _call(self, call: Callable[[], Awaitable[Any]], settings: dict[str, Any]) -> Any:
        """A one-shot call; a provider error becomes an exception saying what the provider said."""
        try:
            return await self._with_retries(call, settings)
        except openai.APIError as exc:
            raise RuntimeError(_api_error(exc)) from None

    def _require_client(self) -> None:
        if self._client is None:
            raise RuntimeError(MISSING_CREDENTIALS)

    # -- calling the API ----------------------------------------------------------

    async def _create(self, parameters: dict[str, Any], settings: dict[str, Any]) -> Any:
        assert self._client is not None
        client = self._client
        return await self._with_retries(lambda: client.chat.completions.create(**parameters), settings)

    async def _with_retries(self, call: Callable[[], Awaitable[Any]], settings: dict[str, Any]) -> Any:
        """`call()`, retried on 429, 5xx and connection failures with
        exponential backoff and jitter. Only used before any output exists."""
        retries = settings.get("max_retries")
        retries = self._retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return await call()
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError):
                if attempt == retries:
                    raise
            except openai.APIStatusError as exc:
                if exc.status_code < 500 or attempt == retries:
                    raise
            await asyncio.sleep(self._backoff * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")


def _settings(formatted: Any, key: str) -> dict[str, Any]:
    config = formatted.model_dump(exclude_none=True) if hasattr(formatted, "model_dump") else dict(formatted)
    return dict(config.get(key) or {})


def _messages(formatted: Any) -> list[dict[str, Any]]:
    """AgentMark's rendered messages as OpenAI chat messages (attachments as
    content parts: images by URL, files as a text note of their location)."""
    config = formatted.model_dump(exclude_none=True) if hasattr(formatted, "model_dump") else dict(formatted)
    messages = []
    for message in config.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "text":
                    parts.append({"type": "text", "text": part.get("text", "")})
                elif part.get("type") == "image" and part.get("image"):
                    image = part["image"]
                    if not image.startswith(("http://", "https://", "data:")):  # bare base64
                        image = f"data:{part.get('mimeType') or 'image/png'};base64,{image}"
                    parts.append({"type": "image_url", "image_url": {"url": image}})
                elif part.get("type") == "file" and part.get("data"):
                    data = part["data"]
                    # Chat completions take no files: name a link, never paste file contents.
                    where = data if data.startswith(("http://", "https://")) else f"{part.get('mimeType') or 'a file'} (inline, not sent)"
                    parts.append({"type": "text", "text": f"[attached file: {where}]"})
            content = parts
        messages.append({"role": message.get("role"), "content": content})
    return messages


def _parameters(settings: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "model": settings.get("model_name"),
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    for setting, parameter in _SETTINGS.items():
        if setting in settings:
            parameters[parameter] = settings[setting]
    return parameters


def strict_schema(schema: Any) -> tuple[Any, bool]:
    """The schema for OpenAI's strict structured output, and whether strict
    mode can take it. Strict mode wants `additionalProperties: false` on every
    object (added where the schema says nothing) and every property required;
    a schema with optional properties is sent as it is, not strict."""
    strict = True

    def visit(node: Any) -> Any:
        nonlocal strict
        if isinstance(node, list):
            return [visit(n) for n in node]
        if not isinstance(node, dict):
            return node
        node = {k: visit(v) for k, v in node.items()}
        if node.get("type") == "object" and isinstance(node.get("properties"), dict):
            node.setdefault("additionalProperties", False)
            if node["additionalProperties"] is not False or set(node.get("required") or []) != set(node["properties"]):
                strict = False
        return node

    converted = visit(schema)
    return (converted if strict else schema), strict


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text  # the model's arguments are not JSON: pass them on as they are


async def _run_tool(tool: Tool | None, name: str, args: Any) -> tuple[Any, bool]:
    if tool is None:
        return f"no tool named {name}", True
    try:
        result = tool.run(args)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # noqa: BLE001 - the model hears about a tool's failure
        return normalize_error(exc), True
    return result, False


def _usage(totals: list[int]) -> UsageData:
    return UsageData(input_tokens=totals[0], output_tokens=totals[1], total_tokens=totals[2] or None)


def _usage_of(usage: Any) -> UsageData | None:
    if usage is None:
        return None
    totals = finalize_usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    return None if totals is None else UsageData(*totals)


def _api_error(exc: Exception) -> str:
    """The provider's own message, without the client's "Error code: ..." wrapper."""
    if not isinstance(exc, openai.APIError):  # the connection broke while streaming
        return f"model API connection failed: {normalize_error(exc)}"
    status = getattr(exc, "status_code", None)
    prefix = f"model API error {status}" if status else "model API error"
    message = normalize_error(exc.body) if isinstance(exc.body, dict) else exc.message
    return f"{prefix}: {message}"
