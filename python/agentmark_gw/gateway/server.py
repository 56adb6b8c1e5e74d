"""Serving the gateway on Hypercorn."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from .app import create_app
from .config import GatewayConfig


def hypercorn_config(config: GatewayConfig) -> HypercornConfig:
    hyper = HypercornConfig()
    hyper.bind = [config.bind]
    hyper.accesslog = None  # access logs carry no bodies, but are noise by default
    hyper.errorlog = "-"
    # Slow or stuck clients must not hold connections for ever.
    hyper.read_timeout = 60
    hyper.keep_alive_timeout = 75  # above the usual 60 s load-balancer idle timeout
    hyper.graceful_timeout = 10
    return hyper


async def serve(config: GatewayConfig, shutdown_trigger: Callable[..., Awaitable[None]] | None = None) -> None:
    """Serve until `shutdown_trigger` completes (default: SIGINT/SIGTERM)."""
    app = create_app(config)
    await hypercorn_serve(app, hypercorn_config(config), shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


def run(config: GatewayConfig) -> None:
    """Blocking entry point for the command line, on uvloop when available."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
