"""Run in its own process by tests/test_reference_runner.py, because it sets
OpenTelemetry's global tracer provider (which AgentMark's SDK uses), and that
can be set only once per process.

A gateway and the reference runner with AgentMark's span hooks; a request
carrying a W3C `traceparent`. Prints a JSON report on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import openai
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


async def main(model_url: str) -> None:
    from agentmark.prompt_core import create_agentmark

    from agentmark_gw.gateway import create_app
    from agentmark_gw.runner import AgentMarkRunner, OpenAIExecutor, start
    from tests.conftest import HttpServer, agentmark_json, gateway_config, signed

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    model = openai.AsyncOpenAI(api_key="k", base_url=model_url, max_retries=0)
    server, port = await start(AgentMarkRunner(create_agentmark(), OpenAIExecutor(model)), "127.0.0.1:0")
    try:
        async with HttpServer(create_app(gateway_config(f"127.0.0.1:{port}"))) as gateway, httpx.AsyncClient() as client:
            raw, headers = signed(agentmark_json("events/prompt-run-text.json"))
            headers["traceparent"] = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
            response = await client.post(gateway.url + "/", content=raw, headers=headers)
    finally:
        await server.stop(0)
        await model.close()
    lines = [json.loads(line) for line in response.text.splitlines()]
    spans = [
        {"name": s.name, "trace_id": f"{s.context.trace_id:032x}", "parent": f"{s.parent.span_id:016x}" if s.parent else None}
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"lines": lines, "spans": spans}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
