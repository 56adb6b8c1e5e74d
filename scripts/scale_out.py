"""Run the gateway scaled out on loopback, behind Debian's nginx:

    nginx ──▶ M gateway processes (agentmark-gw serve --workers W) ──gRPC──▶ N runner processes

Each runner is the paced scripted runner (tests/servers/scripted_runner.py:
deterministic answers that name the runner process serving them), or any
runner command you give with --runner-command. Prints nginx's URL and how
to send it an event; Ctrl-C or SIGTERM stops everything, front to back.
tests/test_scale_out.py runs this same topology (tests/support/topology.py)
and kills gateways and runners under load.

    .venv/bin/python -m scripts.scale_out        # from the checkout's root
    .venv/bin/python -m scripts.scale_out --runner-command 'agentmark-gw runner --listen {listen} --data-dir ./agentmark'
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from tests.support.topology import Settings, Topology, TopologyError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="\n\n".join((__doc__ or "").split("\n\n")[:3]), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other AGENTMARK_GW_* setting in the environment reaches the gateways (see docs/configuration.md).",
    )
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1 (default 8080, where `agentmark-gw send` posts; 0: any free one)")
    parser.add_argument("--gateways", type=int, default=2, metavar="M", help="gateway processes (default 2)")
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="Hypercorn workers per gateway (default 2)")
    parser.add_argument("--runners", type=int, default=3, metavar="N", help="runner processes (default 3)")
    parser.add_argument("--runner-command", default="", metavar="CMD",
                        help="run this instead of the scripted runner; {listen}, {host}, {port} and {name} are filled in")
    parser.add_argument("--proxy-read-timeout", type=float, default=60.0, metavar="S", help="nginx's proxy_read_timeout (default 60)")
    parser.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="S",
                        help="the gateways' heartbeat_interval (default 15; keep it below the read timeout)")
    parser.add_argument("--health-interval", type=float, default=5.0, metavar="S", help="seconds between runner health checks (default 5)")
    parser.add_argument("--shutdown-grace", type=float, default=30.0, metavar="S", help="seconds streams get to finish when stopping (default 30)")
    scripted = parser.add_argument_group("the scripted runner's defaults (a request may override them with a `scripted` object)")
    scripted.add_argument("--deltas", type=int, default=5, help="text deltas per prompt run (default 5)")
    scripted.add_argument("--pause", type=float, default=0.2, metavar="S", help="seconds before each delta (default 0.2)")
    scripted.add_argument("--rows", type=int, default=2, help="rows per dataset run (default 2)")
    scripted.add_argument("--row-pause", type=float, default=1.0, metavar="S", help="seconds before each row (default 1)")
    parser.add_argument("--dir", type=Path, help="keep configuration and logs here (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    if args.heartbeat_interval >= args.proxy_read_timeout:
        parser.error("--heartbeat-interval must be below --proxy-read-timeout, or nginx closes silent streams")
    if min(args.gateways, args.workers, args.runners) < 1:
        parser.error("--gateways, --workers and --runners must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    secret = os.environ.get("AGENTMARK_WEBHOOK_SECRET", "").strip()  # several, comma-separated, for rotation
    generated = not secret
    secret = secret or secrets.token_urlsafe(32)
    settings = Settings(
        gateways=args.gateways, workers=args.workers, runners=args.runners, port=args.port, secret=secret,
        heartbeat_interval=args.heartbeat_interval, health_interval=args.health_interval, shutdown_grace=args.shutdown_grace,
        proxy_read_timeout=args.proxy_read_timeout, runner_command=args.runner_command,
        deltas=args.deltas, pause=args.pause, rows=args.rows, row_pause=args.row_pause,
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    # Set before starting, so a Ctrl-C during the start still stops what started.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    topology = Topology(settings, directory=args.dir)
    try:
        topology.start()
    except TopologyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        print(topology.describe(), flush=True)
        print(f"\nserving on {topology.url}/", flush=True)
        if generated:
            print(f"webhook secret (generated): {secret}")
        print(f"try: AGENTMARK_WEBHOOK_SECRET=... agentmark-gw send examples/prompt-run.json --url {topology.url}/")
        print("Ctrl-C stops everything.", flush=True)
        reported: set[str] = set()
        while not stop:
            time.sleep(0.5)
            for process in topology.processes:
                if not process.running and process.name not in reported:
                    reported.add(process.name)
                    print(f"{process.name} exited ({process.exit_text()}); see {process.log}", file=sys.stderr, flush=True)
    finally:
        print("stopping: nginx, then the gateways, then the runners", flush=True)
        left = topology.stop()
        if left:
            print(f"error: processes {left} did not stop", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
