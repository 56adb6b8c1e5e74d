"""What operators see: Prometheus metrics, one structured log line per
request, and the log format itself.

A log line never holds a secret or a request body: only the method, path,
event type, status, duration, runner, trace id and byte count.

With several Hypercorn workers, metrics go through prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set by `serve`), so a scrape of
any worker reports the whole process group.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    """The gateway's metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in shared files; the registry only
        # exists to be scraped, through the multiprocess collector.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if self.multiprocess else self.registry
        self.requests = Counter(
            "agentmark_gw_requests", "Webhook requests answered, by event type and HTTP status",
            ["event_type", "status"], registry=registry,
        )
        self.signature_failures = Counter(
            "agentmark_gw_signature_failures", "Requests refused for a missing, malformed or wrong signature", registry=registry
        )
        self.stream_chunks = Counter(
            "agentmark_gw_stream_chunks", "Writes to streaming responses (each a batch of NDJSON lines)", ["event_type"], registry=registry
        )
        self.stream_bytes = Counter("agentmark_gw_stream_bytes", "Bytes written to streaming responses", ["event_type"], registry=registry)
        self.time_to_first_chunk = Histogram(
            "agentmark_gw_time_to_first_chunk_seconds", "From request received to the first streamed byte",
            ["event_type"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.duration = Histogram(
            "agentmark_gw_request_duration_seconds", "From request received to the last byte sent",
            ["event_type"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.runner_healthy = Gauge(
            "agentmark_gw_runner_healthy", "1 when the runner's grpc.health.v1 check says SERVING",
            ["runner"], registry=registry, multiprocess_mode="max",
        )
        self.alerts = Counter(
            "agentmark_gw_alerts", "Alert deliveries by outcome: received (per sink), suppressed, delivered, retried, dead",
            ["outcome"], registry=registry,
        )
        self.outbox_depth = Gauge(
            "agentmark_gw_alert_outbox_depth", "Alert deliveries waiting in the outbox", registry=registry, multiprocess_mode="max"
        )
        self.dataset_items = Counter(
            "agentmark_gw_dataset_items", "Dataset items the gateway sent to runners (RunDatasetItem), by outcome: "
            "answered (a row), error (an error row), retried (sent to another runner after UNAVAILABLE)",
            ["outcome"], registry=registry,
        )
        self.inflight_streams = Gauge(
            "agentmark_gw_inflight_streams", "Streaming responses in progress", registry=registry, multiprocess_mode="livesum"
        )

    def exposition(self) -> bytes:
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


@dataclass
class RequestRecord:
    """What one request did, for its log line and its metrics."""

    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    event_type: str = "-"
    status: int = 0
    runner: str | None = None
    trace_id: str | None = None
    # The gateway's own OpenTelemetry trace, when tracing is on.
    otel_trace_id: str | None = None
    bytes_sent: int = 0
    first_chunk: float | None = None
    streaming: bool = False
    # A stream that ended before the run did (the client went away).
    aborted: bool = False
    finished: bool = False
    # Called once the request is over (its span is ended there).
    on_finish: list[Callable[[RequestRecord], None]] = field(default_factory=list)

    def finish(self, metrics: Metrics, log: logging.Logger, status: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if status is not None:
            self.status = status
        duration = time.perf_counter() - self.started
        metrics.requests.labels(self.event_type, str(self.status)).inc()
        metrics.duration.labels(self.event_type).observe(duration)
        for callback in self.on_finish:
            callback(self)
        log.info(
            "%s %s %s %d",
            self.method,
            self.path,
            self.event_type,
            self.status,
            extra={
                "fields": {
                    "method": self.method,
                    "path": self.path,
                    "event_type": self.event_type,
                    "status": self.status,
                    "duration_ms": round(duration * 1000, 2),
                    "runner": self.runner,
                    "trace_id": self.trace_id,
                    **({"otel_trace_id": self.otel_trace_id} if self.otel_trace_id else {}),
                    "bytes": self.bytes_sent,
                    **({"aborted": True} if self.aborted else {}),
                }
            },
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any
    `extra={"fields": {...}}` the caller attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


# What must not reach a text log raw: C0 and C1 controls (a newline forges
# a line, ESC drives the terminal) and Unicode's line separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Request-supplied identifiers (alert ids) are logged this long at most.
LOGGED_ID_CHARS = 64


def logged_id(value: str) -> str:
    """An identifier a request supplied, cut for the log: the docs promise no
    request content there, and a 1 MiB alert id made two 1 MiB log lines."""
    return value if len(value) <= LOGGED_ID_CHARS else f"{value[:LOGGED_ID_CHARS]}...({len(value)} chars)"


class TextFormatter(logging.Formatter):
    """The human-readable format, with control characters in the message
    shown as escapes (`\\x0a`), so a URL-encoded newline or ESC in a path or
    alert id cannot forge log lines. Tracebacks keep their own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", record.message)
        return super().formatMessage(record)


# Loggers of the HTTP server and the event loop, whose error records can hold
# a connection's raw bytes (an exception repr, a task's repr).
_SERVER_LOGGERS = ("hypercorn", "asyncio", "granian")
_BYTES_LITERAL = re.compile(r"""b(['"]).*""", re.S)


class WithoutConnectionBytes(logging.Filter):
    """Keeps raw connection bytes out of the log. A record from the server or
    the event loop keeps the first line of its message, cut at any bytes
    literal and to 200 characters, and of its exception the type and the
    traceback's frames, not its text (1,100 HTTP/2 stream resets once logged
    about 230 KB of a connection's bytes this way)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_SERVER_LOGGERS):
            return True
        message = record.getMessage()
        first = _BYTES_LITERAL.sub("b... (bytes not logged)", message.split("\n", 1)[0])[:200]
        record.msg, record.args = first, None
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            frames = "".join(traceback.format_tb(error.__traceback__))
            record.exc_text = f"Traceback (most recent call last):\n{frames}{type(error).__name__} (its text is not logged)"
            record.exc_info = None
        return True


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Route every logger (ours, Hypercorn's, gRPC's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(WithoutConnectionBytes())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Outbound HTTP request lines name URLs; not wanted in gateway logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
