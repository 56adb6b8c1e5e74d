"""The switch between the Rust extension and its pure-Python twin.

Everything that does byte work imports it from here. The Rust path is the
default; the twin is used only when the extension is missing (a source
checkout that was never built, or an unsupported platform), and the
gateway says so once in its log. `AGENTMARK_GW_PURE_PYTHON=1` forces the
twin, for debugging and for measuring the difference.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from . import _fallback

log = logging.getLogger("agentmark_gw")


def _load() -> tuple[ModuleType, str]:
    if os.environ.get("AGENTMARK_GW_PURE_PYTHON") == "1":
        return _fallback, "python (AGENTMARK_GW_PURE_PYTHON=1)"
    try:
        from . import _core
    except ImportError:
        return _fallback, "python (the Rust extension agentmark_gw._core is not built)"
    return _core, "rust"


core, IMPLEMENTATION = _load()

sign = core.sign
verify = core.verify
frame_event = core.frame_event
http_chunk = core.http_chunk
evals_payload = core.evals_payload
dataset_item_name = core.dataset_item_name
PromptFramer = core.PromptFramer
ExperimentFramer = core.ExperimentFramer
EnvelopeFolder = core.EnvelopeFolder

_announced = False


def announce() -> None:
    """Log, once per process, which implementation does the byte work."""
    global _announced
    if _announced:
        return
    _announced = True
    if core is _fallback:
        log.warning("byte work runs on the pure-Python twin: %s", IMPLEMENTATION)
    else:
        log.info("byte work runs on the Rust extension")


__all__ = [
    "IMPLEMENTATION",
    "EnvelopeFolder",
    "ExperimentFramer",
    "PromptFramer",
    "announce",
    "dataset_item_name",
    "evals_payload",
    "frame_event",
    "http_chunk",
    "sign",
    "verify",
]
