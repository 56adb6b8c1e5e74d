from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PromptKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_KIND_UNSPECIFIED: _ClassVar[PromptKind]
    PROMPT_KIND_TEXT: _ClassVar[PromptKind]
    PROMPT_KIND_OBJECT: _ClassVar[PromptKind]
    PROMPT_KIND_IMAGE: _ClassVar[PromptKind]
    PROMPT_KIND_SPEECH: _ClassVar[PromptKind]
PROMPT_KIND_UNSPECIFIED: PromptKind
PROMPT_KIND_TEXT: PromptKind
PROMPT_KIND_OBJECT: PromptKind
PROMPT_KIND_IMAGE: PromptKind
PROMPT_KIND_SPEECH: PromptKind

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("rendered_prompts", "name", "version", "eval_names")
    RENDERED_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    rendered_prompts: bool
    name: str
    version: str
    eval_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rendered_prompts: _Optional[bool] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., eval_names: _Optional[_Iterable[str]] = ...) -> None: ...

class RunPromptRequest(_message.Message):
    __slots__ = ("kind", "ast_json", "custom_props_json", "should_stream", "prompt_path", "data_json", "rendered")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AST_JSON_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_PROPS_JSON_FIELD_NUMBER: _ClassVar[int]
    SHOULD_STREAM_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    kind: PromptKind
    ast_json: str
    custom_props_json: str
    should_stream: bool
    prompt_path: str
    data_json: str
    rendered: RenderedPrompt
    def __init__(self, kind: _Optional[_Union[PromptKind, str]] = ..., ast_json: _Optional[str] = ..., custom_props_json: _Optional[str] = ..., should_stream: _Optional[bool] = ..., prompt_path: _Optional[str] = ..., data_json: _Optional[str] = ..., rendered: _Optional[_Union[RenderedPrompt, _Mapping]] = ...) -> None: ...

class RenderedPrompt(_message.Message):
    __slots__ = ("kind", "name", "model_name", "messages", "settings_json", "schema_json", "tools", "text", "instructions", "eval_names")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    EVAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    kind: PromptKind
    name: str
    model_name: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    settings_json: str
    schema_json: str
    tools: _containers.RepeatedCompositeFieldContainer[ToolSpec]
    text: str
    instructions: str
    eval_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[PromptKind, str]] = ..., name: _Optional[str] = ..., model_name: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., settings_json: _Optional[str] = ..., schema_json: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[ToolSpec, _Mapping]]] = ..., text: _Optional[str] = ..., instructions: _Optional[str] = ..., eval_names: _Optional[_Iterable[str]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: _containers.RepeatedCompositeFieldContainer[ContentPart]
    def __init__(self, role: _Optional[str] = ..., content: _Optional[_Iterable[_Union[ContentPart, _Mapping]]] = ...) -> None: ...

class ContentPart(_message.Message):
    __slots__ = ("text", "image", "file")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: Attachment
    file: Attachment
    def __init__(self, text: _Optional[str] = ..., image: _Optional[_Union[Attachment, _Mapping]] = ..., file: _Optional[_Union[Attachment, _Mapping]] = ...) -> None: ...

class Attachment(_message.Message):
    __slots__ = ("data", "mime_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: str
    mime_type: str
    def __init__(self, data: _Optional[str] = ..., mime_type: _Optional[str] = ...) -> None: ...

class ToolSpec(_message.Message):
    __slots__ = ("name", "description", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class RunnerEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RunnerEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RunnerEvent, _Mapping]]] = ...) -> None: ...

