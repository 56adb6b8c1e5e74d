"""The `agentmark-gw` command.

argparse rather than a CLI framework: the commands are few and flat, and the
gateway's install stays free of dependencies it does not need at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets as secrets_module
import sys
import time
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
    "init": "example: agentmark-gw init runner my-runner",
    "alerts": "example: agentmark-gw alerts list --status dead",
    "event": "example: agentmark-gw event prompt-run --ast math.prompt.json | agentmark-gw send -",
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


def _gateway_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {"runners": args.runner, "bind": args.bind, "workers": args.workers, "server": args.server, "loop": args.loop}


def cmd_serve(args: argparse.Namespace) -> int:
    from .gateway.observability import configure_logging
    from .gateway.server import run

    config = load_config(_config_path(args), **_gateway_flags(args))
    config.require_secret()
    configure_logging(config.log_format)
    return run(config)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration and print it, secrets masked."""
    import json

    config = load_config(_config_path(args), **_gateway_flags(args))
    print(json.dumps(config.masked(), indent=2))
    if not any(config.secrets):
        print(f"warning: no webhook secret: `serve` will refuse to start until {SECRET_ENV} is set", file=sys.stderr)
        return 1
    return 0


def reference_runner(data_dir: str) -> Any:
    """AgentMark's runtime with the OpenAI executor and the built-in scorers
    (`exact_match`, `exact_match_json`); datasets resolve under `data_dir`.
    Other scorers need a runner of your own (`agentmark-gw init runner`)."""
    from agentmark.prompt_core import FileLoader, create_agentmark

    from .runner import BUILTIN_SCORERS, AgentMarkRunner, OpenAIExecutor

    if not Path(data_dir).is_dir():
        raise CommandError(f"--data-dir {data_dir}: no such directory")
    if not os.environ.get("OPENAI_API_KEY"):
        logging.getLogger("agentmark_gw").warning("OPENAI_API_KEY is not set: every run will answer with an error saying so")
    return AgentMarkRunner(create_agentmark(loader=FileLoader(data_dir), scorers=dict(BUILTIN_SCORERS)), OpenAIExecutor())


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
    # One process, so always Hypercorn (`server` is for `serve`); the loop is as configured.
    if config.loop == "uvloop":
        import uvloop

        uvloop.run(_up(config, args.runner_listen, args.data_dir))
    else:
        asyncio.run(_up(config, args.runner_listen, args.data_dir))
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
    unknown = conformance.unknown_checks(only or set())
    if unknown:
        raise CommandError(f"--check {', '.join(unknown)}: no such check (ids: {', '.join(conformance.CHECK_IDS)})")
    results = asyncio.run(conformance.run_kit(args.runner, args.dataset, args.timeout, only))
    print(conformance.report(results, args.json))
    return 0 if results and all(r.passed for r in results) else 1


def cmd_init_runner(args: argparse.Namespace) -> int:
    from .scaffold import scaffold_runner

    try:
        written = scaffold_runner(args.directory)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next: cd {args.directory} && pip install -e '.[test]' && pytest")
    return 0


