"""The `agentmark-gw` command.

argparse rather than a CLI framework: the commands are few and flat, and the
gateway's install stays free of dependencies it does not need at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets as secrets_module
import sys
from pathlib import Path
from typing import Any

from dataclasses import replace

from .gateway.config import DEFAULT_BIND, DEFAULT_RUNNER, SECRET_ENV, ConfigError, GatewayConfig, load_config

DEFAULT_URL = f"http://{DEFAULT_BIND}/"
EPILOG_EXAMPLES = {
    "serve": "example: AGENTMARK_WEBHOOK_SECRET=... agentmark-gw serve --runner 127.0.0.1:50051 --bind 0.0.0.0:8080 --workers 2",
    "config": "example: agentmark-gw config check --config gateway.toml",
    "conformance": "example: agentmark-gw conformance --runner 127.0.0.1:50051 --json",
    "runner": "example: OPENAI_API_KEY=... agentmark-gw runner --listen 127.0.0.1:50051 --data-dir ./agentmark",
    "up": "example: agentmark-gw up   (then, in another shell: agentmark-gw send event.json)",
    "sign": "example: agentmark-gw sign event.json",
    "send": "example: agentmark-gw send event.json --url http://127.0.0.1:8080/",
}


def secret_file() -> Path:
    """Where `up` keeps the secret it generated, for `send` and `sign` to find."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "agentmark-gw" / "webhook-secret"


def local_secret() -> str | None:
    """The secret to sign with: the first of the environment's (the variable
    may list several, comma-separated, for rotation), else the one `up` saved."""
    secret = os.environ.get(SECRET_ENV)
    if secret:
        return next((s.strip() for s in secret.split(",") if s.strip()), None)
    try:
        return secret_file().read_text().strip() or None
    except OSError:
        return None


def _save_secret(secret: str) -> Path:
    path = secret_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return path


class CommandError(Exception):
    """A mistake on the command line: printed as `error: ...`, exit status 2."""


