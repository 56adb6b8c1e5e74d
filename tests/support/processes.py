"""Processes on loopback, and what /proc says of them: the one place tests,
benchmarks and scripts start a process and wait for it to serve.

A `Process` starts in a session of its own (so one `killpg` takes it whole:
a gateway's parent, its workers and multiprocessing's resource tracker),
with the checkout as its working directory (so `python -m tests.servers...`
and `python -m benchmarks...` resolve), its output appended to its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# The checkout: tests/support/ is two levels below it.
ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Process:
    """One process (and the process group it leads), started and restarted
    on the same command, port and log."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str]
    port: int = 0
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    groups: list[int] = field(default_factory=list)  # every group it has led, one per start

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, **extra_env: str) -> None:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}: {shlex.join(self.command)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.command, env={**self.env, **extra_env}, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.groups.append(self.popen.pid)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds,
        then SIGKILL to anything left in the group (a child that outlived its parent)."""
        if self.popen is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def members(self) -> list[int]:
        """Every process in its current group: for a gateway, the parent and its workers."""
        return [pid for pid, _, _ in group_members(self.pid)] if self.popen is not None else []

    def exit_text(self) -> str:
        """How the process ended: a status, or the signal that ended it."""
        code = None if self.popen is None else self.popen.poll()
        if code is None:
            return "running"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"

    def check_alive(self) -> None:
        if not self.running:
            raise ProcessError(f"{self.name} exited ({self.exit_text()}):\n{tail(self.log, 15)}")


class ProcessError(RuntimeError):
    """A process did not start, did not serve, or did not stop."""


# --- waiting -----------------------------------------------------------------------


def wait_listening(process: Process, deadline: float) -> None:
    """Until something accepts connections on the process's port (time.monotonic() `deadline`)."""
    while True:
        process.check_alive()
        try:
            with socket.create_connection((HOST, process.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ProcessError(f"{process.name}: nothing listening on {process.address}:\n{tail(process.log)}") from None
            time.sleep(0.05)


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on `port`, for servers in this process."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"nothing listening on port {port}") from None
            await asyncio.sleep(0.02)
        else:
            writer.close()
            await writer.wait_closed()
            return


async def wait_ok(name: str, url: str, processes: Sequence[Process], timeout: float = 40.0) -> None:
    """Until GET `url` answers 200; fails early, with its log, when one of `processes` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            for process in processes:
                process.check_alive()
            try:
                reply = await http.get(url)
                if reply.status_code == 200:
                    return
                last = f"{reply.status_code} {reply.content[:200]!r}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.2)
    raise ProcessError(f"{name} not ready after {timeout:.0f} s: {last}")


async def wait_until(check: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.1) -> bool:
    """Poll `check()` (sync or async) until it is true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


# --- what /proc says -----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state is [0], parent [1], group [2]."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def group_members(pgid: int) -> list[tuple[int, str, int]]:
    """(pid, state, parent pid) of every process in group `pgid`, zombies included."""
    found = []
    for pid in _pids():
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:
            found.append((pid, fields[0], int(fields[1])))
    return found


def reap_group(pgid: int, timeout: float) -> list[int]:
    """Wait for every process of group `pgid` to be gone, reaping those that
    are (or, orphaned, become) our children. Returns any still there."""
    deadline = time.monotonic() + timeout
    while True:
        members = group_members(pgid)
        for pid, _, parent in members:
            if parent == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
        members = group_members(pgid)
        if not members or time.monotonic() > deadline:
            return [pid for pid, _, _ in members]
        time.sleep(0.02)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, `pid` first."""
    children: dict[int, list[int]] = {}
    for member in _pids():
        try:
            children.setdefault(int(_stat_fields(member)[1]), []).append(member)
        except OSError:
            continue
    tree: list[int] = []
    todo = [pid]
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
            fields = _stat_fields(member)
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat, [11:15] after the command name.
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def status_kib(pid: int, *keys: str) -> dict[str, int]:
    """Fields of /proc/<pid>/status in KiB (VmRSS: now; VmHWM: the peak; RssAnon: the heap)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    return values


def rss_mb(pid: int, key: str = "VmRSS") -> list[float]:
    """`key` of each process in the tree under `pid`, the root first, in MiB."""
    values = []
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            found = status_kib(member, key)
            if key in found:
                values.append(found[key] / 1024)
    return values


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_count(pid: int) -> int:
    """Open sockets of one process: client connections, its listener, gRPC channels."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


# --- commands and environments ----------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the project's, OpenTelemetry's, Prometheus's and
    OpenAI's variables (so a developer's settings do not leak in), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMARK_", "OTEL_", "PROMETHEUS_", "OPENAI_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def agentmark_gw() -> list[str]:
    """`agentmark-gw` beside this Python, or the module when it is not installed as a script."""
    script = Path(sys.executable).with_name("agentmark-gw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agentmark_gw.cli"]


def sign(secret: str, body: bytes) -> str:
    """The `x-agentmark-signature-256` value of `body`, as AgentMark signs."""
    from agentmark_gw import _accel

    return _accel.sign(secret, body)
