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
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import orjson
from grpc.aio import AioRpcError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..protocol import runner_pb2 as pb
from . import datasets, rendering
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


def describe(error: AioRpcError | CallFailed) -> str:
    """One line for a client: the status name and the runner's own details."""
    details = (error.details() or "").strip()
    return f"{error.code().name}: {details}" if details else error.code().name


# A runner's crash: its details are its exception text, not meant for callers.
_CRASHES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})


def refusal_for(error: AioRpcError | CallFailed, expose_internals: bool = False) -> Refusal:
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


class RunnerStream(Protocol):
    """A runner's answer, as `responses` reads it: raw messages (serialized
    `RunnerEvents` or `ExperimentEvents`), None at the end. A gRPC failure
    comes out of `next` as the project's own `Refusal`: nothing gRPC leaves
    this module."""

    runner: str

    async def next(self) -> bytes | None: ...
    def cancel(self) -> None: ...


class OpenStream:
    """A streaming call whose first message has arrived (or the stream
    ended); or, for a runner slow to start, whose first read is still
    `pending` (see `RunnerPool.patience`)."""

    __slots__ = ("call", "runner", "expose_internals", "_first", "_held", "_pending")

    def __init__(self, call: grpc.aio.UnaryStreamCall, first: bytes | None, runner: str,
                 pending: asyncio.Future[bytes | None] | None = None, expose_internals: bool = False) -> None:
        self.call = call
        self.runner = runner
        self.expose_internals = expose_internals  # see `refusal_for`
        self._first = first
        self._pending = pending
        self._held = True  # the first message (or its pending read) is not taken yet

    async def next(self) -> bytes | None:
        """The first message (once), then each next one; None at the end."""
        try:
            if self._held:
                self._held = False
                return self._first if self._pending is None else await self._pending
            # `read` inlined: this is every streamed token's read, one coroutine fewer.
            message = await self.call.read()
        except AioRpcError as error:
            raise refusal_for(error, self.expose_internals) from None
        return None if message is grpc.aio.EOF else message

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self.call.cancel()


