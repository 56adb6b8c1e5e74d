"""AgentMark's finalize-usage and normalize-error vectors, unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from agentmark_gw.runner.helpers import finalize_usage, normalize_error

from .test_vectors import cases


@pytest.mark.parametrize("case", cases("finalize-usage.json"))
def test_finalize_usage(case: dict[str, Any]) -> None:
    given = case["input"]
    result = finalize_usage(given["inputTokens"], given["outputTokens"], given["totalTokens"])
    expected = case["expected"]
    if expected is None:
        assert result is None
    else:
        assert result == (expected["inputTokens"], expected["outputTokens"], expected["totalTokens"])


@pytest.mark.parametrize("case", cases("normalize-error.json"))
def test_normalize_error(case: dict[str, Any]) -> None:
    assert normalize_error(case["input"]) == case["expected"]


def test_normalize_error_of_exceptions() -> None:
    assert normalize_error(RuntimeError("boom")) == "boom"
    assert normalize_error(TimeoutError()) == "TimeoutError"
