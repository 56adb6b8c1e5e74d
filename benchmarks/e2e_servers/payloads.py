"""What every trivial server answers, from memory, so the three servers of
the end-to-end benchmark send the same content: 100 text chunks and a
finish (prompt-run), or 100 dataset rows (dataset-run).

Imported by the server scripts in this folder (each runs as its own process)
and by `benchmarks/e2e.py`, which checks the answers against these counts.
"""

from __future__ import annotations

import json

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
FINISH_LINE = _line(
    {
        "type": "text",
        "finishReason": "stop",
        "usage": {
            "inputTokens": INPUT_TOKENS,
            "outputTokens": OUTPUT_TOKENS,
            "totalTokens": TOTAL_TOKENS,
            "promptTokens": INPUT_TOKENS,
            "completionTokens": OUTPUT_TOKENS,
        },
    }
)
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