# gRPC status codes by number, as the Rust client reports them.
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class CallFailed(Exception):
    """A Rust-client call's failure, as (status, details): what `AioRpcError`
    is to grpc.aio."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class RustClient:
    """The Rust runner client (`_core.RunnerClientHub`) on this event loop:
    it reads every streamed call on its own thread, and wakes the loop once,
    through a socket, for whatever calls a reader waits on."""

    def __init__(self) -> None:
        from .. import _accel

        self.hub = _accel.core.RunnerClientHub()
        self._loop = asyncio.get_running_loop()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._loop.add_reader(self.hub.fileno(), self._wake)

    def _wake(self) -> None:
        for call_id in self.hub.take_ready():
            waiter = self._waiters.pop(call_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def wait(self, call: Any) -> asyncio.Future[None]:
        """Done when `call` has something (after its `try_next` said False)."""
        waiter = self._waiters[call.id] = self._loop.create_future()
        return waiter

    def forget(self, call: Any) -> None:
        self._waiters.pop(call.id, None)

    def close(self) -> None:
        self._loop.remove_reader(self.hub.fileno())


_NOTHING: Any = object()


def max_send_bytes(config: GatewayConfig) -> int:
    """The largest request the gateway sends a runner: a body's AST, its
    props and `data` may each be nearly the whole body, plus the rendering."""
    return config.max_body_bytes * 3 + 1024 * 1024


def _rust_client(config: GatewayConfig, runners: list[RunnerClient]) -> RustClient | None:
    """The Rust client with a channel per runner it can reach, when the
    configuration asks for it and the extension has it; else None (grpc.aio)."""
    from .. import _accel

    if config.runner_client != "rust" or not hasattr(_accel.core, "RunnerClientHub"):
        if config.runner_client == "rust":
            log.info("runner_client = rust, but the Rust extension is not loaded: streams are read with grpc.aio")
        return None
    client = RustClient()
    for runner in runners:
        try:
            runner.rust_channel = client.hub.channel(runner.target, config.max_runner_message_bytes, max_send_bytes(config))
        except ValueError as exc:  # a target only grpc.aio can reach (unix:, ...)
            log.info("%s; its streams are read with grpc.aio", exc)
    return client


async def answered_within(first: asyncio.Future[Any], patience: float | None) -> bool:
    """Whether `first` (a call's first answer) is done within `patience`
    seconds; None waits as long as it takes. A slow start is not waited for:
    the stream begins, and its heartbeats cover the wait. Cancelling this
    wait cancels `first`."""
    try:
        done, _ = await asyncio.wait({first}, timeout=patience)
    except BaseException:
        first.cancel()
        raise
    return bool(done)


class RustStream:
    """A streamed call read by the Rust client: a `RunnerStream`."""

    __slots__ = ("runner", "expose_internals", "_call", "_client", "_held")

    def __init__(self, call: Any, client: RustClient, runner: str, expose_internals: bool) -> None:
        self.runner = runner
        self.expose_internals = expose_internals
        self._call = call
        self._client = client
        self._held: Any = _NOTHING  # the first item, taken while opening

    async def first(self, patience: float | None) -> None:
        """Wait up to `patience` seconds (None: as long as it takes) for the
        first item and hold it; a failure then is raised as `CallFailed`, so
        the pool can try the next runner."""
        item = self._call.try_next()
        if item is False:
            if not await answered_within(self._client.wait(self._call), patience):
                return  # a slow start: the stream begins, heartbeats cover the wait
            item = self._call.try_next()
        if item.__class__ is tuple:
            raise CallFailed(_CODES.get(item[0], grpc.StatusCode.UNKNOWN), item[1])
        self._held = item

    async def next(self) -> bytes | None:
        if self._held is not _NOTHING:
            item, self._held = self._held, _NOTHING
        else:
            item = self._call.try_next()
        while item is False:
            await self._client.wait(self._call)
            item = self._call.try_next()
        if item is None or item.__class__ is bytes:
            return item  # type: ignore[no-any-return]
        code, details = item
        raise refusal_for(CallFailed(_CODES.get(code, grpc.StatusCode.UNKNOWN), details), self.expose_internals)

    def cancel(self) -> None:
        self._call.cancel()
        self._client.forget(self._call)


async def read(call: grpc.aio.UnaryStreamCall) -> bytes | None:
    """The next raw message, or None at the end of the stream."""
    message = await call.read()
    return None if message is grpc.aio.EOF else message


class RunnerClient:
    """One runner target: its channel, its callables, and what we know of its health."""

    def __init__(self, target: str, options: list[tuple[str, Any]]) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(_channel_target(target), options=options)
        # Streamed answers stay raw bytes (no response_deserializer).
        self.streamed = {method: self.channel.unary_stream(_METHOD + method) for method in ("RunPrompt", "RunExperiment")}
        # Set by the pool when streamed calls go through the Rust client.
        self.rust_channel: Any = None
        self.run_dataset_item = self.channel.unary_unary(_METHOD + "RunDatasetItem")  # the row stays raw bytes
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
    def __init__(
        self, config: GatewayConfig, on_health: Callable[[str, bool], None] | None = None, on_item: Callable[[str], None] | None = None
    ) -> None:
        self.config = config
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", config.max_runner_message_bytes),
            ("grpc.max_send_message_length", max_send_bytes(config)),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # A restarted runner is back in seconds, not after gRPC's default 2-minute backoff.
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        self.runners = [RunnerClient(target, options) for target in config.runners]
        # Where dataset runs for item-taking runners are read; None: runners read their own.
        self.datasets = datasets.source_for(config.datasets_dir)
        if self.datasets is not None:
            log.info("dataset runs for runners that take items are read from %s", self.datasets.describe())
        self._turn = itertools.count()
        self._on_health = on_health
        self.on_item = on_item or (lambda outcome: None)  # a dataset item's outcome, for the metrics
        self._health_task: asyncio.Task[None] | None = None
        self._rust: RustClient | None = None

    async def start(self) -> None:
        """Open the Rust client's channels (when it reads streams), then start
        polling runner health in the background."""
        self._rust = _rust_client(self.config, self.runners)
        await self.check_health()
        self._health_task = asyncio.create_task(self._poll_health())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        for runner in self.runners:
            await runner.channel.close()
            runner.rust_channel = None
        if self._rust is not None:
            self._rust.close()
            self._rust = None

    async def check_health(self) -> None:
        results = await asyncio.gather(*(r.check_health(self.config.health_timeout) for r in self.runners))
        for runner, healthy in zip(self.runners, results, strict=True):
            if self._on_health is not None:
                self._on_health(runner.target, healthy)
        for runner in self.runners:
            if not runner.healthy:
                runner.forget()  # asked again when it is back: a restart may be a new version
        await asyncio.gather(*(r.learn(self.config.health_timeout) for r in self.runners if r.healthy))

    async def _poll_health(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval)
            try:
                await self.check_health()
            except Exception:  # noqa: BLE001 - polling must outlive any one failure
                log.exception("runner health check failed")

    @property
    def ready(self) -> bool:
        return any(r.healthy for r in self.runners)

    def _candidates(self) -> list[RunnerClient]:
        """Every runner once, starting at the next in turn; healthy ones first,
        unknown next, unhealthy last (they may have come back since)."""
        start = next(self._turn) % len(self.runners)
        rotated = self.runners[start:] + self.runners[:start]
        rank = {True: 0, None: 1, False: 2}
        return sorted(rotated, key=lambda r: rank[r.healthy])

    # -- calls -----------------------------------------------------------

    async def open_prompt_stream(self, run: Any, metadata: Metadata = ()) -> RunnerStream:
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

        patience = self.config.heartbeat_interval if run.should_stream else None
        return await self._open(
            "RunPrompt", lambda runner: for_rendering if runner.wants_rendered else request, metadata, self.config.deadlines.prompt_run, patience
        )

    async def open_experiment_stream(self, run: Any, metadata: Metadata = ()) -> RunnerStream:
        """A dataset run: item by item from the gateway's dataset source when
        a runner that takes items is up, else one `RunExperiment` call."""
        if self.datasets is not None and any(r.wants_rendered and r.healthy is not False for r in self.runners):
            return await ItemsRun.open(self, run, metadata)
        data = run.data
        sampling = data.get("sampling")
        ast_json = _json(data["ast"])
        request = pb.RunExperimentRequest(
            kind=_KIND[run.kind],
            ast_json=ast_json,
            experiment_id=_str(data.get("experimentId")) or "experiment",
            dataset_path=_str(data.get("datasetPath")),
            concurrency=self.dataset_concurrency(run.data, 0),
            prompt_path=_str(data.get("promptPath")),
            commit_sha=_str(data.get("commitSha")),
            sampling_json=_json(sampling) if sampling is not None else "",
            data_json=_data_json(data, ast_json),
        ).SerializeToString()
        return await self._open("RunExperiment", lambda runner: request, metadata, self.config.deadlines.dataset_run, self.config.heartbeat_interval)

    def dataset_concurrency(self, data: dict[str, Any], default: int) -> int:
        # Checked by `webhook`; bounded here, since a runner may start that many workers at once.
        concurrency = data.get("concurrency")
        return min(concurrency, self.config.max_dataset_concurrency) if isinstance(concurrency, int) else default

    def item_runners(self, avoid: set[str]) -> list[RunnerClient]:
        """The runners that take dataset items, the next in turn first;
        healthy before unknown before unhealthy, and any in `avoid` (they
        failed this run) last of all."""
        return sorted((r for r in self._candidates() if r.wants_rendered), key=lambda r: r.target in avoid)

    async def get_evals(self, metadata: Metadata = ()) -> list[str]:
        request = pb.GetEvalsRequest().SerializeToString()
        response = await self._unary(lambda r, **kw: r.get_evals(request, metadata=metadata, **kw), self.config.deadlines.get_evals)
        return list(response.names)

    async def handle_alert(self, alert: Any, metadata: Metadata = ()) -> str:
        request = pb.AlertRequest(id=alert.id, type=alert.type, status=alert.status, data_json=_json(alert.data)).SerializeToString()
        response = await self._unary(lambda r, **kw: r.handle_alert(request, metadata=metadata, **kw), self.config.deadlines.alert)
        return response.message

    async def _open(
        self, method: str, request_for: Callable[[RunnerClient], bytes], metadata: Metadata, timeout: float, patience_seconds: float | None = None
    ) -> RunnerStream:
        """Start a streamed call (`method`) on the first runner that answers
        with a first message (or ends the stream) within `patience_seconds`;
        past that, the stream is answered with its first read still pending.
        Read by the Rust client where the runner has a channel on it, else by
        grpc.aio."""
        patience = patience_seconds if patience_seconds and patience_seconds > 0 else None
        expose = self.config.expose_internals

        async def attempt(runner: RunnerClient, remaining: float) -> RunnerStream:
            if runner.rust_channel is not None and self._rust is not None:
                call = self._rust.hub.open(runner.rust_channel, _METHOD + method, request_for(runner), list(metadata), remaining)
                stream = RustStream(call, self._rust, runner.target, expose)
                try:
                    await stream.first(patience)
                except BaseException:
                    stream.cancel()
                    raise
                return stream
            grpc_call = runner.streamed[method](request_for(runner), metadata=metadata, timeout=remaining)
            if patience is None:
                try:
                    return OpenStream(grpc_call, await read(grpc_call), runner.target, expose_internals=expose)
                except BaseException:
                    grpc_call.cancel()
                    raise
            first = asyncio.ensure_future(read(grpc_call))
            try:
                answered = await answered_within(first, patience)
            except BaseException:
                grpc_call.cancel()
                raise
            if not answered:
                # A slow start (a long dataset item): answer now, so proxies see
                # headers and heartbeats instead of a silent connection.
                return OpenStream(grpc_call, None, runner.target, pending=first, expose_internals=expose)
            try:
                return OpenStream(grpc_call, first.result(), runner.target, expose_internals=expose)
            except BaseException:
                grpc_call.cancel()
                raise

        return await self._with_failover(attempt, timeout)

    async def _unary(self, call: Callable[..., Awaitable[Any]], timeout: float) -> Any:
        return await self._with_failover(lambda runner, remaining: call(runner, timeout=remaining), timeout)

    async def _with_failover(self, attempt: Callable[[RunnerClient, float], Awaitable[T]], timeout: float) -> T:
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
            except (AioRpcError, CallFailed) as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise refusal_for(error, self.config.expose_internals) from None
                self.mark_down(runner, error)
                tried.append(runner.target)
        raise self.none_left(tried)

    def mark_down(self, runner: RunnerClient, error: AioRpcError | CallFailed) -> None:
        # Health is the health checks' to say: a runner may answer UNAVAILABLE
        # itself (say, when its model provider is down) while being up.
        log.warning("runner %s unavailable (%s); trying the next", runner.target, describe(error))

    def none_left(self, tried: list[str]) -> Refusal:
        if not tried:
            return Refusal("Runner did not answer before the deadline", 504)
        if not self.config.expose_internals:
            # Each was logged by `mark_down`; addresses are the network's layout.
            return RunnerUnavailable(f"Runner unavailable: tried {len(tried)} runner(s); the gateway's log names them")
        return RunnerUnavailable(f"Runner unavailable: tried {', '.join(tried)}")


# The default in-flight items of a run whose event gives no `concurrency`
# (AgentMark's own experiment default).
DEFAULT_ITEM_CONCURRENCY = 10
_END = object()


class ItemsRun:
    """A dataset run the gateway reads itself (see `datasets`), answered
    through `RunDatasetItem`, one call per item: up to the run's concurrency
    in flight, spread over the runners that take items (or kept on one, with
    `spread_dataset_runs` off), answers in completion order. An item whose
    call fails with UNAVAILABLE (its runner died or is unreachable) is sent to
    another runner, so every item is answered once.

    Memory stays bounded whatever the dataset's size: an item is read only
    when a slot is free, and a slot frees when its answer has been taken by
    the stream (`next`), so at most `concurrency` items are read and not yet
    written. To `responses` it looks like any other `RunnerStream`."""

    def __init__(self, pool: RunnerPool, run: Any, metadata: Metadata) -> None:
        config = pool.config
        self.runner = "items"
        self._pool = pool
        self._metadata = metadata
        self._expose = config.expose_internals
        self._spread = config.spread_dataset_runs
        self._deadline = asyncio.get_running_loop().time() + config.deadlines.dataset_run
        self._slots = asyncio.Semaphore(max(1, pool.dataset_concurrency(run.data, DEFAULT_ITEM_CONCURRENCY)))
        self._answers: asyncio.Queue[Any] = asyncio.Queue()  # bytes, a fatal Refusal, or _END
        self._calls: set[asyncio.Task[None]] = set()
        self._down: set[str] = set()  # runners that failed during this run
        self._sticky: str | None = None  # the run's one runner, when not spreading
        self._run = run
        self._fields: dict[str, Any] = {}
        self._feeder: asyncio.Task[None] | None = None
        self._first: asyncio.Future[Any] | None = None  # the first answer, awaited while opening

    @classmethod
    async def open(cls, pool: RunnerPool, run: Any, metadata: Metadata) -> ItemsRun:
        """Start the run; a run that cannot start at all (no runner reachable
        for its first item) is refused before the response begins. As with
        a slow prompt run, a first answer that takes longer than the
        heartbeat interval is not waited for: the stream starts, and its
        heartbeats cover the wait."""
        self = cls(pool, run, metadata)
        self._feeder = asyncio.create_task(self._feed())
        first = asyncio.ensure_future(self._answers.get())
        try:
            answered = await answered_within(first, pool.config.heartbeat_interval or None)
        except BaseException:
            self.cancel()
            raise
        if answered and isinstance(first.result(), Refusal):
            self.cancel()
            raise first.result()
        self._first = first
        return self

    async def next(self) -> bytes | None:
        if self._first is not None:
            first, self._first = self._first, None
            answer = await first
        else:
            answer = await self._answers.get()
        if answer is _END:
            return None
        if isinstance(answer, Refusal):
            raise answer
        self._slots.release()
        return answer  # type: ignore[no-any-return]

    def cancel(self) -> None:
        if self._first is not None:
            self._first.cancel()
        if self._feeder is not None:
            self._feeder.cancel()
        for call in list(self._calls):
            call.cancel()

    async def _feed(self) -> None:
        data = self._run.data
        started = False  # an item was read: a later failure is mid-way
        try:
            plan = datasets.plan(self._run.kind, data)
            self._fields = {
                "kind": _KIND[self._run.kind],
                "run_id": str(uuid.uuid4()),
                "run_name": _str(data.get("experimentId")) or "experiment",
                "dataset_path": plan.dataset_path,
                "prompt_name": plan.prompt_name,
                "prompt_path": _str(data.get("promptPath")),
                "commit_sha": _str(data.get("commitSha")),
                "eval_names": plan.eval_names,
            }
            sampling = data.get("sampling")
            async for item in datasets.items(self._pool.datasets, plan, data["ast"], sampling if isinstance(sampling, dict) else None):  # type: ignore[arg-type]
                started = True
                await self._slots.acquire()
                call = asyncio.create_task(self._answer(item))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
        except (datasets.DatasetError, Refusal) as error:
            text = error.message if isinstance(error, Refusal) else str(error)
            # As a runner reading its own dataset answers: one error row, then the rows already under way.
            self._answers.put_nowait(_error_event(f"cannot {'read' if started else 'load'} the dataset: {text}"))
        except Exception:  # noqa: BLE001 - the run ends with an error row, never a traceback
            log.exception("reading a dataset run's items failed")
            self._answers.put_nowait(_error_event("cannot load the dataset: internal gateway error"))
        finally:
            if self._calls:
                await asyncio.gather(*self._calls, return_exceptions=True)
            self._answers.put_nowait(_END)

    async def _answer(self, item: datasets.Item) -> None:
        if item.error:
            self._pool.on_item("error")
            self._answers.put_nowait(_error_event(item.error))
            return
        request = pb.DatasetItemRequest(
            **self._fields,
            index=item.index,
            input_json=item.input_json,
            expected_output_json=_json(item.expected_output) if item.has_expected_output else "",
            rendered=item.rendered,
            item_name=item.name,
        ).SerializeToString()
        tried: set[str] = set()
        loop = asyncio.get_running_loop()
        while True:
            runner = self._pick(tried)
            remaining = self._deadline - loop.time()
            if runner is None or remaining <= 0:
                self._answers.put_nowait(self._pool.none_left(sorted(tried)) if remaining > 0 else Refusal("Runner did not answer before the deadline", 504))
                return
            tried.add(runner.target)
            try:
                answer = await runner.run_dataset_item(request, metadata=self._metadata, timeout=remaining)
            except AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self._pool.mark_down(runner, error)
                    self._down.add(runner.target)
                    self._pool.on_item("retried")
                    continue  # nothing was answered: the item goes to another runner
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    self._answers.put_nowait(Refusal("Runner did not answer before the deadline", 504))
                    return
                self._pool.on_item("error")
                self._answers.put_nowait(_error_event(refusal_for(error, self._expose).message))
                return
            self._pool.on_item("answered")
            self._answers.put_nowait(answer)
            return

    def _pick(self, tried: set[str]) -> RunnerClient | None:
        """The runner for an item's next attempt: the next in turn (or the
        run's one runner), never one this item has tried already."""
        candidates = [r for r in self._pool.item_runners(self._down) if r.target not in tried]
        if not self._spread:
            stay = [r for r in candidates if r.target == self._sticky and r.target not in self._down]
            candidates = stay or candidates
            self._sticky = candidates[0].target if candidates else None
        return candidates[0] if candidates else None


def _error_event(message: str) -> bytes:
    """One item's error row, as a runner would have sent it."""
    return pb.ExperimentEvents(events=[pb.ExperimentEvent(error=pb.Error(message=message))]).SerializeToString()
