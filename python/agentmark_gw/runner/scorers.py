"""Scorers every reference runner knows, by the names prompts'
`test_settings.evals` use: `exact_match` and `exact_match_json`.

A scorer takes AgentMark's eval parameters (`input`, `output`,
`expectedOutput`) and returns `{"score", "passed", "label"}`. Your own go
beside these in the `scorers` you give `create_agentmark`.
"""

from __future__ import annotations

import json
from typing import Any


def _verdict(passed: bool) -> dict[str, Any]:
    return {"score": 1 if passed else 0, "passed": passed, "label": "match" if passed else "mismatch"}


def exact_match(params: dict[str, Any]) -> dict[str, Any]:
    """The output is exactly the expected output (surrounding whitespace aside)."""
    output, expected = params.get("output"), params.get("expectedOutput")
    if isinstance(output, str) and isinstance(expected, str):
        return _verdict(output.strip() == expected.strip())
    return _verdict(expected is not None and output == expected)


def _as_json(value: Any) -> Any:
    # Datasets hold the expected object as a JSON string; text prompts answer JSON as text.
    return json.loads(value) if isinstance(value, str) else value


def exact_match_json(params: dict[str, Any]) -> dict[str, Any]:
    """The output equals the expected output as JSON values: key order and spacing do not matter."""
    try:
        expected = _as_json(params.get("expectedOutput"))
    except ValueError:
        return {**_verdict(False), "label": "expected output is not JSON"}
    try:
        output = _as_json(params.get("output"))
    except ValueError:
        return {**_verdict(False), "label": "output is not JSON"}
    return _verdict(expected is not None and output == expected)


# Typed loosely: AgentMark's EvalRegistry wants its own TypedDict parameters,
# which these plain dict functions accept at run time.
BUILTIN_SCORERS: dict[str, Any] = {"exact_match": exact_match, "exact_match_json": exact_match_json}
