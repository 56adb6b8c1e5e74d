"""End-to-end benchmark: the gateway against a bare Quart app (the ceiling)
and AgentMark's own webhook server (the peer), side by side in one run.

    .venv/bin/python -m benchmarks.e2e --duration 8 --out benchmarks/results/e2e.json
    .venv/bin/python -m benchmarks.e2e --quick          # smoke run, about 4 minutes

(from the checkout's root: the benchmarks, and the test harness they start
their processes with, tests/support/, are imported as packages from there).

Needs `wrk` (apt-get install wrk); the event bodies are AgentMark's, from
tests/fixtures/agentmark/events/. Prints Markdown tables; `--out` also writes
every figure as JSON. Exits 1 when a correctness check failed.

Servers, each its own process(es) on 127.0.0.1, one worker each:

- ceiling: `e2e_servers/ceiling.py`, a bare Quart app on Hypercorn (uvloop)
  that reads the body and answers the same bytes from memory, one write per line;
- gateway: `agentmark-gw serve` (Hypercorn, uvloop: the defaults) in front of
  a trivial gRPC runner answering pre-encoded messages from memory. By
  default (`--runner-impl rust`) that is a one-thread tonic server
  (`benchmarks/trivial-runner-rs`, built with cargo on first use) sending
  the very bytes of `e2e_servers/trivial_runner.py`, at a tenth of its CPU
  per token: on this machine the runner shares the 2 cores with the gateway
  and the load client (in production it runs elsewhere), so a runner's CPU
  inflates the gateway's figures, the paced scenario's inter-token gaps
  most. `--runner-impl raw` is that Python runner (grpc.aio, no
  (de)serializers), `--runner-impl sdk` the same answers through the
  project's runner SDK;
- gateway-granian, gateway-asyncio: the same gateway served by Granian
  (`--server granian`) or on Python's own event loop (`--loop asyncio`),
  each with its own trivial runner;
- peer: `e2e_servers/peer.py`, AgentMark's `serve_webhook_runner` with its
  own `WebhookRunner` over an executor answering from memory (AgentMark's
  prompt compilation and rendering still run: they are part of its runner).

Four scenarios, AgentMark's event files as bodies, signed with
`x-agentmark-signature-256`: non-streaming prompt-run (one JSON envelope),
streaming prompt-run (100 text chunks + finish), dataset-run (100 rows), each
with its whole answer ready at once (batched: one gRPC message per call);
and paced, how a model streams: the streaming prompt-run whose runner sends
--paced-tokens text deltas, one message each, one every --paced-gap-ms on a
fixed schedule, then finish (the ceiling writes each line when it is due, the
peer's executor yields each delta when it is due). `--scenarios paced` runs
it alone (no wrk needed).

The paced scenario is not a wrk cell: for each wave size in --paced-streams
(100, 500, 1,000) and server, a wave of that many streams, each on its own
connection, started evenly over --paced-ramp seconds, read by our own client
(`e2e_client.paced_streams`, an asyncio Protocol that times every token's
arrival). Per server: CPU per token received (process tree, a gateway's
runner apart), the inter-token gap p50/p99 the client saw, each stream's wall
time against the schedule (tokens × gap), the largest worker RSS during the
wave, and the client's own CPU per token (it shares the cores). The most
streams held is the largest wave whose every token came with gap p99 ≤ 50 ms.
`--baseline REV` adds gateway-baseline, the gateway's Python code as at REV,
so a change is measured against its parent side by side.

First, three requests per server and scenario check the status, the lines
and their content (mismatches are reported, and make the exit status 1);
their median time also tells how long one request takes alone. Then, for each
scenario, connection count (16, 64) and server: `wrk --latency` after a
warm-up gives requests/s and p50/p99 latency; lines/s is requests/s times the
NDJSON lines of one response; server CPU per request is the utime+stime delta
of the server's process tree (/proc/<pid>/stat) over the run divided by the
requests wrk completed (a gateway and its runner apart); peak RSS is VmHWM.
A server so slow that a response takes a good part of --duration gets a
longer cell (up to --max-cell-seconds).

After the cells:
- time to first chunk under saturation: our own asyncio client (first body
  bytes off the socket), 16 connections back to back (closed loop), a
  bounded number of requests; mostly queueing on 2 cores;
- added latency, for each gateway variant: the streaming prompt-run at a
  modest fixed rate (open loop, --latency-rate req/s over 16 connections, so
  queueing does not dominate), time to first body byte through the gateway;
  then the same pacing straight to its runner over gRPC (the RunPrompt
  request bytes the gateway builds for that event, made by the gateway's own
  code), time to first message. The gateway adds the difference of the p50s;
- memory, for each gateway variant: --rss-rounds rounds of streaming at 64
  connections, the gateway's current VmRSS (per process: Granian runs a
  supervisor and a worker) after each round, and its growth from round 2 on.

Noise: before every run the script waits (bounded) until the servers are idle
and the machine is quiet; every cell records how much CPU other work took
while it ran, and a cell where that passed --noisy-threshold is measured once
more, the quieter attempt kept. Servers run interleaved (each cell runs every
server back to back) so drift hits all of them alike. The load generator
(wrk, one thread) shares the 2 cores with the servers; nothing is pinned.

Ratios are gateway value / other value, for every metric: above 1 is better
for requests/s and lines/s, below 1 is better for latency, CPU and memory.
A gateway's CPU per request counts its runner too (and, apart, without).
Each variant is compared with the ceiling and the peer, and with the default
gateway (Hypercorn + uvloop).

`--py-spy DIR` profiles the gateway (or --profile-servers) during each
measured run and adds a summary of where the samples fall to the JSON; the
sampling costs CPU, so such a run is for finding hot spots, not for the table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import e2e_client
from benchmarks.e2e_servers import payloads
from tests.support.processes import CLK_TCK, HOST, ROOT, Process, cpu_seconds, free_port, rss_mb, sign, tail, wait_ok

HERE = Path(__file__).resolve().parent
EVENTS_DIR = ROOT / "tests" / "fixtures" / "agentmark" / "events"
WRK_SCRIPT = HERE / "wrk" / "post.lua"
SIGNATURE_HEADER = "x-agentmark-signature-256"

# Gateway variants: name -> (extra `agentmark-gw serve` flags, what they run).
GATEWAY_VARIANTS = {
    "gateway": ((), "Hypercorn + uvloop, the defaults"),
    "gateway-granian": (("--server", "granian"), "Granian + uvloop"),
    "gateway-asyncio": (("--loop", "asyncio"), "Hypercorn + asyncio"),
    # Only with --baseline REV: the defaults, the gateway's Python code as it
    # was at REV, so a change is measured against its parent in one run.
    "gateway-baseline": ((), "Hypercorn + uvloop, the gateway's Python code at --baseline"),
}
BASE_GATEWAY = "gateway"
BASELINE = "gateway-baseline"
SERVERS = ("ceiling", *GATEWAY_VARIANTS, "peer")
RUNNER_IMPLS = ("raw", "sdk", "rust")
RUST_RUNNER = "agentmark-gw-trivial-runner"  # the crate in benchmarks/trivial-runner-rs
SCENARIOS = {
    # name: (event file, what one response holds)
    "prompt": ("prompt-run-text-nostream.json", "non-streaming prompt-run (one JSON envelope)"),
    "stream": ("prompt-run-text.json", f"streaming prompt-run ({payloads.N_CHUNKS} chunks + finish)"),
    "dataset": ("dataset-run.json", f"dataset-run ({payloads.N_ROWS} rows)"),
    # Not a wrk cell: waves of concurrent streams, see measure_paced.
    "paced": ("prompt-run-text.json", "paced streaming prompt-run (N text deltas, one message each, one every G ms, then finish)"),
}
CEILING_PATHS = {"prompt": "/prompt", "stream": "/stream", "dataset": "/dataset", "paced": "/paced"}
WRK_SCENARIOS = ("prompt", "stream", "dataset")
# What the client counts as a token in a paced answer: the opening of each
# chunk's text ("tok00042 "), in every server's JSON spacing.
PACED_TOKEN = b'"tok'
PACED_GAP_TARGET_MS = 50.0  # "streams held": inter-token gap p99 at most this


def is_gateway(name: str) -> bool:
    return name in GATEWAY_VARIANTS


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """VmHWM summed over the process tree under `pid`, in MiB."""
    return sum(rss_mb(pid, "VmHWM"))


def machine_busy() -> tuple[float, float]:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# --- servers --------------------------------------------------------------------


@dataclass
class Server:
    name: str
    port: int
    procs: dict[str, Process]  # role -> process; the first is the HTTP server
    ready_path: str
    paths: dict[str, str]
    unwrap: bool  # send the `event` object, not the `{"event": ...}` file
    runner_port: int | None = None  # a gateway's own runner
    notes: list[str] = field(default_factory=list)

    @property
    def url_base(self) -> str:
        return f"http://{HOST}:{self.port}"


def baseline_tree(rev: str, workdir: Path) -> Path:
    """python/ as at `rev`, extracted under `workdir`, with this checkout's
    built Rust extension copied in (the baseline compares Python code)."""
    target = workdir / "baseline"
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "python"], cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, timeout=60)
    package = ROOT / "python" / "agentmark_gw"
    for built in package.glob("_core*.so"):
        shutil.copy2(built, target / "python" / "agentmark_gw" / built.name)
    return target / "python"


def rust_runner_argv(workdir: Path) -> list[str]:
    """The Rust trivial runner's command, less --listen: its binary, built
    (release, the workspace's target directory) if need be, and the raw
    runner's answers dumped for it to send."""
    log(f"building the Rust trivial runner if need be (cargo build --release -p {RUST_RUNNER})")
    messages = workdir / "runner-messages"
    for step in (
        ["cargo", "build", "--release", "--quiet", "-p", RUST_RUNNER],
        [sys.executable, "-m", "benchmarks.e2e_servers.trivial_runner", "--dump-messages", str(messages)],
    ):
        try:
            done = subprocess.run(step, cwd=ROOT, capture_output=True, text=True)
        except OSError as exc:
            raise RuntimeError(f"{step[0]}: {exc}") from None
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stderr[-3000:]}")
    binary = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "release" / RUST_RUNNER
    return [str(binary), "--messages", str(messages)]


