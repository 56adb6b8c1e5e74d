"""The runner pool: the one place an event becomes a gRPC call.

Requests are built with the generated protobuf classes (once per request);
streamed answers are taken as raw bytes, so no Python protobuf object is made
per message on the hot path: `_accel`'s framers decode them.

Each configured runner target gets a channel. A target may be a gRPC name
such as `dns:///runners.default.svc:50051`; gRPC's own round-robin policy
then spreads that channel's calls over every address the name resolves to
(a Kubernetes headless service). Across targets, calls go round-robin too,
healthy runners first (`grpc.health.v1`, polled in the background).

A runner that is unreachable before the first message is skipped for the
next one; the request has produced nothing yet, so nothing is lost or sent
twice to the client. After the first message, a failure is the stream's
last line (see `responses`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import orjson
from grpc.aio import AioRpcError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..protocol import runner_pb2 as pb
from . import rendering
from .config import GatewayConfig
from .errors import Refusal, RunnerUnavailable

log = logging.getLogger("agentmark_gw.runners")

SERVICE_NAME = "agentmark.runner.v1.Runner"
_METHOD = f"/{SERVICE_NAME}/"
_KIND = {
    "text": pb.PROMPT_KIND_TEXT,
    "object": pb.PROMPT_KIND_OBJECT,
    "image": pb.PROMPT_KIND_IMAGE,
    "speech": pb.PROMPT_KIND_SPEECH,
}

# gRPC status → HTTP status, for failures before the first byte. The table
# grpc-gateway and Connect converged on, except that failures which are the
# runner's own (it refused the gateway's credentials, or crashed) are 502:
# the request was fine, the upstream was not.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
    grpc.StatusCode.INTERNAL: 502,
    grpc.StatusCode.UNKNOWN: 502,
    grpc.StatusCode.DATA_LOSS: 502,
}


T = TypeVar("T")

# gRPC metadata for a call: the W3C trace context, when there is one.
Metadata = tuple[tuple[str, str], ...]


def _json(value: Any) -> str:
    """Compact JSON text for a `_json` field. orjson first (the hot path);
    the standard library for what orjson refuses: integers past 64 bits, and
    lone surrogates, which are escaped to ASCII (`"\ud800"` is valid JSON,
    but UTF-8, and so a protobuf string, cannot carry the character itself)."""
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, separators=(",", ":"))


def _data_json(data: dict[str, Any], ast_json: str) -> str:
    """`data` as JSON text, its (large) `ast` spliced in from `ast_json`
    rather than encoded a second time."""
    rest = _json({k: v for k, v in data.items() if k != "ast"})
    return f'{{"ast":{ast_json}' + ("}" if rest == "{}" else "," + rest[1:])


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _channel_target(target: str) -> str:
    # A bare HOST:PORT goes through gRPC's DNS resolver, so every address a
    # name resolves to is used, not just the first.
    return target if "://" in target or target.startswith(("ipv4:", "ipv6:", "unix:")) else f"dns:///{target}"


def describe(error: AioRpcError) -> str:
    """One line for a client: the status name and the runner's own details."""
    details = (error.details() or "").strip()
    return f"{error.code().name}: {details}" if details else error.code().name


# A runner's crash: its details are its exception text, not meant for callers.
_CRASHES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def refusal_for(error: AioRpcError, expose_internals: bool = False) -> Refusal:
    """The HTTP refusal for a gRPC failure (before any byte was sent, or as
    a stream's last line). A runner's crash details reach the client only
    with `expose_internals`; they are logged either way."""
    code = error.code()
    if code in _CRASHES and not expose_internals:
        log.warning("runner failed: %s", describe(error))
        return Refusal(f"Runner failed: {code.name} (the gateway's log has the details)", HTTP_STATUS.get(code, 502))
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Refusal("Runner did not answer before the deadline", 504)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger than max" in (error.details() or ""):
        # gRPC's own check on this side, not the runner saying it is
        # overloaded: a 429 would invite retries that fail the same way.
        return Refusal("Runner sent a message larger than max_runner_message_bytes", 502)
    return Refusal(f"Runner failed: {describe(error)}", HTTP_STATUS.get(code, 502))


@dataclass
class OpenStream:
    """A streaming call whose first message has arrived (or the stream
    ended); or, for a runner slow to start, whose first read is still
    `pending` (see `RunnerPool.patience`)."""

    call: grpc.aio.UnaryStreamCall
    first: bytes | None
    runner: str
    pending: asyncio.Future[bytes | None] | None = None
    expose_internals: bool = False  # see `refusal_for`

    async def next(self) -> bytes | None:
        """The first message (once), then each next one; None at the end."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            return await pending
        # `read` inlined: this is every streamed token's read, one coroutine fewer.
        message = await self.call.read()
        return None if message is grpc.aio.EOF else message


async def read(call: grpc.aio.UnaryStreamCall) -> bytes | None:
    """The next raw message, or None at the end of the stream."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message


