"""Refusals the gateway answers with: a status and a human-readable message.

Every refusal reaches the client as `{"message": ...}` with its status, as
AgentMark's own servers answer errors (the `errorResponse` of AgentMark's
webhook-http vector). Raised anywhere on the request path; turned into a
response in one place, the webhook endpoint (`endpoint.WebhookEndpoint`), which
also logs and counts it.

    Refusal (any status: 405, 408, 409, 413, 415, 431, 502, 504 are raised as is)
    ├── BadRequest          400  the body is not an event we can run
    ├── Unauthorized        401  missing, malformed or wrong signature
    ├── RunnerUnavailable   503  no runner could be reached (names those tried)
    └── ExecutionFailed     500  the runner reported an error on a non-streaming run
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
    status = 503


class ExecutionFailed(Refusal):
    status = 500
