"""The reference runner: runs AgentMark prompts with the `openai` package.

Prompts are rendered by AgentMark's own template engine
(`agentmark-prompt-core`), so messages and model settings come out exactly as
AgentMark's runtimes would make them. Any OpenAI-compatible endpoint works:
`OPENAI_BASE_URL` points the client elsewhere.

Covered: text prompts (streaming chat completions, usage from the final
chunk) and object prompts (strict JSON-schema structured output). Image and
speech prompts answer with a clear error for now.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import openai
from agentmark.prompt_core.template_engines.templatedx import get_raw_config

from ..protocol import runner_pb2 as pb
from . import events
from .helpers import finalize_usage, normalize_error
from .service import PromptRequest, Runner

MISSING_CREDENTIALS = (
    "The runner has no OpenAI credentials: set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
    "OpenAI-compatible server) in the runner's environment, then restart it."
)

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


class OpenAIRunner(Runner):
    def __init__(self, client: openai.AsyncOpenAI | None = None) -> None:
        if client is None and os.environ.get("OPENAI_API_KEY"):
            client = openai.AsyncOpenAI()
        self._client = client

    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        if self._client is None:
            yield events.error(MISSING_CREDENTIALS)
            return
        if request.kind not in ("text", "object"):
            yield events.error(f"the OpenAI reference runner does not run {request.kind} prompts yet")
            return
        try:
            config = await get_raw_config(request.ast, request.props)
        except Exception as exc:  # noqa: BLE001 - AgentMark's renderer raises plain errors
            yield events.error(f"cannot render the prompt: {exc}")
            return
        settings = config.model_dump(exclude_none=True)
        model_config = settings.get(f"{request.kind}_config", {})
        try:
            if request.kind == "text":
                async for event in self._text(settings["messages"], model_config):
                    yield event
            else:
                async for event in self._object(settings["messages"], model_config):
                    yield event
        except openai.APIError as exc:
            yield events.error(_api_error(exc))

    def _parameters(self, messages: list[Any], model_config: dict[str, Any]) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "model": model_config.get("model_name"),
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for setting, parameter in _SETTINGS.items():
            if setting in model_config:
                parameters[parameter] = model_config[setting]
        return parameters

    async def _text(self, messages: list[Any], model_config: dict[str, Any]) -> AsyncIterator[pb.RunnerEvent]:
        assert self._client is not None
        stream = await self._client.chat.completions.create(**self._parameters(messages, model_config))
        reason, usage = "stop", None
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield events.text_delta(choice.delta.content)
                    if choice.finish_reason:
                        reason = choice.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
        yield _finish(reason, usage)

    async def _object(self, messages: list[Any], model_config: dict[str, Any]) -> AsyncIterator[pb.RunnerEvent]:
        assert self._client is not None
        parameters = self._parameters(messages, model_config)
        parameters["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": model_config.get("schema_", {}), "strict": True},
        }
        stream = await self._client.chat.completions.create(**parameters)
        reason, usage, text = "stop", None, []
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
                    if choice.finish_reason:
                        reason = choice.finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
        try:
            value = json.loads("".join(text))
        except ValueError:
            yield events.error("the model's structured output is not valid JSON")
            return
        yield events.object_final(value)
        yield _finish(reason, usage)


def _finish(reason: str, usage: Any) -> pb.RunnerEvent:
    totals = None if usage is None else finalize_usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    if totals is None:
        return events.finish(reason)
    input_tokens, output_tokens, total_tokens = totals
    return events.finish(reason, input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total_tokens)


def _api_error(exc: openai.APIError) -> str:
    """The provider's own message, without the client's "Error code: ..." wrapper."""
    status = getattr(exc, "status_code", None)
    prefix = f"model API error {status}" if status else "model API error"
    message = normalize_error(exc.body) if isinstance(exc.body, dict) else exc.message
    return f"{prefix}: {message}"
