"""The peer of the end-to-end benchmark: AgentMark's own Python webhook
server (`serve_webhook_runner` from agentmark-prompt-core) running its own
`WebhookRunner` over an executor that answers from memory.

    python -m benchmarks.e2e_servers.peer --port PORT

Equivalent to the gateway's trivial runner: text prompts stream 100 text
deltas and a finish with usage (or, for the paced scenario, N deltas one
every G ms on the same schedule, payloads.paced_schedule); object prompts (dataset-run.json's prompt)
answer one final object and a finish. Dataset runs read 100 rows from an
in-memory loader. What stays is AgentMark's own per-request work: compiling
the prompt AST, rendering it (once per dataset row), its wire mapping and its
HTTP server (stdlib threads, a background event loop, connection close after
each response). No tracing, as the gateway here has none (no OTEL_*
variables): `WebhookRunner` is built directly, because
`create_webhook_runner` adds AgentMark SDK span hooks whenever agentmark_sdk
is installed. It does not check signatures (AgentMark's server has none).

The peer reads `{type, data}` bodies: `benchmarks/e2e.py` sends it the
`event` object of AgentMark's event files.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

from agentmark.prompt_core import (
    ExecCtx,
    ExecutorCapabilities,
    FinishEvent,
    ObjectFinalEvent,
    TextDeltaEvent,
    UsageData,
    WebhookRunner,
    create_agentmark,
)
from agentmark.prompt_core.serve_webhook_runner import serve_webhook_runner

from benchmarks.e2e_servers import payloads

USAGE = UsageData(payloads.INPUT_TOKENS, payloads.OUTPUT_TOKENS, payloads.TOTAL_TOKENS)
TEXT_EVENTS = [TextDeltaEvent(chunk) for chunk in payloads.CHUNKS] + [FinishEvent("stop", USAGE)]
OBJECT_EVENTS = [ObjectFinalEvent(payloads.ACTUAL_OUTPUT), FinishEvent("stop", USAGE)]
ROWS = [{"input": row, "expected_output": payloads.EXPECTED_OUTPUT} for row in payloads.ROW_INPUTS]


class MemoryExecutor:
    """An Executor (agentmark.prompt_core.Executor) that answers from memory."""

    @property
    def name(self) -> str:
        return "bench-memory"

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities(text=True, object=True)

    async def execute_text(self, formatted: Any, ctx: ExecCtx) -> AsyncIterator[Any]:
        # The paced scenario's marker is in the user message, so in the rendered prompt.
        paced = payloads.paced_params(repr(formatted))
        if paced is None:
            for event in TEXT_EVENTS:
                yield event
            return
        tokens, gap = paced
        async for i in payloads.paced_schedule(tokens, gap):
            if i < tokens:
                yield TextDeltaEvent(payloads.paced_chunk(i))
            else:
                yield FinishEvent("stop", UsageData(payloads.INPUT_TOKENS, tokens, payloads.INPUT_TOKENS + tokens))

    async def execute_object(self, formatted: Any, ctx: ExecCtx) -> AsyncIterator[Any]:
        for event in OBJECT_EVENTS:
            yield event


class _Reader:
    def __init__(self) -> None:
        self._rows = iter(ROWS)

    async def read(self) -> dict[str, Any]:
        row = next(self._rows, None)
        return {"done": True} if row is None else {"done": False, "value": row}


class _Dataset:
    def get_reader(self) -> _Reader:
        return _Reader()


class MemoryLoader:
    """A Loader whose every dataset is the 100 rows above."""

    async def load(self, path: str, prompt_type: Any, options: dict[str, Any] | None = None) -> Any:
        raise ValueError("the benchmark sends prompt ASTs, not paths")

    async def load_dataset(self, dataset_path: str) -> _Dataset:
        return _Dataset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    client = create_agentmark(loader=MemoryLoader())
    runner = WebhookRunner(client, MemoryExecutor())  # null span hooks: no tracing
    serve_webhook_runner(runner, port=args.port, host="127.0.0.1")


if __name__ == "__main__":
    main()
