"""The ASGI application for Hypercorn workers: `agentmark_gw.gateway.asgi:app`.

`agentmark-gw serve` passes its validated configuration down in a 0600
file named in the environment. Run directly (`hypercorn agentmark_gw.gateway.asgi:app`), the
app reads the usual environment variables and `AGENTMARK_GW_CONFIG` (a TOML
file path), like `serve` does.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from .app import create_app
from .config import load_config
from .observability import configure_logging
from .server import EFFECTIVE_CONFIG_ENV, exit_with_parent, load_dumped_config, patch_hypercorn

_dumped_path = os.environ.get(EFFECTIVE_CONFIG_ENV)
_dumped = Path(_dumped_path).read_text() if _dumped_path else None
_server = multiprocessing.parent_process()
if _dumped:
    config = load_dumped_config(_dumped)  # `serve` checked it
else:
    config = load_config(os.environ.get("AGENTMARK_GW_CONFIG"))
    config.require_strong_secret()  # served directly (`hypercorn agentmark_gw.gateway.asgi:app`): as `serve` would
if _dumped and _server is not None and _server.pid is not None:
    exit_with_parent(_server.pid, abrupt=config.server == "granian")  # a worker process of `serve`: never outlive it
    patch_hypercorn()  # Hypercorn's workers serve in this process (a no-op under Granian)
configure_logging(config.log_format)
app = create_app(config)
