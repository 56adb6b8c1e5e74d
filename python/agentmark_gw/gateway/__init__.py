"""The gateway: AgentMark webhook in, gRPC runner call, AgentMark wire format out.

The request path, in order:
- `server`: serving (Hypercorn or Granian, workers, TLS, signals); `asgi`: the app for workers.
- `app`: the Quart app: operations routes (`/healthz`, `/readyz`, `/metrics`)
  and the serving lifecycle, with the endpoint in front of it.
- `endpoint`: the webhook endpoint (plain ASGI): a signed request is checked,
  parsed and dispatched; every refusal and its status is decided here.
- `webhook`: a raw request body becomes a typed event, or a clear refusal.
- `replay`: the optional replay guard.
- `runners`: the one place an event becomes a gRPC call (pool, failover, health, `Describe`).
- `rendering`: prompts rendered by AgentMark's runtime, for runners that ask.
- `responses`: the one place runner messages become the HTTP answer (via `_accel`).

Beside it: `config` (settings from TOML and the environment, alert sinks
included), `errors` (the refusals), `alerts/` (the durable outbox, its
delivery worker and the sinks; built on `config` and `webhook`, which never
import it), `observability` (metrics and logs), `tracing` (OpenTelemetry).

The gateway knows runners only through the protocol; it never imports the
runner SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import GatewayConfig, load_config

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["GatewayConfig", "create_app", "load_config"]


def __getattr__(name: str) -> Any:
    # The app (Quart, gRPC, OpenTelemetry) loads only when asked for: CLI
    # commands that read the settings, such as `sign`, stay light.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
