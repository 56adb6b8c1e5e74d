"""Soak: the gateway under a steady mix of events for a bounded time, its
memory and file descriptors watched from /proc.

    .venv/bin/python -m benchmarks.soak --duration 600 --rate 25 \\
        --out benchmarks/results/soak.json --markdown benchmarks/results/soak.md
    make soak                                   # the same, 10 minutes

Three processes on 127.0.0.1, as in production but on one machine:

- the gateway: `agentmark-gw serve`, one worker on Hypercorn (`--server
  granian` for Granian; RSS and descriptors are summed over its process tree);
- the reference runner: `agentmark-gw runner` (AgentMark's runtime and the
  OpenAI executor, datasets from tests/fixtures), its real `openai`
  client pointed at
- a fake OpenAI server (tests/servers/fake_openai.py).

The three are the test harness's reference stack (tests/support/stack.py).

The real openai path rather than the scripted runner: a soak is where a leak
in the runner SDK, the gRPC bridge or the model client would show, and at
25 requests/s the three processes take well under one of the two cores.

After `--warmup` seconds of the same load, in-flight requests finish, the
client's connections close, and the gateway's RSS and open file descriptors
are taken as the reference. Then `--duration` seconds of requests at
`--rate` per second (scheduled at fixed times; never more than
`--concurrency` at once, on that many keep-alive connections, a fifth of
requests, `--fresh-share`, on a new one, and one idle for half the
keep-alive timeout not reused, as a load balancer whose idle timeout is
under the gateway's would do), the gateway sampled every
`--sample-interval` seconds. At the end, the same quiet point is measured
again. Hypercorn holds a connection the client closed until its keep-alive
timeout runs out, so each quiet point lasts `--keep-alive-timeout` + 3 s.

The mix (weights out of 100): streaming text prompt-runs 30, streaming
object prompt-runs 10, non-streaming prompt-runs 20, dataset runs 8,
get-evals 8, alerts 12 (each with an alert id of its own, so each is stored
and delivered); injected faults: a wrong signature 4 (401), a signed body
that is not an event 4 (400), a model connection dropped mid-stream 4 (200,
ending in an error line). Every answer is checked against its kind.

Criteria (exit status 1 when one fails):
- RSS at the end at most 10% above RSS after warm-up (a drop passes);
- no 5xx outside the injected faults, every answer as its kind expects, no
  transport errors;
- open file descriptors at the end no more than after warm-up.

`tests/test_soak.py` runs a short one, as a command.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import (
    e2e,
    e2e_client,  # a raw HTTP/1.1 client that costs little CPU
)
from tests.support.processes import HOST, ROOT, cpu_seconds, sign, status_kib, wait_until
from tests.support.stack import DATASETS, GatewayProcess, start_reference_stack

EVENTS = ROOT / "tests" / "fixtures" / "agentmark" / "events"
SIGNATURE_HEADER = "x-agentmark-signature-256"
RSS_GROWTH_LIMIT = 0.10


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the mix ---------------------------------------------------------------------------


def event_file(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def with_user_message(event: dict[str, Any], message: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["event"]["data"]["customProps"]["userMessage"] = message
    return changed


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.split(b"\n") if line.strip()]


def _streamed(reply: e2e_client.Reply) -> list[dict[str, Any]]:
    if reply.headers.get("agentmark-streaming") != "true":
        raise ValueError("no AgentMark-Streaming: true header")
    return [line for line in ndjson(reply.body) if line.get("type") != "done"]


def check_prompt_stream(reply: e2e_client.Reply) -> None:
    lines = _streamed(reply)
    if any(line.get("type") == "error" for line in lines) or not lines or "finishReason" not in lines[-1]:
        raise ValueError(f"stream did not finish: {lines[-2:]!r}")


def check_object_stream(reply: e2e_client.Reply) -> None:
    lines = _streamed(reply)
    if any(line.get("type") != "object" for line in lines) or not any("result" in line for line in lines):
        raise ValueError(f"not an object stream: {lines[-2:]!r}")


def check_envelope(reply: e2e_client.Reply) -> None:
    envelope = json.loads(reply.body)
    if envelope.get("type") != "text" or not envelope.get("result"):
        raise ValueError(f"envelope {envelope!r}")


def check_dataset(reply: e2e_client.Reply) -> None:
    lines = _streamed(reply)
    rows = [line for line in lines if line.get("type") == "dataset"]
    expected = sum(1 for line in (DATASETS / "sentiment.jsonl").read_text().splitlines() if line.strip())
    if len(rows) != expected or len(lines) != expected:
        raise ValueError(f"{len(rows)} dataset rows of {len(lines)} lines, expected {expected}")


def check_evals(reply: e2e_client.Reply) -> None:
    if json.loads(reply.body).get("type") != "evals":
        raise ValueError(f"not an evals answer: {reply.body[:200]!r}")


def check_alert(reply: e2e_client.Reply) -> None:
    if json.loads(reply.body).get("message") != "Alert processed":
        raise ValueError(f"alert answer {reply.body[:200]!r}")


def check_refusal(reply: e2e_client.Reply) -> None:
    body = json.loads(reply.body)
    if set(body) != {"message"} or not body["message"]:
        raise ValueError(f"refusal body {reply.body[:200]!r}")


def check_error_line(reply: e2e_client.Reply) -> None:
    lines = _streamed(reply)
    if not lines or lines[-1].get("type") != "error":
        raise ValueError(f"no terminal error line: {lines[-2:]!r}")


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int
    status: int
    check: Any  # (Reply) -> None, raises ValueError when the answer is wrong
    fault: bool = False


KINDS = (
    Kind("prompt-stream", 30, 200, check_prompt_stream),
    Kind("object-stream", 10, 200, check_object_stream),
    Kind("prompt-nostream", 20, 200, check_envelope),
    Kind("dataset-run", 8, 200, check_dataset),
    Kind("get-evals", 8, 200, check_evals),
    Kind("alert", 12, 200, check_alert),
    Kind("fault-bad-signature", 4, 401, check_refusal, fault=True),
    Kind("fault-bad-body", 4, 400, check_refusal, fault=True),
    Kind("fault-runner-error-midstream", 4, 200, check_error_line, fault=True),
)
ALERT_FILES = ("alert-triggered-cost.json", "alert-resolved-cost.json", "alert-triggered-error-rate.json", "alert-triggered-latency.json")


class Bodies:
    """Signed request bodies for each kind, from AgentMark's event files."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        fixed = {
            "prompt-stream": event_file("prompt-run-text.json"),
            "object-stream": event_file("prompt-run-object.json"),
            "prompt-nostream": event_file("prompt-run-text-nostream.json"),
            "dataset-run": event_file("dataset-run.json"),
            "get-evals": event_file("get-evals.json"),
            # The fake model server drops the connection after a first chunk.
            "fault-runner-error-midstream": with_user_message(event_file("prompt-run-text.json"), "midstream"),
        }
        self.fixed = {name: self._signed(json.dumps(event).encode()) for name, event in fixed.items()}
        self.alerts = [event_file(name) for name in ALERT_FILES]
        self.bad_bodies = [b'{"event": {"type": "prompt-run", "data": {}}}', b"not json", b'{"type": "no-such-event", "data": {}}']
        self.count = 0

    def _signed(self, body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secret, body)}

    def next(self, kind: str) -> tuple[bytes, dict[str, str]]:
        self.count += 1
        if kind in self.fixed:
            return self.fixed[kind]
        if kind == "alert":
            event = copy.deepcopy(self.alerts[self.count % len(self.alerts)])
            event["event"]["data"]["alert"]["id"] = f"soak-{self.count}"
            return self._signed(json.dumps(event).encode())
        if kind == "fault-bad-signature":
            body, headers = self.fixed["prompt-stream"]
            return body, {**headers, SIGNATURE_HEADER: sign("not-the-secret", body)}
        if kind == "fault-bad-body":
            return self._signed(self.bad_bodies[self.count % len(self.bad_bodies)])
        raise KeyError(kind)


