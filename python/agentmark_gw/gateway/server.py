"""Serving the gateway: on Hypercorn (the default) or Granian, in one
process or several workers, on uvloop or asyncio.

Workers are separate processes started by the server; each builds its app
from the effective configuration the parent hands down in a 0600 file
(`asgi.py`), so what `serve` validated is exactly what every worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.run import run as hypercorn_run

from .._ports import ensure_free
from .config import SECRET_ENV, ConfigError, Deadlines, GatewayConfig, Sink

# The path of a 0600 file holding the effective configuration, secrets
# included, for `serve`'s workers; the environment itself holds no secret.
EFFECTIVE_CONFIG_ENV = "AGENTMARK_GW__EFFECTIVE_CONFIG_FILE"
# Variables that can hold secrets: read by `serve`, then removed from its
# environment before any worker starts (a process's environment is readable
# by its user, and passed on to whatever it runs).
SECRET_VARIABLES = (SECRET_ENV, "AGENTMARK_GW_ALERT_SINKS")
HYPERCORN_VERSION = version("hypercorn")
# The Hypercorn releases `close_connections_at_eof`, `guard_http2` and
# hypercorn_body.direct_body were checked against (pyproject.toml bounds the dependency to them; tests/test_deployment.py
# fails on any other, so a new release is checked before it is allowed).
PATCHED_HYPERCORN = ("0.17.", "0.18.")
APPLICATION_PATH = "agentmark_gw.gateway.asgi:app"


def close_connections_at_eof() -> None:
    """Make Hypercorn close a connection as soon as its client has closed it.

    Hypercorn 0.17-0.18 keeps such a connection (CLOSE-WAIT: its descriptor,
    buffers and task) until `keep_alive_timeout` runs out, because the
    connection's task group still waits on the idle timer after the read loop
    has seen the end of the stream. A load balancer that opens a connection
    per request then holds new-connections-per-second x 75 s descriptors
    open, and the gateway's memory grows with them (the soak: +17.5% in ten
    minutes; +4.6% with this). Stopping the idle timer at the end of the read
    loop lets the task group finish; a response still being written keeps
    it open as before. Applied once per process, to the versions checked."""
    from hypercorn.asyncio import tcp_server

    server_class: Any = tcp_server.TCPServer
    if getattr(server_class, "_agentmark_gw_closes_at_eof", False):
        return
    if not HYPERCORN_VERSION.startswith(PATCHED_HYPERCORN) or not hasattr(server_class, "_read_data"):
        logging.getLogger("agentmark_gw").warning(
            "Hypercorn %s is not a version the gateway's connection fix was checked against; "
            "connections closed by clients are held until keep_alive_timeout", HYPERCORN_VERSION,
        )
        return
    read_data = server_class._read_data

    async def _read_data_then_stop_idle_timer(self: Any) -> None:
        await read_data(self)
        await self.idle_task.stop()

    server_class._read_data = _read_data_then_stop_idle_timer
    server_class._agentmark_gw_closes_at_eof = True


# Per HTTP/2 connection: more stream resets than this within the window end
# it (GOAWAY ENHANCE_YOUR_CALM). Cancelling streams is legitimate; opening
# and cancelling a thousand a second is the "rapid reset" flood.
H2_MAX_RESETS = 200
H2_RESET_WINDOW = 10.0


def guard_http2() -> None:
    """Hypercorn's HTTP/2, made safe for a port untrusted clients can reach.

    - Cleartext HTTP/2 (h2c) is refused unless `allow_h2c`: an `Upgrade: h2c`
      is ignored (the request is answered in HTTP/1.1, as a server may), and
      a connection opening with the HTTP/2 preface is closed unanswered. Over
      TLS, HTTP/2 is negotiated by ALPN as before.
    - With h2c allowed, the idle timer runs again once the connection has
      switched to HTTP/2: the HTTP/1.1 side stops it when the preface arrives
      and Hypercorn's HTTP/2 side restarts it only when a stream ends, so a
      connection that sent only the preface was never closed.
    - A connection resetting more than H2_MAX_RESETS streams within
      H2_RESET_WINDOW seconds is closed; 1,100 open-then-cancel pairs made
      Hypercorn raise, and delayed every other request.

    Applies to servers whose Hypercorn config has `agentmark_gw_allow_h2c`
    (set by `hypercorn_config`); others in the process behave as stock."""
    import h2.errors
    import h2.events
    from hypercorn.events import Closed, Updated
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.protocol.h11 import H2ProtocolAssumedError, H11Protocol

    wrapper: Any = ProtocolWrapper
    if getattr(wrapper, "_agentmark_gw_guarded", False) or not HYPERCORN_VERSION.startswith(PATCHED_HYPERCORN):
        return
    check_protocol = H11Protocol._check_protocol
    handle = wrapper.handle
    handle_events = H2Protocol._handle_events

    def guarded(protocol: Any) -> bool:
        return not protocol.ssl and not getattr(protocol.config, "agentmark_gw_allow_h2c", True)

    async def _check_protocol(self: Any, event: Any) -> None:
        if guarded(self) and any(name == b"upgrade" and value.strip().lower() == b"h2c" for name, value in event.headers):
            return  # RFC 9110 7.8: a server may ignore Upgrade
        await check_protocol(self, event)

    async def _handle(self: Any, event: Any) -> None:
        if self.ssl or not isinstance(self.protocol, H11Protocol) or not hasattr(self.config, "agentmark_gw_allow_h2c"):
            return await handle(self, event)
        if self.config.agentmark_gw_allow_h2c:
            await handle(self, event)
            if isinstance(self.protocol, H2Protocol) and not self.protocol.streams:
                await self.send(Updated(idle=True))
            return None
        try:
            return await self.protocol.handle(event)
        except H2ProtocolAssumedError:
            await self.send(Closed())  # HTTP/2 prior knowledge on a cleartext port
            return None

    async def _handle_events(self: Any, events: list[Any]) -> None:
        resets = sum(1 for event in events if isinstance(event, h2.events.StreamReset))
        if resets and hasattr(self.config, "agentmark_gw_allow_h2c"):
            now = asyncio.get_running_loop().time()
            started, count = getattr(self, "_agentmark_gw_resets", (now, 0))
            if now - started > H2_RESET_WINDOW:
                started, count = now, 0
            self._agentmark_gw_resets = (started, count + resets)
            if count + resets > H2_MAX_RESETS:
                self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self._flush()
                await self.send(Closed())
                return
        await handle_events(self, events)

    H11Protocol._check_protocol = _check_protocol  # type: ignore[method-assign]
    wrapper.handle = _handle
    H2Protocol._handle_events = _handle_events  # type: ignore[method-assign]
    wrapper._agentmark_gw_guarded = True


def patch_hypercorn() -> None:
    """Every correction `serve` makes to Hypercorn, once per process."""
    close_connections_at_eof()
    guard_http2()


def hypercorn_config(config: GatewayConfig) -> HypercornConfig:
    patch_hypercorn()
    hyper = HypercornConfig()
    hyper.bind = [config.bind]
    hyper.application_path = APPLICATION_PATH
    # 0 runs the one worker in this process; more are spawned processes.
    hyper.workers = 0 if config.workers == 1 else config.workers
    # Also: with several workers on the asyncio loop, one worker was seen
    # taking nearly every connection; uvloop spreads them (see docs/deploy.md).
    hyper.worker_class = config.loop
    hyper.accesslog = None  # one structured line per request comes from the app instead
    hyper.errorlog = logging.getLogger("hypercorn.error")
    # On SIGTERM: stop accepting, give in-flight requests this long, then cancel them.
    hyper.graceful_timeout = config.shutdown_grace
    # No read timeout: Hypercorn applies it to every socket read, including
    # while a client silently waits on a long stream, so it would cut dataset
    # runs short. Request bodies are bounded by `body_timeout` in the app instead,
    # and request headers by the keep-alive timeout: Hypercorn counts a
    # connection as idle until its headers are complete, so a client that
    # dribbles them (slowloris) is closed after `keep_alive_timeout`.
    hyper.read_timeout = None
    hyper.keep_alive_timeout = config.keep_alive_timeout
    hyper.agentmark_gw_allow_h2c = config.allow_h2c  # type: ignore[attr-defined]  # read by guard_http2's patches
    if config.tls_certfile and config.tls_keyfile:
        hyper.certfile = config.tls_certfile
        hyper.keyfile = config.tls_keyfile
        hyper.alpn_protocols = ["h2", "http/1.1"]
    return hyper


def dump_config(config: GatewayConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def load_dumped_config(text: str) -> GatewayConfig:
    values = json.loads(text)
    return GatewayConfig(
        **{
            **values,
            "secrets": tuple(values["secrets"]),
            "runners": tuple(values["runners"]),
            "deadlines": Deadlines(**values["deadlines"]),
            "alert_sinks": tuple(
                Sink(**{**sink, "types": tuple(sink["types"]), "statuses": tuple(sink["statuses"]), "to": tuple(sink["to"])})
                for sink in values["alert_sinks"]
            ),
        }
    )


def run(config: GatewayConfig) -> int:
    """Blocking entry point for `agentmark-gw serve`."""
    config.require_strong_secret()
    ensure_port_free(config.bind)
    with effective_config_file(config), worker_metrics(config.workers):
        if config.server == "granian":
            return run_granian(config)
        return hypercorn_run(hypercorn_config(config))


@contextlib.contextmanager
def effective_config_file(config: GatewayConfig) -> Iterator[None]:
    """Hand the workers the configuration in a file only this user can read,
    removed when serving ends, rather than copying every secret (webhook,
    HTTP sink, SMTP) into each worker's environment."""
    fd, path = tempfile.mkstemp(prefix="agentmark-gw-config-", suffix=".json")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(dump_config(config))
        os.environ[EFFECTIVE_CONFIG_ENV] = path
        for name in SECRET_VARIABLES:
            os.environ.pop(name, None)
        yield
    finally:
        os.environ.pop(EFFECTIVE_CONFIG_ENV, None)
        with contextlib.suppress(OSError):
            os.unlink(path)


