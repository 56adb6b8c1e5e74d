"""A verified webhook body becomes a typed event, or a clear 400.

Both body shapes AgentMark sends are accepted: `{"event": {"type", "data"}}`
(production webhooks) and `{"type", "data"}` (dev and managed jobs). Fields
of `data` this module does not know are kept: the whole `data` object
travels to the runner.

Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from ..frontmatter import TooManyNodes, check_expansion
from .errors import BadRequest

PROMPT_KINDS = ("text", "object", "image", "speech")
STREAMABLE_KINDS = ("text", "object")
EVENT_TYPES = ("prompt-run", "dataset-run", "get-evals", "alert")
# What an `alert` event may say; sinks are filtered by the same words (config.Sink).
ALERT_TYPES = ("cost", "latency", "error_rate")
ALERT_STATUSES = ("triggered", "resolved")


@dataclass(frozen=True, slots=True)
class PromptRun:
    kind: str
    data: dict[str, Any]
    should_stream: bool


@dataclass(frozen=True, slots=True)
class DatasetRun:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GetEvals:
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Alert:
    data: dict[str, Any]
    id: str
    type: str
    status: str


Event = PromptRun | DatasetRun | GetEvals | Alert


def parse_event(body: bytes) -> Event:
    """Parse a raw (already verified) body into one of the event types."""
    try:
        document = _parse(body)
    except (ValueError, RecursionError):
        raise BadRequest("Request body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("Request body must be a JSON object")
    event = document.get("event", document) if "type" not in document else document
    if not isinstance(event, dict):
        raise BadRequest("`event` must be a JSON object")
    event_type = event.get("type")
    if event_type is None:
        raise BadRequest("Missing event type")
    if event_type not in EVENT_TYPES:
        raise BadRequest(f"Unknown event type: {_shown(event_type)}")
    data = event.get("data", {})
    if not isinstance(data, dict):
        raise BadRequest("`data` must be a JSON object")

    if event_type in ("prompt-run", "dataset-run"):
        _require_text(data, _RUN_TEXT_FIELDS, "")
    if event_type == "prompt-run":
        kind = prompt_kind(data)
        options = data.get("options")
        should_stream = True
        if isinstance(options, dict) and options.get("shouldStream") is False:
            should_stream = False
        return PromptRun(kind, data, should_stream and kind in STREAMABLE_KINDS)
    if event_type == "dataset-run":
        kind = prompt_kind(data)
        if kind not in STREAMABLE_KINDS:
            raise BadRequest(f"dataset-run supports text and object prompts, not {kind}")
        concurrency = data.get("concurrency")
        # bool is an int in Python, and `true` reached the protobuf encoder as one (a 500).
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 0):
            raise BadRequest("dataset-run `concurrency` must be a non-negative integer (0: the runner's default)")
        return DatasetRun(kind, data)
    if event_type == "get-evals":
        return GetEvals(data)
    return _alert(data)


# A run of 19 digits may be an integer orjson would turn into a float.
_LONG_NUMBER = re.compile(rb"\d{19}")


def _parse(body: bytes) -> Any:
    """orjson on the hot path; the standard library wherever orjson would
    differ from it: integers too long for 64 bits (orjson makes them floats,
    silently), and lone surrogate escapes (valid JSON that orjson refuses).
    Both refuse NaN and Infinity, and numbers that overflow to infinity."""
    if not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    # Decoded here, strictly, because `json.loads(bytes)` guesses UTF-16 and
    # UTF-32 (and skips a BOM), which JSON on the wire (RFC 8259) is not; a
    # BOM left in the text is refused by the parser.
    return json.loads(body.decode("utf-8"), parse_constant=_not_json, parse_float=_finite)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} overflows a double")
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; JSON does not


# Fields sent to the runner as protobuf strings, which must be UTF-8: a lone
# surrogate escape (`"\ud800"`, valid JSON) cannot be encoded, and was a 500.
_RUN_TEXT_FIELDS = ("promptPath", "experimentId", "datasetPath", "commitSha")


def _require_text(data: dict[str, Any], names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        value = data.get(name)
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise BadRequest(f"Lone surrogate escape in {prefix}{name}: it must be text (UTF-8 cannot carry it)") from None


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 100 else text[:100] + "..."


def prompt_kind(data: dict[str, Any]) -> str:
    """The kind named by the AST frontmatter's `*_config` key."""
    ast = data.get("ast")
    if ast is None:
        raise BadRequest("Missing ast")
    if not isinstance(ast, dict):
        raise BadRequest("`ast` must be a JSON object (the prompt's mdast tree)")
    children = ast.get("children")
    frontmatter = None
    if isinstance(children, list):
        frontmatter = next(
            (c.get("value") for c in children if isinstance(c, dict) and c.get("type") == "yaml"),
            None,
        )
    if not isinstance(frontmatter, str):
        raise BadRequest("AST has no YAML frontmatter")
    kind = _KINDS.get(frontmatter)
    if kind is _MISSING:
        kind = _kind_of_frontmatter(frontmatter)
        _KINDS.put(frontmatter, kind)
    if kind is None:
        raise BadRequest("AST frontmatter has no text_config, object_config, image_config or speech_config")
    return kind