# --- load --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes of one phase."""

    sent: int = 0
    late: int = 0  # waited for a free connection past their scheduled time
    by_status: dict[str, int] = field(default_factory=dict)  # "kind status" -> count
    unexpected_5xx: int = 0
    wrong: list[str] = field(default_factory=list)  # the first few, verbatim
    wrong_count: int = 0
    transport_errors: int = 0
    latency_s: dict[str, list[float]] = field(default_factory=dict)

    def note_wrong(self, text: str) -> None:
        self.wrong_count += 1
        if len(self.wrong) < 20:
            self.wrong.append(text)


class Load:
    """Requests of the mix at a fixed rate over a bounded pool of keep-alive connections."""

    def __init__(self, port: int, bodies: Bodies, concurrency: int, fresh_share: float, idle_limit: float, seed: int = 1) -> None:
        self.port = port
        self.bodies = bodies
        self.random = random.Random(seed)
        self.fresh_share = fresh_share
        # Like a load balancer, whose idle timeout must stay under the gateway's
        # keep-alive timeout: a connection idle this long is not used again.
        self.idle_limit = idle_limit
        self.last_used: dict[int, float] = {}
        self.pool: asyncio.Queue[e2e_client.Connection] = asyncio.Queue()
        for _ in range(concurrency):
            self.pool.put_nowait(e2e_client.Connection(HOST, port))
        self.names = [kind.name for kind in KINDS]
        self.weights = [kind.weight for kind in KINDS]
        self.kinds = {kind.name: kind for kind in KINDS}

    async def run(self, seconds: float, rate: float, tally: Tally) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        for i in range(int(seconds * rate)):
            delay = started + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            connection = await self.pool.get()
            if loop.time() - (started + i / rate) > 1.0:
                tally.late += 1
            kind = self.kinds[self.random.choices(self.names, self.weights)[0]]
            task = asyncio.create_task(self._one(connection, kind, tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=120)

    async def _one(self, connection: e2e_client.Connection, kind: Kind, tally: Tally) -> None:
        body, headers = self.bodies.next(kind.name)
        tally.sent += 1
        try:
            idle = time.monotonic() - self.last_used.get(id(connection), 0.0)
            if self.random.random() < self.fresh_share or idle > self.idle_limit:
                await connection.close()  # the request opens a new connection
            started = time.perf_counter()
            reply = await asyncio.wait_for(connection.request("POST", "/", body, headers), 60)
        except (TimeoutError, OSError, e2e_client.ProtocolError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.transport_errors += 1
            tally.note_wrong(f"{kind.name}: {type(exc).__name__}: {exc}")
            await connection.close()
            return
        finally:
            self.last_used[id(connection)] = time.monotonic()
            self.pool.put_nowait(connection)
        tally.latency_s.setdefault(kind.name, []).append(time.perf_counter() - started)
        key = f"{kind.name} {reply.status}"
        tally.by_status[key] = tally.by_status.get(key, 0) + 1
        if reply.status >= 500 and not kind.fault:
            tally.unexpected_5xx += 1
        if reply.status != kind.status:
            tally.note_wrong(f"{kind.name}: status {reply.status}, expected {kind.status}: {reply.body[:200]!r}")
            return
        try:
            kind.check(reply)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            tally.note_wrong(f"{kind.name}: {exc}")

    async def close(self) -> None:
        """Close every connection (they stay in the pool, to reopen on use)."""
        for _ in range(self.pool.qsize()):
            connection = self.pool.get_nowait()
            await connection.close()
            self.pool.put_nowait(connection)


@dataclass
class Sample:
    t: float
    phase: str
    rss_kib: int
    anon_kib: int
    fds: int
    sockets: int


async def sample_every(gateway: GatewayProcess, interval: float, phase: list[str], samples: list[Sample], origin: float) -> None:
    while True:
        samples.append(Sample(round(time.monotonic() - origin, 1), phase[0], gateway.rss_kib(), gateway.anon_kib(),
                              gateway.fds(), gateway.sockets()))
        await asyncio.sleep(interval)


async def quiet_point(gateway: GatewayProcess, load: Load, wait: float) -> tuple[int, int]:
    """Close the client's connections, wait `wait` seconds for the gateway to
    let go of them, and return its (RSS KiB, open fds) there."""
    await load.close()
    await asyncio.sleep(wait)
    return gateway.rss_kib(), gateway.fds()


# --- the run ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    value = e2e.pct(values, q)
    return None if value is None else round(1000 * value, 1)


def summary(tally: Tally) -> dict[str, Any]:
    everything = [x for values in tally.latency_s.values() for x in values]
    return {
        "sent": tally.sent,
        "late": tally.late,
        "by_status": dict(sorted(tally.by_status.items())),
        "unexpected_5xx": tally.unexpected_5xx,
        "wrong_answers": tally.wrong_count,
        "wrong_examples": tally.wrong,
        "transport_errors": tally.transport_errors,
        "latency_ms": {
            "all": {"p50": percentile(everything, 50), "p99": percentile(everything, 99)},
            **{name: {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}
               for name, values in sorted(tally.latency_s.items())},
        },
    }


async def run_soak(duration: float, rate: float, *, warmup: float | None = None, concurrency: int = 32,
                   sample_interval: float = 5.0, fresh_share: float = 0.2, keep_alive_timeout: float = 75.0,
                   server: str = "hypercorn", settle: float = 3.0, workdir: Path | None = None) -> dict[str, Any]:
    """Start the three processes, warm up, soak, stop them. Returns the report;
    `report["ok"]` says whether every criterion held.

    Hypercorn keeps a connection the client closed (in CLOSE-WAIT, its fd
    open) until `keep_alive_timeout` runs out, so each quiet point waits that
    long, plus `settle` seconds, before counting file descriptors."""
    warmup = min(60.0, max(20.0, duration / 4)) if warmup is None else warmup
    workdir = workdir or Path(tempfile.mkdtemp(prefix="agentmark-gw-soak-"))
    secret = "soak-" + os.urandom(8).hex()
    bodies = Bodies(secret)
    processes = await start_reference_stack(workdir, secret, {"SERVER": server, "KEEP_ALIVE_TIMEOUT": f"{keep_alive_timeout:g}"})
    quiet = keep_alive_timeout + settle
    gateway = processes.gateway
    samples: list[Sample] = []
    phase = ["warm-up"]
    origin = time.monotonic()
    sampler = asyncio.create_task(sample_every(gateway, sample_interval, phase, samples, origin))
    load = Load(gateway.port, bodies, concurrency, fresh_share, idle_limit=keep_alive_timeout / 2)
    started_at = dt.datetime.now(dt.UTC)
    try:
        start_rss, start_fds = gateway.rss_kib(), gateway.fds()
        log(f"warm-up: {warmup:.0f} s at {rate:g} req/s (gateway pid {gateway.pid}, RSS {start_rss / 1024:.1f} MiB, {start_fds} fds)")
        warm = Tally()
        await load.run(warmup, rate, warm)
        warm_rss, warm_fds = await quiet_point(gateway, load, quiet)
        warm_anon = gateway.anon_kib()
        runner_warm = status_kib(processes.runner.pid, "VmRSS")["VmRSS"]
        log(f"after warm-up: RSS {warm_rss / 1024:.1f} MiB, {warm_fds} fds; soaking for {duration:.0f} s")
        phase[0] = "soak"
        cpu_before = cpu_seconds(gateway.pid)
        soak = Tally()
        await load.run(duration, rate, soak)
        cpu_soak = cpu_seconds(gateway.pid) - cpu_before
        phase[0] = "end"
        end_rss, end_fds = await quiet_point(gateway, load, quiet)
        # A connection Hypercorn is still closing is not a leak: give it the settle time once more.
        if end_fds > warm_fds:
            await wait_until(lambda: gateway.fds() <= warm_fds, settle * 2)
            end_rss, end_fds = gateway.rss_kib(), gateway.fds()
        end_anon = gateway.anon_kib()
        runner_end = status_kib(processes.runner.pid, "VmRSS")["VmRSS"]
        inflight = await gateway.metric("agentmark_gw_inflight_streams")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await load.close()
        processes.stop()
    soak_samples = [s for s in samples if s.phase == "soak"]
    change = (end_rss - warm_rss) / warm_rss
    criteria = {
        "rss_end_within_10pct_of_warm": end_rss <= warm_rss * (1 + RSS_GROWTH_LIMIT),
        "no_unexpected_5xx": soak.unexpected_5xx == 0 and warm.unexpected_5xx == 0,
        "every_answer_as_expected": soak.wrong_count == 0 and warm.wrong_count == 0,
        "fds_back_to_baseline": end_fds <= warm_fds,
        "no_stream_left_in_flight": inflight == 0,
    }
    return {
        "ok": all(criteria.values()),
        "criteria": criteria,
        "meta": {
            "date": started_at.date().isoformat(),
            "started_utc": started_at.isoformat(timespec="seconds"),
            "duration_s": duration, "warmup_s": warmup, "rate_per_s": rate, "concurrency": concurrency,
            "fresh_connection_share": fresh_share, "sample_interval_s": sample_interval,
            "server": server, "keep_alive_timeout_s": keep_alive_timeout, "quiet_wait_s": quiet,
            "mix": {kind.name: kind.weight for kind in KINDS},
            "cpus": os.cpu_count(), "cpu_model": e2e.cpu_model(), "kernel": platform.release(),
            "python": platform.python_version(), "commit": _commit(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "gateway": {
            "rss_mib": {
                "at_start": round(start_rss / 1024, 1),
                "after_warmup": round(warm_rss / 1024, 1),
                "at_end": round(end_rss / 1024, 1),
                "max_during_soak": round(max((s.rss_kib for s in soak_samples), default=end_rss) / 1024, 1),
                "change_pct": round(100 * change, 2),
            },
            "rss_anon_mib": {"after_warmup": round(warm_anon / 1024, 1), "at_end": round(end_anon / 1024, 1)},
            "fds": {"at_start": start_fds, "after_warmup": warm_fds, "at_end": end_fds,
                    "max_during_soak": max((s.fds for s in soak_samples), default=end_fds)},
            "cpu_s_during_soak": round(cpu_soak, 1),
            "inflight_streams_at_end": inflight,
        },
        "runner_rss_mib": {"after_warmup": round(runner_warm / 1024, 1), "at_end": round(runner_end / 1024, 1)},
        "warmup": summary(warm),
        "soak": summary(soak),
        "samples": [vars(s) for s in samples],
    }


def _commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "python"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def markdown(report: dict[str, Any]) -> str:
    meta, gw, soak = report["meta"], report["gateway"], report["soak"]
    rss, fds = gw["rss_mib"], gw["fds"]
    yes = {True: "pass", False: "**FAIL**"}
    lines = [
        f"# Soak, {meta['date']}",
        "",
        f"{meta['duration_s']:g} s at {meta['rate_per_s']:g} requests/s after {meta['warmup_s']:g} s of warm-up, "
        f"at most {meta['concurrency']} at once, {100 * meta['fresh_connection_share']:g}% on a new connection; gateway on "
        f"{meta['server']}, keep_alive_timeout {meta['keep_alive_timeout_s']:g} s; {meta['cpus']} × {meta['cpu_model']}, kernel {meta['kernel']}, "
        f"Python {meta['python']}, commit {meta['commit']}.",
        "",
        "| criterion | figures | result |",
        "|---|---|---|",
        f"| RSS at the end within 10% of after warm-up | {rss['after_warmup']} → {rss['at_end']} MiB "
        f"({rss['change_pct']:+.1f}%), max {rss['max_during_soak']} MiB | {yes[report['criteria']['rss_end_within_10pct_of_warm']]} |",
        f"| no 5xx outside injected faults | {soak['unexpected_5xx']} | {yes[report['criteria']['no_unexpected_5xx']]} |",
        f"| every answer as its kind expects | {soak['wrong_answers']} wrong, {soak['transport_errors']} transport errors "
        f"| {yes[report['criteria']['every_answer_as_expected']]} |",
        f"| open fds back to baseline | {fds['after_warmup']} → {fds['at_end']} (max {fds['max_during_soak']}) "
        f"| {yes[report['criteria']['fds_back_to_baseline']]} |",
        f"| no stream left in flight | {gw['inflight_streams_at_end']:g} | {yes[report['criteria']['no_stream_left_in_flight']]} |",
        "",
        f"Requests: {soak['sent']} ({soak['late']} started over 1 s late); latency p50 {soak['latency_ms']['all']['p50']} ms, "
        f"p99 {soak['latency_ms']['all']['p99']} ms. Gateway CPU {gw['cpu_s_during_soak']} s over the soak; "
        f"runner RSS {report['runner_rss_mib']['after_warmup']} → {report['runner_rss_mib']['at_end']} MiB.",
        "",
        "| kind | status | count | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
    ]
    for key, count in soak["by_status"].items():
        name, status = key.rsplit(" ", 1)
        latency = soak["latency_ms"].get(name, {})
        lines.append(f"| {name} | {status} | {count} | {latency.get('p50')} | {latency.get('p99')} |")
    if soak["wrong_examples"]:
        lines += ["", "Wrong answers (first few):", ""] + [f"- `{text}`" for text in soak["wrong_examples"]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Soak the gateway: steady mixed load, memory and fds watched.")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of soak after warm-up (default 600)")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (default 25)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: a quarter of --duration, 20 to 60)")
    parser.add_argument("--concurrency", type=int, default=32, help="most requests at once (default 32)")
    parser.add_argument("--fresh-share", type=float, default=0.2, help="share of requests sent on a new connection (default 0.2)")
    parser.add_argument("--keep-alive-timeout", type=float, default=75.0,
                        help="the gateway's keep_alive_timeout; fds are counted this long (+3 s) after the client closes (default 75, the gateway's own)")
    parser.add_argument("--server", choices=("hypercorn", "granian"), default="hypercorn", help="the gateway's HTTP server (default hypercorn)")
    parser.add_argument("--sample-interval", type=float, default=5.0, help="seconds between RSS/fd samples (default 5)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the summary as Markdown here")
    parser.add_argument("--workdir", type=Path, help="where the processes' logs go (default: a new temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not EVENTS.is_dir():
        print(f"error: AgentMark's event bodies are not at {EVENTS}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="agentmark-gw-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that the processes it started are stopped, as on Ctrl-C

    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = asyncio.run(run_soak(args.duration, args.rate, warmup=args.warmup, concurrency=args.concurrency,
                                      sample_interval=args.sample_interval, keep_alive_timeout=args.keep_alive_timeout, server=args.server,
                                      fresh_share=args.fresh_share,
                                      workdir=workdir))
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    text = markdown(report)
    print(text)
    for path, content in ((args.out, json.dumps(report, indent=2) + "\n"), (args.markdown, text)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    log(f"{'all criteria held' if report['ok'] else 'a criterion failed'}; process logs in {workdir}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
