"""The ceiling of the end-to-end benchmark: a bare Quart app on Hypercorn,
one worker, uvloop (the gateway's worker class), the same Hypercorn settings
as the gateway, and nothing else: no signature, no runner, no metrics, no logs.

    python -m benchmarks.e2e_servers.ceiling --bind 127.0.0.1:PORT

Routes (every POST reads and parses the ~2 KB JSON body first):
  POST /prompt    one JSON envelope (what a non-streaming prompt-run answers)
  POST /stream    100 text lines and a finish line, one write per line
  POST /dataset   100 dataset rows, one write per line
  POST /paced     N text lines, each written when due (one every G ms), and a
                  finish line: N and G from the body (payloads.paced_params)
  GET  /health    ok
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator

import uvloop
from hypercorn.asyncio import serve
from hypercorn.config import Config
from quart import Quart, Response, request

from benchmarks.e2e_servers import payloads

STREAM_HEADERS = {"AgentMark-Streaming": "true", "Content-Type": "application/x-ndjson"}

app = Quart("ceiling")
app.config.update(RESPONSE_TIMEOUT=None)


async def _read_event() -> dict:
    return json.loads(await request.get_data(cache=False, as_text=False))


@app.post("/prompt")
async def prompt() -> Response:
    await _read_event()
    return Response(payloads.ENVELOPE, status=200, content_type="application/json")


@app.post("/stream")
async def stream() -> Response:
    await _read_event()

    async def body() -> AsyncIterator[bytes]:
        for line in payloads.TEXT_LINES:
            yield line
        yield payloads.FINISH_LINE

    response = Response(body(), status=200, headers=STREAM_HEADERS)
    response.timeout = None
    return response


@app.post("/paced")
async def paced() -> Response:
    """A model's pace: each token's line written when it is due (the same
    schedule as the trivial runner's), then the finish line."""
    params = payloads.paced_params(await request.get_data(cache=False, as_text=False))
    if params is None:
        return Response(b'{"message":"no paced marker"}', status=400, content_type="application/json")
    tokens, gap = params

    async def body() -> AsyncIterator[bytes]:
        async for i in payloads.paced_schedule(tokens, gap):
            yield payloads.paced_line(i) if i < tokens else payloads.finish_line(tokens)

    response = Response(body(), status=200, headers=STREAM_HEADERS)
    response.timeout = None
    return response


@app.post("/dataset")
async def dataset() -> Response:
    await _read_event()

    async def body() -> AsyncIterator[bytes]:
        for line in payloads.DATASET_LINES:
            yield line

    response = Response(body(), status=200, headers=STREAM_HEADERS)
    response.timeout = None
    return response


@app.get("/health")
async def health() -> Response:
    return Response(b"ok", status=200, content_type="text/plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="host:port, loopback")
    args = parser.parse_args()
    config = Config()
    config.bind = [args.bind]
    # As the gateway's hypercorn_config: no access log, no read timeout.
    config.accesslog = None
    config.read_timeout = None
    config.keep_alive_timeout = 75
    uvloop.run(serve(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