def build_servers(names: list[str], secret: str, logs: Path, runner_impl: str = "raw", baseline: str | None = None) -> dict[str, Server]:
    python = sys.executable
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK_", "OTEL_", "PROMETHEUS_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    servers: dict[str, Server] = {}
    if "ceiling" in names:
        port = free_port()
        servers["ceiling"] = Server(
            "ceiling", port,
            {"ceiling": Process("ceiling", [python, "-m", "benchmarks.e2e_servers.ceiling", "--bind", f"{HOST}:{port}"], logs / "ceiling.log", base_env)},
            "/health", CEILING_PATHS, unwrap=False,
        )
    gateway_cli = Path(python).with_name("agentmark-gw")
    gateway_argv = [str(gateway_cli)] if gateway_cli.exists() else [python, "-m", "agentmark_gw.cli"]
    rust_argv = rust_runner_argv(logs) if runner_impl == "rust" and any(is_gateway(name) for name in names) else []
    for variant, (flags, _) in GATEWAY_VARIANTS.items():
        if variant not in names:
            continue
        port, runner_port = free_port(), free_port()
        if runner_impl == "rust":
            runner_argv = [*rust_argv, "--listen", f"{HOST}:{runner_port}"]
        else:
            runner_argv = [python, "-m", "benchmarks.e2e_servers.trivial_runner", "--listen", f"{HOST}:{runner_port}", "--impl", runner_impl]
        argv, env = gateway_argv, {**base_env, "AGENTMARK_WEBHOOK_SECRET": secret}
        if variant == BASELINE:
            assert baseline is not None
            # The same interpreter and packages; the gateway's own code from the baseline tree.
            argv = [python, "-m", "agentmark_gw.cli"]
            env["PYTHONPATH"] = str(baseline_tree(baseline, logs))
        servers[variant] = Server(
            variant, port,
            {
                "gateway": Process(
                    variant,
                    argv + ["serve", "--runner", f"{HOST}:{runner_port}", "--bind", f"{HOST}:{port}", *flags],
                    logs / f"{variant}.log", env,
                ),
                "runner": Process(f"{variant}-runner", runner_argv, logs / f"{variant}-runner.log", base_env),
            },
            "/readyz", dict.fromkeys(SCENARIOS, "/"), unwrap=False, runner_port=runner_port,
        )
    if "peer" in names:
        port = free_port()
        servers["peer"] = Server(
            "peer", port,
            {"peer": Process("peer", [python, "-m", "benchmarks.e2e_servers.peer", "--port", str(port)], logs / "peer.log", base_env)},
            "/health", dict.fromkeys(SCENARIOS, "/"), unwrap=True,
        )
    return servers


async def wait_ready(server: Server, timeout: float = 40.0) -> None:
    await wait_ok(server.name, server.url_base + server.ready_path, list(server.procs.values()), timeout)


# --- bodies and the correctness check --------------------------------------------


@dataclass
class Request:
    path: str
    body: bytes
    body_file: Path
    signature: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", SIGNATURE_HEADER: self.signature}


def paced_event(tokens: int, gap_ms: int) -> bytes:
    """The streaming prompt-run, its user message asking every server for a
    paced answer (payloads.paced_params)."""
    event = json.loads((EVENTS_DIR / SCENARIOS["paced"][0]).read_bytes())
    event["event"]["data"]["customProps"]["userMessage"] = payloads.paced_marker(tokens, gap_ms)
    return json.dumps(event, indent=2).encode() + b"\n"


def build_requests(
    servers: dict[str, Server], scenarios: list[str], secret: str, workdir: Path, paced: tuple[int, int] = (payloads.PACED_TOKENS, payloads.PACED_GAP_MS),
) -> dict[tuple[str, str], Request]:
    requests: dict[tuple[str, str], Request] = {}
    for scenario in scenarios:
        raw = paced_event(*paced) if scenario == "paced" else (EVENTS_DIR / SCENARIOS[scenario][0]).read_bytes()
        for name, server in servers.items():
            body = raw
            if server.unwrap:
                # AgentMark's server routes on a top-level `type`: send it the
                # `{type, data}` object inside the file, in the same layout.
                body = json.dumps(json.loads(raw)["event"], indent=2).encode() + b"\n"
            path = workdir / f"{name}-{scenario}.json"
            path.write_bytes(body)
            requests[(name, scenario)] = Request(server.paths[scenario], body, path, sign(secret, body))
    return requests


def check_reply(scenario: str, reply: e2e_client.Reply, paced_tokens: int = payloads.PACED_TOKENS) -> tuple[int, list[str], dict[str, int]]:
    """Lines in the body, the problems found, and a count of line kinds."""
    problems: list[str] = []
    kinds: dict[str, int] = {}
    if reply.status != 200:
        problems.append(f"status {reply.status}: {reply.body[:300]!r}")
    if scenario == "prompt":
        try:
            envelope = json.loads(reply.body)
        except ValueError:
            problems.append(f"body is not JSON: {reply.body[:200]!r}")
            return 1, problems, kinds
        kinds["envelope"] = 1
        if envelope.get("type") != "text":
            problems.append(f"envelope type {envelope.get('type')!r}")
        if envelope.get("result") != "".join(payloads.CHUNKS):
            problems.append("envelope result is not the 100 chunks")
        if envelope.get("finishReason") != "stop":
            problems.append(f"finishReason {envelope.get('finishReason')!r}")
        if (envelope.get("usage") or {}).get("outputTokens") != payloads.OUTPUT_TOKENS:
            problems.append(f"usage {envelope.get('usage')!r}")
        return 1, problems, kinds
    if reply.headers.get("agentmark-streaming", "").lower() != "true":
        problems.append("no AgentMark-Streaming: true header")
    text = reply.body.decode("utf-8", "replace")
    if text and not text.endswith("\n"):
        problems.append("last line has no newline")
    lines = [line for line in text.split("\n") if line]
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            kinds["invalid"] = kinds.get("invalid", 0) + 1
            continue
        if value.get("type") == "text" and "result" in value:
            kind = "chunk"
        elif value.get("type") == "text" and "finishReason" in value:
            kind = "finish"
        else:
            kind = str(value.get("type"))
        kinds[kind] = kinds.get(kind, 0) + 1
    if scenario in ("stream", "paced"):
        expected = {"chunk": payloads.N_CHUNKS if scenario == "stream" else paced_tokens, "finish": 1}
        allowed = {"done"}  # last when the runner reported a trace id
    else:
        expected = {"dataset": payloads.N_ROWS}
        allowed = {"done"}
    for kind, count in expected.items():
        if kinds.get(kind, 0) != count:
            problems.append(f"{kinds.get(kind, 0)} {kind} lines, expected {count}")
    for kind, count in kinds.items():
        if kind not in expected and kind not in allowed:
            problems.append(f"{count} unexpected {kind} line(s)")
    return len(lines), problems, kinds


async def check(server: Server, scenario: str, request: Request, repeats: int = 3, paced_tokens: int = payloads.PACED_TOKENS) -> dict[str, Any]:
    """One request checked in full, then `repeats - 1` more, each checked the
    same way; their median time estimates how long one request takes alone."""
    times: list[float] = []
    first: dict[str, Any] | None = None
    for _ in range(repeats):
        try:
            reply = await e2e_client.one(HOST, server.port, "POST", request.path, request.body, request.headers, timeout=60.0)
        except (TimeoutError, OSError, e2e_client.ProtocolError, asyncio.IncompleteReadError) as exc:
            result = {"server": server.name, "scenario": scenario, "ok": False, "status": None, "lines": None, "problems": [f"{type(exc).__name__}: {exc}"]}
            return first if first is not None and not first["ok"] else result
        times.append(reply.total_s)
        lines, problems, kinds = check_reply(scenario, reply, paced_tokens)
        result = {
            "server": server.name, "scenario": scenario, "ok": not problems, "status": reply.status,
            "lines": lines, "kinds": kinds, "bytes": len(reply.body),
            "framing": "chunked" if "chunked" in reply.headers.get("transfer-encoding", "") else
                       ("content-length" if "content-length" in reply.headers else "close-delimited"),
            "problems": problems,
        }
        if first is None:
            first = result
        elif problems and first["ok"]:
            first = {**result, "problems": [f"a repeated request: {p}" for p in problems]}
    assert first is not None
    first["alone_ms"] = round(1000 * statistics.median(times), 2)
    return first


# --- wrk --------------------------------------------------------------------------


