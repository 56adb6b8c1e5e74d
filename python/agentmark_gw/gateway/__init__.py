"""The gateway: AgentMark webhook in, gRPC runner call, AgentMark wire format out.

- `config`: what the gateway needs to know, from a TOML file and the environment.
- `webhook`: a raw request body becomes a typed event, or a clear refusal.
- `endpoint`: the webhook endpoint (plain ASGI): a signed request is checked,
  parsed and dispatched; every refusal and its status is decided here.
- `runners`: the one place an event becomes a gRPC call.
- `responses`: the one place runner messages become the HTTP answer (via `_accel`).
- `app`: the Quart app: operations routes and the serving lifecycle, with the
  endpoint in front of it.

The gateway knows runners only through the protocol; it never imports the
runner SDK.
"""

from .app import create_app
from .config import GatewayConfig, load_config

__all__ = ["GatewayConfig", "create_app", "load_config"]
