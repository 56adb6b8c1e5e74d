"""Serving a `Runner` over gRPC, with `grpc.health.v1` health checks."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .._ports import ensure_free
from ..protocol import runner_pb2, runner_pb2_grpc
from .agentmark_cloud import shutdown_tracing
from .service import Runner, RunnerServicer

log = logging.getLogger("agentmark_gw.runner")

SERVICE_NAME = runner_pb2.DESCRIPTOR.services_by_name["Runner"].full_name
DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_CONNECTION_AGE_MS = 5 * 60 * 1000
# Every runner server's gRPC options (the benchmarks' trivial runner uses them too).
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # The gateway pings idle connections every 30 s; allow it.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC would otherwise share the port with another runner already
    # on it and split the traffic silently.
    ("grpc.so_reuseport", 0),
    # Clients resolve a dns:/// name again only when a connection
    # closes; ending connections after a few minutes (calls under way
    # finish first: the grace is unbounded) lets gateways find runner
    # replicas added since they connected.
    ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
]


async def start(runner: Runner, address: str = DEFAULT_ADDRESS) -> tuple[grpc.aio.Server, int]:
    """Start serving `runner` at `address` (port 0 picks a free one).
    Returns the server and the port it is bound to."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    runner_pb2_grpc.add_RunnerServicer_to_server(RunnerServicer(runner), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # gRPC says only "failed to bind"; the probe names the port in use.
    ensure_free(address)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        raise OSError(f"cannot listen on {address}: the address is in use or not valid") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def serve_async(runner: Runner, address: str = DEFAULT_ADDRESS, *, grace: float = 5.0) -> None:
    """Serve until SIGINT or SIGTERM, then finish in-flight calls for `grace`
    seconds, and send AgentMark the spans still pending (when connected)."""
    server, port = await start(runner, address)
    log.info("runner %s listening on %s", type(runner).__name__, address.rsplit(":", 1)[0] + f":{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(server.wait_for_termination())
    await asyncio.wait([waiter, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    await server.stop(grace)
    # Spans of the calls that just finished are still in the batch processor.
    await asyncio.to_thread(shutdown_tracing, grace)


def serve(runner: Runner, address: str = DEFAULT_ADDRESS, *, grace: float = 5.0) -> None:
    """Blocking: serve `runner` at `address` until interrupted."""
    asyncio.run(serve_async(runner, address, grace=grace))
