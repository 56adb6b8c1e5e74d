"""AgentMark's API: the dashboard's API key and app ID, and where the API is.

Shared by the gateway (its dataset source) and the runner SDK (its loader and
tracing); so it sits below both and imports neither. Nothing here logs the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

API_KEY_ENV = "AGENTMARK_API_KEY"
APP_ID_ENV = "AGENTMARK_APP_ID"
BASE_URL_ENV = "AGENTMARK_BASE_URL"
DEFAULT_BASE_URL = "https://api.agentmark.co"  # AgentMark's loader and SDK default
TRACE_ENDPOINT = "v1/traces"


class ConnectionSettingsError(ValueError):
    """Half of AgentMark's credentials: refused at start, with what to set."""


@dataclass(frozen=True)
class AgentMarkCloud:
    """The dashboard's API key and app ID, and where AgentMark's API is."""

    api_key: str = field(repr=False)
    app_id: str
    base_url: str = DEFAULT_BASE_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> AgentMarkCloud | None:
        """Cloud mode when both credentials are set; None (local mode) when neither is."""
        api_key = environ.get(API_KEY_ENV, "").strip()
        app_id = environ.get(APP_ID_ENV, "").strip()
        if not api_key and not app_id:
            return None
        if not api_key or not app_id:
            present, missing = (API_KEY_ENV, APP_ID_ENV) if api_key else (APP_ID_ENV, API_KEY_ENV)
            raise ConnectionSettingsError(
                f"{present} is set but {missing} is not: set both (AgentMark dashboard, Settings) to connect, or neither to run locally"
            )
        base_url = (environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
        return cls(api_key, app_id, base_url)

    @property
    def headers(self) -> dict[str, str]:
        """The headers AgentMark's loader and exporter send."""
        return {"Authorization": self.api_key, "X-Agentmark-App-Id": self.app_id}

    def loader(self) -> Any:
        """AgentMark's own API loader for this app."""
        from agentmark.prompt_core.api_loader import ApiLoader

        return ApiLoader.cloud(api_key=self.api_key, app_id=self.app_id, base_url=self.base_url)

    def describe(self) -> str:
        """For start-up logs: where and which app, never the key."""
        return f"app {self.app_id} at {self.base_url}"

    async def check(self, timeout: float = 10.0) -> str:
        """Reach AgentMark once with these credentials, as the trace exporter
        would (an empty batch); the API's own words when it refuses."""
        url = f"{self.base_url}/{TRACE_ENDPOINT}"
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.post(url, json={"resourceSpans": []}, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ConnectionError(f"cannot reach AgentMark at {self.base_url}: {type(exc).__name__}: {exc}") from None
        if response.is_success:
            return f"connected to AgentMark: {self.describe()} accepted the credentials"
        raise ConnectionError(f"AgentMark at {self.base_url} refused the credentials: HTTP {response.status_code}: {api_message(response)}")


def api_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    message = body.get("error") or body.get("message") if isinstance(body, dict) else None
    return str(message or response.text[:200])
