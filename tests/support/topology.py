"""The scale-out topology on loopback: runner processes, gateway processes
(`agentmark-gw serve --workers N`: a Hypercorn parent and its workers), and
Debian's nginx in front of the gateways.

`python -m scripts.scale_out` runs it for people; tests/test_scale_out.py
runs the very same code and kills parts of it. Every process starts in a session of
its own, so one `killpg` takes a gateway whole (the parent, its workers and
multiprocessing's resource tracker), and a terminal's Ctrl-C reaches only
the script, which then stops the rest in order.

Killed processes leave orphans (a gateway's workers outlive their parent
for an instant) and the machine's init may not reap them, so while a
topology runs its owner is a child subreaper (Linux's PR_SET_CHILD_SUBREAPER):
orphans come back to it, and `kill` and `stop` reap every member of the
process groups they end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from .processes import HOST, Process, ProcessError, free_port, group_members, reap_group, tail, wait_listening

# Debian's nginx (apt-get install nginx; scripts/system_packages.sh checks for it).
NGINX = "/usr/sbin/nginx"
PR_SET_CHILD_SUBREAPER = 36
# A process of the topology did not start, or did not stop.
TopologyError = ProcessError


@dataclass(frozen=True)
class Settings:
    gateways: int = 2
    workers: int = 2  # Hypercorn workers per gateway
    runners: int = 3
    port: int = 0  # nginx's; 0 picks a free one
    secret: str = ""  # AGENTMARK_WEBHOOK_SECRET of every gateway (comma-separated for several)
    heartbeat_interval: float = 15.0
    health_interval: float = 5.0
    health_timeout: float = 2.0
    shutdown_grace: float = 30.0
    proxy_read_timeout: float = 60.0
    # nginx takes a gateway out for `fail_timeout` after a failed connection.
    fail_timeout: float = 10.0
    # A runner command line with {listen}, {host}, {port} and {name} in it;
    # empty: the paced scripted runner (tests/servers/scripted_runner.py).
    runner_command: str = ""
    deltas: int = 5  # the scripted runner's defaults; a request may override them
    pause: float = 0.2
    rows: int = 2
    row_pause: float = 1.0
    # Pass this environment's AGENTMARK_GW_* settings on to the gateways (the
    # script does, for people to tune them; the tests do not, to be repeatable).
    inherit_settings: bool = True


def _subreaper(on: bool) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, as usual
        return False


def _duration(seconds: float) -> str:
    """nginx's time syntax, to the millisecond."""
    return f"{max(1, round(seconds * 1000))}ms"


def _whole_seconds(seconds: float) -> str:
    """For the parameters nginx takes in whole seconds only (fail_timeout)."""
    return f"{max(1, round(seconds))}s"


