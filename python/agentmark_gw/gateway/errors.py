"""Refusals the gateway answers with: a status and a human-readable message.

Every refusal reaches the client as `{"message": ...}` with its status
(PROTOCOL.md). Raised anywhere below the routes; turned into a response in
one place, `app._refusal`.
"""

from __future__ import annotations


class Refusal(Exception):
    """A request the gateway will not or cannot serve."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(Refusal):
    status = 400


class Unauthorized(Refusal):
    status = 401


class RunnerUnavailable(Refusal):
    """No runner could be reached (gRPC UNAVAILABLE)."""

    status = 503


class RunnerFailed(Refusal):
    """The runner answered with a gRPC error before any byte was streamed."""

    status = 502


class RunnerTimedOut(Refusal):
    status = 504


class ExecutionFailed(Refusal):
    """The runner reported an error event on a non-streaming run."""

    status = 500
