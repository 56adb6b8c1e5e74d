"""End-to-end benchmark: the gateway against a bare Quart app (the ceiling)
and AgentMark's own webhook server (the peer), side by side in one run.

    .venv/bin/python benchmarks/e2e.py --duration 10 --out benchmarks/results/e2e.json
    .venv/bin/python benchmarks/e2e.py --quick          # smoke run, about 2 minutes

Three servers, each its own process(es) on 127.0.0.1, one Hypercorn worker:

- ceiling: `e2e_servers/ceiling.py`, a bare Quart app on Hypercorn (uvloop)
  that reads the body and answers the same bytes from memory;
- gateway: `agentmark-gw serve` in front of `e2e_servers/trivial_runner.py`,
  a gRPC runner (the project's runner SDK) answering from memory;
- peer: `e2e_servers/peer.py`, AgentMark's `serve_webhook_runner` with its
  own `WebhookRunner` over an executor answering from memory.

Three scenarios, the shared event files as bodies, signed with
`x-agentmark-signature-256`: non-streaming prompt-run (one JSON envelope),
streaming prompt-run (100 text chunks + finish), dataset-run (100 rows).

For each scenario, connection count (16, 64) and server: `wrk --latency`
(warm-up first) gives requests/s and p50/p99 latency; lines/s is requests/s
times the NDJSON lines of one response; server CPU per request is the
utime+stime delta of the server's process tree (/proc/<pid>/stat) over the run,
divided by the requests wrk completed (gateway and runner apart); peak RSS is
VmHWM. Time to first chunk comes from our own asyncio client (first body
bytes), 16 connections, a bounded number of requests. Before any of that, one
request per server and scenario checks the status and the lines.

Ratios are gateway value / other value, for every metric: above 1 is better
for requests/s and lines/s, below 1 is better for latency, CPU and memory.
Servers run interleaved (each cell runs ceiling, gateway, peer back to back)
so drift of a noisy machine hits all three alike. The load generator shares
the 2 cores with the servers; nothing is pinned.
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "e2e_servers"))

import e2e_client  # noqa: E402
import payloads  # noqa: E402

EVENTS_DIR = ROOT.parent / "shared" / "agentmark" / "events"
if not EVENTS_DIR.is_dir():
    EVENTS_DIR = Path("/work/shared/agentmark/events")
WRK_SCRIPT = HERE / "wrk" / "post.lua"
HOST = "127.0.0.1"
SIGNATURE_HEADER = "x-agentmark-signature-256"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVERS = ("ceiling", "gateway", "peer")
SCENARIOS = {
    # name: (event file, what one response holds)
    "prompt": ("prompt-run-text-nostream.json", "non-streaming prompt-run (one JSON envelope)"),
    "stream": ("prompt-run-text.json", f"streaming prompt-run ({payloads.N_CHUNKS} chunks + finish)"),
    "dataset": ("dataset-run.json", f"dataset-run ({payloads.N_ROWS} rows)"),
}
CEILING_PATHS = {"prompt": "/prompt", "stream": "/stream", "dataset": "/dataset"}


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sign(secret: str, body: bytes) -> str:
    try:
        from agentmark_gw import _core

        return _core.sign(secret, body)
    except ImportError:  # the extension is not built: its pure-Python twin
        from agentmark_gw import _fallback

        return _fallback.sign(secret, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --- processes ------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        try:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                env=self.env, cwd=ROOT, start_new_session=True,
            )
        finally:
            handle.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds."""
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Anything left in the group (a child that outlived its parent).
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    children = _children()
    tree, todo = [], [pid]
    while todo and len(tree) < 1000:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree under `pid`, with reaped children's."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")": state is field 3, so utime (14) is index 11.
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """VmHWM summed over the process tree under `pid`, in MiB."""
    total_kb = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


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
    procs: dict[str, Proc]  # role -> process; the first is the HTTP server
    ready_path: str
    paths: dict[str, str]
    unwrap: bool  # send the `event` object, not the `{"event": ...}` file
    notes: list[str] = field(default_factory=list)

    @property
    def url_base(self) -> str:
        return f"http://{HOST}:{self.port}"


