"""Prompts rendered by AgentMark's own runtime, for runners that ask.

A runner whose `Describe` answers `rendered_prompts: true` gets, beside the
AST, the prompt as AgentMark's engine (agentmark-prompt-core and its
templatedx) renders it: expressions, conditionals, loops, filters and
components applied, props from `customProps` or else the frontmatter's
`test_settings.props`, exactly as AgentMark's own runner does. So a runner
in Go or Rust needs no template code. Never a re-implementation: the
runtime renders, this module only copies its answer into the protobuf.

A prompt the engine cannot render is refused (400, AgentMark's own words)
before any runner is called. The runtime is imported on first use: a
gateway whose runners render for themselves never loads it.
"""

from __future__ import annotations

import json
from typing import Any

from ..protocol import runner_pb2 as pb
from .errors import Refusal

_KIND = {"text": pb.PROMPT_KIND_TEXT, "object": pb.PROMPT_KIND_OBJECT, "image": pb.PROMPT_KIND_IMAGE, "speech": pb.PROMPT_KIND_SPEECH}
# Keys of a `*_config` block that have fields of their own in RenderedPrompt.
_OWN_FIELDS = {"model_name", "schema_", "schema", "tools", "prompt", "text", "instructions"}

_client: Any = None


def _agentmark() -> Any:
    global _client
    if _client is None:
        from agentmark.prompt_core import create_agentmark

        _client = create_agentmark()
    return _client


class CannotRender(Refusal):
    """AgentMark's engine refused the prompt; its own words."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"Cannot render the prompt: {str(error).strip() or type(error).__name__}", 400)


async def load(kind: str, ast: dict[str, Any]) -> Any:
    """AgentMark's prompt object for `ast`; `CannotRender` when it refuses."""
    client = _agentmark()
    loader = {"text": client.load_text_prompt, "object": client.load_object_prompt,
              "image": client.load_image_prompt, "speech": client.load_speech_prompt}[kind]
    try:
        return await loader(ast)
    except Exception as exc:  # noqa: BLE001 - AgentMark's engine raises plain errors; its text is the answer
        raise CannotRender(exc) from None


async def render(kind: str, ast: dict[str, Any], custom_props: Any) -> pb.RenderedPrompt:
    """The prompt as AgentMark renders it for a prompt run: props from
    `customProps`, else the frontmatter's `test_settings.props`."""
    prompt = await load(kind, ast)
    props = custom_props if isinstance(custom_props, dict) and custom_props else None
    try:
        formatted = await prompt.format(props=props) if props else await prompt.format_with_test_props()
    except Exception as exc:  # noqa: BLE001 - as above
        raise CannotRender(exc) from None
    return rendered_prompt(kind, formatted.model_dump(by_alias=False))


async def render_loaded(kind: str, prompt: Any, props: dict[str, Any]) -> pb.RenderedPrompt:
    """A loaded prompt rendered with `props` (a dataset row's input)."""
    try:
        formatted = await prompt.format(props=props)
    except Exception as exc:  # noqa: BLE001 - as above
        raise CannotRender(exc) from None
    return rendered_prompt(kind, formatted.model_dump(by_alias=False))


def rendered_prompt(kind: str, formatted: dict[str, Any]) -> pb.RenderedPrompt:
    """AgentMark's formatted prompt (its pydantic model, dumped) as protobuf."""
    config = formatted.get(f"{kind}_config") or {}
    settings = {k: v for k, v in config.items() if k not in _OWN_FIELDS and v is not None}
    schema = config.get("schema_", config.get("schema"))
    evals = (formatted.get("test_settings") or {}).get("evals") or []
    return pb.RenderedPrompt(
        kind=_KIND[kind],
        name=formatted.get("name") or "",
        model_name=config.get("model_name") or "",
        messages=[_message(m) for m in formatted.get("messages") or []],
        settings_json=json.dumps(settings, separators=(",", ":"), default=str),
        schema_json=json.dumps(schema, separators=(",", ":")) if schema is not None else "",
        # The frontmatter names its tools; their descriptions and argument
        # schemas are registered in the runner (AgentMark's executors work so).
        tools=[pb.ToolSpec(name=name) for name in config.get("tools") or [] if isinstance(name, str)],
        text=config.get("prompt") or config.get("text") or "",
        instructions=config.get("instructions") or "",
        eval_names=[e for e in evals if isinstance(e, str)],
    )


def _message(message: dict[str, Any]) -> pb.ChatMessage:
    content = message.get("content")
    if isinstance(content, str):
        return pb.ChatMessage(role=message.get("role") or "", content=[pb.ContentPart(text=content)])
    return pb.ChatMessage(role=message.get("role") or "", content=[_part(part) for part in content or [] if isinstance(part, dict)])


def _part(part: dict[str, Any]) -> pb.ContentPart:
    kind = part.get("type")
    if kind == "image":
        return pb.ContentPart(image=pb.Attachment(data=_text(part.get("image")), mime_type=_text(part.get("mimeType"))))
    if kind == "file":
        return pb.ContentPart(file=pb.Attachment(data=_text(part.get("data")), mime_type=_text(part.get("mimeType"))))
    return pb.ContentPart(text=_text(part.get("text")))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