_MISSING: Any = object()


class _KindCache:
    """Frontmatter -> kind, for the dashboard's few prompts run again and
    again. Bounded by the characters its keys hold, not only their number
    (512 entries of 8 MiB each held about 350 MB): the oldest go first, and
    a frontmatter over a tenth of the budget is never kept."""

    def __init__(self, max_chars: int = 4 * 1024 * 1024, max_entries: int = 512) -> None:
        self.max_chars = max_chars
        self.max_entries = max_entries
        self.chars = 0
        self._kinds: OrderedDict[str, str | None] = OrderedDict()

    def get(self, frontmatter: str) -> Any:
        kind = self._kinds.get(frontmatter, _MISSING)
        if kind is not _MISSING:
            self._kinds.move_to_end(frontmatter)
        return kind

    def put(self, frontmatter: str, kind: str | None) -> None:
        if len(frontmatter) > self.max_chars // 10 or frontmatter in self._kinds:
            return
        self._kinds[frontmatter] = kind
        self.chars += len(frontmatter)
        while self.chars > self.max_chars or len(self._kinds) > self.max_entries:
            oldest, _ = self._kinds.popitem(last=False)
            self.chars -= len(oldest)


_KINDS = _KindCache()


def _kind_of_frontmatter(frontmatter: str) -> str | None:
    try:
        check_expansion(frontmatter)
        parsed = yaml.load(frontmatter, Loader=_YamlLoader)
    except TooManyNodes as exc:
        raise BadRequest(f"AST frontmatter is too large: {exc}") from None
    except (yaml.YAMLError, UnicodeError):  # lone surrogates are valid JSON but not YAML
        raise BadRequest("AST frontmatter is not valid YAML") from None
    if not isinstance(parsed, dict):
        return None
    # AgentMark's own precedence, should a prompt name several.
    for kind in ("speech", "image", "object", "text"):
        if parsed.get(f"{kind}_config"):
            return kind
    return None


_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _alert(data: dict[str, Any]) -> Alert:
    alert = data.get("alert")
    if not isinstance(alert, dict):
        raise BadRequest("Missing alert")
    fields = {}
    for name in ("id", "type", "status"):
        value = alert.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"alert.{name} must be a non-empty string")
        fields[name] = value
    _require_text(fields, ("id",), "alert.")  # the outbox stores it as text
    if fields["type"] not in ALERT_TYPES:
        raise BadRequest(f"alert.type must be one of {', '.join(ALERT_TYPES)}")
    if fields["status"] not in ALERT_STATUSES:
        raise BadRequest(f"alert.status must be one of {', '.join(ALERT_STATUSES)}")
    for name in ("currentValue", "threshold"):
        value = alert.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"alert.{name} must be a number")
    if alert.get("timeWindow") is not None and not isinstance(alert["timeWindow"], str):
        raise BadRequest("alert.timeWindow must be a string")
    return Alert(data, **fields)
