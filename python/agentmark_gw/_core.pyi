"""Type stub for the Rust extension. `_fallback` implements the same
interface in Python; tests/test_typing.py checks this stub against both."""

from collections.abc import Sequence
from typing import Self, final

__all__ = [
    "EnvelopeFolder",
    "ExperimentFramer",
    "PromptFramer",
    "dataset_item_name",
    "evals_payload",
    "frame_event",
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
