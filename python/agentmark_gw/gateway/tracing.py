"""OpenTelemetry tracing: a span per webhook, its context passed to the runner.

Configured by the standard `OTEL_*` variables and off unless an OTLP
endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` turns it off
again. Spans go out over OTLP/HTTP in batches, off the request path.

Whether or not the gateway traces, the W3C trace context (`traceparent`,
`tracestate`) reaches the runner in gRPC metadata: the gateway's own span
when tracing, else whatever the caller sent. A runner's spans then join the
caller's trace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import DefaultGetter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()

# Request headers: Quart's, or any mapping of names to values.
Headers = Any
_CONTEXT_HEADERS = ("traceparent", "tracestate")


# W3C Trace Context: a tracestate may be cut when longer than 512 characters
# (traceparent is 55); gRPC metadata carries printable ASCII only.
MAX_CONTEXT_LENGTH = 512


def usable_context(headers: dict[str, str]) -> None:
    """Drop a `traceparent` or `tracestate` the runner call cannot carry: one
    with a byte that is not printable ASCII (gRPC refused it, a 500), or
    longer than W3C asks anyone to pass on (12 KB made gRPC answer 429).
    W3C says to ignore an invalid context, so the request goes on without it."""
    for name in _CONTEXT_HEADERS:
        value = headers.get(name)
        if value is not None and (len(value) > MAX_CONTEXT_LENGTH or not (value.isascii() and value.isprintable())):
            del headers[name]


def tracing_configured(env: Mapping[str, str] = os.environ) -> bool:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_environment() -> TracerProvider | None:
    """An OTLP-exporting provider when the environment asks for one."""
    if not tracing_configured():
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "agentmark-gw")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("agentmark_gw") if provider is not None else None

    def start(self, method: str, path: str, headers: Headers) -> Span | None:
        """The webhook's span, a child of the caller's trace context if it sent one."""
        if self._tracer is None:
            return None
        parent = _PROPAGATOR.extract(headers, getter=_HeaderGetter())
        return self._tracer.start_span(
            "agentmark webhook",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )

    def runner_metadata(self, span: Span | None, headers: Headers) -> tuple[tuple[str, str], ...]:
        """The trace context for the runner call, as gRPC metadata."""
        if span is not None:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            return tuple(carrier.items())
        return tuple((name, headers[name]) for name in _CONTEXT_HEADERS if name in headers)

    @staticmethod
    def finish(span: Span | None, attributes: dict[str, Any], status: int) -> None:
        if span is None:
            return
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class _HeaderGetter(DefaultGetter):  # type: ignore[misc]
    """Quart's headers are case-insensitive already; return a list as the API wants."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [str(value)] if value is not None else None
