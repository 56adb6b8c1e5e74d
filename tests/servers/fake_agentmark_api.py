"""A stand-in for AgentMark's API on loopback (the real one is on the
internet, which these machines cannot reach).

Written from what AgentMark's own Python clients send and expect:

- `ApiLoader` (agentmark-prompt-core): `GET v1/templates?path=...` with
  `Authorization: <api key>` and `X-Agentmark-App-Id: <app id>`; a dataset is
  asked for with `Accept: application/x-ndjson` and comes back as NDJSON rows,
  a prompt as `{"data": <ast>}`; a refusal is `{"error": "..."}` with its status.
- `AgentMarkSDK.init_tracing` (agentmark-sdk): OTLP JSON on `POST v1/traces`
  with the same two headers.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Quart, Response, request


class FakeAgentMarkApi:
    def __init__(self, api_key: str, app_id: str) -> None:
        self.api_key = api_key
        self.app_id = app_id
        self.datasets: dict[str, list[dict[str, Any]]] = {}
        self.prompts: dict[str, dict[str, Any]] = {}
        self.spans: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, path, headers
        self.url = ""
        self.app = self._build()

    def trace_ids(self) -> set[str]:
        return {span["traceId"] for span in self.spans}

    def _authorised(self) -> bool:
        return request.headers.get("Authorization") == self.api_key and request.headers.get("X-Agentmark-App-Id") == self.app_id

    def _build(self) -> Quart:
        app = Quart("fake-agentmark-api")

        @app.before_request
        async def remember() -> None:
            self.requests.append((request.method, request.path, {k.lower(): v for k, v in request.headers.items()}))

        @app.get("/v1/templates")
        async def templates() -> Response:
            if not self._authorised():
                return _error(401, "Invalid API key or app ID")
            path = request.args.get("path", "")
            if "application/x-ndjson" in request.headers.get("Accept", ""):
                rows = self.datasets.get(path)
                if rows is None:
                    return _error(404, f"Dataset not found: {path}")
                return Response("".join(json.dumps(row) + "\n" for row in rows), content_type="application/x-ndjson")
            prompt = self.prompts.get(path)
            if prompt is None:
                return _error(404, f"Prompt not found: {path}")
            return Response(json.dumps({"data": prompt}), content_type="application/json")

        @app.post("/v1/traces")
        async def traces() -> Response:
            if not self._authorised():
                return _error(401, "Invalid API key or app ID")
            body = await request.get_json(force=True)
            for resource in body.get("resourceSpans", []):
                for scope in resource.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        attributes = {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}
                        self.spans.append({"traceId": span["traceId"], "name": span.get("name"), "attributes": attributes})
            return Response("{}", content_type="application/json")

        return app


def _error(status: int, message: str) -> Response:
    return Response(json.dumps({"error": message}), status=status, content_type="application/json")
