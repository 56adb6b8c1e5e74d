"""What every trivial server answers, from memory, so the three servers of
the end-to-end benchmark send the same content: 100 text chunks and a
finish (prompt-run), or 100 dataset rows (dataset-run).

Imported by the server scripts in this folder (each runs as its own process)
and by `benchmarks/e2e.py`, which checks the answers against these counts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator

N_CHUNKS = 100
N_ROWS = 100

CHUNKS = [f"token{i:03d} " for i in range(N_CHUNKS)]
INPUT_TOKENS = 21
OUTPUT_TOKENS = N_CHUNKS
TOTAL_TOKENS = INPUT_TOKENS + OUTPUT_TOKENS

# Dataset rows, shaped like dataset-run.json's sentiment prompt.
ROW_INPUTS = [{"text": f"Review {i}: I love this product, it works perfectly!"} for i in range(N_ROWS)]
EXPECTED_OUTPUT = {"sentiment": "positive"}
ACTUAL_OUTPUT = {"sentiment": "positive"}
RUN_ID = "00000000-0000-4000-8000-000000000000"
RUN_NAME = "sentiment-baseline"  # dataset-run.json's experimentId


def _line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


# The wire lines AgentMark expects, as the ceiling app writes them.
TEXT_LINES = [_line({"type": "text", "result": chunk}) for chunk in CHUNKS]


@functools.cache
def finish_line(output_tokens: int) -> bytes:
    """The finish line with usage, as the gateway frames the runner's finish."""
    return _line(
        {
            "type": "text",
            "finishReason": "stop",
            "usage": {
                "inputTokens": INPUT_TOKENS,
                "outputTokens": output_tokens,
                "totalTokens": INPUT_TOKENS + output_tokens,
                "promptTokens": INPUT_TOKENS,
                "completionTokens": output_tokens,
            },
        }
    )


FINISH_LINE = finish_line(OUTPUT_TOKENS)
DATASET_LINES = [
    _line(
        {
            "type": "dataset",
            "result": {
                "input": row,
                "expectedOutput": EXPECTED_OUTPUT,
                "actualOutput": ACTUAL_OUTPUT,
                "tokens": TOTAL_TOKENS,
                "evals": [],
            },
            "runId": RUN_ID,
            "runName": RUN_NAME,
        }
    )
    for row in ROW_INPUTS
]
ENVELOPE = json.dumps(
    {
        "type": "text",
        "result": "".join(CHUNKS),
        "usage": json.loads(FINISH_LINE)["usage"],
        "finishReason": "stop",
        "toolCalls": [],
        "toolResults": [],
    },
    separators=(",", ":"),
).encode()


# The paced scenario: a model streaming one token at a time. The event says
# how many and how often in its user message (customProps.userMessage), which
# each server sees in its own form: the runner in the raw RunPrompt request
# bytes, the ceiling in the HTTP body, the peer in the rendered prompt.
PACED_TOKENS = 150
PACED_GAP_MS = 20
_PACED = re.compile(rb"e2e-paced tokens=(\d+) gap_ms=(\d+)")


def paced_marker(tokens: int, gap_ms: int) -> str:
    return f"e2e-paced tokens={tokens} gap_ms={gap_ms}"


def paced_params(raw: bytes | str) -> tuple[int, float] | None:
    """(tokens, gap in seconds) if `raw` asks for a paced answer, else None."""
    match = _PACED.search(raw.encode() if isinstance(raw, str) else raw)
    if match is None:
        return None
    return min(int(match.group(1)), 100_000), min(int(match.group(2)), 10_000) / 1000


def paced_chunk(i: int) -> str:
    return f"tok{i:05d} "


@functools.cache  # encoded once, so the ceiling's cost per token is the write
def paced_line(i: int) -> bytes:
    return _line({"type": "text", "result": paced_chunk(i)})


async def paced_schedule(tokens: int, gap: float) -> AsyncIterator[int]:
    """Yields 0 .. tokens-1, each token's index when it is due, then `tokens`
    (the finish). Token i is due `i * gap` after the start and the finish at
    `tokens * gap`, a fixed schedule: a late token does not delay the next."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(tokens + 1):
        delay = start + i * gap - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i
