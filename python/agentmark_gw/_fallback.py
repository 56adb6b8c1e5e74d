"""The pure-Python twin of the Rust extension `agentmark_gw._core`.

Same functions, same classes, byte-identical output: the parity tests run
every vector and random events through both. The gateway uses this module
only when the extension is missing (see `_accel`); it is also the readable
statement of what the Rust code does.

It decodes runner messages with the generated protobuf classes and encodes
strings with `json.dumps`; JSON-valued fields are validated, then spliced in
as they came, never re-encoded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError, Message

from .protocol import runner_pb2 as pb

__all__ = [
    "dataset_item_name",
    "EnvelopeFolder",
    "ExperimentFramer",
    "PromptFramer",
    "evals_payload",
    "frame_event",
    "http_chunk",
    "sign",
    "verify",
]

UNDECODABLE_BATCH = "runner sent a message that is not a valid event batch"
UNDECODABLE_EVENT = "runner sent a message that is not a valid event"
UNFINISHED = "runner ended the stream without finishing"
ITEM_INPUT_REFUSED = "dataset item input must be JSON nested at most 128 deep, with integers of at most 4300 digits"
MAX_DEPTH = 128
_PREFIX = "sha256="
_WHITESPACE = " \t\n\r"
_KINDS = ("text", "object", "image", "speech")


# --- signatures -------------------------------------------------------------


def _key(secret: str) -> bytes:
    return secret.encode() if secret else b"DEFAULT"


def sign(secret: str, body: bytes) -> str:
    return _PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify(secrets: str | Sequence[str], header: str | None, body: bytes) -> bool:
    if isinstance(secrets, str):
        secrets = [secrets]
    elif not all(isinstance(s, str) for s in secrets):
        raise TypeError("secrets must be a str or a sequence of str")
    if header is None or not header.startswith(_PREFIX):
        return False
    digits = header[len(_PREFIX) :]
    if len(digits) != 64 or not all(c in "0123456789abcdefABCDEF" for c in digits):
        return False
    claimed = bytes.fromhex(digits)
    matched = False
    for secret in secrets:  # every secret, so timing does not tell which matched
        expected = hmac.new(_key(secret), body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, claimed)
    return matched


# --- JSON -------------------------------------------------------------------


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: object) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def is_valid_json(text: str) -> bool:
    """RFC 8259 JSON, any \\u escape, nesting at most MAX_DEPTH (json.rs)."""
    try:
        # Numbers are not converted: only validity matters, and Python's
        # int() refuses more than 4,300 digits where JSON has no limit.
        value = json.loads(text, parse_int=len, parse_float=len, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    if text.count("[") + text.count("{") > MAX_DEPTH:
        return _depth(value) <= MAX_DEPTH
    return True


def _spliced(text: str) -> str:
    return text.strip(_WHITESPACE).replace("\n", " ").replace("\r", " ")


class _InvalidField(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(f"runner sent invalid JSON in {field}")


def _checked(text: str, field: str) -> str:
    if not is_valid_json(text):
        raise _InvalidField(field)
    return _spliced(text)


def _checked_or_empty(text: str, field: str) -> str:
    return _checked(text, field) if text else ""


# --- decoding ---------------------------------------------------------------


# Python's protobuf is more forgiving than the Rust decoder (prost): it keeps
# a known field sent with the wrong wire type as an unknown field, wraps
# overlong varints, and accepts field number 0 inside unknown groups. To
# answer exactly as Rust does, bytes are first walked the way prost reads
# them; only then parsed.
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_RECURSION_LIMIT = 100  # prost's default


class _Malformed(Exception):
    pass


def _decode[M: Message](cls: type[M], data: bytes) -> M:
    try:
        _walk(cls.DESCRIPTOR, memoryview(data), _RECURSION_LIMIT)
    except (_Malformed, IndexError):
        raise DecodeError("not a valid message") from None
    return cls.FromString(data)


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(10):
        byte = data[pos + i]
        if i == 9 and byte > 1:
            raise _Malformed("varint overflows 64 bits")
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise _Malformed("varint longer than 10 bytes")


def _field_key(data: memoryview, pos: int) -> tuple[int, int, int]:
    key, pos = _varint(data, pos)
    if key > 0xFFFFFFFF or key & 7 > _FIXED32 or key >> 3 == 0:
        raise _Malformed("invalid key")
    return key >> 3, key & 7, pos


def _expected_wire_type(field: Any) -> int:
    if field.type in (field.TYPE_MESSAGE, field.TYPE_STRING, field.TYPE_BYTES):
        return _LENGTH
    return _VARINT  # every scalar in runner.proto is a varint


def _walk(descriptor: Any, data: memoryview, depth: int) -> None:
    pos = 0
    while pos < len(data):
        number, wire, pos = _field_key(data, pos)
        field = descriptor.fields_by_number.get(number)
        if field is None:
            pos = _skip(data, pos, number, wire, depth)
            continue
        if wire != _expected_wire_type(field):
            raise _Malformed("known field with the wrong wire type")
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            continue
        length, pos = _varint(data, pos)
        if pos + length > len(data):
            raise _Malformed("truncated")
        if field.type == field.TYPE_MESSAGE:
            if depth == 0:
                raise _Malformed("nested too deep")
            _walk(field.message_type, data[pos : pos + length], depth - 1)
        pos += length


def _skip(data: memoryview, pos: int, number: int, wire: int, depth: int) -> int:
    if wire == _VARINT:
        return _varint(data, pos)[1]
    if wire == _FIXED64:
        end = pos + 8
    elif wire == _FIXED32:
        end = pos + 4
    elif wire == _LENGTH:
        length, pos = _varint(data, pos)
        end = pos + length
    elif wire == _START_GROUP:
        if depth == 0:
            raise _Malformed("nested too deep")
        while True:
            inner, inner_wire, pos = _field_key(data, pos)
            if inner_wire == _END_GROUP:
                if inner != number:
                    raise _Malformed("unmatched end of group")
                return pos
            pos = _skip(data, pos, inner, inner_wire, depth - 1)
    else:
        raise _Malformed("end of a group that was not started")
    if end > len(data):
        raise _Malformed("truncated")
    return end


# --- lines ------------------------------------------------------------------


def _error_line(message: str) -> bytes:
    """`{"type":"error","error":...}\\n`: the framers' terminal line."""
    return f'{{"type":"error","error":{_string(message)}}}\n'.encode()