class Runner:
    """One runner target: its channel, its callables, and what we know of its health."""

    def __init__(self, target: str, options: list[tuple[str, Any]]) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(_channel_target(target), options=options)
        # Streamed answers stay raw bytes (no response_deserializer).
        self.run_prompt = self.channel.unary_stream(_METHOD + "RunPrompt")
        self.run_experiment = self.channel.unary_stream(_METHOD + "RunExperiment")
        self.get_evals = self.channel.unary_unary(_METHOD + "GetEvals", response_deserializer=pb.GetEvalsResponse.FromString)
        self.handle_alert = self.channel.unary_unary(_METHOD + "HandleAlert", response_deserializer=pb.AlertResponse.FromString)
        self.describe_call = self.channel.unary_unary(_METHOD + "Describe", response_deserializer=pb.RunnerInfo.FromString)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.healthy: bool | None = None  # None: not checked yet
        # What `Describe` said, asked each time the runner becomes healthy (a
        # restart may be a new version). None: not asked yet, or a runner
        # written before `Describe` (UNIMPLEMENTED), which gets the v1 requests.
        self.info: pb.RunnerInfo | None = None
        self._described = False

    @property
    def wants_rendered(self) -> bool:
        return self.info is not None and self.info.rendered_prompts

    async def learn(self, timeout: float) -> None:
        """Ask `Describe` once per healthy spell."""
        if self._described:
            return
        try:
            self.info = await self.describe_call(pb.DescribeRequest().SerializeToString(), timeout=timeout)
        except AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                log.warning("runner %s did not describe itself (%s); asking again at the next health check", self.target, describe(error))
                return
            self.info = None
        self._described = True
        if self.info is not None:
            log.info("runner %s is %s %s; rendered prompts: %s", self.target, self.info.name or "?", self.info.version or "?",
                     "yes" if self.info.rendered_prompts else "no")

    def forget(self) -> None:
        self._described = False

    async def check_health(self, timeout: float) -> bool:
        """Ask `grpc.health.v1` about the Runner service (or, for runners that
        register only the server-wide status, about the server)."""
        for service in (SERVICE_NAME, ""):
            try:
                response = await self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and service:
                    continue
                self.healthy = False
                return False
            self.healthy = response.status == health_pb2.HealthCheckResponse.SERVING
            return self.healthy
        self.healthy = False
        return False


