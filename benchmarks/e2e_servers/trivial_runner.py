"""The gateway's runner in the end-to-end benchmark: answers from memory,
so the runner is not what is measured. Written with the project's runner SDK.

    python benchmarks/e2e_servers/trivial_runner.py --listen 127.0.0.1:PORT

run_prompt: 100 text deltas, then finish with usage (the gateway streams
them, or folds them into one envelope when the event says shouldStream:
false). run_experiment: 100 dataset rows. Every event is built once, at
start-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agentmark_gw.protocol import runner_pb2 as pb  # noqa: E402
from agentmark_gw.runner import ExperimentRequest, PromptRequest, Runner, events, serve  # noqa: E402

import payloads  # noqa: E402

PROMPT_EVENTS = [events.text_delta(chunk) for chunk in payloads.CHUNKS] + [
    events.finish(
        "stop",
        input_tokens=payloads.INPUT_TOKENS,
        output_tokens=payloads.OUTPUT_TOKENS,
        total_tokens=payloads.TOTAL_TOKENS,
    )
]
ROW_EVENTS = [
    events.dataset_row(
        input=row,
        run_id=payloads.RUN_ID,
        run_name=payloads.RUN_NAME,
        expected_output=payloads.EXPECTED_OUTPUT,
        actual_output=payloads.ACTUAL_OUTPUT,
        tokens=payloads.TOTAL_TOKENS,
    )
    for row in payloads.ROW_INPUTS
]


class TrivialRunner(Runner):
    async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
        for event in PROMPT_EVENTS:
            yield event

    async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
        for event in ROW_EVENTS:
            yield event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port, loopback")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    serve(TrivialRunner(), args.listen, grace=1.0)


if __name__ == "__main__":
    main()