def _done_line(trace_id: str) -> bytes:
    return f'{{"type":"done","traceId":{_string(trace_id)}}}\n'.encode() if trace_id else b""


def evals_payload(names: Sequence[str]) -> bytes:
    """The `get-evals` answer body (control-plane.json)."""
    result = json.dumps(sorted(names), separators=(",", ":"), ensure_ascii=False)
    return f'{{"type":"evals","result":{_string(result)},"traceId":""}}'.encode()


def dataset_item_name(input_json: str, index: int) -> str:
    """AgentMark's item name (dataset-item-name.json): 12 hex digits of the MD5
    of the input's sorted, compact JSON; the index when the input is empty."""
    try:
        value = json.loads(input_json, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ValueError(ITEM_INPUT_REFUSED) from None
    if input_json.count("[") + input_json.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise ValueError(ITEM_INPUT_REFUSED)
    if value is None or value == "" or value == {}:
        return str(index)
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _usage(usage: pb.Usage) -> str:
    total = f',"totalTokens":{usage.total_tokens}' if usage.HasField("total_tokens") else ""
    return (
        f'{{"inputTokens":{usage.input_tokens},"outputTokens":{usage.output_tokens}{total},'
        f'"promptTokens":{usage.input_tokens},"completionTokens":{usage.output_tokens}}}'
    )


def _tool(id_: str, name: str, key: str, json_text: str) -> str:
    value = f',"{key}":{json_text}' if json_text else ""
    return f'{{"toolCallId":{_string(id_)},"toolName":{_string(name)}{value}}}'


def _kind(name: str) -> str:
    if name not in _KINDS:
        raise ValueError(f"unknown prompt kind '{name}': expected text, object, image or speech")
    return name


def _frame(kind: str, event: pb.RunnerEvent) -> tuple[str | None, bool]:
    """The line (without its newline) for one event, and whether it is terminal."""
    which = event.WhichOneof("event")
    if which == "error":
        return f'{{"type":"error","error":{_string(event.error.message)}}}', True
    if kind == "text":
        if which == "text_delta":
            return f'{{"type":"text","result":{_string(event.text_delta.text)}}}', False
        if which == "tool_call":
            c = event.tool_call
            args = _checked(c.args_json, "tool_call.args_json")
            return f'{{"type":"text","toolCall":{_tool(c.id, c.name, "args", args)}}}', False
        if which == "tool_result":
            r = event.tool_result
            result = _checked_or_empty(r.result_json, "tool_result.result_json")
            return f'{{"type":"text","toolResult":{_tool(r.id, r.name, "result", result)}}}', False
        if which == "finish":
            f = event.finish
            usage = f',"usage":{_usage(f.usage)}' if f.HasField("usage") else ""
            return f'{{"type":"text","finishReason":{_string(f.reason)}{usage}}}', True
    elif kind == "object":
        if which in ("object_delta", "object_final"):
            text = event.object_delta.partial_json if which == "object_delta" else event.object_final.value_json
            if text:
                field = "object_delta.partial_json" if which == "object_delta" else "object_final.value_json"
                return f'{{"type":"object","result":{_checked(text, field)}}}', False
        if which == "finish":
            if event.finish.HasField("usage"):
                return f'{{"type":"object","usage":{_usage(event.finish.usage)}}}', True
            return None, True  # the historical wire: no chunk without usage
    if which == "finish":
        return None, True
    return None, False


class PromptFramer:
    """Frames one prompt run: `feed(batch)` per gRPC message, `close()` at the end."""

    def __init__(self, kind: str) -> None:
        self._kind = _kind(kind)
        self.trace_id = ""
        self.terminated = False

    def feed(self, batch: bytes) -> bytes:
        if self.terminated:
            return b""
        try:
            events = _decode(pb.RunnerEvents, batch).events
        except DecodeError:
            self.terminated = True
            return _error_line(UNDECODABLE_BATCH)
        lines: list[str] = []
        for event in events:
            if self._step(event, lines):
                break
        return "".join(lines).encode()

    def feed_event(self, event: bytes) -> bytes:
        if self.terminated:
            return b""
        try:
            decoded = _decode(pb.RunnerEvent, event)
        except DecodeError:
            self.terminated = True
            return _error_line(UNDECODABLE_EVENT)
        lines: list[str] = []
        self._step(decoded, lines)
        return "".join(lines).encode()

    def _step(self, event: pb.RunnerEvent, lines: list[str]) -> bool:
        if event.WhichOneof("event") == "started" and event.started.trace_id:
            self.trace_id = event.started.trace_id
        try:
            line, terminal = _frame(self._kind, event)
        except _InvalidField as invalid:
            line, terminal = f'{{"type":"error","error":{_string(str(invalid))}}}', True
        if line is not None:
            lines.append(line + "\n")
        self.terminated = terminal
        return terminal

    def fail(self, message: str) -> bytes:
        """The terminal error line for a failure the gateway saw itself."""
        if self.terminated:
            return b""
        self.terminated = True
        return _error_line(message)

    def close(self) -> bytes:
        """An error line if the runner stopped without `finish` or `error`,
        then the `done` line when the run had a trace id."""
        unfinished = b"" if self.terminated else _error_line(UNFINISHED)
        self.terminated = True
        return unfinished + _done_line(self.trace_id)


def http_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk: size in hex, CRLF, data, CRLF. Empty
    data makes none (a zero-length chunk ends the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


def frame_event(kind: str, event: bytes) -> bytes | None:
    """One raw `RunnerEvent` (not a batch) to its NDJSON line, or None."""
    return PromptFramer(kind).feed_event(event) or None


class ExperimentFramer:
    """Frames one dataset run: rows and error lines; never terminal."""

    def __init__(self) -> None:
        self.trace_id = ""
        self.rows = 0
        self.errors = 0
        self.terminated = False

    def feed(self, batch: bytes) -> bytes:
        if self.terminated:
            return b""
        try:
            events = _decode(pb.ExperimentEvents, batch).events
        except DecodeError:
            self.terminated = True
            self.errors += 1
            return _error_line(UNDECODABLE_BATCH)
        out: list[bytes] = []
        for event in events:
            which = event.WhichOneof("event")
            if which == "row":
                try:
                    out.append(_row(event.row))
                    self.rows += 1
                except _InvalidField as invalid:
                    self.errors += 1
                    out.append(_error_line(str(invalid)))
            elif which == "error":
                self.errors += 1
                out.append(_error_line(event.error.message))
            elif which == "started" and event.started.trace_id:
                self.trace_id = event.started.trace_id
        return b"".join(out)

    def fail(self, message: str) -> bytes:
        """An error line for a failure the gateway saw itself; later rows are dropped."""
        if self.terminated:
            return b""
        self.terminated = True
        self.errors += 1
        return _error_line(message)

    def close(self) -> bytes:
        return _done_line(self.trace_id)


def _optional_json(row: pb.DatasetRow, field: str) -> str:
    text = getattr(row, field) if row.HasField(field) else ""
    return _checked(text, f"row.{field}") if text else ""


def _row(row: pb.DatasetRow) -> bytes:
    """One `{"type":"dataset",...}` line (dataset-rows.json)."""
    input_ = _checked_or_empty(row.input_json, "row.input_json") or "null"
    expected = _optional_json(row, "expected_output_json")
    actual = _optional_json(row, "actual_output_json")
    evals = _checked_or_empty(row.evals_json, "row.evals_json") or "[]"
    parts = [f'{{"type":"dataset","result":{{"input":{input_}']
    if expected:
        parts.append(f',"expectedOutput":{expected}')
    if actual:
        parts.append(f',"actualOutput":{actual}')
    if row.HasField("tokens"):
        parts.append(f',"tokens":{row.tokens}')
    parts.append(f',"evals":{evals}}}')
    if row.trace_id:
        parts.append(f',"traceId":{_string(row.trace_id)}')
    parts.append(f',"runId":{_string(row.run_id)},"runName":{_string(row.run_name)}}}\n')
    return "".join(parts).encode()


class EnvelopeFolder:
    """Folds a prompt run into its non-streaming JSON envelope."""

    def __init__(self, kind: str) -> None:
        self._kind = _kind(kind)
        self.trace_id = ""
        self.error: str | None = None
        self.terminated = False
        self._text: list[str] = []
        self._tool_calls: list[str] = []
        self._tool_results: list[str] = []
        self._finish_reason: str | None = None
        self._usage: pb.Usage | None = None
        self._object: str | None = None
        self._images: list[str] = []
        self._speech: pb.Speech | None = None

    def feed(self, batch: bytes) -> None:
        if self.terminated:
            return
        try:
            events = _decode(pb.RunnerEvents, batch).events
        except DecodeError:
            self._fail(UNDECODABLE_BATCH)
            return
        for event in events:
            try:
                self._step(event)
            except _InvalidField as invalid:
                self._fail(str(invalid))
            if self.terminated:
                return

    def _fail(self, message: str) -> None:
        self.error = message
        self.terminated = True

    def _step(self, event: pb.RunnerEvent) -> None:
        which, kind = event.WhichOneof("event"), self._kind
        if which == "started":
            if event.started.trace_id:
                self.trace_id = event.started.trace_id
        elif which == "error":
            self._fail(event.error.message)
        elif which == "finish":
            self._finish_reason = event.finish.reason
            self._usage = event.finish.usage if event.finish.HasField("usage") else None
            self.terminated = True
        elif kind == "text" and which == "text_delta":
            self._text.append(event.text_delta.text)
        elif kind == "text" and which == "tool_call":
            c = event.tool_call
            self._tool_calls.append(_tool(c.id, c.name, "args", _checked(c.args_json, "tool_call.args_json")))
        elif kind == "text" and which == "tool_result":
            r = event.tool_result
            result = _checked_or_empty(r.result_json, "tool_result.result_json")
            self._tool_results.append(_tool(r.id, r.name, "result", result))
        elif kind == "object" and which == "object_delta" and event.object_delta.partial_json:
            self._object = _checked(event.object_delta.partial_json, "object_delta.partial_json")
        elif kind == "object" and which == "object_final" and event.object_final.value_json:
            self._object = _checked(event.object_final.value_json, "object_final.value_json")
        elif kind == "image" and which == "image":
            for item in event.image.items:
                self._images.append(f'{{"mimeType":{_string(item.mime_type)},"base64":{_string(item.base64)}}}')
        elif kind == "speech" and which == "speech":
            self._speech = event.speech

    def close(self) -> bytes:
        if self.error is None and not self.terminated:
            self.error = UNFINISHED
        if self.error is None and self._kind == "speech" and self._speech is None:
            self.error = "runner finished without producing speech"
        if self.error is not None:
            return b""
        if self._kind == "text":
            parts = [f'{{"type":"text","result":{_string("".join(self._text))}', self._usage_and_reason()]
            parts.append(f',"toolCalls":[{",".join(self._tool_calls)}],"toolResults":[{",".join(self._tool_results)}]')
        elif self._kind == "object":
            result = f',"result":{self._object}' if self._object is not None else ""
            parts = [f'{{"type":"object"{result}', self._usage_and_reason()]
        elif self._kind == "image":
            parts = [f'{{"type":"image","result":[{",".join(self._images)}]']
        else:
            s = self._speech
            assert s is not None
            parts = [
                f'{{"type":"speech","result":{{"mimeType":{_string(s.mime_type)},'
                f'"base64":{_string(s.base64)},"format":{_string(s.format)}}}'
            ]
        if self.trace_id:
            parts.append(f',"traceId":{_string(self.trace_id)}')
        parts.append("}")
        return "".join(parts).encode()

    def _usage_and_reason(self) -> str:
        usage = f',"usage":{_usage(self._usage)}' if self._usage is not None else ""
        reason = f',"finishReason":{_string(self._finish_reason)}' if self._finish_reason is not None else ""
        return usage + reason
