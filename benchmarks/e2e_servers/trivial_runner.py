"""The gateway's runner in the end-to-end benchmark: answers from memory,
so the runner is not what is measured.

    python -m benchmarks.e2e_servers.trivial_runner --listen 127.0.0.1:PORT [--impl raw|sdk]
    python -m benchmarks.e2e_servers.trivial_runner --dump-messages DIR

run_prompt: 100 text deltas, then finish with usage (the gateway streams
them, or folds them into one envelope when the event says shouldStream:
false); or, when the request carries the paced marker (payloads.paced_params:
the benchmark's paced scenario), N text deltas, one message each, one every
G ms on a fixed schedule, then finish. run_experiment: 100 dataset rows. Every event is built once, at
start-up, with the SDK's event constructors, so both implementations send
the same bytes.

Two implementations:

- raw (the default): grpc.aio with generic method handlers and no
  (de)serializers. The request is never parsed; each streaming call writes
  one pre-encoded message (a `RunnerEvents` with the 100 deltas and the
  finish, or an `ExperimentEvents` with the 100 rows). That is also what the
  SDK sends for these runners: its batcher packs whatever is queued when a
  message goes out, and a generator that never awaits has queued everything
  (checked: one message per call, 1,518 and 18,590 bytes). About half the
  runner CPU of the SDK per call, so the gateway is most of what is measured.
- sdk: the same answers through the project's runner SDK (`Runner`,
  `serve`): request parsing, a producer task and a queue per call, message
  encoding. Shows what a real runner's framework costs on the same cores.

Both register `grpc.health.v1` as SERVING for "" and the Runner service (the
gateway's readiness waits for it) and answer GetEvals and HandleAlert.

`--dump-messages DIR` writes the raw implementation's pre-encoded answers to
DIR (and samples of its paced messages) and exits: what the Rust twin of the
raw runner, `benchmarks/trivial-runner-rs` (e2e's `--runner-impl rust`),
sends, so the two send the same bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agentmark_gw.protocol import runner_pb2 as pb
from agentmark_gw.runner import events
from agentmark_gw.runner.server import SERVER_OPTIONS
from benchmarks.e2e_servers import payloads

SERVICE_NAME = "agentmark.runner.v1.Runner"

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

# The raw runner's whole answers, encoded once.
PROMPT_MESSAGE = pb.RunnerEvents(events=PROMPT_EVENTS).SerializeToString()
EXPERIMENT_MESSAGE = pb.ExperimentEvents(events=ROW_EVENTS).SerializeToString()
EVALS_MESSAGE = pb.GetEvalsResponse(names=[]).SerializeToString()
ALERT_MESSAGE = pb.AlertResponse(message="logged").SerializeToString()

# SERVER_OPTIONS: as the SDK's server, so the two implementations differ
# only in how they answer.


# --- raw ------------------------------------------------------------------------


async def _run_prompt(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    paced = payloads.paced_params(request)
    if paced is None:
        yield PROMPT_MESSAGE
        return
    # A model's pace: one text delta per message, each when it is due.
    tokens, gap = paced
    async for i in payloads.paced_schedule(tokens, gap):
        yield _paced_message(i) if i < tokens else _paced_finish(tokens)


@functools.cache
def _paced_message(i: int) -> bytes:
    # Encoded once per token index, so a paced runner costs little per token.
    return pb.RunnerEvents(events=[events.text_delta(payloads.paced_chunk(i))]).SerializeToString()


@functools.cache
def _paced_finish(tokens: int) -> bytes:
    usage = {"input_tokens": payloads.INPUT_TOKENS, "output_tokens": tokens, "total_tokens": payloads.INPUT_TOKENS + tokens}
    return pb.RunnerEvents(events=[events.finish("stop", **usage)]).SerializeToString()


async def _run_experiment(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield EXPERIMENT_MESSAGE


async def _get_evals(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return EVALS_MESSAGE


async def _handle_alert(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return ALERT_MESSAGE


async def serve_raw(address: str) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    # No serializers anywhere: requests arrive as bytes, answers leave as bytes.
    handlers = {
        "RunPrompt": grpc.unary_stream_rpc_method_handler(_run_prompt),
        "RunExperiment": grpc.unary_stream_rpc_method_handler(_run_experiment),
        "GetEvals": grpc.unary_unary_rpc_method_handler(_get_evals),
        "HandleAlert": grpc.unary_unary_rpc_method_handler(_handle_alert),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    logging.getLogger("trivial_runner").info("raw runner listening on %s", address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def dump_messages(directory: Path) -> None:
    """The raw runner's answers, as files for the Rust runner: the whole
    answers it sends as they are, and samples of the paced messages, which it
    encodes itself and checks against these at start-up."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"prompt.bin": PROMPT_MESSAGE, "experiment.bin": EXPERIMENT_MESSAGE, "evals.bin": EVALS_MESSAGE, "alert.bin": ALERT_MESSAGE}
    # Indexes and counts around the varint and digit-width boundaries, and the default.
    for i in (0, 1, 127, 128, 9_999, 99_999):
        files[f"paced-delta-{i}.bin"] = _paced_message(i)
    for tokens in (0, 1, 106, 107, payloads.PACED_TOKENS, 16_362, 16_363, 100_000):
        files[f"paced-finish-{tokens}.bin"] = _paced_finish(tokens)
    for name, data in files.items():
        (directory / name).write_bytes(data)


# --- sdk ------------------------------------------------------------------------


def serve_sdk(address: str) -> None:
    from agentmark_gw.runner import ExperimentRequest, PromptRequest, Runner, serve

    class TrivialRunner(Runner):
        async def run_prompt(self, request: PromptRequest) -> AsyncIterator[pb.RunnerEvent]:
            for event in PROMPT_EVENTS:
                yield event

        async def run_experiment(self, request: ExperimentRequest) -> AsyncIterator[pb.ExperimentEvent]:
            for event in ROW_EVENTS:
                yield event

    serve(TrivialRunner(), address, grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", help="host:port, loopback")
    parser.add_argument("--impl", choices=("raw", "sdk"), default="raw", help="raw grpc.aio handlers (default) or the project's runner SDK")
    parser.add_argument("--dump-messages", type=Path, metavar="DIR", help="write the raw runner's answers to DIR for the Rust runner, and exit")
    args = parser.parse_args()
    if args.dump_messages:
        dump_messages(args.dump_messages)
        return
    if not args.listen:
        parser.error("--listen is required")
    logging.basicConfig(level=logging.INFO)
    if args.impl == "sdk":
        serve_sdk(args.listen)
    else:
        asyncio.run(serve_raw(args.listen))


if __name__ == "__main__":
    main()