def _read_body(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {file}: {exc.strerror}") from None


# --- commands -----------------------------------------------------------------


def _config_path(args: argparse.Namespace) -> str | None:
    return args.config or os.environ.get("AGENTMARK_GW_CONFIG")


def cmd_serve(args: argparse.Namespace) -> int:
    from .gateway.observability import configure_logging
    from .gateway.server import run

    config = load_config(_config_path(args), runners=args.runner, bind=args.bind, workers=args.workers)
    config.require_secret()
    configure_logging(config.log_format)
    return run(config)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration and print it, secrets masked."""
    import json

    config = load_config(_config_path(args), runners=args.runner, bind=args.bind, workers=args.workers)
    print(json.dumps(config.masked(), indent=2))
    if not any(config.secrets):
        print(f"warning: no webhook secret: `serve` will refuse to start until {SECRET_ENV} is set", file=sys.stderr)
        return 1
    return 0


def reference_runner(data_dir: str) -> Any:
    """AgentMark's runtime with the OpenAI executor; datasets resolve under `data_dir`."""
    from agentmark.prompt_core import FileLoader, create_agentmark

    from .runner import AgentMarkRunner, OpenAIExecutor

    if not Path(data_dir).is_dir():
        raise CommandError(f"--data-dir {data_dir}: no such directory")
    if not os.environ.get("OPENAI_API_KEY"):
        logging.getLogger("agentmark_gw").warning("OPENAI_API_KEY is not set: every run will answer with an error saying so")
    return AgentMarkRunner(create_agentmark(loader=FileLoader(data_dir)), OpenAIExecutor())


def cmd_runner(args: argparse.Namespace) -> int:
    from .runner import serve

    serve(reference_runner(args.data_dir), args.listen)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The gateway and the OpenAI runner in one process, for a laptop."""
    secret = local_secret()
    if secret is None:
        secret = secrets_module.token_urlsafe(32)
        path = _save_secret(secret)
        print(f"generated a webhook secret (saved to {path}; `agentmark-gw send` uses it):\n  {secret}", flush=True)
    config = load_config(_config_path(args), bind=args.bind, runners=(args.runner_listen,))
    config = replace(config, secrets=(secret, *[s for s in config.secrets if s != secret]), log_format="text")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_up(config, args.runner_listen, args.data_dir))
    else:
        uvloop.run(_up(config, args.runner_listen, args.data_dir))
    return 0


async def _up(config: GatewayConfig, runner_address: str, data_dir: str) -> None:
    from .gateway.observability import configure_logging
    from .gateway.server import serve

    from .runner import start

    configure_logging(config.log_format)
    runner_server, port = await start(reference_runner(data_dir), runner_address)
    print(f"runner listening on {runner_address}; gateway on http://{config.bind}/", flush=True)
    try:
        await serve(config)
    finally:
        await runner_server.stop(2)


def cmd_conformance(args: argparse.Namespace) -> int:
    from . import conformance

    if args.write_dataset:
        print(f"wrote {conformance.write_dataset(args.write_dataset)}")
        if not args.runner:
            return 0
    if not args.runner:
        raise CommandError("--runner HOST:PORT is required")
    only = set(args.check) if args.check else None
    results = asyncio.run(conformance.run_kit(args.runner, args.dataset, args.timeout, only))
    print(conformance.report(results, args.json))
    return 0 if all(r.passed for r in results) else 1


def cmd_sign(args: argparse.Namespace) -> int:
    from . import _accel

    secret = local_secret()
    if secret is None:
        print(f"error: no secret: set {SECRET_ENV} (or run `agentmark-gw up` once)", file=sys.stderr)
        return 2
    print(_accel.sign(secret, _read_body(args.file)))
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from . import _accel

    secret = local_secret()
    if secret is None:
        print(f"error: no secret: set {SECRET_ENV} (or run `agentmark-gw up` once)", file=sys.stderr)
        return 2
    body = _read_body(args.file)
    headers = {
        "Content-Type": "application/json",
        "x-agentmark-signature-256": _accel.sign(secret, body),
    }
    try:
        with httpx.stream("POST", args.url, content=body, headers=headers, timeout=args.timeout) as response:
            if response.status_code >= 400:
                response.read()
                print(f"HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
                return 1
            failed = False
            for line in response.iter_lines():
                print(line, flush=True)
                failed = failed or line.startswith('{"type":"error"')
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    # A stream that ended in an error line is a failed run, for scripts too.
    return 1 if failed else 0


# --- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentmark-gw",
        description="AgentMark webhook gateway: verify, run on gRPC runners, stream NDJSON back.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, epilog=EPILOG_EXAMPLES[name])

    def gateway_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--runner", action="append", metavar="HOST:PORT", help=f"a runner to call; repeat for several, or a dns:/// name (default {DEFAULT_RUNNER})")
        parser.add_argument("--bind", metavar="HOST:PORT", help=f"address to listen on (default {DEFAULT_BIND})")
        parser.add_argument("--workers", type=int, metavar="N", help="Hypercorn worker processes (default 1)")
        parser.add_argument("--config", metavar="FILE", help="a TOML configuration file (or AGENTMARK_GW_CONFIG)")

    serve = command("serve", "Serve the gateway (needs AGENTMARK_WEBHOOK_SECRET).")
    gateway_options(serve)
    serve.set_defaults(handler=cmd_serve)

    config = command("config", "Work with the gateway's configuration.")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="Validate the configuration and print it, secrets masked.",
        description="Validate the configuration (file, AGENTMARK_GW_* variables, flags) and print the effective values, secrets masked.",
        epilog=EPILOG_EXAMPLES["config"],
    )
    gateway_options(check)
    check.set_defaults(handler=cmd_config_check)

    runner = command("runner", "Serve AgentMark's runtime with the OpenAI executor over gRPC.")
    runner.add_argument("--listen", default=DEFAULT_RUNNER, metavar="HOST:PORT", help=f"default {DEFAULT_RUNNER}")
    runner.add_argument("--data-dir", default=".", metavar="DIR", help="where dataset paths resolve; paths outside it are refused (default: .)")
    runner.set_defaults(handler=cmd_runner)

    up = command("up", "Gateway and OpenAI runner together, on embedded defaults.")
    up.add_argument("--bind", metavar="HOST:PORT", help=f"gateway address (default {DEFAULT_BIND})")
    up.add_argument("--runner-listen", default=DEFAULT_RUNNER, metavar="HOST:PORT", help=f"runner address (default {DEFAULT_RUNNER})")
    up.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    up.add_argument("--data-dir", default=".", metavar="DIR", help="where dataset paths resolve (default: .)")
    up.set_defaults(handler=cmd_up)

    kit = command("conformance", "Check a runner against the runner contract, over gRPC.")
    kit.add_argument("--runner", metavar="HOST:PORT", help="the runner to check")
    kit.add_argument("--json", action="store_true", help="print the results as JSON (for CI)")
    kit.add_argument("--dataset", default="agentmark-gw-conformance.jsonl", metavar="PATH", help="dataset path the runner resolves for the dataset check")
    kit.add_argument("--write-dataset", metavar="DIR", help="write the kit's dataset into the runner's data directory DIR")
    kit.add_argument("--check", action="append", metavar="NAME", help="run only this check (repeatable)")
    kit.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    kit.set_defaults(handler=cmd_conformance)

    sign = command("sign", "Print the x-agentmark-signature-256 header value for an event file.")
    sign.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    sign.set_defaults(handler=cmd_sign)

    send = command("send", "Sign and POST an event file; print each NDJSON line as it arrives.")
    send.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    send.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    send.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    send.set_defaults(handler=cmd_send)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per outbound request is noise in `send`.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CommandError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