def run_wrk(url: str, request: Request, connections: int, seconds: int, threads: int, timeout_s: int) -> dict[str, Any]:
    env = {**os.environ, "E2E_BODY_FILE": str(request.body_file), "E2E_SIGNATURE": request.signature}
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "--latency", "-s", str(WRK_SCRIPT), url]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish in time"}
    match = re.search(r"^E2E_JSON (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        return {"error": f"wrk exited {done.returncode}: {done.stderr.strip()[:300]} {done.stdout.strip()[-300:]}"}
    return json.loads(match.group(1))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_profilers(
    server: Server, scenario: str, connections: int, args: argparse.Namespace, seconds: float | None = None,
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """py-spy on every process of `server` during the measured run (raw
    collapsed stacks, non-blocking sampling). Only with --py-spy: sampling
    costs the server some CPU, so profiled runs are not for the table."""
    if server.name not in args.profile_servers:
        return []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    started = []
    for role, proc in server.procs.items():
        output = args.py_spy / f"{server.name}-{role}-{scenario}-c{connections}.txt"
        # --subprocesses: Granian serves from a worker process under its supervisor.
        duration = max(1, int(seconds if seconds is not None else args.duration - 1))
        argv = [py_spy, "record", "--pid", str(proc.pid), "--duration", str(duration), "--rate", "200",
                "--nonblocking", "--subprocesses", "--format", "raw", "--output", str(output)]
        started.append((subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), output))
    return started


def finish_profilers(profilers: list[tuple[subprocess.Popen[bytes], Path]]) -> dict[str, Any]:
    summaries: dict[str, Any] = {}
    for popen, output in profilers:
        try:
            popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(timeout=5)
        if output.exists():
            summaries[output.name] = profile_summary(output)
    return summaries


def _frame_key(frame: str) -> tuple[str, str]:
    """("function", "package or file") of one py-spy frame `func (path:line)`."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.12/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return name, path


def profile_summary(path: Path, top: int = 12) -> dict[str, Any]:
    """Where the samples of a collapsed-stack file fall: by the package of the
    innermost frame, and the heaviest functions, self and inclusive."""
    total = 0
    by_package: dict[str, int] = {}
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_key(f) for f in stack.split(";")]
        leaf_name, leaf_path = frames[-1]
        package = leaf_path.split("/", 1)[0] if "/" in leaf_path else leaf_path
        by_package[package] = by_package.get(package, 0) + n
        key = f"{leaf_name} ({leaf_path})"
        self_time[key] = self_time.get(key, 0) + n
        for frame in {f"{name} ({where})" for name, where in frames}:
            inclusive[frame] = inclusive.get(frame, 0) + n

    def share(counts: dict[str, int]) -> dict[str, float]:
        ordered = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return {k: round(100 * v / total, 1) for k, v in ordered} if total else {}

    return {"samples": total, "leaf_package_pct": share(by_package), "self_pct": share(self_time), "inclusive_pct": share(inclusive), "file": str(path)}


def cell_seconds(connections: int, alone_ms: float | None, args: argparse.Namespace) -> int:
    """The cell's length: --duration, or longer for a server so slow that a
    response takes a good part of it (AgentMark's server on dataset runs):
    about 5 response times at this concurrency, estimated as one request's
    time alone times the connections (a server that serves one at a time),
    never above --max-cell-seconds."""
    if not alone_ms:
        return args.duration
    estimate = alone_ms / 1000 * connections
    return int(min(args.max_cell_seconds, max(args.duration, -(-5 * estimate // 1))))


def all_pids(servers: dict[str, Server]) -> list[int]:
    return [proc.pid for server in servers.values() for proc in server.procs.values() if proc.running]


async def settle(servers: dict[str, Server], limit: float, quiet_limit: float) -> float:
    """Wait (at most `limit` seconds) until every server is idle (under 5% of
    a core) and, for the first `quiet_limit` seconds, until the rest of the
    machine is quiet too (other work under 10% of it), for two 0.25 s samples
    in a row: work a previous run left behind (a server still computing
    answers nobody reads) or someone else's job is then not measured."""
    started = time.monotonic()
    quiet = 0
    previous = sum(cpu_seconds(pid) for pid in all_pids(servers))
    busy_before = machine_busy()
    self_before = sum(os.times()[:2])
    while time.monotonic() - started < limit:
        await asyncio.sleep(0.25)
        current = sum(cpu_seconds(pid) for pid in all_pids(servers))
        busy_now, self_now = machine_busy(), sum(os.times()[:2])
        capacity = (busy_now[1] - busy_before[1]) / CLK_TCK
        other = (busy_now[0] - busy_before[0]) / CLK_TCK - (current - previous) - (self_now - self_before)
        servers_idle = current - previous < 0.0125
        machine_quiet = (capacity > 0 and other / capacity < 0.10) or time.monotonic() - started > quiet_limit
        quiet = quiet + 1 if servers_idle and machine_quiet else 0
        previous, busy_before, self_before = current, busy_now, self_now
        if quiet >= 2:
            break
    return round(time.monotonic() - started, 2)


async def measure_cell(
    servers: dict[str, Server], server: Server, scenario: str, connections: int, request: Request,
    args: argparse.Namespace, lines: int, alone_ms: float | None,
) -> dict[str, Any]:
    url = server.url_base + request.path
    seconds_asked = cell_seconds(connections, alone_ms, args)
    timeout = max(args.wrk_timeout, seconds_asked)
    settled = [await settle(servers, args.settle_seconds, args.quiet_seconds)]
    if args.warmup > 0:
        await asyncio.to_thread(run_wrk, url, request, connections, args.warmup, args.wrk_threads, timeout)
        settled.append(await settle(servers, args.settle_seconds, args.quiet_seconds))
    profilers = start_profilers(server, scenario, connections, args) if args.py_spy else []
    everyone = all_pids(servers)
    before = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    everyone_before = sum(cpu_seconds(pid) for pid in everyone)
    children0, self0 = os.times().children_user + os.times().children_system, os.times().user + os.times().system
    busy0 = machine_busy()
    result = await asyncio.to_thread(run_wrk, url, request, connections, seconds_asked, args.wrk_threads, timeout)
    busy1 = machine_busy()
    children1, self1 = os.times().children_user + os.times().children_system, os.times().user + os.times().system
    after = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    everyone_after = sum(cpu_seconds(pid) for pid in everyone)
    profiles = finish_profilers(profilers)
    cell: dict[str, Any] = {"server": server.name, "scenario": scenario, "connections": connections}
    alive = {role: proc.running for role, proc in server.procs.items()}
    if not all(alive.values()):
        cell["error"] = f"process died: {[r for r, a in alive.items() if not a]}"
    if "error" in result:
        cell["error"] = result["error"]
        return cell
    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    rps = requests / seconds if seconds else 0.0
    cpu = {role: after[role] - before[role] for role in after}
    # Machine CPU in core-seconds: all of it, and what neither the servers,
    # nor wrk, nor this script used (other work on the machine: noise).
    busy = (busy1[0] - busy0[0]) / CLK_TCK
    capacity = (busy1[1] - busy0[1]) / CLK_TCK
    ours = (everyone_after - everyone_before) + (children1 - children0) + (self1 - self0)
    cell.update(
        requests=requests,
        seconds=round(seconds, 3),
        extended=seconds_asked > args.duration,
        rps=round(rps, 1),
        lines_per_response=lines,
        lines_per_s=round(rps * lines, 0),
        bytes_per_response=round(result["bytes"] / requests) if requests else None,
        latency_ms={k: round(v / 1000, 2) for k, v in result["latency_us"].items()},
        errors=result["errors"],
        cpu_s={role: round(v, 3) for role, v in cpu.items()},
        cpu_ms_per_request={role: (round(1000 * v / requests, 3) if requests else None) for role, v in cpu.items()},
        load_generator_cpu_s=round(children1 - children0, 3),
        machine_cpu_busy=round(busy / capacity, 3) if capacity else None,
        machine_cpu_other=round(max(0.0, busy - ours) / capacity, 3) if capacity else None,
        settle_s=settled,
        peak_rss_mb={role: round(peak_rss_mb(proc.pid), 1) for role, proc in server.procs.items()},
    )
    if requests < 2 * connections:
        cell["few_requests"] = True
    if profiles:
        cell["profiles"] = profiles
    if len(cpu) > 1:
        cell["cpu_ms_per_request"]["total"] = round(1000 * sum(cpu.values()) / requests, 3) if requests else None
    return cell


async def measure_ttfb(server: Server, scenario: str, request: Request, args: argparse.Namespace) -> dict[str, Any]:
    result = await e2e_client.load(
        HOST, server.port, request.path, request.body, request.headers,
        concurrency=args.ttfb_connections, total=args.ttfb_requests, time_limit=args.ttfb_seconds,
    )
    ms = [1000 * v for v in result.first_byte_s]
    total = [1000 * v for v in result.total_s]
    return {
        "server": server.name, "scenario": scenario, "connections": args.ttfb_connections,
        "requests": result.requests, "statuses": {str(k): v for k, v in result.statuses.items()},
        "errors": len(result.errors), "error_samples": sorted(set(result.errors))[:3],
        "stopped_by_time": result.stopped_by_time, "seconds": round(result.elapsed_s, 2),
        "ttfb_ms": {"p50": _r(pct(ms, 50)), "p90": _r(pct(ms, 90)), "p99": _r(pct(ms, 99)), "mean": _r(statistics.fmean(ms) if ms else None)},
        "total_ms": {"p50": _r(pct(total, 50)), "p99": _r(pct(total, 99))},
    }


def _percentiles(seconds: list[float], points: tuple[int, ...] = (50, 90, 99)) -> dict[str, float | None]:
    ms = [1000 * v for v in seconds]
    return {f"p{q}": _r(pct(ms, q), 3) for q in points}


def _paced_summary(result: e2e_client.LoadResult) -> dict[str, Any]:
    return {
        "requests": result.requests, "statuses": {str(k): v for k, v in result.statuses.items()},
        "errors": len(result.errors), "error_samples": sorted(set(result.errors))[:3],
        "stopped_by_time": result.stopped_by_time, "seconds": round(result.elapsed_s, 2),
        "first_ms": _percentiles(result.first_byte_s), "total_ms": _percentiles(result.total_s, (50, 99)),
        "late_ms": {**_percentiles(result.late_s, (50, 99)), "max": _r(1000 * max(result.late_s), 3) if result.late_s else None},
    }


async def gateway_prompt_request(body: bytes) -> bytes:
    """The RunPrompt request bytes the gateway sends its runner for `body`:
    built by the gateway's own code (RunnerPool.open_prompt_stream), the call
    itself intercepted before anything is sent."""
    from agentmark_gw.gateway.config import GatewayConfig
    from agentmark_gw.gateway.runners import RunnerPool
    from agentmark_gw.gateway.webhook import parse_event

    class Captured(Exception):
        pass

    def capture(request: bytes, **_: Any) -> Any:
        raise Captured(request)

    pool = RunnerPool(GatewayConfig(runners=(f"{HOST}:1",)))
    try:
        for runner in pool.runners:
            runner.streamed["RunPrompt"] = capture
        await pool.open_prompt_stream(parse_event(body))
    except Captured as captured:
        return captured.args[0]
    finally:
        await pool.close()
    raise RuntimeError("the gateway's RunnerPool sent no RunPrompt request")


async def runner_paced(port: int, request: bytes, args: argparse.Namespace) -> e2e_client.LoadResult:
    """RunPrompt straight to a runner over one gRPC channel (as the gateway
    has), paced as `e2e_client.load_paced`, warm-up included: time to the
    first message, and to the end of the stream."""
    import grpc

    channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
    run_prompt = channel.unary_stream("/agentmark.runner.v1.Runner/RunPrompt")  # raw bytes both ways

    def sender(result: e2e_client.LoadResult) -> Any:
        async def send(lane: int) -> None:
            started = time.perf_counter()
            call = run_prompt(request, timeout=30.0)
            try:
                message = await call.read()
                if message is grpc.aio.EOF:
                    raise e2e_client.ProtocolError("the runner ended the stream without a message")
                first = time.perf_counter() - started
                while message is not grpc.aio.EOF:
                    message = await call.read()
            except BaseException:
                call.cancel()
                raise
            result.requests += 1
            result.statuses[0] = result.statuses.get(0, 0) + 1  # gRPC OK
            result.first_byte_s.append(first)
            result.total_s.append(time.perf_counter() - started)

        return send

    pacing = {"lanes": args.latency_connections, "rate": args.latency_rate, "time_limit": args.latency_seconds}
    try:
        warmup = e2e_client.LoadResult()
        await e2e_client.paced(sender(warmup), warmup, total=args.latency_connections, **pacing)
        result = e2e_client.LoadResult()
        return await e2e_client.paced(sender(result), result, total=args.latency_requests, **pacing)
    finally:
        await channel.close()


async def measure_added_latency(
    servers: dict[str, Server], server: Server, request: Request, runner_request: bytes, args: argparse.Namespace,
) -> dict[str, Any]:
    """Time to first chunk through the gateway, then time to first message
    straight from its runner, both paced at --latency-rate over
    --latency-connections; what the gateway adds is the difference."""
    await settle(servers, args.settle_seconds, args.quiet_seconds)
    gateway = await e2e_client.load_paced(
        HOST, server.port, request.path, request.body, request.headers,
        connections=args.latency_connections, rate=args.latency_rate, total=args.latency_requests, time_limit=args.latency_seconds,
    )
    await settle(servers, args.settle_seconds, args.quiet_seconds)
    assert server.runner_port is not None
    runner = await runner_paced(server.runner_port, runner_request, args)
    result: dict[str, Any] = {
        "server": server.name, "scenario": "stream", "connections": args.latency_connections, "rate_per_s": args.latency_rate,
        "gateway": _paced_summary(gateway), "runner": _paced_summary(runner),
    }
    for q in ("p50", "p90", "p99"):
        g, r = result["gateway"]["first_ms"][q], result["runner"]["first_ms"][q]
        result[f"added_{q}_ms"] = _r(g - r, 3) if g is not None and r is not None else None
    return result


def _worker_rss(values: list[float]) -> float | None:
    """The largest worker's RSS: the processes under the root when there are
    any (Granian's supervisor runs workers), else the root itself."""
    workers = values[1:] or values
    return round(max(workers), 1) if workers else None


async def measure_rss_rounds(servers: dict[str, Server], server: Server, request: Request, args: argparse.Namespace) -> dict[str, Any]:
    """--rss-rounds runs of wrk (streaming, --rss-connections) against one
    gateway; after each, once the servers are idle again, the gateway's
    current VmRSS, per process. Growth is from round 2 (round 1 may still
    fill caches and pools) to the last."""
    url = server.url_base + request.path
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rss_rounds + 1):
        result = await asyncio.to_thread(run_wrk, url, request, args.rss_connections, args.rss_seconds, args.wrk_threads, args.wrk_timeout)
        settled = await settle(servers, min(args.settle_seconds, 5.0), 0.0)
        gateway, runner = rss_mb(server.procs["gateway"].pid), rss_mb(server.procs["runner"].pid)
        rounds.append({
            "round": number, "requests": result.get("requests"), "error": result.get("error"),
            "errors": result.get("errors"), "settle_s": settled,
            "worker_rss_mb": _worker_rss(gateway), "gateway_processes_rss_mb": [round(v, 1) for v in gateway],
            "runner_rss_mb": round(sum(runner), 1),
        })
    series = [r["worker_rss_mb"] for r in rounds]
    summary: dict[str, Any] = {
        "server": server.name, "connections": args.rss_connections, "seconds_per_round": args.rss_seconds, "rounds": rounds,
        "worker_rss_mb": series, "max_worker_rss_mb": max((v for v in series if v is not None), default=None),
        "growth_mb": None, "growth_pct": None,
    }
    if len(series) >= 3 and series[1] is not None and series[-1] is not None:
        summary["growth_mb"] = round(series[-1] - series[1], 1)
        summary["growth_pct"] = round(100 * (series[-1] - series[1]) / series[1], 1)
    return summary


async def measure_paced(servers: dict[str, Server], server: Server, streams: int, request: Request, args: argparse.Namespace) -> dict[str, Any]:
    """One wave of `streams` paced streams against `server`: the servers'
    CPU per token received (a gateway and its runner apart), this client's
    own CPU per token (it shares the cores), the inter-token gaps the client
    saw, each stream's wall time against the schedule (tokens × gap), and the
    largest worker RSS sampled during the wave."""
    schedule = args.paced_tokens * args.paced_gap_ms / 1000
    time_limit = args.paced_ramp + 3 * schedule + 30.0
    settled = await settle(servers, args.settle_seconds, args.quiet_seconds)
    profilers = start_profilers(server, "paced", streams, args, seconds=args.paced_ramp + schedule) if args.py_spy else []
    everyone = all_pids(servers)
    before = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    everyone_before = sum(cpu_seconds(pid) for pid in everyone)
    self0 = sum(os.times()[:2])
    busy0 = machine_busy()
    rss_max: dict[str, float] = {}
    stop = asyncio.Event()

    async def sample_rss() -> None:
        # Every 0.5 s until the wave ends (bounded by the wave's own limit).
        for _ in range(int(time_limit / 0.5) + 1):
            for role, proc in server.procs.items():
                worker = _worker_rss(rss_mb(proc.pid))
                if worker is not None:
                    rss_max[role] = max(rss_max.get(role, 0.0), worker)
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
                return
            except TimeoutError:
                continue

    sampler = asyncio.create_task(sample_rss())
    try:
        result = await e2e_client.paced_streams(
            HOST, server.port, request.path, request.body, request.headers,
            streams=streams, ramp=args.paced_ramp, time_limit=time_limit, token=PACED_TOKEN,
        )
    finally:
        stop.set()
        await sampler
    busy1 = machine_busy()
    self1 = sum(os.times()[:2])
    after = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    everyone_after = sum(cpu_seconds(pid) for pid in everyone)
    profiles = finish_profilers(profilers)
    cpu = {role: after[role] - before[role] for role in after}
    busy = (busy1[0] - busy0[0]) / CLK_TCK
    capacity = (busy1[1] - busy0[1]) / CLK_TCK
    ours = (everyone_after - everyone_before) + (self1 - self0)
    tokens = result.tokens
    expected = streams * args.paced_tokens
    gaps = [1000 * g for g in result.gaps_s]
    cell: dict[str, Any] = {
        "server": server.name, "streams": streams, "tokens_per_stream": args.paced_tokens, "gap_due_ms": args.paced_gap_ms,
        "ramp_s": args.paced_ramp, "schedule_s": schedule, "settle_s": settled,
        "completed": result.completed, "tokens": tokens, "tokens_expected": expected,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "errors": len(result.errors), "error_samples": sorted(set(result.errors))[:3],
        "seconds": round(result.elapsed_s, 2),
        "cpu_s": {role: round(v, 3) for role, v in cpu.items()},
        "cpu_us_per_token": {role: (round(1e6 * v / tokens, 1) if tokens else None) for role, v in cpu.items()},
        "client_cpu_us_per_token": round(1e6 * (self1 - self0) / tokens, 1) if tokens else None,
        "gap_ms": {"p50": _r(pct(gaps, 50), 2), "p90": _r(pct(gaps, 90), 2), "p99": _r(pct(gaps, 99), 2), "max": _r(max(gaps), 1) if gaps else None},
        "first_token_ms": _percentiles(result.first_s),
        "stream_wall_s": {q: _r(pct(result.total_s, n), 3) for q, n in (("p50", 50), ("p99", 99))},
        "stream_wall_vs_schedule": {q: _ratio(pct(result.total_s, n), schedule) for q, n in (("p50", 50), ("p99", 99))},
        "worker_rss_max_mb": {role: round(v, 1) for role, v in rss_max.items()},
        "machine_cpu_busy": round(busy / capacity, 3) if capacity else None,
        "machine_cpu_other": round(max(0.0, busy - ours) / capacity, 3) if capacity else None,
        "load_average": os.getloadavg()[0],
    }
    cell["gap_p99_target_met"] = bool(gaps) and tokens == expected and not result.errors and cell["gap_ms"]["p99"] <= PACED_GAP_TARGET_MS
    if len(cpu) > 1:
        cell["cpu_us_per_token"]["total"] = round(1e6 * sum(cpu.values()) / tokens, 1) if tokens else None
    if profiles:
        cell["profiles"] = profiles
    return cell


def paced_held(cells: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per server: the most streams of a wave whose every token came, with
    the inter-token gap p99 at most PACED_GAP_TARGET_MS."""
    held: dict[str, int | None] = {}
    for cell in cells:
        best = held.setdefault(cell["server"], None)
        if cell.get("gap_p99_target_met") and (best is None or cell["streams"] > best):
            held[cell["server"]] = cell["streams"]
    return held


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# --- ratios and the report ---------------------------------------------------------


def _get(record: dict[str, Any] | None, *keys: str) -> float | None:
    value: Any = record
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


def _cpu_total(cell: dict[str, Any] | None) -> float | None:
    cpu = (cell or {}).get("cpu_ms_per_request") or {}
    return cpu.get("total", next(iter(cpu.values()), None)) if cpu else None


def _ratio(value: float | None, other: float | None) -> float | None:
    return round(value / other, 3) if value is not None and other else None


def _ratio_row(row: dict[str, Any], server: str, value: float | None, base: float | None, others: dict[str, float | None]) -> dict[str, Any]:
    """`row` with `server`'s `value`, the default gateway's, and the ratios."""
    row.update(server=server, value=value, gateway=base)
    for other, v in others.items():
        row[other] = v
        row[f"vs_{other}"] = _ratio(value, v)
    if server != BASE_GATEWAY:
        row["vs_gateway"] = _ratio(value, base)
    return row


def ratios(cells: list[dict[str, Any]], ttfb: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each gateway variant ÷ the ceiling and the peer, metric by metric, and
    the variants ÷ the default gateway (`vs_gateway`). `value` is the
    variant's own figure, `gateway` the default gateway's."""
    by = {(c["server"], c["scenario"], c["connections"]): c for c in cells}
    out: list[dict[str, Any]] = []
    metrics = {
        "rps": lambda c: _get(c, "rps"),
        "lines_per_s": lambda c: _get(c, "lines_per_s"),
        "latency_p50_ms": lambda c: _get(c, "latency_ms", "p50"),
        "latency_p99_ms": lambda c: _get(c, "latency_ms", "p99"),
        "cpu_ms_per_request": _cpu_total,  # a gateway: gateway + runner
        "cpu_ms_per_request_gateway_only": lambda c: _get(c, "cpu_ms_per_request", "gateway") if c and is_gateway(c["server"]) else _cpu_total(c),
    }
    keys = sorted({(c["scenario"], c["connections"]) for c in cells}, key=lambda k: (list(SCENARIOS).index(k[0]), k[1]))
    variants = [v for v in GATEWAY_VARIANTS if any(c["server"] == v for c in cells)]
    for variant in variants:
        for scenario, connections in keys:
            for metric, get in metrics.items():
                out.append(_ratio_row(
                    {"scenario": scenario, "connections": connections, "metric": metric}, variant,
                    get(by.get((variant, scenario, connections))), get(by.get((BASE_GATEWAY, scenario, connections))),
                    {other: get(by.get((other, scenario, connections))) for other in ("ceiling", "peer")},
                ))
    tby = {(t["server"], t["scenario"]): t for t in ttfb}
    for variant in [v for v in GATEWAY_VARIANTS if any(t["server"] == v for t in ttfb)]:
        for scenario in [s for s in SCENARIOS if any(t["scenario"] == s for t in ttfb)]:
            p50 = {name: _get(tby.get((name, scenario)), "ttfb_ms", "p50") for name in (variant, BASE_GATEWAY, "ceiling", "peer")}
            out.append(_ratio_row(
                {"scenario": scenario, "connections": ttfb[0]["connections"], "metric": "ttfb_p50_ms"}, variant,
                p50[variant], p50[BASE_GATEWAY], {other: p50[other] for other in ("ceiling", "peer")},
            ))
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = [
        f"## End to end, {meta['date']} ({meta['cpus']} CPUs, Python {meta['python']}, {meta['wrk']}, "
        f"{meta['duration_s']} s per cell after {meta['warmup_s']} s warm-up{', QUICK' if meta['quick'] else ''}"
        f"{', PROFILED (py-spy running)' if meta.get('profiled_with_py_spy') else ''}; commit {meta['commit']}, "
        f"gateway core: {meta['gateway_implementation']}, trivial runner: {meta.get('runner_impl', 'sdk')})",
        "",
    ]
    bad = [c for c in report["checks"] if not c["ok"]]
    out.append("Correctness (one request each): " + ("all OK" if not bad else "PROBLEMS"))
    for c in report["checks"]:
        status = "ok" if c["ok"] else "; ".join(c["problems"])
        out.append(f"- {c['server']} {c['scenario']}: {c['status']}, {c['lines']} line(s), {c.get('framing', '?')}: {status}")
    out.append("")
    out.extend(_markdown_paced(report))
    if not report["cells"]:
        return "\n".join(out) + "\n"
    out.append("Batched: the runner's whole answer ready at once (one gRPC message per call); wrk, closed loop:")
    out.append("")
    out.append("| scenario | conns | server | req/s | lines/s | p50 ms | p99 ms | CPU ms/req | machine busy (other work) | errors |")
    out.append("|---|---:|---|---:|---:|---:|---:|---|---:|---|")
    for c in report["cells"]:
        if "error" in c and "rps" not in c:
            out.append(f"| {c['scenario']} | {c['connections']} | {c['server']} | {c['error']} | | | | | | |")
            continue
        cpu = c["cpu_ms_per_request"]
        cpu_text = " + ".join(f"{_fmt(v, 2)} {k}" for k, v in cpu.items() if k != "total") if len(cpu) > 1 else _fmt(next(iter(cpu.values())), 2)
        errors = c["errors"]
        error_text = ", ".join(f"{k} {v}" for k, v in errors.items() if v) or "0"
        if c["server"] == "peer" and c["scenario"] != "prompt" and errors.get("read") and errors["read"] >= c["requests"] * 0.95:
            error_text += " (EOF-ended bodies)"
        flags = ""
        if c.get("extended"):
            flags += f" ({c['seconds']:.0f} s)"
        if c.get("noisy_attempts"):
            flags += " ↻"  # the other attempt is in the JSON
        if c.get("few_requests"):
            flags += f" ⚠ {c['requests']} req"
        busy_text = "n/a" if c.get("machine_cpu_busy") is None else f"{c['machine_cpu_busy']:.0%} ({c['machine_cpu_other']:.0%})"
        out.append(
            f"| {c['scenario']} | {c['connections']} | {c['server']} | {_fmt(c['rps'])}{flags} | {_fmt(c['lines_per_s'], 0)} | "
            f"{_fmt(c['latency_ms']['p50'], 2)} | {_fmt(c['latency_ms']['p99'], 2)} | {cpu_text} | {busy_text} | {error_text} |"
        )
    out.append("")
    out.append(
        "CPU ms/req: server process tree (utime+stime) over the run ÷ requests completed. Machine busy: share of all "
        f"{meta['cpus']} cores in use during the run; other work: what neither the servers, wrk nor this script used (noise). "
        "(N s): a cell stretched past --duration for a slow server; ⚠: fewer than 2 requests per connection completed; "
        "↻: measured again because other work was running (the quieter attempt is shown)."
    )
    out.append("")
    threshold = meta.get("noise", {}).get("noisy_threshold", 0.10)
    noisy = [c for c in report["cells"] if (c.get("machine_cpu_other") or 0) > threshold]
    if noisy:
        out.append(
            f"NOISE: {len(noisy)} of {len(report['cells'])} cells ran while other work took more than {threshold:.0%} of the machine, "
            "even after measuring again: their requests/s understate, and ratios between a noisy and a quiet cell are skewed "
            "(CPU per request is less affected). "
            + ", ".join(f"{c['scenario']} c={c['connections']} {c['server']} ({c['machine_cpu_other']:.0%})" for c in noisy)
            + "."
        )
        out.append("")
    if report["ttfb"]:
        out.append(
            f"Time to first chunk UNDER SATURATION (closed loop: our asyncio client keeps {report['ttfb'][0]['connections']} connections "
            "busy back to back, first body bytes; on 2 shared cores this is mostly queueing; the gateway's own latency is in "
            "\"Added latency\" below):"
        )
        out.append("")
        out.append("| scenario | server | requests | TTFB p50 ms | TTFB p99 ms | whole response p50 ms | non-200 / errors |")
        out.append("|---|---|---:|---:|---:|---:|---|")
        for t in report["ttfb"]:
            non200 = sum(v for k, v in t["statuses"].items() if k != "200")
            out.append(
                f"| {t['scenario']} | {t['server']} | {t['requests']} | {_fmt(t['ttfb_ms']['p50'], 2)} | {_fmt(t['ttfb_ms']['p99'], 2)} | "
                f"{_fmt(t['total_ms']['p50'], 2)} | {non200} / {t['errors']} |"
            )
        out.append("")
    out.extend(_markdown_latency(report.get("added_latency") or []))
    out.extend(_markdown_rss(report.get("rss_rounds") or []))
    processes = report.get("peak_rss_mb_processes") or {}

    def peak(server: str, role: str, value: float) -> str:
        each = processes.get(server, {}).get(role) or []
        return f"{_fmt(value)} {role}" + (f" ({' + '.join(_fmt(v) for v in each)} in {len(each)} processes)" if len(each) > 1 else "")

    out.append("Peak RSS (VmHWM, MiB, over the whole run, summed over each process tree): " + "; ".join(
        f"{server}: " + " + ".join(peak(server, role, v) for role, v in roles.items()) for server, roles in report["peak_rss_mb"].items()
    ))
    out.append("")
    base_rows = [r for r in report["ratios"] if r.get("server", BASE_GATEWAY) == BASE_GATEWAY]
    if base_rows:
        out.append("Gateway ÷ other (req/s, lines/s: above 1× is better; latency, CPU: below 1× is better; gateway CPU includes its runner):")
        out.append("")
        out.append("| scenario | conns | req/s vs ceiling | vs peer | p50 vs ceiling | vs peer | p99 vs ceiling | vs peer | CPU/req vs ceiling | vs peer |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (scenario, connections), metrics in _by_cell(base_rows).items():
            if "rps" not in metrics:
                continue
            cells = [_x(metrics[m].get(f"vs_{o}")) for m in ("rps", "latency_p50_ms", "latency_p99_ms", "cpu_ms_per_request") for o in ("ceiling", "peer")]
            out.append(f"| {scenario} | {connections} | " + " | ".join(cells) + " |")
        out.append("")
    out.extend(_markdown_variants(report["ratios"]))
    ttfb_rows = [r for r in report["ratios"] if r["metric"] == "ttfb_p50_ms"]
    if ttfb_rows:
        out.append("TTFB p50 under saturation, gateway ÷ other: " + "; ".join(
            f"{r.get('server', BASE_GATEWAY)} {r['scenario']} {_x(r['vs_ceiling'])} ceiling, {_x(r['vs_peer'])} peer" for r in ttfb_rows
        ))
    if report.get("notes"):
        out.append("")
        out.extend(f"- {note}" for note in report["notes"])
    return "\n".join(out) + "\n"


def _markdown_paced(report: dict[str, Any]) -> list[str]:
    cells = report.get("paced") or []
    if not cells:
        return []
    first = cells[0]
    out = [
        f"Paced (how a model streams): each stream {first['tokens_per_stream']} text deltas, one gRPC message each, one every "
        f"{first['gap_due_ms']} ms on the runner's schedule ({first['schedule_s']:g} s), then finish; a wave of concurrent streams "
        f"started over {first['ramp_s']:g} s, one connection each. CPU µs per token received: the server's process tree (a gateway's "
        "runner apart); gap: between consecutive tokens of a stream as our client read them (all streams pooled); wall: a stream's "
        "request to its end ÷ the schedule:",
        "",
        "| streams | server | tokens | CPU µs/token | gap p50 / p99 / max ms | first token p50 ms | wall p50 / p99 ÷ schedule "
        "| worker RSS max MiB | client µs/token | machine busy (other), load | errors |",
        "|---:|---|---:|---|---|---:|---|---:|---:|---|---:|",
    ]
    for c in cells:
        cpu = c["cpu_us_per_token"]
        cpu_text = " + ".join(f"{_fmt(v)} {k}" for k, v in cpu.items() if k != "total") if len(cpu) > 1 else _fmt(next(iter(cpu.values())))
        gap = c["gap_ms"]
        wall = c["stream_wall_vs_schedule"]
        busy = "n/a" if c.get("machine_cpu_busy") is None else f"{c['machine_cpu_busy']:.0%} ({c['machine_cpu_other']:.0%}), {c['load_average']:.1f}"
        rss = next(iter(c["worker_rss_max_mb"].values()), None)
        out.append(
            f"| {c['streams']} | {c['server']} | {c['tokens']:,}/{c['tokens_expected']:,} | {cpu_text} | "
            f"{_fmt(gap['p50'], 1)} / {_fmt(gap['p99'], 1)} / {_fmt(gap['max'], 0)} | {_fmt(c['first_token_ms']['p50'], 1)} | "
            f"{_x(wall['p50'])} / {_x(wall['p99'])} | {_fmt(rss)} | {_fmt(c['client_cpu_us_per_token'])} | {busy} | {c['errors']} |"
        )
    out.append("")
    by = {(c["server"], c["streams"]): c for c in cells}
    ratio_rows = []
    for c in cells:
        ceiling = by.get(("ceiling", c["streams"]))
        if not is_gateway(c["server"]) or ceiling is None:
            continue
        own = c["cpu_us_per_token"].get("gateway")
        baseline = by.get((BASELINE, c["streams"]))
        vs_baseline = _ratio(own, baseline["cpu_us_per_token"].get("gateway")) if baseline and c["server"] != BASELINE else None
        ratio_rows.append(
            f"| {c['streams']} | {c['server']} | {_x(_ratio(own, ceiling['cpu_us_per_token'].get('ceiling')))} | "
            f"{_x(_ratio(c['gap_ms']['p99'], ceiling['gap_ms']['p99']))} | {_x(_ratio(c['stream_wall_s']['p99'], ceiling['stream_wall_s']['p99']))} | "
            f"{_x(vs_baseline) if vs_baseline is not None else '—'} |"
        )
    if ratio_rows:
        out += [
            f"Gateway ÷ ceiling, same wave size (below 1× is better; the gateway's CPU without its runner); last column: CPU per token ÷ {BASELINE}'s:",
            "",
            "| streams | server | CPU per token | gap p99 | stream wall p99 | CPU ÷ baseline |",
            "|---:|---|---:|---:|---:|---:|",
            *ratio_rows,
            "",
        ]
    held = report.get("paced_held") or {}
    if held:
        out.append(f"Most streams held (every token, gap p99 ≤ {PACED_GAP_TARGET_MS:g} ms), of the wave sizes run: " + "; ".join(
            f"{server} {_fmt(n) if n is not None else 'none'}" for server, n in held.items()
        ) + ".")
        out.append("")
    return out


def _by_cell(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    """Ratio rows by (scenario, connections), then metric."""
    cells: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["connections"]), {})[r["metric"]] = r
    return cells


def _markdown_variants(ratio_rows: list[dict[str, Any]]) -> list[str]:
    """Every gateway variant beside the default one: req/s and CPU/request."""
    rows = [r for r in ratio_rows if r["metric"] != "ttfb_p50_ms" and "server" in r]
    if not any(r["server"] != BASE_GATEWAY for r in rows):
        return []
    out = [
        f"Gateway variants ÷ the default gateway ({GATEWAY_VARIANTS[BASE_GATEWAY][1]}), each with its own runner "
        "(req/s: above 1× is better; CPU ms/req, gateway + runner: below 1× is better):",
        "",
        "| scenario | conns | server | req/s | ÷ gateway | ÷ ceiling | CPU ms/req (gateway + runner) | ÷ gateway | gateway-only CPU ÷ gateway |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_server.setdefault(r["server"], []).append(r)
    cells = {server: _by_cell(server_rows) for server, server_rows in by_server.items()}
    keys = list(dict.fromkeys(k for server_cells in cells.values() for k in server_cells))
    for scenario, connections in keys:
        for server in [v for v in GATEWAY_VARIANTS if v in cells]:
            metrics = cells[server].get((scenario, connections))
            if not metrics or "rps" not in metrics:
                continue
            rps, cpu, own = metrics["rps"], metrics["cpu_ms_per_request"], metrics["cpu_ms_per_request_gateway_only"]
            runner = cpu["value"] - own["value"] if cpu["value"] is not None and own["value"] is not None else None
            base = server == BASE_GATEWAY
            out.append(
                f"| {scenario} | {connections} | {server} | {_fmt(rps['value'])} | {'—' if base else _x(rps.get('vs_gateway'))} | "
                f"{_x(rps.get('vs_ceiling'))} | {_fmt(cpu['value'], 2)} ({_fmt(own['value'], 2)} + {_fmt(runner, 2)}) | "
                f"{'—' if base else _x(cpu.get('vs_gateway'))} | {'—' if base else _x(own.get('vs_gateway'))} |"
            )
    out.append("")
    return out


def _markdown_latency(results: list[dict[str, Any]]) -> list[str]:
    if not results:
        return []
    first = results[0]
    out = [
        f"Added latency (open loop: the streaming prompt-run due at {_fmt(first['rate_per_s'], 0)} req/s over {first['connections']} "
        "connections, so queueing does not dominate; gateway: first body bytes at our HTTP client; runner: its first gRPC message "
        "when our grpc.aio client calls it directly with the request bytes the gateway builds, same pacing; added = gateway − runner; "
        "target: added p50 ≤ 1 ms):",
        "",
        "| server | requests (gateway / runner) | gateway first chunk ms p50 / p90 / p99 | runner first message ms p50 / p90 / p99 | "
        "added p50 ms | added p90 ms | sent late ms p99 (gateway / runner) | non-200 / errors |",
        "|---|---:|---|---|---:|---:|---|---|",
    ]
    for r in results:
        g, n = r["gateway"], r["runner"]
        non200 = sum(v for k, v in g["statuses"].items() if k != "200")
        out.append(
            f"| {r['server']} | {g['requests']} / {n['requests']} | "
            + " / ".join(_fmt(g["first_ms"][q], 2) for q in ("p50", "p90", "p99")) + " | "
            + " / ".join(_fmt(n["first_ms"][q], 2) for q in ("p50", "p90", "p99")) + " | "
            f"{_fmt(r['added_p50_ms'], 2)} | {_fmt(r['added_p90_ms'], 2)} | {_fmt(g['late_ms']['p99'], 2)} / {_fmt(n['late_ms']['p99'], 2)} | "
            f"{non200} / {g['errors'] + n['errors']} |"
        )
    out.append("")
    return out


def _markdown_rss(results: list[dict[str, Any]]) -> list[str]:
    if not results:
        return []
    first = results[0]
    out = [
        f"Memory: the gateway worker's current VmRSS (MiB) after each of {len(first['rounds'])} rounds of streaming at "
        f"{first['connections']} connections ({first['seconds_per_round']} s each, servers idle again); growth from round 2 to the last "
        "(target: ≤ 150 MB per worker, no growth):",
        "",
        "| server | VmRSS per round, MiB | max | growth round 2 → last | requests per round | processes after the last round (MiB) |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in results:
        growth = "n/a" if r["growth_mb"] is None else f"{r['growth_mb']:+.1f} MiB ({r['growth_pct']:+.1f}%)"
        requests = ", ".join(_fmt(x["requests"]) if x["requests"] is not None else (x["error"] or "n/a") for x in r["rounds"])
        last = r["rounds"][-1]["gateway_processes_rss_mb"] if r["rounds"] else []
        out.append(
            f"| {r['server']} | {', '.join(_fmt(v) for v in r['worker_rss_mb'])} | {_fmt(r['max_worker_rss_mb'])} | {growth} | "
            f"{requests} | {' + '.join(_fmt(v) for v in last)} |"
        )
    out.append("")
    return out


# --- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end benchmark: gateway vs bare Quart (ceiling) vs AgentMark's server (peer).")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per cell (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk before each cell (default 2)")
    parser.add_argument("--connections", default="16,64", help="comma-separated wrk connection counts (default 16,64)")
    parser.add_argument("--servers", default=",".join(s for s in SERVERS if s != BASELINE),
                        help=f"comma-separated subset of {','.join(SERVERS)} ({BASELINE} needs --baseline; with it, it is added)")
    parser.add_argument("--baseline", metavar="REV",
                        help=f"also run {BASELINE}: the gateway with python/ as at git revision REV "
                        "(this checkout's Rust extension), beside the working tree's")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--max-cell-seconds", type=int, default=60,
                        help="longest a cell may be stretched for a server slower than --duration allows (default 60)")
    parser.add_argument("--settle-seconds", type=float, default=20.0,
                        help="longest wait for the servers to go idle between runs (default 20)")
    parser.add_argument("--quiet-seconds", type=float, default=5.0,
                        help="longest wait for other work on the machine to stop before each run (default 5)")
    parser.add_argument("--noisy-threshold", type=float, default=0.10,
                        help="a cell during which other work used more than this share of the machine is measured again (default 0.10)")
    parser.add_argument("--noisy-retries", type=int, default=1, help="how many times a noisy cell is measured again (default 1)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the machine has 2 cores)")
    parser.add_argument("--wrk-timeout", type=int, default=10, help="wrk per-request timeout, seconds")
    parser.add_argument("--ttfb-requests", type=int, default=400, help="requests per time-to-first-chunk run (default 400)")
    parser.add_argument("--ttfb-connections", type=int, default=16)
    parser.add_argument("--ttfb-seconds", type=float, default=15.0, help="time bound of one time-to-first-chunk run")
    parser.add_argument("--runner-impl", choices=RUNNER_IMPLS, default="rust",
                        help="the gateways' trivial runner: rust (default), the raw runner's bytes from a one-thread tonic server "
                             "(benchmarks/trivial-runner-rs, built on first use), so the runner takes little of the cores the gateway "
                             "shares; raw: grpc.aio handlers answering the same pre-encoded messages; sdk: the project's runner SDK")
    parser.add_argument("--latency-rate", type=float, default=100.0, help="added latency: requests due per second, all lanes together (default 100)")
    parser.add_argument("--latency-requests", type=int, default=400, help="added latency: requests per paced run, 0 to skip (default 400)")
    parser.add_argument("--latency-connections", type=int, default=16, help="added latency: connections (lanes) of a paced run (default 16)")
    parser.add_argument("--rss-rounds", type=int, default=5, help="memory: rounds of streaming per gateway variant, 0 to skip (default 5)")
    parser.add_argument("--rss-seconds", type=int, default=4, help="memory: seconds of wrk per round (default 4)")
    parser.add_argument("--rss-connections", type=int, default=64, help="memory: wrk connections per round (default 64)")
    parser.add_argument("--paced-streams", default="100,500,1000", help="paced scenario: comma-separated concurrent stream counts (default 100,500,1000)")
    parser.add_argument("--paced-tokens", type=int, default=payloads.PACED_TOKENS,
                        help=f"paced scenario: text deltas per stream (default {payloads.PACED_TOKENS})")
    parser.add_argument("--paced-gap-ms", type=int, default=payloads.PACED_GAP_MS, help=f"paced scenario: ms between deltas (default {payloads.PACED_GAP_MS})")
    parser.add_argument("--paced-ramp", type=float, default=1.0, help="paced scenario: seconds over which a wave's streams start (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s cells (12 s at most), 1 s warm-up, 64 TTFB and 64 paced requests, "
                        "3 memory rounds of 2 s, short waits, no re-measuring")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="profile with py-spy during each measured run, collapsed stacks into DIR (perturbs the figures)")
    parser.add_argument("--profile-servers", default="gateway", help="which servers --py-spy profiles (default gateway)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2), min(args.warmup, 1)
        args.max_cell_seconds, args.settle_seconds = min(args.max_cell_seconds, 12), min(args.settle_seconds, 10.0)
        args.quiet_seconds, args.noisy_retries = min(args.quiet_seconds, 1.0), 0
        args.ttfb_requests, args.ttfb_seconds = min(args.ttfb_requests, 64), min(args.ttfb_seconds, 5.0)
        args.latency_requests = min(args.latency_requests, 64)
        args.rss_rounds, args.rss_seconds = min(args.rss_rounds, 3), min(args.rss_seconds, 2)
        args.paced_tokens = min(args.paced_tokens, 50)
    args.paced_stream_counts = [int(c) for c in args.paced_streams.split(",") if c]
    if any(not 1 <= c <= 5000 for c in args.paced_stream_counts) or not 1 <= args.paced_tokens <= 10_000:
        parser.error("--paced-streams must be 1..5000 each and --paced-tokens 1..10000")
    if not 1 <= args.paced_gap_ms <= 10_000 or not 0 <= args.paced_ramp <= 60:
        parser.error("--paced-gap-ms must be 1..10000 and --paced-ramp 0..60")
    args.profile_servers = [s for s in args.profile_servers.split(",") if s]
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    args.connection_counts = [int(c) for c in args.connections.split(",") if c]
    args.server_names = [s for s in args.servers.split(",") if s]
    if args.baseline and BASELINE not in args.server_names:
        args.server_names.insert(args.server_names.index(BASE_GATEWAY) + 1 if BASE_GATEWAY in args.server_names else 0, BASELINE)
    if BASELINE in args.server_names and not args.baseline:
        parser.error(f"{BASELINE} needs --baseline REV")
    args.scenario_names = [s for s in args.scenarios.split(",") if s]
    for name in args.server_names:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
    for name in args.scenario_names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 and --warmup 0..60")
    args.max_cell_seconds = max(args.duration, min(args.max_cell_seconds, 600))
    args.settle_seconds = max(0.0, min(args.settle_seconds, 120.0))
    args.noisy_retries = max(0, min(args.noisy_retries, 3))
    if any(not 1 <= c <= 1024 for c in args.connection_counts):
        parser.error("--connections must be 1..1024 each")
    for name in args.profile_servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r} in --profile-servers")
    if not 0 <= args.latency_requests <= 100_000 or not 0.1 <= args.latency_rate <= 10_000 or not 1 <= args.latency_connections <= 1024:
        parser.error("--latency-requests must be 0..100000, --latency-rate 0.1..10000 and --latency-connections 1..1024")
    if not 0 <= args.rss_rounds <= 50 or not 1 <= args.rss_seconds <= 600 or not 1 <= args.rss_connections <= 1024:
        parser.error("--rss-rounds must be 0..50, --rss-seconds 1..600 and --rss-connections 1..1024")
    # A paced run is bounded in time too: its requests' due times, and some slack.
    args.latency_seconds = args.latency_requests / args.latency_rate + 10.0
    return args


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    servers = build_servers(args.server_names, secret, workdir, args.runner_impl, args.baseline)
    gateways = [server for name, server in servers.items() if is_gateway(name)]
    report: dict[str, Any] = {
        "checks": [], "paced": [], "cells": [], "ttfb": [], "added_latency": [], "rss_rounds": [], "peak_rss_mb": {}, "peak_rss_mb_processes": {}, "notes": [],
    }
    wrk_scenarios = [s for s in args.scenario_names if s in WRK_SCENARIOS]
    # Only the paced scenario asked for: it runs alone, without the streaming
    # prompt-run's latency and memory runs.
    only_paced = not wrk_scenarios
    try:
        for server in servers.values():
            for proc in reversed(list(server.procs.values())):  # the runner before the gateway
                proc.start()
        for server in servers.values():
            await wait_ready(server)
            log(f"{server.name} ready on port {server.port} (pids {', '.join(f'{r} {p.pid}' for r, p in server.procs.items())})")
        if gateways:
            reply = await e2e_client.one(HOST, gateways[0].port, "GET", "/healthz")
            report["gateway_implementation"] = json.loads(reply.body).get("implementation")
        # The streaming body is also what the latency and memory runs send.
        requests = build_requests(
            servers, list(dict.fromkeys([*args.scenario_names, "stream"])), secret, workdir, (args.paced_tokens, args.paced_gap_ms),
        )

        lines: dict[tuple[str, str], int] = {}
        alone: dict[tuple[str, str], float | None] = {}
        for scenario in args.scenario_names:
            for name, server in servers.items():
                # A paced answer takes tokens × gap: checked once.
                result = await check(server, scenario, requests[(name, scenario)], 1 if scenario == "paced" else 3, args.paced_tokens)
                report["checks"].append(result)
                expected = {"prompt": 1, "stream": payloads.N_CHUNKS + 1, "dataset": payloads.N_ROWS, "paced": args.paced_tokens + 1}[scenario]
                lines[(name, scenario)] = result["lines"] if result["ok"] and result["lines"] else expected
                alone[(name, scenario)] = result.get("alone_ms")
                log(f"check {name} {scenario}: {'ok' if result['ok'] else result['problems']} ({result['lines']} lines)")

        if "paced" in args.scenario_names:
            for streams in args.paced_stream_counts:
                for name, server in servers.items():
                    cell = await measure_paced(servers, server, streams, requests[(name, "paced")], args)
                    report["paced"].append(cell)
                    log(
                        f"paced {streams} streams {name}: {cell['tokens']}/{cell['tokens_expected']} tokens, CPU/token {cell['cpu_us_per_token']} µs, "
                        f"gap p50 {cell['gap_ms']['p50']} p99 {cell['gap_ms']['p99']} ms, stream wall p99 {cell['stream_wall_s']['p99']} s, "
                        f"client {cell['client_cpu_us_per_token']} µs/token, {cell['errors']} errors, machine busy {cell['machine_cpu_busy']:.0%} "
                        f"(other {cell['machine_cpu_other']:.0%}), load {cell['load_average']:.2f}"
                    )
                    for proc in server.procs.values():
                        if not proc.running:
                            raise RuntimeError(f"{proc.name} died during paced {streams} ({proc.exit_text()}):\n{tail(proc.log, 15)}")
            report["paced_held"] = paced_held(report["paced"])

        total_cells = len(wrk_scenarios) * len(args.connection_counts) * len(servers)
        done = 0
        for scenario in wrk_scenarios:
            for connections in args.connection_counts:
                for name, server in servers.items():
                    cell = await measure_cell(
                        servers, server, scenario, connections, requests[(name, scenario)], args, lines[(name, scenario)], alone[(name, scenario)]
                    )
                    for _ in range(args.noisy_retries):
                        if (cell.get("machine_cpu_other") or 0) <= args.noisy_threshold:
                            break
                        log(f"{scenario} c={connections} {name}: other work took {cell['machine_cpu_other']:.0%} of the machine; measuring again")
                        retry = await measure_cell(
                            servers, server, scenario, connections, requests[(name, scenario)], args, lines[(name, scenario)], alone[(name, scenario)]
                        )
                        noisy = cell.pop("noisy_attempts", [])
                        if "error" not in retry and (retry.get("machine_cpu_other") or 0) < (cell.get("machine_cpu_other") or 0):
                            cell, rejected = retry, cell
                        else:
                            rejected = retry
                        # The attempt not kept, for the record.
                        cell["noisy_attempts"] = [*noisy, {k: rejected.get(k) for k in ("rps", "latency_ms", "machine_cpu_other", "error")}]
                    report["cells"].append(cell)
                    done += 1
                    summary = cell.get("error") or (
                        f"{cell['rps']} req/s over {cell['seconds']:.0f} s, p50 {cell['latency_ms']['p50']} ms, "
                        f"errors {cell['errors']}, machine busy {cell['machine_cpu_busy']:.0%} (other work {cell['machine_cpu_other']:.0%})"
                    )
                    log(f"[{done}/{total_cells}] {scenario} c={connections} {name}: {summary}")
                    for proc in server.procs.values():
                        if not proc.running:
                            raise RuntimeError(f"{proc.name} died during {scenario} c={connections} ({proc.exit_text()}):\n{tail(proc.log, 15)}")

        if args.ttfb_requests > 0:
            for scenario in wrk_scenarios:
                for name, server in servers.items():
                    await settle(servers, args.settle_seconds, args.quiet_seconds)
                    result = await measure_ttfb(server, scenario, requests[(name, scenario)], args)
                    report["ttfb"].append(result)
                    log(f"ttfb {scenario} {name}: p50 {result['ttfb_ms']['p50']} ms over {result['requests']} requests, {result['errors']} errors")

        if args.latency_requests > 0 and gateways and not only_paced:
            runner_request = await gateway_prompt_request(requests[(gateways[0].name, "stream")].body)
            for server in gateways:
                result = await measure_added_latency(servers, server, requests[(server.name, "stream")], runner_request, args)
                report["added_latency"].append(result)
                log(
                    f"added latency {server.name}: first chunk p50 {result['gateway']['first_ms']['p50']} ms, runner's first message "
                    f"p50 {result['runner']['first_ms']['p50']} ms, added {result['added_p50_ms']} ms "
                    f"({result['gateway']['errors'] + result['runner']['errors']} errors)"
                )

        if args.rss_rounds > 0 and not only_paced:
            for server in gateways:
                result = await measure_rss_rounds(servers, server, requests[(server.name, "stream")], args)
                report["rss_rounds"].append(result)
                log(f"memory {server.name}: worker VmRSS {result['worker_rss_mb']} MiB, growth from round 2 {result['growth_mb']} MiB")

        eof_cells = [c for c in report["cells"] if c.get("errors", {}).get("read") and c["errors"]["read"] >= 0.95 * c["requests"]]
        if eof_cells:
            report["notes"].append(
                "wrk counts one read error per response whose body ends when the server closes the connection "
                "(AgentMark's server streams that way: HTTP/1.0, no Content-Length, Connection: close); "
                "those responses are complete and counted. Cells: "
                + ", ".join(sorted({f"{c['server']} {c['scenario']}" for c in eof_cells}))
            )
        for name, server in servers.items():
            report["peak_rss_mb"][name] = {role: round(peak_rss_mb(proc.pid), 1) for role, proc in server.procs.items()}
            report["peak_rss_mb_processes"][name] = {role: [round(v, 1) for v in rss_mb(proc.pid, "VmHWM")] for role, proc in server.procs.items()}
        for server in servers.values():
            for proc in server.procs.values():
                summary = summarize_log(proc.log)
                if summary:
                    report.setdefault("server_log_problems", {})[proc.name] = summary
                    report["notes"].append(f"{proc.name} logged: " + "; ".join(f"{n}× {text}" for text, n in summary.items()))
    finally:
        for server in servers.values():
            for proc in server.procs.values():  # the gateway before its runner
                proc.stop()
    return report


def summarize_log(path: Path, limit: int = 8) -> dict[str, int]:
    """Warnings, errors and exceptions a server logged, counted by kind."""
    counts: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return counts
    for line in text.splitlines():
        key = None
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = {}
            if record.get("level") in ("warning", "error", "critical"):
                key = f"{record['level']}: {record.get('message', '')[:160]}"
        elif re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(:|$)", line) or line.startswith("Task was destroyed"):
            key = line[:160]
        elif re.search(r"\b(ERROR|WARNING|CRITICAL)\b", line):
            key = re.sub(r"^\S+ \S+ ", "", line)[:160]
        if key:
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk ?"
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return f"wrk {match.group(1)}" if match else "wrk ?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None and any(s in WRK_SCENARIOS for s in args.scenario_names):  # the paced scenario is our own client
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if not EVENTS_DIR.is_dir():
        print(f"error: AgentMark's event bodies are not at {EVENTS_DIR}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentmark-gw-e2e-"))

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
    load_at_start = os.getloadavg()
    try:
        report = asyncio.run(run(args, workdir))
    except KeyboardInterrupt:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}\n(server logs in {workdir})", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "python", "rust"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    report = {
        "meta": {
            "date": dt.date.today().isoformat(),
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "wrk": wrk_version(),
            "commit": commit + ("+dirty" if dirty else ""),
            "gateway_implementation": report.pop("gateway_implementation", None),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_cell_s": args.max_cell_seconds,
            "noise": {"settle_s": args.settle_seconds, "quiet_s": args.quiet_seconds,
                      "noisy_threshold": args.noisy_threshold, "noisy_retries": args.noisy_retries},
            "quick": args.quick,
            "profiled_with_py_spy": bool(args.py_spy),
            "wrk_threads": args.wrk_threads,
            "connections": args.connection_counts,
            "ttfb": {"connections": args.ttfb_connections, "requests": args.ttfb_requests, "time_limit_s": args.ttfb_seconds, "closed_loop": True},
            "added_latency": {"connections": args.latency_connections, "rate_per_s": args.latency_rate, "requests": args.latency_requests,
                              "time_limit_s": args.latency_seconds, "scenario": "stream"},
            "rss_rounds": {"rounds": args.rss_rounds, "seconds": args.rss_seconds, "connections": args.rss_connections, "scenario": "stream"},
            "paced": {"streams": args.paced_stream_counts, "tokens": args.paced_tokens, "gap_ms": args.paced_gap_ms, "ramp_s": args.paced_ramp,
                      "gap_p99_target_ms": PACED_GAP_TARGET_MS},
            "load_average_start": load_at_start,
            "runner_impl": args.runner_impl,
            "servers": {name: (GATEWAY_VARIANTS[name][1] if is_gateway(name) else name) for name in args.server_names},
            "scenarios": {name: SCENARIOS[name][1] for name in args.scenario_names},
            "wall_s": round(time.monotonic() - started, 1),
            "ratio_definition": (
                "gateway variant value (`value`) / other value, for each gateway variant (`server`); `gateway` is the default gateway's "
                "value, and `vs_gateway` a variant's ratio to it; gateway CPU per request includes its runner (cpu_ms_per_request), "
                "or not (…_gateway_only)"
            ),
        },
        **report,
    }
    report["ratios"] = ratios(report["cells"], report["ttfb"])
    text = markdown(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"JSON written to {args.out}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.keep_logs:
        log(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(c["ok"] for c in report["checks"]) else 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