def build_servers(names: list[str], secret: str, logs: Path) -> dict[str, Server]:
    python = sys.executable
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK_", "OTEL_", "PROMETHEUS_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    servers: dict[str, Server] = {}
    if "ceiling" in names:
        port = free_port()
        servers["ceiling"] = Server(
            "ceiling", port,
            {"ceiling": Proc("ceiling", [python, str(HERE / "e2e_servers" / "ceiling.py"), "--bind", f"{HOST}:{port}"], logs / "ceiling.log", base_env)},
            "/health", CEILING_PATHS, unwrap=False,
        )
    if "gateway" in names:
        port, runner_port = free_port(), free_port()
        gateway_cli = Path(python).with_name("agentmark-gw")
        gateway_argv = [str(gateway_cli)] if gateway_cli.exists() else [python, "-m", "agentmark_gw.cli"]
        servers["gateway"] = Server(
            "gateway", port,
            {
                "gateway": Proc(
                    "gateway",
                    gateway_argv + ["serve", "--runner", f"{HOST}:{runner_port}", "--bind", f"{HOST}:{port}"],
                    logs / "gateway.log", {**base_env, "AGENTMARK_WEBHOOK_SECRET": secret},
                ),
                "runner": Proc(
                    "runner", [python, str(HERE / "e2e_servers" / "trivial_runner.py"), "--listen", f"{HOST}:{runner_port}"],
                    logs / "runner.log", base_env,
                ),
            },
            "/readyz", dict.fromkeys(SCENARIOS, "/"), unwrap=False,
        )
    if "peer" in names:
        port = free_port()
        servers["peer"] = Server(
            "peer", port,
            {"peer": Proc("peer", [python, str(HERE / "e2e_servers" / "peer.py"), "--port", str(port)], logs / "peer.log", base_env)},
            "/health", dict.fromkeys(SCENARIOS, "/"), unwrap=True,
        )
    return servers


