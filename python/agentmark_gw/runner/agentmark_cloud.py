"""Connected to AgentMark: the dashboard's API key and app ID, used the way
AgentMark's own handlers use them.

AgentMark's production guide gives an endpoint four values: the webhook URL
and secret (the gateway's) and an API key and app ID (the runner's, "used by
the SDK to load prompts and send telemetry"). With `AGENTMARK_API_KEY` and
`AGENTMARK_APP_ID` set, a runner

- loads datasets through AgentMark's own `ApiLoader` (`GET v1/templates`,
  `AGENTMARK_BASE_URL` to point elsewhere, as that loader reads it), and
- starts AgentMark's own tracing once per process (`AgentMarkSDK.init_tracing`:
  OTLP JSON on `POST v1/traces`, its sampler, its masking from
  `AGENTMARK_HIDE_INPUTS` / `AGENTMARK_HIDE_OUTPUTS`), so the span hooks the
  bridge already uses give every prompt run and dataset item a trace in the
  dashboard, and rows and `done` lines carry its id.

Without them a runner works locally, as before. Nothing here logs the key.
A trace export that fails never fails a run: it is counted, and logged at
most once a minute. `shutdown` flushes what is pending within the grace the
server gives in-flight calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from ..agentmark_api import API_KEY_ENV, APP_ID_ENV, TRACE_ENDPOINT, AgentMarkCloud

log = logging.getLogger("agentmark_gw.runner")

FAILURE_LOG_INTERVAL = 60.0

TRACE_EXPORTS = Counter(
    "agentmark_gw_runner_trace_exports",
    "Batches of spans sent to AgentMark's trace endpoint, by outcome.",
    ["outcome"],
)


# --- tracing, once per process ------------------------------------------------------


class _ExportReport:
    """Counts export outcomes; logs failures at most once per interval."""

    def __init__(self, base_url: str, interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.base_url = base_url
        self.interval = interval
        self.failures = 0
        self._unreported = 0
        self._last_log = float("-inf")
        self._lock = threading.Lock()  # exports run on the batch processor's thread

    def record(self, ok: bool) -> None:
        TRACE_EXPORTS.labels("exported" if ok else "failed").inc()
        if ok:
            return
        with self._lock:
            self.failures += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._last_log < self.interval:
                return
            count, self._unreported, self._last_log = self._unreported, 0, now
        log.warning(
            "AgentMark did not accept %d batch(es) of spans at %s/%s; runs go on untraced "
            "(check %s, %s and that the API is reachable)", count, self.base_url, TRACE_ENDPOINT, API_KEY_ENV, APP_ID_ENV,
        )


@dataclass
class Tracing:
    """AgentMark's tracer provider for this process, and how its exports fare."""

    provider: Any
    report: _ExportReport

    def shutdown(self, grace: float) -> None:
        """Send what is pending within `grace` seconds, then stop exporting."""
        self.provider.force_flush(timeout_millis=max(1, int(grace * 1000)))
        self.provider.shutdown()


_tracing: Tracing | None = None
_tracing_lock = threading.Lock()


def start_tracing(cloud: AgentMarkCloud) -> Tracing:
    """AgentMark's `init_tracing`, once per process (OpenTelemetry takes one
    global provider), with each export's outcome reported."""
    global _tracing
    with _tracing_lock:
        if _tracing is not None:
            return _tracing
        from agentmark_sdk import AgentMarkSDK
        from agentmark_sdk import sdk as sdk_module
        from opentelemetry.sdk.trace.export import SpanExportResult

        report = _ExportReport(cloud.base_url)
        base_exporter = sdk_module.JsonOtlpSpanExporter
        base_masking = sdk_module.MaskingSpanProcessor

        class ReportingExporter(base_exporter):  # type: ignore[misc, valid-type]
            """AgentMark's OTLP JSON exporter; its result also goes to the report."""

            def export(self, spans: Sequence[Any]) -> Any:
                result = super().export(spans)
                report.record(result == SpanExportResult.SUCCESS)
                return result

        # init_tracing builds its exporter and masking processor from these
        # module names: for the call, they are AgentMark's own with the export
        # outcome reported and masking that works on read-only spans.
        # Everything else (sampler, grouping, batching, settings) is AgentMark's.
        with _substituted(sdk_module, JsonOtlpSpanExporter=ReportingExporter, MaskingSpanProcessor=_masking_on_copies(base_masking)):
            provider = AgentMarkSDK(api_key=cloud.api_key, app_id=cloud.app_id, base_url=cloud.base_url).init_tracing()
        _tracing = Tracing(provider, report)
        return _tracing