def ensure_port_free(bind: str) -> None:
    """Refuse to start on an address something already listens on.

    With several workers the servers open their socket with SO_REUSEPORT,
    so a second gateway (or the orphaned workers of a killed one) would
    otherwise share the port silently and split the traffic."""
    ensure_free(bind)


@contextlib.contextmanager
def worker_metrics(workers: int) -> Iterator[None]:
    """Metrics from every worker, whichever one a scrape reaches: prometheus-
    client's multiprocess mode, in `PROMETHEUS_MULTIPROC_DIR` if set, else in
    a directory of our own, removed at exit. Files left by an earlier run are
    wiped first: they would report its dead workers' values as live."""
    if workers <= 1:
        yield
        return
    chosen = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="agentmark-gw-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield
    finally:
        if not chosen:
            shutil.rmtree(directory, ignore_errors=True)


def exit_with_parent(parent: int, *, abrupt: bool = False) -> None:
    """In a worker process: end when the server process that started it
    (`parent`) ends, even by SIGKILL, rather than serve on as an orphan (Linux).

    The kernel sends the signal. Hypercorn's workers get SIGTERM and finish
    what they are serving. Granian's (`abrupt`) get SIGKILL: told SIGTERM
    with no master left, a Granian worker hung in its own shutdown about one
    time in five, holding the GIL, so no handler or watchdog thread could run,
    and served on (a live master would have killed it after
    `workers_kill_timeout`; an orphan has none)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    sig = signal.SIGKILL if abrupt else signal.SIGTERM
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig)
    if os.getppid() != parent:  # it died before the call: nothing would signal us
        os.kill(os.getpid(), sig)


def run_granian(config: GatewayConfig) -> int:
    """The same app on Granian, a Rust HTTP server, with the same limits:
    `keep_alive_timeout` bounds request headers (and idle keep-alive), the
    app itself bounds bodies (`body_timeout`), and streams are never cut."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops, SSLProtocols
        from granian.http import HTTP1Settings
    except ImportError:
        raise ConfigError("server = granian needs Granian: pip install 'agentmark-gw[granian]'") from None
    host, _, port = config.bind.rpartition(":")
    tls: dict[str, object] = {}
    if config.tls_certfile and config.tls_keyfile:
        tls = {"ssl_cert": Path(config.tls_certfile), "ssl_key": Path(config.tls_keyfile), "ssl_protocol_min": SSLProtocols.tls12}
    server = Granian(
        APPLICATION_PATH,
        address=host.strip("[]"),
        port=int(port),
        interface=Interfaces.ASGI,
        workers=config.workers,
        loop=Loops(config.loop),
        http1_settings=HTTP1Settings(header_read_timeout=int(config.keep_alive_timeout * 1000)),
        # Cleartext HTTP/2 only when allowed; over TLS, ALPN chooses. (Granian's
        # HTTP/2, hyper's, limits reset floods itself.)
        http=HTTPModes.auto if tls or config.allow_h2c else HTTPModes.http1,
        # On SIGTERM: stop accepting, give in-flight requests this long, then stop the workers.
        workers_kill_timeout=max(1, math.ceil(config.shutdown_grace)),
        log_access=False,  # one structured line per request comes from the app instead
        **tls,  # type: ignore[arg-type]
    )
    server.serve()
    return 0


async def serve(config: GatewayConfig, shutdown_trigger: Callable[..., Awaitable[None]] | None = None) -> None:
    """Serve in the running event loop until `shutdown_trigger` completes
    (default: SIGINT/SIGTERM). Used by `up`, which runs a runner beside it."""
    from .app import create_app

    hyper = hypercorn_config(config)
    # In-process serving is one worker by definition; Hypercorn's serve()
    # warns ("The config `workers` has no affect") about any other value.
    hyper.workers = 1
    await hypercorn_serve(create_app(config), hyper, shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]