class RunnerEvent(_message.Message):
    __slots__ = ("started", "text_delta", "reasoning_delta", "tool_call", "tool_result", "object_delta", "object_final", "finish", "error", "image", "speech")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    REASONING_DELTA_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_DELTA_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FINAL_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    started: Started
    text_delta: TextDelta
    reasoning_delta: ReasoningDelta
    tool_call: ToolCall
    tool_result: ToolResult
    object_delta: ObjectDelta
    object_final: ObjectFinal
    finish: Finish
    error: Error
    image: Image
    speech: Speech
    def __init__(self, started: _Optional[_Union[Started, _Mapping]] = ..., text_delta: _Optional[_Union[TextDelta, _Mapping]] = ..., reasoning_delta: _Optional[_Union[ReasoningDelta, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., object_delta: _Optional[_Union[ObjectDelta, _Mapping]] = ..., object_final: _Optional[_Union[ObjectFinal, _Mapping]] = ..., finish: _Optional[_Union[Finish, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., speech: _Optional[_Union[Speech, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("kind", "trace_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    kind: PromptKind
    trace_id: str
    def __init__(self, kind: _Optional[_Union[PromptKind, str]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ReasoningDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "args_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    args_json: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("id", "name", "result_json", "is_error")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    IS_ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    result_json: str
    is_error: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., result_json: _Optional[str] = ..., is_error: _Optional[bool] = ...) -> None: ...

class ObjectDelta(_message.Message):
    __slots__ = ("partial_json",)
    PARTIAL_JSON_FIELD_NUMBER: _ClassVar[int]
    partial_json: str
    def __init__(self, partial_json: _Optional[str] = ...) -> None: ...

class ObjectFinal(_message.Message):
    __slots__ = ("value_json",)
    VALUE_JSON_FIELD_NUMBER: _ClassVar[int]
    value_json: str
    def __init__(self, value_json: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "total_tokens")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class Finish(_message.Message):
    __slots__ = ("reason", "usage")
    REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    usage: Usage
    def __init__(self, reason: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class ImageItem(_message.Message):
    __slots__ = ("mime_type", "base64")
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE64_FIELD_NUMBER: _ClassVar[int]
    mime_type: str
    base64: str
    def __init__(self, mime_type: _Optional[str] = ..., base64: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ImageItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ImageItem, _Mapping]]] = ...) -> None: ...

class Speech(_message.Message):
    __slots__ = ("mime_type", "base64", "format")
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE64_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    mime_type: str
    base64: str
    format: str
    def __init__(self, mime_type: _Optional[str] = ..., base64: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class RunExperimentRequest(_message.Message):
    __slots__ = ("kind", "ast_json", "experiment_id", "dataset_path", "concurrency", "prompt_path", "commit_sha", "sampling_json", "data_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AST_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PATH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SHA_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: PromptKind
    ast_json: str
    experiment_id: str
    dataset_path: str
    concurrency: int
    prompt_path: str
    commit_sha: str
    sampling_json: str
    data_json: str
    def __init__(self, kind: _Optional[_Union[PromptKind, str]] = ..., ast_json: _Optional[str] = ..., experiment_id: _Optional[str] = ..., dataset_path: _Optional[str] = ..., concurrency: _Optional[int] = ..., prompt_path: _Optional[str] = ..., commit_sha: _Optional[str] = ..., sampling_json: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class DatasetItemRequest(_message.Message):
    __slots__ = ("kind", "index", "input_json", "expected_output_json", "rendered", "eval_names", "run_id", "run_name", "dataset_path", "item_name", "prompt_name", "prompt_path", "commit_sha")
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    RENDERED_FIELD_NUMBER: _ClassVar[int]
    EVAL_NAMES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_PATH_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PATH_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SHA_FIELD_NUMBER: _ClassVar[int]
    kind: PromptKind
    index: int
    input_json: str
    expected_output_json: str
    rendered: RenderedPrompt
    eval_names: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    run_name: str
    dataset_path: str
    item_name: str
    prompt_name: str
    prompt_path: str
    commit_sha: str
    def __init__(self, kind: _Optional[_Union[PromptKind, str]] = ..., index: _Optional[int] = ..., input_json: _Optional[str] = ..., expected_output_json: _Optional[str] = ..., rendered: _Optional[_Union[RenderedPrompt, _Mapping]] = ..., eval_names: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., run_name: _Optional[str] = ..., dataset_path: _Optional[str] = ..., item_name: _Optional[str] = ..., prompt_name: _Optional[str] = ..., prompt_path: _Optional[str] = ..., commit_sha: _Optional[str] = ...) -> None: ...

class ExperimentEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ExperimentEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ExperimentEvent, _Mapping]]] = ...) -> None: ...

class ExperimentEvent(_message.Message):
    __slots__ = ("row", "error", "started")
    ROW_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    row: DatasetRow
    error: Error
    started: Started
    def __init__(self, row: _Optional[_Union[DatasetRow, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ...) -> None: ...

class DatasetRow(_message.Message):
    __slots__ = ("input_json", "expected_output_json", "actual_output_json", "tokens", "evals_json", "trace_id", "run_id", "run_name")
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVALS_JSON_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    input_json: str
    expected_output_json: str
    actual_output_json: str
    tokens: int
    evals_json: str
    trace_id: str
    run_id: str
    run_name: str
    def __init__(self, input_json: _Optional[str] = ..., expected_output_json: _Optional[str] = ..., actual_output_json: _Optional[str] = ..., tokens: _Optional[int] = ..., evals_json: _Optional[str] = ..., trace_id: _Optional[str] = ..., run_id: _Optional[str] = ..., run_name: _Optional[str] = ...) -> None: ...

class GetEvalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetEvalsResponse(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class AlertRequest(_message.Message):
    __slots__ = ("id", "type", "status", "data_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    status: str
    data_json: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class AlertResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...