class RunnerPool:
    def __init__(self, config: GatewayConfig, on_health: Callable[[str, bool], None] | None = None) -> None:
        self._config = config
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", config.max_runner_message_bytes),
            ("grpc.max_send_message_length", config.max_body_bytes * 3 + 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # A restarted runner is back in seconds, not after gRPC's default 2-minute backoff.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        self.runners = [Runner(target, options) for target in config.runners]
        self._turn = itertools.count()
        self._on_health = on_health
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start polling runner health in the background."""
        await self.check_health()
        self._health_task = asyncio.create_task(self._poll_health())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for runner in self.runners:
            await runner.channel.close()

    async def check_health(self) -> None:
        results = await asyncio.gather(*(r.check_health(self._config.health_timeout) for r in self.runners))
        for runner, healthy in zip(self.runners, results, strict=True):
            if self._on_health is not None:
                self._on_health(runner.target, healthy)
        for runner in self.runners:
            if not runner.healthy:
                runner.forget()  # asked again when it is back: a restart may be a new version
        await asyncio.gather(*(r.learn(self._config.health_timeout) for r in self.runners if r.healthy))

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(self._config.health_interval)
            try:
                await self.check_health()
            except Exception:  # noqa: BLE001 - polling must outlive any one failure
                log.exception("runner health check failed")

    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self.runners)

    def _candidates(self) -> list[Runner]:
        """Every runner once, starting at the next in turn; healthy ones first,
        unknown next, unhealthy last (they may have come back since)."""
        start = next(self._turn) % len(self.runners)
        rotated = self.runners[start:] + self.runners[:start]
        rank = {True: 0, None: 1, False: 2}
        return sorted(rotated, key=lambda r: rank[r.healthy])

    # -- calls -----------------------------------------------------------

    async def open_prompt_stream(self, run: Any, metadata: Metadata = ()) -> OpenStream:
        data = run.data
        ast_json = _json(data["ast"])
        fields = {
            "kind": _KIND[run.kind],
            "ast_json": ast_json,
            "custom_props_json": _json(data.get("customProps") or {}),
            "should_stream": run.should_stream,
            "prompt_path": _str(data.get("promptPath")),
        }
        request = pb.RunPromptRequest(**fields, data_json=_data_json(data, ast_json)).SerializeToString()
        for_rendering = request
        if any(r.wants_rendered for r in self.runners):
            # Rendered once, before any runner is called: a prompt AgentMark
            # cannot render is a 400 whichever runner would have taken it.
            rendered = await rendering.render(run.kind, data["ast"], data.get("customProps"))
            rest = _json({k: v for k, v in data.items() if k != "ast"})  # the AST goes once, in ast_json
            for_rendering = pb.RunPromptRequest(**fields, data_json=rest, rendered=rendered).SerializeToString()

        def start(runner: Runner, **kw: Any) -> grpc.aio.UnaryStreamCall:
            return runner.run_prompt(for_rendering if runner.wants_rendered else request, metadata=metadata, **kw)

        patience = self._config.heartbeat_interval if run.should_stream else None
        return await self._open(start, self._config.deadlines.prompt_run, patience)

    async def open_experiment_stream(self, run: Any, metadata: Metadata = ()) -> OpenStream:
        data = run.data
        sampling = data.get("sampling")
        concurrency = data.get("concurrency")
        ast_json = _json(data["ast"])
        request = pb.RunExperimentRequest(
            kind=_KIND[run.kind],
            ast_json=ast_json,
            experiment_id=_str(data.get("experimentId")) or "experiment",
            dataset_path=_str(data.get("datasetPath")),
            # Checked by `webhook`; bounded here, since a runner may start that many workers at once.
            concurrency=min(concurrency, self._config.max_dataset_concurrency) if isinstance(concurrency, int) else 0,
            prompt_path=_str(data.get("promptPath")),
            commit_sha=_str(data.get("commitSha")),
            sampling_json=_json(sampling) if sampling is not None else "",
            data_json=_data_json(data, ast_json),
        ).SerializeToString()
        return await self._open(
            lambda r, **kw: r.run_experiment(request, metadata=metadata, **kw), self._config.deadlines.dataset_run, self._config.heartbeat_interval
        )

    async def get_evals(self, metadata: Metadata = ()) -> list[str]:
        request = pb.GetEvalsRequest().SerializeToString()
        response = await self._unary(lambda r, **kw: r.get_evals(request, metadata=metadata, **kw), self._config.deadlines.get_evals)
        return list(response.names)

    async def handle_alert(self, alert: Any, metadata: Metadata = ()) -> str:
        request = pb.AlertRequest(id=alert.id, type=alert.type, status=alert.status, data_json=_json(alert.data)).SerializeToString()
        response = await self._unary(lambda r, **kw: r.handle_alert(request, metadata=metadata, **kw), self._config.deadlines.alert)
        return response.message

    async def _open(self, start: Callable[..., grpc.aio.UnaryStreamCall], timeout: float, patience_seconds: float | None = None) -> OpenStream:
        """Start the call on the first runner that answers with a first message
        (or ends the stream) within `patience_seconds`; past that, the stream
        is answered with its first read still pending."""

        async def attempt(runner: Runner, remaining: float) -> OpenStream:
            call = start(runner, timeout=remaining)
            expose = self._config.expose_internals
            if patience is None:
                try:
                    return OpenStream(call, await read(call), runner.target, expose_internals=expose)
                except BaseException:
                    call.cancel()
                    raise
            first = asyncio.ensure_future(read(call))
            try:
                done, _ = await asyncio.wait({first}, timeout=patience)
            except BaseException:
                first.cancel()
                call.cancel()
                raise
            if not done:
                # A slow start (a long dataset item): answer now, so proxies see
                # headers and heartbeats instead of a silent connection.
                return OpenStream(call, None, runner.target, pending=first, expose_internals=expose)
            try:
                return OpenStream(call, first.result(), runner.target, expose_internals=expose)
            except BaseException:
                call.cancel()
                raise

        patience = patience_seconds if patience_seconds and patience_seconds > 0 else None

        return await self._with_failover(attempt, timeout)

    async def _unary(self, call: Callable[..., Awaitable[Any]], timeout: float) -> Any:
        return await self._with_failover(lambda runner, remaining: call(runner, timeout=remaining), timeout)

    async def _with_failover(self, attempt: Callable[[Runner, float], Awaitable[T]], timeout: float) -> T:
        """`attempt` on each runner in turn until one answers; the deadline
        covers the whole of it, failovers included. Only UNAVAILABLE moves on
        to the next runner: nothing was produced, so nothing is lost or doubled."""
        deadline = asyncio.get_running_loop().time() + timeout
        tried: list[str] = []
        for runner in self._candidates():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                return await attempt(runner, remaining)
            except AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise refusal_for(error, self._config.expose_internals) from None
                self._mark_down(runner, error)
                tried.append(runner.target)
        raise self._none_left(tried)

    def _mark_down(self, runner: Runner, error: AioRpcError) -> None:
        # Health is the health checks' to say: a runner may answer UNAVAILABLE
        # itself (say, when its model provider is down) while being up.
        log.warning("runner %s unavailable (%s); trying the next", runner.target, describe(error))

    def _none_left(self, tried: list[str]) -> Refusal:
        if not tried:
            return Refusal("Runner did not answer before the deadline", 504)
        if not self._config.expose_internals:
            # Each was logged by `_mark_down`; addresses are the network's layout.
            return RunnerUnavailable(f"Runner unavailable: tried {len(tried)} runner(s); the gateway's log names them")
        return RunnerUnavailable(f"Runner unavailable: tried {', '.join(tried)}")