@contextlib.contextmanager
def _substituted(module: Any, **names: Any) -> Iterator[None]:
    """Module-level names replaced for the length of one call."""
    missing = [name for name in names if not hasattr(module, name)]
    if missing:  # a newer agentmark-sdk: fail loudly rather than trace without reports or masking
        raise RuntimeError(f"agentmark-sdk has no {', '.join(missing)} any more; agentmark_gw.runner.agentmark_cloud needs updating")
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def _masking_on_copies(base: type) -> type:
    """AgentMark's masking processor, masking a copy of each span.

    Two gaps in agentmark-sdk 0.7's processor, both closed here:
    - OpenTelemetry hands `on_end` a finished span whose attributes are
      read-only; the processor writes to them, fails closed and drops every
      span holding an input, an output or metadata, so with
      `AGENTMARK_HIDE_INPUTS` nothing reached the dashboard. This one masks a
      copy made through OpenTelemetry's public span fields.
    - Its key lists miss `agentmark.input` and `agentmark.output`, which
      AgentMark's own runner records on every prompt and item span
      (vectors/span-io.json): hidden outputs would still leave. They count
      here as the input and output they are.
    Otherwise the rule is AgentMark's: its keys, its `[REDACTED]`, its mask
    function, and a span whose masking fails is dropped, never sent unmasked."""
    from agentmark_sdk.masking_processor import INPUT_KEYS, METADATA_PREFIX, OUTPUT_KEYS
    from opentelemetry.sdk.trace import ReadableSpan

    inputs = INPUT_KEYS | {"agentmark.input"}
    outputs = OUTPUT_KEYS | {"agentmark.output"}

    class MaskingOnCopies(base):  # type: ignore[misc, valid-type]
        def on_end(self, span: Any) -> None:
            try:
                attributes = {key: self._masked(key, value) for key, value in (span.attributes or {}).items()}
            except Exception:  # noqa: BLE001 - fail closed, as AgentMark's processor does
                log.warning("masking a span failed; the span is dropped rather than sent unmasked")
                return
            self._inner.on_end(ReadableSpan(
                name=span.name, context=span.context, parent=span.parent, resource=span.resource, attributes=attributes,
                events=span.events, links=span.links, kind=span.kind, status=span.status, start_time=span.start_time,
                end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
            ))

        def _masked(self, key: str, value: Any) -> Any:
            if key not in inputs and key not in outputs and not key.startswith(METADATA_PREFIX):
                return value
            if isinstance(value, str):
                return self._text(key, value)
            if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
                masked = [self._text(key, item) for item in value]
                return tuple(masked) if isinstance(value, tuple) else masked
            return value

        def _text(self, key: str, text: str) -> str:
            if (key in inputs and self._hide_inputs) or (key in outputs and self._hide_outputs):
                text = "[REDACTED]"
            return self._mask(text) if self._mask else text

    return MaskingOnCopies


def shutdown_tracing(grace: float) -> None:
    """Flush and stop AgentMark tracing if this process started it."""
    global _tracing
    with _tracing_lock:
        tracing, _tracing = _tracing, None
    if tracing is not None:
        tracing.shutdown(grace)


def connect_agentmark(local_loader: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """The one call a runner makes to be connected as AgentMark's handlers are.

    With `AGENTMARK_API_KEY` and `AGENTMARK_APP_ID` set: AgentMark's API
    loader, and AgentMark's tracing started. Otherwise `local_loader`. Logs
    which mode it chose (never the key)."""
    cloud = AgentMarkCloud.from_env(environ)
    if cloud is None:
        log.info("local mode: datasets from %s; traces are not sent to AgentMark (set %s and %s to connect)",
                 _where(local_loader), API_KEY_ENV, APP_ID_ENV)
        return local_loader
    start_tracing(cloud)
    log.info("connected to AgentMark: %s; datasets from its API, traces to its dashboard", cloud.describe())
    return cloud.loader()


def _where(loader: Any) -> str:
    build_dir = getattr(loader, "_build_dir", None)  # FileLoader's, for the log line only
    return str(build_dir) if build_dir else type(loader).__name__