async def wait_ready(server: Server, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for proc in server.procs.values():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited (status {proc.popen.returncode if proc.popen else '?'}):\n{proc.log_tail()}")
        try:
            reply = await e2e_client.one(HOST, server.port, "GET", server.ready_path, timeout=2.0)
            if reply.status == 200:
                return
            last = f"{reply.status} {reply.body[:200]!r}"
        except (OSError, e2e_client.ProtocolError, asyncio.TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s: {last}")


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


def build_requests(servers: dict[str, Server], scenarios: list[str], secret: str, workdir: Path) -> dict[tuple[str, str], Request]:
    requests: dict[tuple[str, str], Request] = {}
    for scenario in scenarios:
        raw = (EVENTS_DIR / SCENARIOS[scenario][0]).read_bytes()
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


def check_reply(scenario: str, reply: e2e_client.Reply) -> tuple[int, list[str], dict[str, int]]:
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
    if scenario == "stream":
        expected = {"chunk": payloads.N_CHUNKS, "finish": 1}
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


async def check(server: Server, scenario: str, request: Request) -> dict[str, Any]:
    try:
        reply = await e2e_client.one(HOST, server.port, "POST", request.path, request.body, request.headers, timeout=30.0)
    except (OSError, e2e_client.ProtocolError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
        return {"server": server.name, "scenario": scenario, "ok": False, "status": None, "lines": None, "problems": [f"{type(exc).__name__}: {exc}"]}
    lines, problems, kinds = check_reply(scenario, reply)
    return {
        "server": server.name, "scenario": scenario, "ok": not problems, "status": reply.status,
        "lines": lines, "kinds": kinds, "bytes": len(reply.body),
        "framing": "chunked" if "chunked" in reply.headers.get("transfer-encoding", "") else
                   ("content-length" if "content-length" in reply.headers else "close-delimited"),
        "problems": problems,
    }


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


async def measure_cell(server: Server, scenario: str, connections: int, request: Request, args: argparse.Namespace, lines: int) -> dict[str, Any]:
    url = server.url_base + request.path
    if args.warmup > 0:
        await asyncio.to_thread(run_wrk, url, request, connections, args.warmup, args.wrk_threads, args.wrk_timeout)
    before = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    busy0 = machine_busy()
    result = await asyncio.to_thread(run_wrk, url, request, connections, args.duration, args.wrk_threads, args.wrk_timeout)
    busy1 = machine_busy()
    after = {role: cpu_seconds(proc.pid) for role, proc in server.procs.items()}
    cell: dict[str, Any] = {"server": server.name, "scenario": scenario, "connections": connections}
    alive = {role: proc.alive() for role, proc in server.procs.items()}
    if not all(alive.values()):
        cell["error"] = f"process died: {[r for r, a in alive.items() if not a]}"
    if "error" in result:
        cell["error"] = result["error"]
        return cell
    requests = result["requests"]
    seconds = result["duration_us"] / 1e6
    rps = requests / seconds if seconds else 0.0
    cpu = {role: after[role] - before[role] for role in after}
    cell.update(
        requests=requests,
        seconds=round(seconds, 3),
        rps=round(rps, 1),
        lines_per_response=lines,
        lines_per_s=round(rps * lines, 0),
        bytes_per_response=round(result["bytes"] / requests) if requests else None,
        latency_ms={k: round(v / 1000, 2) for k, v in result["latency_us"].items()},
        errors=result["errors"],
        cpu_s=cpu,
        cpu_ms_per_request={role: (round(1000 * v / requests, 3) if requests else None) for role, v in cpu.items()},
        machine_cpu_busy=round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3),
        peak_rss_mb={role: round(peak_rss_mb(proc.pid), 1) for role, proc in server.procs.items()},
    )
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


def ratios(cells: list[dict[str, Any]], ttfb: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(c["server"], c["scenario"], c["connections"]): c for c in cells}
    out: list[dict[str, Any]] = []
    metrics = {
        "rps": lambda c: _get(c, "rps"),
        "lines_per_s": lambda c: _get(c, "lines_per_s"),
        "latency_p50_ms": lambda c: _get(c, "latency_ms", "p50"),
        "latency_p99_ms": lambda c: _get(c, "latency_ms", "p99"),
        "cpu_ms_per_request": _cpu_total,  # gateway: gateway + runner
        "cpu_ms_per_request_gateway_only": lambda c: _get(c, "cpu_ms_per_request", "gateway") if c and c["server"] == "gateway" else _cpu_total(c),
    }
    for scenario, connections in sorted({(c["scenario"], c["connections"]) for c in cells}, key=lambda k: (list(SCENARIOS).index(k[0]), k[1])):
        gateway = by.get(("gateway", scenario, connections))
        for metric, get in metrics.items():
            row: dict[str, Any] = {"scenario": scenario, "connections": connections, "metric": metric}
            g = get(gateway)
            for other in ("ceiling", "peer"):
                v = get(by.get((other, scenario, connections)))
                row[other] = v
                row[f"vs_{other}"] = round(g / v, 3) if g is not None and v else None
            row["gateway"] = g
            out.append(row)
    tby = {(t["server"], t["scenario"]): t for t in ttfb}
    for scenario in [s for s in SCENARIOS if any(t["scenario"] == s for t in ttfb)]:
        g = _get(tby.get(("gateway", scenario)), "ttfb_ms", "p50")
        row = {"scenario": scenario, "connections": ttfb[0]["connections"], "metric": "ttfb_p50_ms", "gateway": g}
        for other in ("ceiling", "peer"):
            v = _get(tby.get((other, scenario)), "ttfb_ms", "p50")
            row[other] = v
            row[f"vs_{other}"] = round(g / v, 3) if g is not None and v else None
        out.append(row)
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
        f"{meta['duration_s']} s per cell after {meta['warmup_s']} s warm-up{', QUICK' if meta['quick'] else ''})",
        "",
    ]
    bad = [c for c in report["checks"] if not c["ok"]]
    out.append("Correctness (one request each): " + ("all OK" if not bad else "PROBLEMS"))
    for c in report["checks"]:
        status = "ok" if c["ok"] else "; ".join(c["problems"])
        out.append(f"- {c['server']} {c['scenario']}: {c['status']}, {c['lines']} line(s), {c.get('framing', '?')}: {status}")
    out.append("")
    out.append("| scenario | conns | server | req/s | lines/s | p50 ms | p99 ms | CPU ms/req | machine busy | errors |")
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
        out.append(
            f"| {c['scenario']} | {c['connections']} | {c['server']} | {_fmt(c['rps'])} | {_fmt(c['lines_per_s'], 0)} | "
            f"{_fmt(c['latency_ms']['p50'], 2)} | {_fmt(c['latency_ms']['p99'], 2)} | {cpu_text} | {c['machine_cpu_busy']:.0%} | {error_text} |"
        )
    out.append("")
    if report["ttfb"]:
        out.append(f"Time to first chunk (our asyncio client, {report['ttfb'][0]['connections']} connections, first body bytes):")
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
    out.append("Peak RSS (VmHWM, MiB, over the whole run): " + "; ".join(
        f"{server}: " + " + ".join(f"{_fmt(v)} {role}" for role, v in roles.items()) for server, roles in report["peak_rss_mb"].items()
    ))
    out.append("")
    out.append("Gateway ÷ other (req/s, lines/s: above 1× is better; latency, CPU: below 1× is better; gateway CPU includes its runner):")
    out.append("")
    out.append("| scenario | conns | req/s vs ceiling | vs peer | p50 vs ceiling | vs peer | p99 vs ceiling | vs peer | CPU/req vs ceiling | vs peer |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in report["ratios"]:
        rows.setdefault((r["scenario"], r["connections"]), {})[r["metric"]] = r
    for (scenario, connections), metrics in rows.items():
        if "rps" not in metrics:
            continue
        cells = [_x(metrics[m].get(f"vs_{o}")) for m in ("rps", "latency_p50_ms", "latency_p99_ms", "cpu_ms_per_request") for o in ("ceiling", "peer")]
        out.append(f"| {scenario} | {connections} | " + " | ".join(cells) + " |")
    ttfb_rows = [r for r in report["ratios"] if r["metric"] == "ttfb_p50_ms"]
    if ttfb_rows:
        out.append("")
        out.append("TTFB p50, gateway ÷ other: " + "; ".join(
            f"{r['scenario']} {_x(r['vs_ceiling'])} ceiling, {_x(r['vs_peer'])} peer" for r in ttfb_rows
        ))
    if report.get("notes"):
        out.append("")
        out.extend(f"- {note}" for note in report["notes"])
    return "\n".join(out) + "\n"


# --- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="End-to-end benchmark: gateway vs bare Quart (ceiling) vs AgentMark's server (peer).")
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per cell (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk before each cell (default 2)")
    parser.add_argument("--connections", default="16,64", help="comma-separated wrk connection counts (default 16,64)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the machine has 2 cores)")
    parser.add_argument("--wrk-timeout", type=int, default=10, help="wrk per-request timeout, seconds")
    parser.add_argument("--ttfb-requests", type=int, default=400, help="requests per time-to-first-chunk run (default 400)")
    parser.add_argument("--ttfb-connections", type=int, default=16)
    parser.add_argument("--ttfb-seconds", type=float, default=15.0, help="time bound of one time-to-first-chunk run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s cells, 1 s warm-up, 64 TTFB requests")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, help="also write the Markdown table here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 2), min(args.warmup, 1)
        args.ttfb_requests, args.ttfb_seconds = min(args.ttfb_requests, 64), min(args.ttfb_seconds, 5.0)
    args.connection_counts = [int(c) for c in args.connections.split(",") if c]
    args.server_names = [s for s in args.servers.split(",") if s]
    args.scenario_names = [s for s in args.scenarios.split(",") if s]
    for name in args.server_names:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
    for name in args.scenario_names:
        if name not in SCENARIOS:
            parser.error(f"unknown scenario {name!r}")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 and --warmup 0..60")
    if any(not 1 <= c <= 1024 for c in args.connection_counts):
        parser.error("--connections must be 1..1024 each")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    servers = build_servers(args.server_names, secret, workdir)
    report: dict[str, Any] = {"checks": [], "cells": [], "ttfb": [], "peak_rss_mb": {}, "notes": []}
    try:
        for server in servers.values():
            for proc in reversed(list(server.procs.values())):  # the runner before the gateway
                proc.start()
        for server in servers.values():
            await wait_ready(server)
            log(f"{server.name} ready on port {server.port} (pids {', '.join(f'{r} {p.pid}' for r, p in server.procs.items())})")
        if "gateway" in servers:
            reply = await e2e_client.one(HOST, servers["gateway"].port, "GET", "/healthz")
            report["gateway_implementation"] = json.loads(reply.body).get("implementation")
        requests = build_requests(servers, args.scenario_names, secret, workdir)

        lines: dict[tuple[str, str], int] = {}
        for scenario in args.scenario_names:
            for name, server in servers.items():
                result = await check(server, scenario, requests[(name, scenario)])
                report["checks"].append(result)
                expected = {"prompt": 1, "stream": payloads.N_CHUNKS + 1, "dataset": payloads.N_ROWS}[scenario]
                lines[(name, scenario)] = result["lines"] if result["ok"] and result["lines"] else expected
                log(f"check {name} {scenario}: {'ok' if result['ok'] else result['problems']} ({result['lines']} lines)")

        total_cells = len(args.scenario_names) * len(args.connection_counts) * len(servers)
        done = 0
        for scenario in args.scenario_names:
            for connections in args.connection_counts:
                for name, server in servers.items():
                    cell = await measure_cell(server, scenario, connections, requests[(name, scenario)], args, lines[(name, scenario)])
                    report["cells"].append(cell)
                    done += 1
                    summary = cell.get("error") or f"{cell['rps']} req/s, p50 {cell['latency_ms']['p50']} ms, errors {cell['errors']}"
                    log(f"[{done}/{total_cells}] {scenario} c={connections} {name}: {summary}")
                    for proc in server.procs.values():
                        if not proc.alive():
                            raise RuntimeError(f"{proc.name} died during {scenario} c={connections}:\n{proc.log_tail()}")

        if args.ttfb_requests > 0:
            for scenario in args.scenario_names:
                for name, server in servers.items():
                    result = await measure_ttfb(server, scenario, requests[(name, scenario)], args)
                    report["ttfb"].append(result)
                    log(f"ttfb {scenario} {name}: p50 {result['ttfb_ms']['p50']} ms over {result['requests']} requests, {result['errors']} errors")

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
        # Anything the servers logged at warning level or above.
        for server in servers.values():
            for proc in server.procs.values():
                text = proc.log_path.read_text(errors="replace")
                worrying = [line for line in text.splitlines() if re.search(r'"level": "(warning|error|critical)"|Traceback|\bERROR\b|\bWARNING\b', line)]
                if worrying:
                    report["notes"].append(f"{proc.name} logged {len(worrying)} warning/error line(s), first: {worrying[0][:300]}")
    finally:
        for server in servers.values():
            for proc in server.procs.values():  # the gateway before its runner
                proc.stop()
    return report


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk ?"
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return f"wrk {match.group(1)}" if match else "wrk ?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if not EVENTS_DIR.is_dir():
        print(f"error: the shared event bodies are not at {EVENTS_DIR}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="agentmark-gw-e2e-"))

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    started = time.monotonic()
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
            "cpu_model": _cpu_model(),
            "python": platform.python_version(),
            "wrk": wrk_version(),
            "commit": commit + ("+dirty" if dirty else ""),
            "gateway_implementation": report.pop("gateway_implementation", None),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "quick": args.quick,
            "wrk_threads": args.wrk_threads,
            "connections": args.connection_counts,
            "ttfb": {"connections": args.ttfb_connections, "requests": args.ttfb_requests, "time_limit_s": args.ttfb_seconds},
            "scenarios": {name: SCENARIOS[name][1] for name in args.scenario_names},
            "wall_s": round(time.monotonic() - started, 1),
            "ratio_definition": "gateway value / other value; gateway CPU per request includes its runner (cpu_ms_per_request), or not (…_gateway_only)",
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


def _cpu_model() -> str:
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