def _outbox(args: argparse.Namespace) -> Any:
    from .gateway.alerts import Outbox

    config = load_config(_config_path(args))
    is_url = config.alerts_db.startswith(("postgresql://", "postgres://"))
    if not is_url and not Path(config.alerts_db).exists():
        raise CommandError(f"no alert outbox at {config.alerts_db} (set alerts_db, or AGENTMARK_GW_ALERTS_DB)")
    return Outbox(config.alerts_db)


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def cmd_alerts(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    try:
        if args.alerts_command == "list":
            rows = outbox.recent(args.status, args.type, args.limit)
            if args.json:
                print(json.dumps(rows, indent=2))
                return 0
            print(f"{'received':19}  {'alert':20}  {'type':10}  {'status':9}  {'sink':12}  {'state':10}  attempts  last error")
            for r in rows:
                print(f"{_when(r['received_at']):19}  {r['alert_id'][:20]:20}  {r['type']:10}  {r['status']:9}  {r['sink'][:12]:12}  "
                      f"{r['state']:10}  {r['attempts']:8}  {(r['last_error'] or '')[:60]}")
            return 0
        if args.alerts_command == "show":
            rows = outbox.show(args.id)
            if not rows:
                raise CommandError(f"no alert {args.id} in the outbox")
            for r in rows:
                r["payload"] = json.loads(r["payload"])
            print(json.dumps(rows, indent=2))
            return 0
        if args.alerts_command == "retry":
            count = outbox.retry(args.id)
            if not count:
                raise CommandError(f"alert {args.id} has no dead deliveries to retry")
            print(f"{count} dead deliver{'y' if count == 1 else 'ies'} of {args.id} queued again; a running gateway picks them up")
            return 0
        seconds = _duration(args.older_than)
        print(f"pruned {outbox.prune(seconds)} delivered or suppressed deliveries older than {args.older_than}")
        return 0
    finally:
        outbox.close()


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise CommandError(f"--older-than {text}: a number of seconds, or a number with s, m, h or d") from None


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

    from rich.markup import escape

    from . import _accel
    from .console import Renderer, make_console

    secret = local_secret()
    if secret is None:
        print(f"error: no secret: set {SECRET_ENV} (or run `agentmark-gw up` once)", file=sys.stderr)
        return 2
    body = _read_body(args.file)
    headers = {"Content-Type": "application/json", "x-agentmark-signature-256": _accel.sign(secret, body)}
    renderer = Renderer(
        make_console(sys.stdout), make_console(sys.stderr), Path(args.out), Path(args.json) if args.json else None,
        dataset=b'"dataset-run"' in body,
    )
    failed = False
    try:
        with httpx.stream("POST", args.url, content=body, headers=headers, timeout=args.timeout) as response:
            if response.status_code >= 400:
                response.read()
                renderer.err.print(f"[bold red]HTTP {response.status_code}:[/] {escape(_message(response.text))}", markup=True)
                return 1
            streaming = response.headers.get("agentmark-streaming") == "true"
            if not streaming and not args.raw:
                response.read()
                renderer.envelope(response.json())
                return 0
            for line in response.iter_lines():
                if args.raw:
                    print(line, flush=True)
                    failed = failed or line.startswith('{"type":"error"')
                elif line.strip():
                    renderer.line(json.loads(line))
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.raw:
            renderer.close()
    # A stream that ended in an error line is a failed run, for scripts too.
    return 1 if failed or renderer.failed else 0


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()


def _json_option(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise CommandError(f"{name} is not valid JSON: {text}") from None


def _read_ast(file: str) -> Any:
    """A prompt AST: the tree itself, or AgentMark's built `{"ast": ...}` file."""
    document = _json_option(_read_body(file).decode(), f"--ast {file}")
    return document["ast"] if isinstance(document, dict) and "ast" in document and "children" not in document else document


def cmd_event(args: argparse.Namespace) -> int:
    """Print a webhook body, ready to `send` or to pipe."""
    data: dict[str, Any]
    if args.event_type == "prompt-run":
        data = {"ast": _read_ast(args.ast), "customProps": _json_option(args.props, "--props"), "options": {"shouldStream": not args.no_stream}}
        if args.prompt_path:
            data["promptPath"] = args.prompt_path
    elif args.event_type == "dataset-run":
        data = {"ast": _read_ast(args.ast), "experimentId": args.experiment, "datasetPath": args.dataset}
        if args.concurrency:
            data["concurrency"] = args.concurrency
    elif args.event_type == "alert":
        data = {
            "alert": {"id": args.id, "type": args.type, "status": args.status, "currentValue": args.value,
                      "threshold": args.threshold, "timeWindow": args.window},
            "message": args.message or f"{args.type} alert {args.status}: {args.value} against {args.threshold} over {args.window}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    else:
        data = {}
    print(json.dumps({"event": {"type": args.event_type, "data": data}}, indent=2, ensure_ascii=False))
    return 0


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
        parser.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
        parser.add_argument("--server", choices=["hypercorn", "granian"], help="HTTP server (default hypercorn)")
        parser.add_argument("--loop", choices=["uvloop", "asyncio"], help="event loop (default uvloop)")
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
    kit.add_argument("--check", action="append", metavar="ID", help="run only this check, by the id the table shows (repeatable)")
    kit.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    kit.set_defaults(handler=cmd_conformance)

    alerts = command("alerts", "Inspect and operate the alert outbox.")
    alerts_commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    listing = alerts_commands.add_parser("list", help="recent alert deliveries", epilog="example: agentmark-gw alerts list --status dead --type cost")
    listing.add_argument("--status", choices=["pending", "delivered", "dead", "suppressed"], help="only deliveries in this state")
    listing.add_argument("--type", choices=["cost", "latency", "error_rate"], help="only alerts of this type")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = alerts_commands.add_parser("show", help="every delivery of one alert, with its payload", epilog="example: agentmark-gw alerts show alrt_cost_1")
    show.add_argument("id", metavar="ID")
    retry = alerts_commands.add_parser("retry", help="queue an alert's dead deliveries again", epilog="example: agentmark-gw alerts retry alrt_cost_1")
    retry.add_argument("id", metavar="ID")
    prune = alerts_commands.add_parser("prune", help="delete old delivered and suppressed deliveries", epilog="example: agentmark-gw alerts prune --older-than 30d")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="seconds, or with a unit: 90m, 12h, 30d")
    for sub in (listing, show, retry, prune):
        sub.add_argument("--config", metavar="FILE", help="the gateway's TOML configuration (for alerts_db)")
    alerts.set_defaults(handler=cmd_alerts)

    init = command("init", "Start a new project.")
    init_kinds = init.add_subparsers(dest="init_kind", required=True, metavar="WHAT")
    init_runner = init_kinds.add_parser(
        "runner", help="a Python runner project: the ten-line runner, a conformance test, a README",
        epilog="example: agentmark-gw init runner my-runner",
    )
    init_runner.add_argument("directory", metavar="DIR")
    init_runner.set_defaults(handler=cmd_init_runner)

    sign = command("sign", "Print the x-agentmark-signature-256 header value for an event file.")
    sign.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    sign.set_defaults(handler=cmd_sign)

    send = command("send", "Sign and POST an event, and show the answer as it arrives.")
    send.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    send.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    send.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    send.add_argument("--raw", action="store_true", help="print the answer exactly as received (NDJSON or JSON), for piping")
    send.add_argument("--out", default=".", metavar="DIR", help="where images and speech are written (default .)")
    send.add_argument("--json", metavar="FILE", help="dataset runs: write the rows to FILE as JSON")
    send.set_defaults(handler=cmd_send)

    event = command("event", "Print a webhook event body, ready to send or to pipe.")
    kinds = event.add_subparsers(dest="event_type", required=True, metavar="TYPE")
    prompt = kinds.add_parser("prompt-run", help="run a prompt", epilog="example: agentmark-gw event prompt-run --ast math.prompt.json --props '{\"q\": \"2+2\"}'")
    prompt.add_argument("--ast", required=True, metavar="FILE", help="the prompt AST (JSON, as `agentmark build` writes it)")
    prompt.add_argument("--props", default="{}", metavar="JSON", help="the props, as a JSON object")
    prompt.add_argument("--no-stream", action="store_true", help="ask for one JSON envelope instead of a stream")
    prompt.add_argument("--prompt-path", metavar="PATH", help="the prompt's path, for traces")
    dataset = kinds.add_parser("dataset-run", help="run a prompt over a dataset", epilog="example: agentmark-gw event dataset-run --ast sentiment.prompt.json --dataset sentiment.jsonl")
    dataset.add_argument("--ast", required=True, metavar="FILE")
    dataset.add_argument("--dataset", required=True, metavar="PATH", help="the dataset path, as the runner resolves it")
    dataset.add_argument("--experiment", default="experiment", metavar="NAME", help="the run's name (default experiment)")
    dataset.add_argument("--concurrency", type=int, metavar="N")
    alert = kinds.add_parser("alert", help="a cost, latency or error-rate alert", epilog="example: agentmark-gw event alert --type cost --status triggered --value 61.25 --threshold 50")
    alert.add_argument("--type", required=True, choices=["cost", "latency", "error_rate"])
    alert.add_argument("--status", required=True, choices=["triggered", "resolved"])
    alert.add_argument("--id", default="alert-1")
    alert.add_argument("--value", type=float, default=0.0)
    alert.add_argument("--threshold", type=float, default=0.0)
    alert.add_argument("--window", default="1h")
    alert.add_argument("--message")
    kinds.add_parser("get-evals", help="ask the runner for its evals", epilog="example: agentmark-gw event get-evals | agentmark-gw send -")
    event.set_defaults(handler=cmd_event)
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
