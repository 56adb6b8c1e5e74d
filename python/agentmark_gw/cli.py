"""The `agentmark-gw` command.

argparse rather than a CLI framework: the commands are few and flat, and the
gateway's install stays free of dependencies it does not need at run time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import secrets as secrets_module
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._ports import PortInUse, ensure_free
from .gateway.config import (
    DEFAULT_BIND,
    DEFAULT_RUNNER,
    ENV_PREFIX,
    SECRET_ENV,
    SECRET_FILE_NAME,
    ConfigError,
    GatewayConfig,
    default_state_dir,
    load_config,
    state_home,
)

DEFAULT_URL = f"http://{DEFAULT_BIND}/"
STATE_DIR_ENV = f"{ENV_PREFIX}STATE_DIR"
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


@dataclass(frozen=True)
class LocalSecret:
    """The secret `send` and `sign` sign with, and where it came from (for
    messages: the secret itself is never printed, only a short fingerprint)."""

    value: str
    source: str  # SECRET_ENV, or the path of the file `up` saved it in

    def describe(self) -> str:
        where = self.source if self.source == SECRET_ENV else f"the file {self.source}"
        return f"the secret from {where} (sha256 {hashlib.sha256(self.value.encode()).hexdigest()[:4]}...)"


def instance_state_dir(state_dir: str | None, bind: str | None) -> Path:
    """The state directory of the gateway a command is pointed at: `--state-dir`,
    else AGENTMARK_GW_STATE_DIR, else the default of the gateway bound to `bind`."""
    return Path(state_dir or os.environ.get(STATE_DIR_ENV) or default_state_dir(bind or DEFAULT_BIND))


def url_bind(url: str) -> str:
    """`HOST:PORT` of a URL, so `--url` finds the same instance as `--bind`."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CommandError(f"--url {url}: not a valid URL") from None
    return f"{parts.hostname or ''}:{port}"


def local_secret(state_dir: Path) -> LocalSecret | None:
    """The secret to sign with: the first of the environment's (the variable
    may list several, comma-separated, for rotation), else the one `up` saved
    in the instance's state directory."""
    secret = os.environ.get(SECRET_ENV)
    if secret:
        first = next((s.strip() for s in secret.split(",") if s.strip()), None)
        return LocalSecret(first, SECRET_ENV) if first else None
    path = state_dir / SECRET_FILE_NAME
    try:
        saved = path.read_text().strip()
    except OSError:
        return None
    return LocalSecret(saved, str(path)) if saved else None


def _require_secret(state_dir: Path) -> LocalSecret:
    secret = local_secret(state_dir)
    if secret is None:
        raise CommandError(
            f"no secret: set {SECRET_ENV}, or run `agentmark-gw up` once (it saves one in {state_dir}; "
            "--state-dir or --url picks the instance)"
        )
    return secret