class Topology:
    """Start with `start()` (or `with Topology(settings) as topology:`); stop
    with `stop()`. `kill` and `restart` take one process down and up again."""

    def __init__(self, settings: Settings, directory: Path | None = None, keep: bool = False) -> None:
        if not settings.secret:
            raise ValueError("Settings.secret is required: the gateways refuse to start without one")
        self.settings = settings
        self.dir = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="agentmark-gw-scale-out-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_dir = directory is None and not keep
        self.runners: list[Process] = []
        self.gateways: list[Process] = []
        self.nginx: Process | None = None
        self._subreaper = False

    # -- what it is --------------------------------------------------------------

    @property
    def url(self) -> str:
        """nginx's address: where clients send webhooks."""
        assert self.nginx is not None
        return self.nginx.url

    @property
    def processes(self) -> list[Process]:
        return [*self.runners, *self.gateways, *([self.nginx] if self.nginx else [])]

    def describe(self) -> str:
        lines = [f"nginx     {self.url}  (config {self.dir / 'nginx.conf'})"]
        lines += [f"{g.name:9} {g.url}  pids {' '.join(map(str, g.members()))}" for g in self.gateways]
        lines += [f"{r.name:9} {r.address}  pid {r.pid}" for r in self.runners]
        lines.append(f"logs      {self.dir}")
        return "\n".join(lines)

    def logs(self, lines: int = 15) -> str:
        """The last lines of every log: for a failure's message."""
        logs = sorted(self.dir.glob("*.log"))
        return "\n".join(f"--- {log.name}\n{tail(log, lines)}" for log in logs)

    def nginx_conf(self) -> str:
        s = self.settings
        # Root's workers would otherwise run as nobody, who cannot write the
        # temporary directories below; for anyone else nginx ignores `user`.
        user = "user root;" if os.geteuid() == 0 else ""
        servers = "\n".join(
            f"        server {g.address} max_fails=1 fail_timeout={_whole_seconds(s.fail_timeout)};" for g in self.gateways
        )
        return NGINX_CONF.format(
            user=user, dir=self.dir, servers=servers, listen=self.nginx.address if self.nginx else "",
            read_timeout=_duration(s.proxy_read_timeout), tries=len(self.gateways),
        )

    # -- life cycle -------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Topology:
        s = self.settings
        if not Path(NGINX).exists():
            raise TopologyError(f"{NGINX} is missing: apt-get install nginx")
        self._subreaper = _subreaper(True)
        deadline = time.monotonic() + timeout
        try:
            self.runners = [self._runner(i) for i in range(s.runners)]
            self._start_together(self.runners, wait_listening, deadline)
            self.gateways = [self._gateway(i) for i in range(s.gateways)]  # they need the runners' addresses
            self._start_together(self.gateways, self._wait_ready, deadline)
            port = s.port or free_port()
            conf = self.dir / "nginx.conf"
            self.nginx = Process(
                "nginx", [NGINX, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "nginx-error.log")],
                self.dir / "nginx.log", dict(os.environ), port,
            )
            conf.write_text(self.nginx_conf())
            self._launch(self.nginx)
            wait_listening(self.nginx, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Topology:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> list[int]:
        """Stop everything, front to back (nginx, gateways, runners), each
        with SIGTERM, then SIGKILL past its grace; reap every process of every
        group this topology started. Returns pids still there (none, normally)."""
        s = self.settings
        self._terminate([self.nginx] if self.nginx else [], 10)
        self._terminate(self.gateways, s.shutdown_grace + 10)
        self._terminate(self.runners, 10)
        left = self.strays()
        if self._subreaper and not left:
            _subreaper(False)
            self._subreaper = False
        if self._remove_dir and not left:
            shutil.rmtree(self.dir, ignore_errors=True)
        return left

    def kill(self, process: Process) -> None:
        """SIGKILL the process's whole group (a gateway: the parent and its
        workers at once, as when its machine dies), and reap them all."""
        assert process.popen is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.popen.wait(10)
        left = reap_group(process.pid, 10)
        if left:
            raise TopologyError(f"{process.name}: processes {left} of its group survived SIGKILL")

    def restart(self, process: Process, timeout: float = 60.0) -> None:
        """Start a stopped process again, on the same port, and wait until it serves."""
        if process.running:
            raise TopologyError(f"{process.name} is still running")
        deadline = time.monotonic() + timeout
        self._launch(process)
        if process in self.gateways:
            self._wait_ready(process, deadline)
        else:
            wait_listening(process, deadline)

    def restore(self, timeout: float = 60.0) -> list[str]:
        """Restart whatever is down, runners first; wait until every gateway
        sees every runner healthy. Returns the names restarted."""
        restarted = []
        deadline = time.monotonic() + timeout
        for process in self.processes:
            if not process.running:
                if process.popen is not None:
                    reap_group(process.pid, 5)
                self.restart(process, deadline - time.monotonic())
                restarted.append(process.name)
        for gateway in self.gateways:
            self._wait_ready(gateway, deadline)
        return restarted

    def strays(self) -> list[int]:
        """Processes left in groups whose leader is no longer running: orphans."""
        return [
            pid
            for process in self.processes
            for group in process.groups
            if not (process.running and group == process.pid)
            for pid, _, _ in group_members(group)
        ]

    # -- the processes ------------------------------------------------------------

    def _runner(self, i: int) -> Process:
        s = self.settings
        port = free_port()
        name = f"runner-{i}"
        if s.runner_command:
            command = shlex.split(s.runner_command.format(listen=f"{HOST}:{port}", host=HOST, port=port, name=name))
        else:
            command = [
                sys.executable, "-m", "tests.servers.scripted_runner", "--listen", f"{HOST}:{port}", "--name", name,
                "--deltas", str(s.deltas), "--pause", str(s.pause), "--rows", str(s.rows), "--row-pause", str(s.row_pause),
            ]
        return Process(name, command, self.dir / f"{name}.log", dict(os.environ), port)

    def _gateway(self, i: int) -> Process:
        s = self.settings
        port = free_port()
        name = f"gateway-{i}"
        env = {
            k: v for k, v in os.environ.items()
            if not (k.startswith("AGENTMARK_GW_") and not s.inherit_settings) and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update({
            "AGENTMARK_WEBHOOK_SECRET": s.secret,
            "AGENTMARK_GW_HEARTBEAT_INTERVAL": str(s.heartbeat_interval),
            "AGENTMARK_GW_HEALTH_INTERVAL": str(s.health_interval),
            "AGENTMARK_GW_HEALTH_TIMEOUT": str(s.health_timeout),
            "AGENTMARK_GW_SHUTDOWN_GRACE": str(s.shutdown_grace),
            "AGENTMARK_GW_ALERTS_DB": str(self.dir / "alerts.sqlite3"),  # one outbox, shared by every gateway
            # Runner addresses in /readyz and /metrics: how readiness and kills are followed here.
            "AGENTMARK_GW_EXPOSE_INTERNALS": "true",
        })
        command = [sys.executable, "-m", "agentmark_gw.cli", "serve", "--bind", f"{HOST}:{port}", "--workers", str(s.workers)]
        for runner in self.runners:
            command += ["--runner", runner.address]
        return Process(name, command, self.dir / f"{name}.log", env, port)

    def _launch(self, process: Process) -> None:
        if process not in self.gateways:
            process.start()
            return
        # The workers' metrics, fresh for each start (a killed gateway's
        # files would otherwise linger in the next one's scrapes).
        metrics = self.dir / f"{process.name}-metrics-{process.starts + 1}"
        metrics.mkdir()
        process.start(PROMETHEUS_MULTIPROC_DIR=str(metrics))

    def _start_together(self, processes: list[Process], wait: Callable[[Process, float], None], deadline: float) -> None:
        """Launch them all, then wait for each: they start in parallel."""
        for process in processes:
            self._launch(process)
        for process in processes:
            wait(process, deadline)

    def _terminate(self, processes: list[Process], timeout: float) -> None:
        for process in processes:
            if process.running:
                process.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for process in processes:
            if process.popen is None:
                continue
            try:
                process.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.popen.wait(10)
            for group in process.groups:
                # A worker or the resource tracker may outlast its parent by a moment.
                if reap_group(group, 5):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(group, signal.SIGKILL)
                    reap_group(group, 5)

    def _wait_ready(self, gateway: Process, deadline: float) -> None:
        """Until the gateway's /readyz reports every running runner healthy."""
        wait_listening(gateway, deadline)
        expected = {r.address for r in self.runners if r.running}
        body: dict[str, Any] = {}
        with httpx.Client(timeout=2) as http:
            while True:
                gateway.check_alive()
                with contextlib.suppress(httpx.HTTPError, ValueError, AttributeError):
                    response = http.get(gateway.url + "/readyz")
                    body = response.json()
                    healthy = {target for target, ok in body.get("runners", {}).items() if ok}
                    if response.status_code == 200 and expected <= healthy:
                        return
                if time.monotonic() > deadline:
                    raise TopologyError(f"{gateway.name} not ready: {body}\n{tail(gateway.log)}")
                time.sleep(0.1)


# Streams pass through as written (proxy_buffering off; the gateway's
# X-Accel-Buffering: no says the same per response). A gateway that refuses
# connections is skipped for the next (proxy_next_upstream error timeout:
# nginx never resends a POST once it reached a gateway) and left out for
# fail_timeout. X-Upstream names the gateway that answered, for the tests.
NGINX_CONF = """\
{user}
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$remote_addr "$request" $status upstream=$upstream_addr upstream_status=$upstream_status time=$request_time';
    access_log {dir}/nginx-access.log upstreams;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;

    upstream agentmark_gw {{
{servers}
        keepalive 16;
    }}
    server {{
        listen {listen};
        location ~ ^/(readyz|metrics)$ {{
            default_type application/json;
            return 404 '{{"message":"Not found: AgentMark webhooks are POSTed to / or /api/agentmark"}}';
        }}
        location / {{
            proxy_pass http://agentmark_gw;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering on;
            proxy_read_timeout {read_timeout};
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries {tries};
            proxy_next_upstream_timeout 10s;
            client_max_body_size 10m;
            add_header X-Upstream $upstream_addr always;
            # nginx's own failures (no gateway reachable, one dying before it
            # answered) as the gateway's refusals are: JSON with a message.
            # Without proxy_intercept_errors, the gateways' own 502s pass as they are.
            error_page 502 504 = @unreachable;
        }}
        location @unreachable {{
            default_type application/json;
            add_header X-Upstream $upstream_addr always;
            return 502 '{{"message":"Gateway unreachable: the proxy could not get an answer from a gateway"}}';
        }}
    }}
}}
"""
