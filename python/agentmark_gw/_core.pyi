"""Type stub for the Rust extension. `_fallback` implements the same
interface in Python, except the runner client (`RunnerClientHub` and its
channel and call), whose twin is grpc.aio (`runner_client = "grpcio"`);
tests/test_typing.py checks this stub against both."""

from collections.abc import Sequence
from typing import Self, final

__all__ = [
    "EnvelopeFolder",
    "ExperimentFramer",
    "PromptFramer",
    "RunnerCall",
    "RunnerClientChannel",
    "RunnerClientHub",
    "dataset_item_name",
    "evals_payload",
    "frame_event",
    "http_chunk",
    "sign",
    "verify",
]

def sign(secret: str, body: bytes) -> str:
    """`sha256=` and the lower-case hex HMAC-SHA256 of `body`; "" keys as `DEFAULT`."""

def verify(secrets: str | Sequence[str], header: str | None, body: bytes) -> bool:
    """Whether `header` signs `body` under any of `secrets`. False, never an
    exception, for a missing or malformed header."""

def frame_event(kind: str, event: bytes) -> bytes | None:
    """One raw `RunnerEvent` to its NDJSON line, or None when it has none."""

def http_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk: size in hex, CRLF, data, CRLF. Empty
    data makes none (a zero-length chunk ends the body)."""

def evals_payload(names: Sequence[str]) -> bytes:
    """The `get-evals` answer body."""

def dataset_item_name(input_json: str, index: int) -> str:
    """AgentMark's dataset item name. Raises ValueError for input that is not JSON."""

@final
class PromptFramer:
    """Frames one prompt run: `feed(batch)` per gRPC message, `close()` at the end."""

    def __new__(cls, kind: str) -> Self: ...
    def feed(self, batch: bytes) -> bytes: ...
    def fail(self, message: str) -> bytes: ...
    def close(self) -> bytes: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def terminated(self) -> bool: ...

@final
class ExperimentFramer:
    """Frames one dataset run: rows and error lines."""

    def __new__(cls) -> Self: ...
    def feed(self, batch: bytes) -> bytes: ...
    def fail(self, message: str) -> bytes: ...
    def close(self) -> bytes: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def rows(self) -> int: ...
    @property
    def errors(self) -> int: ...

@final
class EnvelopeFolder:
    """Folds a prompt run into its non-streaming JSON envelope."""

    def __new__(cls, kind: str) -> Self: ...
    def feed(self, batch: bytes) -> None: ...
    def close(self) -> bytes: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def terminated(self) -> bool: ...
    @property
    def error(self) -> str | None: ...

@final
class RunnerClientHub:
    """The runner client's tokio runtime and wake-up socket (runner_client.rs)."""

    def __new__(cls) -> Self: ...
    def fileno(self) -> int: ...
    def take_ready(self) -> list[int]: ...
    def channel(self, target: str, max_receive: int, max_send: int) -> RunnerClientChannel: ...
    def open(
        self, channel: RunnerClientChannel, path: str, request: bytes, metadata: Sequence[tuple[str, str]], timeout: float | None = None
    ) -> RunnerCall: ...

@final
class RunnerClientChannel:
    """Connections to one runner target."""

@final
class RunnerCall:
    """One streamed call: `try_next` gives bytes, None (the end), False (nothing yet) or (status code, message)."""

    @property
    def id(self) -> int: ...
    def try_next(self) -> bytes | bool | tuple[int, str] | None: ...
    def cancel(self) -> None: ...
