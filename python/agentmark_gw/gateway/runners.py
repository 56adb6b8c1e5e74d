"""The runner pool: the one place an event becomes a gRPC call.

Requests are built with the generated protobuf classes (once per request);
streamed answers are taken as raw bytes, so no Python protobuf object is made
per message on the hot path: `_accel`'s framers decode them.

Each configured runner target gets one channel; calls go round-robin over
them. A target can also be a gRPC name such as `dns:///runners:50051`,
in which case gRPC's own round-robin balancing spreads calls over every
address the name resolves to.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import grpc
from grpc.aio import AioRpcError

from ..protocol import runner_pb2 as pb
from .config import GatewayConfig
from .errors import Refusal, RunnerFailed, RunnerTimedOut, RunnerUnavailable
from .webhook import Alert, DatasetRun, PromptRun

_SERVICE = "/agentmark.runner.v1.Runner/"
_KIND = {
    "text": pb.PROMPT_KIND_TEXT,
    "object": pb.PROMPT_KIND_OBJECT,
    "image": pb.PROMPT_KIND_IMAGE,
    "speech": pb.PROMPT_KIND_SPEECH,
}


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _channel_target(target: str) -> str:
    # A bare HOST:PORT is resolved by gRPC's default (DNS) resolver anyway;
    # naming the scheme makes round-robin apply to every resolved address.
    return target if "://" in target or target.startswith(("ipv4:", "ipv6:", "unix:")) else f"dns:///{target}"


class RunnerPool:
    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_receive_message_length", config.max_runner_message_bytes),
            ("grpc.max_send_message_length", config.max_body_bytes * 3 + 1024 * 1024),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        self._channels = [grpc.aio.insecure_channel(_channel_target(t), options=options) for t in config.runners]
        self._stubs = [_Stubs(channel) for channel in self._channels]
        self._next = itertools.cycle(self._stubs)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # -- calls -----------------------------------------------------------

    def run_prompt(self, run: PromptRun) -> grpc.aio.UnaryStreamCall:
        data = run.data
        request = pb.RunPromptRequest(
            kind=_KIND[run.kind],
            ast_json=_json(data["ast"]),
            custom_props_json=_json(data.get("customProps") or {}),
            should_stream=run.should_stream,
            prompt_path=_str(data.get("promptPath")),
            data_json=_json(data),
        )
        return next(self._next).run_prompt(request.SerializeToString(), timeout=self._config.deadlines.prompt_run)

    def run_experiment(self, run: DatasetRun) -> grpc.aio.UnaryStreamCall:
        data = run.data
        sampling = data.get("sampling")
        concurrency = data.get("concurrency")
        request = pb.RunExperimentRequest(
            kind=_KIND[run.kind],
            ast_json=_json(data["ast"]),
            experiment_id=_str(data.get("experimentId")) or "experiment",
            dataset_path=_str(data.get("datasetPath")),
            concurrency=concurrency if isinstance(concurrency, int) and 0 < concurrency < 2**32 else 0,
            prompt_path=_str(data.get("promptPath")),
            commit_sha=_str(data.get("commitSha")),
            sampling_json=_json(sampling) if sampling is not None else "",
            data_json=_json(data),
        )
        return next(self._next).run_experiment(request.SerializeToString(), timeout=self._config.deadlines.dataset_run)

    async def get_evals(self) -> list[str]:
        try:
            response = await next(self._next).get_evals(pb.GetEvalsRequest().SerializeToString(), timeout=self._config.deadlines.get_evals)
        except AioRpcError as error:
            raise refusal_for(error) from None
        return list(response.names)

    async def handle_alert(self, alert: Alert) -> str:
        request = pb.AlertRequest(id=alert.id, type=alert.type, status=alert.status, data_json=_json(alert.data))
        response = await next(self._next).handle_alert(
            request.SerializeToString(), timeout=self._config.deadlines.alert
        )
        return response.message


class _Stubs:
    """One channel's callables. Streamed answers stay raw bytes
    (no `response_deserializer`): the framers decode them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.run_prompt = channel.unary_stream(_SERVICE + "RunPrompt")
        self.run_experiment = channel.unary_stream(_SERVICE + "RunExperiment")
        self.get_evals = channel.unary_unary(_SERVICE + "GetEvals", response_deserializer=pb.GetEvalsResponse.FromString)
        self.handle_alert = channel.unary_unary(_SERVICE + "HandleAlert", response_deserializer=pb.AlertResponse.FromString)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def refusal_for(error: AioRpcError) -> Refusal:
    """The HTTP refusal for a gRPC failure that happened before any byte was sent."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return RunnerUnavailable("Runner unavailable: no runner could be reached")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return RunnerTimedOut("Runner did not answer before the deadline")
    return RunnerFailed(f"Runner failed: {describe(error)}")


def describe(error: AioRpcError) -> str:
    """One line for a client: the status name and the runner's own details."""
    details = (error.details() or "").strip()
    return f"{error.code().name}: {details}" if details else error.code().name