def _save_secret(secret: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return path


def _require_free(address: str, flag: str) -> None:
    """Refuse a port in use before starting anything, naming the flag that picks another."""
    try:
        ensure_free(address)
    except PortInUse as exc:
        exc.flag = flag
        raise


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
    return {"runners": args.runner, "bind": args.bind, "workers": args.workers, "server": args.server, "loop": args.loop,
            "state_dir": args.state_dir}


def log_state(config: GatewayConfig) -> None:
    """Say at start where this instance keeps its state, so two gateways on
    one machine are visibly apart. A PostgreSQL URL is not logged: it may
    hold a password."""
    log = logging.getLogger("agentmark_gw")
    outbox = "PostgreSQL (alerts_db)" if config.alerts_db.startswith(("postgresql://", "postgres://")) else config.alerts_db
    log.info("state in %s (alert outbox: %s)", config.state_dir, outbox)
    # Before state_dir, every gateway shared this outbox; its pending and dead
    # alerts would be silently left behind by an upgrade, so say where it is.
    legacy = state_home() / "alerts.sqlite3"
    if legacy.exists() and str(legacy) != config.alerts_db:
        log.warning("an alert outbox shared by all gateways before per-instance state is at %s; "
                    "set alerts_db to it to keep delivering what it holds", legacy)


def cmd_serve(args: argparse.Namespace) -> int:
    from .gateway.observability import configure_logging
    from .gateway.server import run

    config = load_config(_config_path(args), **_gateway_flags(args))
    # Refused before anything is logged or bound: one line saying what to set.
    config.require_strong_secret()
    _require_free(config.bind, "--bind")
    configure_logging(config.log_format)
    log_state(config)
    return run(config)


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the configuration and print it, secrets masked; say where the secret comes from."""
    config = load_config(_config_path(args), **_gateway_flags(args))
    if any(config.secrets):
        source = SECRET_ENV if os.environ.get(SECRET_ENV) else "the config file's `secrets`"
        note = f"webhook secret(s) from {source}"
    else:
        # What `up` would use: the secret it saved for this instance.
        saved = local_secret(Path(config.state_dir))
        if saved is not None:
            config = replace(config, secrets=(saved.value,))
            note = f"webhook secret: {saved.describe()}, saved by `agentmark-gw up` (`serve` reads only {SECRET_ENV} or the config file)"
    print(json.dumps(config.masked(), indent=2))
    if not any(config.secrets):
        print(f"warning: no webhook secret: `serve` will refuse to start until {SECRET_ENV} is set "
              f"(and no secret saved by `up` in {config.state_dir})", file=sys.stderr)
        return 1
    print(note, file=sys.stderr)
    return 0


def reference_runner(data_dir: str) -> Any:
    """AgentMark's runtime with the OpenAI executor and the built-in scorers
    (`exact_match`, `exact_match_json`); datasets resolve under `data_dir`.
    Other scorers need a runner of your own (`agentmark-gw init runner`)."""
    from agentmark.prompt_core import FileLoader, create_agentmark

    from .agentmark_api import ConnectionSettingsError
    from .runner import BUILTIN_SCORERS, AgentMarkRunner, OpenAIExecutor, connect_agentmark

    if not Path(data_dir).is_dir():
        raise CommandError(f"--data-dir {data_dir}: no such directory")
    if not os.environ.get("OPENAI_API_KEY"):
        logging.getLogger("agentmark_gw").warning("OPENAI_API_KEY is not set: every run will answer with an error saying so")
    try:
        loader = connect_agentmark(FileLoader(data_dir))
    except ConnectionSettingsError as exc:
        raise CommandError(str(exc)) from None
    return AgentMarkRunner(create_agentmark(loader=loader, scorers=dict(BUILTIN_SCORERS)), OpenAIExecutor())


def cmd_runner(args: argparse.Namespace) -> int:
    from .runner import serve

    if args.check:
        return _check_agentmark_connection()
    _require_free(args.listen, "--listen")
    runner = reference_runner(args.data_dir)
    if args.metrics:
        _serve_runner_metrics(args.metrics)
    serve(runner, args.listen)
    return 0


def _serve_runner_metrics(address: str) -> None:
    """Prometheus metrics of the runner process (trace exports to AgentMark)."""
    from prometheus_client import start_http_server

    host, _, port = address.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "127.0.0.1")
    except (ValueError, OSError) as exc:
        raise CommandError(f"--metrics {address}: cannot listen there ({exc})") from None


def _check_agentmark_connection() -> int:
    """`runner --check`: which mode, and in cloud mode one request to AgentMark."""
    from .agentmark_api import API_KEY_ENV, APP_ID_ENV, AgentMarkCloud, ConnectionSettingsError

    try:
        cloud = AgentMarkCloud.from_env()
    except ConnectionSettingsError as exc:
        raise CommandError(str(exc)) from None
    if cloud is None:
        print(f"local mode: {API_KEY_ENV} and {APP_ID_ENV} are not set; datasets come from --data-dir and no traces go to AgentMark")
        return 0
    try:
        print(asyncio.run(cloud.check()))
    except ConnectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The gateway and the OpenAI runner in one process, for a laptop."""
    config = load_config(_config_path(args), bind=args.bind, runners=(args.runner_listen,), state_dir=args.state_dir)
    _require_free(config.bind, "--bind")
    _require_free(args.runner_listen, "--runner-listen")
    if not any(config.secrets):
        saved = local_secret(Path(config.state_dir))
        secret = saved.value if saved is not None else secrets_module.token_urlsafe(32)
        if saved is None:
            path = _save_secret(secret, config.secret_file)
            print(f"generated a webhook secret (saved to {path}; `agentmark-gw send` uses it):\n  {secret}", flush=True)
        config = replace(config, secrets=(secret,))
    # Runners that take dataset items (none here, but any the user adds) read the same folder.
    config = replace(config, log_format="text", datasets_dir=config.datasets_dir or args.data_dir)
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
    log_state(config)
    runner_server, port = await start(reference_runner(data_dir), runner_address)
    print(f"runner listening on {runner_address}; gateway on http://{config.bind}/", flush=True)
    try:
        await serve(config)
    finally:
        await runner_server.stop(2)
        from .runner.agentmark_cloud import shutdown_tracing

        await asyncio.to_thread(shutdown_tracing, 2)  # spans of the last runs, when connected to AgentMark


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
    if args.serve_model is not None:
        # On stderr: --json output stays one JSON document.
        print(conformance.model_note(args.serve_model), file=sys.stderr, flush=True)
    try:
        results = asyncio.run(conformance.run_kit(args.runner, args.dataset, args.timeout, only, serve_model=args.serve_model))
    except OSError as exc:  # the model's port is taken
        raise CommandError(f"--serve-model {args.serve_model}: {exc}") from None
    print(conformance.report(results, args.json))
    return 0 if results and all(r.passed for r in results) else 1


def cmd_init_runner(args: argparse.Namespace) -> int:
    from .scaffold import DEFAULT_LISTEN, next_steps, scaffold_runner

    try:
        written = scaffold_runner(args.directory)
    except FileExistsError as exc:
        raise CommandError(str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    print(f"next steps, with the Python that has agentmark-gw ({sys.executable}; agentmark-gw is not on PyPI):")
    for step in next_steps(args.directory, sys.executable):
        print(f"  {step}")
    print(f"the runner listens on {DEFAULT_LISTEN} (`make up` takes 50051); --listen HOST:PORT chooses another")
    return 0


def _outbox(args: argparse.Namespace) -> Any:
    from .gateway.alerts import Outbox

    config = load_config(_config_path(args), bind=args.bind or (url_bind(args.url) if args.url else None), state_dir=args.state_dir)
    is_url = config.alerts_db.startswith(("postgresql://", "postgres://"))
    if not is_url and not Path(config.alerts_db).exists():
        raise CommandError(
            f"no alert outbox at {config.alerts_db} (point at the gateway with --bind, --url or --state-dir; or set alerts_db)"
        )
    return Outbox(config.alerts_db)


def _printable(text: str) -> str:
    """`text` with what a terminal would act on (newlines, escape sequences,
    other control and format characters) escaped as JSON escapes it, as
    `alerts show` prints it; a backslash is doubled so escapes stay unambiguous."""
    return "".join(c if c.isprintable() and c != "\\" else json.dumps(c)[1:-1] for c in str(text))


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
                print(f"{_when(r['received_at']):19}  {_printable(r['alert_id'])[:20]:20}  {_printable(r['type']):10}  "
                      f"{_printable(r['status']):9}  {_printable(r['sink'])[:12]:12}  {r['state']:10}  {r['attempts']:8}  "
                      f"{_printable(r['last_error'] or '')[:60]}")
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

    secret = _require_secret(instance_state_dir(args.state_dir, url_bind(args.url)))
    print(_accel.sign(secret.value, _read_body(args.file)))
    return 0


def _check_body(file: str, body: bytes) -> None:
    """Refuse, in one line, bodies that cannot be an event, before signing them."""
    text = body.lstrip(b"\xef\xbb\xbf").strip()
    if not text:
        where = "standard input" if file == "-" else file
        raise CommandError(f"empty body: {where} has nothing to send (an event is a JSON body; `agentmark-gw event` prints one)")
    if file.endswith(".mdx") or text.startswith(b"---"):
        # Name the JSON AST the build would write beside it (haiku.prompt.mdx -> haiku.prompt.json).
        ast = str(Path(file).with_suffix(".json")) if file.endswith(".mdx") else "file.prompt.json"
        raise CommandError(
            f"{file} is a prompt source (MDX with frontmatter), not an event: AgentMark's build turns a .prompt.mdx into its "
            f"JSON AST (.prompt.json); send that as an event with `agentmark-gw event prompt-run --ast {ast} | agentmark-gw send -`"
        )


def ndjson_lines(chunks: Any) -> Any:
    """The lines of an NDJSON stream, split on b"\n" only: answers may hold
    U+2028, U+2029 or U+0085 inside their JSON strings, which str.splitlines
    (and httpx's iter_lines) would also split on."""
    pending = b""
    for chunk in chunks:
        *lines, pending = (pending + chunk).split(b"\n")
        yield from lines
    if pending:
        yield pending


def cmd_send(args: argparse.Namespace) -> int:
    import httpx
    from rich.markup import escape

    from . import _accel
    from .console import Renderer, make_console

    # The body first: a prompt source or an empty file is the mistake to name, secret or not.
    body = _read_body(args.file)
    _check_body(args.file, body)
    secret = _require_secret(instance_state_dir(args.state_dir, url_bind(args.url)))
    headers = {"Content-Type": "application/json", "x-agentmark-signature-256": _accel.sign(secret.value, body)}
    renderer = Renderer(
        make_console(sys.stdout), make_console(sys.stderr), Path(args.out), Path(args.json) if args.json else None,
        dataset=b'"dataset-run"' in body,
    )
    failed = False
    try:
        with httpx.stream("POST", args.url, content=body, headers=headers, timeout=args.timeout) as response:
            if response.status_code >= 400:
                response.read()
                renderer.refused = True
                hint = f" (signed with {secret.describe()}; the gateway expects another)" if response.status_code == 401 else ""
                renderer.err.print(f"[bold red]HTTP {response.status_code}:[/] {escape(_message(response.text) + hint)}", markup=True)
                return 1
            streaming = response.headers.get("agentmark-streaming") == "true"
            if not streaming and not args.raw:
                response.read()
                renderer.envelope(response.json())
                return 0
            for line in ndjson_lines(response.iter_bytes()):
                if args.raw:
                    sys.stdout.buffer.write(line + b"\n")
                    sys.stdout.buffer.flush()
                    failed = failed or line.startswith(b'{"type":"error"')
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

    state_help = (f"the gateway's state directory: alert outbox and the secret `up` saved (or {STATE_DIR_ENV}; "
                  "default: one per gateway port under $XDG_STATE_HOME/agentmark-gw)")

    def subcommand(group: Any, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
        # A description on every parser: `--help` says what the command does, not only its flags.
        return group.add_parser(name, help=help, description=description, epilog=f"example: {example}")

    def gateway_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--runner", action="append", metavar="HOST:PORT",
                            help=f"a runner to call; repeat for several, or a dns:/// name (default {DEFAULT_RUNNER})")
        parser.add_argument("--bind", metavar="HOST:PORT", help=f"address to listen on (default {DEFAULT_BIND})")
        parser.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
        parser.add_argument("--server", choices=["hypercorn", "granian"], help="HTTP server (default hypercorn)")
        parser.add_argument("--loop", choices=["uvloop", "asyncio"], help="event loop (default uvloop)")
        parser.add_argument("--config", metavar="FILE", help="a TOML configuration file (or AGENTMARK_GW_CONFIG)")
        parser.add_argument("--state-dir", metavar="DIR", help=state_help)

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
    runner.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (GET /metrics) here; off by default")
    runner.add_argument(
        "--check", action="store_true",
        help="say whether the runner would be connected to AgentMark (AGENTMARK_API_KEY, AGENTMARK_APP_ID) and, if so, reach its API once",
    )
    runner.set_defaults(handler=cmd_runner)

    up = command("up", "Gateway and OpenAI runner together, on embedded defaults.")
    up.add_argument("--bind", metavar="HOST:PORT", help=f"gateway address (default {DEFAULT_BIND})")
    up.add_argument("--runner-listen", default=DEFAULT_RUNNER, metavar="HOST:PORT", help=f"runner address (default {DEFAULT_RUNNER})")
    up.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    up.add_argument("--data-dir", default=".", metavar="DIR", help="where prompts' datasets resolve (default: .; `make up` uses examples/agentmark)")
    up.add_argument("--state-dir", metavar="DIR", help=state_help)
    up.set_defaults(handler=cmd_up)

    kit = command("conformance", "Check a runner against the runner contract, over gRPC.")
    kit.add_argument("--runner", metavar="HOST:PORT", help="the runner to check")
    kit.add_argument("--json", action="store_true", help="print the results as JSON (for CI)")
    kit.add_argument("--dataset", default="agentmark-gw-conformance.jsonl", metavar="PATH", help="dataset path the runner resolves for the dataset check")
    kit.add_argument("--write-dataset", metavar="DIR", help="write the kit's dataset into the runner's data directory DIR")
    kit.add_argument("--check", action="append", metavar="ID", help="run only this check, by the id the table shows (repeatable)")
    kit.add_argument("--timeout", type=float, default=60.0, help="seconds per call (default 60)")
    kit.add_argument("--serve-model", type=int, metavar="PORT",
                     help="serve the kit's own OpenAI-compatible model on 127.0.0.1:PORT (start the runner with "
                          "OPENAI_BASE_URL=http://127.0.0.1:PORT/v1) and check what the runner sends it")
    kit.set_defaults(handler=cmd_conformance)

    alerts = command("alerts", "Inspect and operate the alert outbox.")
    alerts_commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    listing = subcommand(alerts_commands, "list", "recent alert deliveries",
                         "List the most recent alert deliveries of one gateway's outbox (one row per alert and sink), newest first.",
                         "agentmark-gw alerts list --status dead --type cost")
    listing.add_argument("--status", choices=["pending", "delivered", "dead", "suppressed"], help="only deliveries in this state")
    listing.add_argument("--type", choices=["cost", "latency", "error_rate"], help="only alerts of this type")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = subcommand(alerts_commands, "show", "every delivery of one alert, with its payload",
                      "Print, as JSON, every delivery of one alert (one per sink) with its state, attempts, last error and payload.",
                      "agentmark-gw alerts show alrt_cost_1")
    show.add_argument("id", metavar="ID")
    retry = subcommand(alerts_commands, "retry", "queue an alert's dead deliveries again",
                       "Queue an alert's dead deliveries (those that used up their attempts) again; a running gateway delivers them.",
                       "agentmark-gw alerts retry alrt_cost_1")
    retry.add_argument("id", metavar="ID")
    prune = subcommand(alerts_commands, "prune", "delete old delivered and suppressed deliveries",
                       "Delete delivered and suppressed deliveries older than an age; pending and dead ones are kept.",
                       "agentmark-gw alerts prune --older-than 30d")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="seconds, or with a unit: 90m, 12h, 30d")
    for sub in (listing, show, retry, prune):
        sub.add_argument("--config", metavar="FILE", help="the gateway's TOML configuration (for alerts_db)")
        sub.add_argument("--bind", metavar="HOST:PORT", help=f"the gateway's address, to find its state (default {DEFAULT_BIND})")
        sub.add_argument("--url", help="or the gateway's URL, to find its state")
        sub.add_argument("--state-dir", metavar="DIR", help=state_help)
    alerts.set_defaults(handler=cmd_alerts)

    init = command("init", "Start a new project.")
    init_kinds = init.add_subparsers(dest="init_kind", required=True, metavar="WHAT")
    init_runner = subcommand(
        init_kinds, "runner", "a Python runner project: the ten-line runner, a conformance test, a README",
        "Write a new Python runner project into DIR (AgentMark's runtime with the OpenAI executor, a test that runs the "
        "conformance checks needing no model, a README) and print the next steps. Never overwrites files.",
        "agentmark-gw init runner my-runner",
    )
    init_runner.add_argument("directory", metavar="DIR")
    init_runner.set_defaults(handler=cmd_init_runner)

    sign = command("sign", "Print the x-agentmark-signature-256 header value for an event file.")
    sign.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    sign.add_argument("--url", default=DEFAULT_URL, help=f"the gateway the signature is for, to find the secret `up` saved for it (default {DEFAULT_URL})")
    sign.add_argument("--state-dir", metavar="DIR", help=state_help)
    sign.set_defaults(handler=cmd_sign)

    send = command("send", "Sign and POST an event, and show the answer as it arrives.")
    send.add_argument("file", metavar="FILE", help="the event body; - for standard input")
    send.add_argument("--url", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    send.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    send.add_argument("--raw", action="store_true", help="print the answer exactly as received (NDJSON or JSON), for piping")
    send.add_argument("--out", default=".", metavar="DIR", help="where images and speech are written (default .)")
    send.add_argument("--json", metavar="FILE", help="dataset runs: write the rows to FILE as JSON")
    send.add_argument("--state-dir", metavar="DIR", help=state_help + "; default: the one of --url's port")
    send.set_defaults(handler=cmd_send)

    event = command("event", "Print a webhook event body, ready to send or to pipe.")
    kinds = event.add_subparsers(dest="event_type", required=True, metavar="TYPE")
    prompt = subcommand(kinds, "prompt-run", "run a prompt",
                        "Print a prompt-run event: a prompt's JSON AST (a .prompt.json, as AgentMark's build makes it from a .prompt.mdx) and its props.",
                        "agentmark-gw event prompt-run --ast math.prompt.json --props '{\"q\": \"2+2\"}'")
    prompt.add_argument("--ast", required=True, metavar="FILE", help="the prompt AST (JSON, as `agentmark build` writes it)")
    prompt.add_argument("--props", default="{}", metavar="JSON", help="the props, as a JSON object")
    prompt.add_argument("--no-stream", action="store_true", help="ask for one JSON envelope instead of a stream")
    prompt.add_argument("--prompt-path", metavar="PATH", help="the prompt's path, for traces")
    dataset = subcommand(kinds, "dataset-run", "run a prompt over a dataset",
                         "Print a dataset-run event: run a prompt's JSON AST over every row of a dataset the runner resolves, scoring its evals.",
                         "agentmark-gw event dataset-run --ast sentiment.prompt.json --dataset sentiment.jsonl")
    dataset.add_argument("--ast", required=True, metavar="FILE")
    dataset.add_argument("--dataset", required=True, metavar="PATH", help="the dataset path, as the runner resolves it")
    dataset.add_argument("--experiment", default="experiment", metavar="NAME", help="the run's name (default experiment)")
    dataset.add_argument("--concurrency", type=int, metavar="N")
    alert = subcommand(kinds, "alert", "a cost, latency or error-rate alert",
                       "Print an alert event, as AgentMark sends when a cost, latency or error-rate threshold is crossed or cleared.",
                       "agentmark-gw event alert --type cost --status triggered --value 61.25 --threshold 50")
    alert.add_argument("--type", required=True, choices=["cost", "latency", "error_rate"])
    alert.add_argument("--status", required=True, choices=["triggered", "resolved"])
    alert.add_argument("--id", default="alert-1")
    alert.add_argument("--value", type=float, default=0.0)
    alert.add_argument("--threshold", type=float, default=0.0)
    alert.add_argument("--window", default="1h")
    alert.add_argument("--message")
    subcommand(kinds, "get-evals", "ask the runner for its evals",
               "Print a get-evals event: the runner answers with the names of the evals it can score.",
               "agentmark-gw event get-evals | agentmark-gw send -")
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
    except PortInUse as exc:
        print(f"error: {exc} (something else listens there; use {exc.flag or '--listen/--bind'} to choose another)", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as other commands do.
        # Point stdout at /dev/null so the interpreter's final flush cannot complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # a port in use, a file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
