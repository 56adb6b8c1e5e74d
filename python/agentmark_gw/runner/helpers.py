"""AgentMark's small cross-language helpers, as runners need them.

Both are pinned by AgentMark's vectors (`finalize-usage.json`,
`normalize-error.json`), so a Python runner reports usage and errors exactly
as AgentMark's own runtimes do.
"""

from __future__ import annotations

from typing import Any


def finalize_usage(input_tokens: int | None, output_tokens: int | None, total_tokens: int | None) -> tuple[int, int, int] | None:
    """Usage with `total` filled from input + output when the provider left it
    out; None when the provider reported nothing. A reported total is trusted."""
    if input_tokens is None and output_tokens is None and total_tokens is None:
        return None
    input_tokens, output_tokens = input_tokens or 0, output_tokens or 0
    return input_tokens, output_tokens, total_tokens if total_tokens is not None else input_tokens + output_tokens


def normalize_error(error: Any) -> str:
    """One readable string for any error shape: a string, an exception, or a
    (possibly nested) `{"message"}`, `{"error": {"message"}}` or
    `{"data": {"error": {"message"}}}` object."""
    if error is None or error == "":
        return "Unknown error"
    if isinstance(error, str):
        return error
    if isinstance(error, BaseException):
        return str(error) or type(error).__name__
    if isinstance(error, dict):
        for path in (("message",), ("error", "message"), ("data", "error", "message")):
            value: Any = error
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, str) and value:
                return value
        nested = error.get("error")
        if isinstance(nested, str) and nested:
            return nested
    return str(error)
