"""The extension's stub is true to it, and the Python twin offers the same interface."""

from __future__ import annotations

import inspect
import subprocess
import sys

from agentmark_gw import _core, _fallback


def test_stub_matches_the_extension() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "agentmark_gw._core"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The runner client's twin is grpc.aio, not `_fallback`: the gateway's
# end-to-end tests run on both (`runner_client`).
RUNNER_CLIENT = {"RunnerClientHub", "RunnerClientChannel", "RunnerCall"}


def test_twin_has_every_public_name_of_the_extension() -> None:
    for name in sorted(set(_core.__all__) - RUNNER_CLIENT):
        rust, python = getattr(_core, name), getattr(_fallback, name)
        if inspect.isclass(rust):
            args = () if name == "ExperimentFramer" else ("text",)
            public = {m for m in dir(rust(*args)) if not m.startswith("_")}
            twin = set(dir(python(*args)))
            assert public <= twin, f"{name}: twin lacks {public - twin}"
        else:
            assert list(inspect.signature(rust).parameters) == list(inspect.signature(python).parameters), name
