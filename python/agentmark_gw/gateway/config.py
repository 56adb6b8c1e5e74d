"""Gateway configuration: embedded defaults, then a TOML file, then the
environment, then command-line flags; validated once, at start-up.

Every key has an environment variable: `AGENTMARK_GW_<KEY>` (upper case;
`[deadlines]` keys as `AGENTMARK_GW_DEADLINES_<KEY>`); lists are
comma-separated. The webhook secret is `AGENTMARK_WEBHOOK_SECRET`, AgentMark's
own name for it, and may hold several comma-separated secrets for rotation.

Secrets are never logged or printed: `masked()` and `__repr__` hide them.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from .webhook import ALERT_STATUSES, ALERT_TYPES

SECRET_ENV = "AGENTMARK_WEBHOOK_SECRET"
ENV_PREFIX = "AGENTMARK_GW_"
DEFAULT_RUNNER = "127.0.0.1:50051"
DEFAULT_BIND = "127.0.0.1:8080"
# What `serve` accepts as a webhook secret. `DEFAULT` is the key AgentMark's
# own SDKs sign with when none is configured: public, so it proves nothing.
PUBLIC_FALLBACK_SECRET = "DEFAULT"
MIN_SECRET_LENGTH = 16
# AGENTMARK_GW_* variables that are not settings: the config file's path,
# the switch to the pure-Python core, and what `serve` hands its workers.
NOT_SETTINGS = {"config", "pure_python"}
# The file in `state_dir` where `up` keeps the secret it generated.
SECRET_FILE_NAME = "webhook-secret"


def state_home() -> Path:
    """`$XDG_STATE_HOME/agentmark-gw` (default `~/.local/state/agentmark-gw`), read when asked, not at import."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "agentmark-gw"


def default_state_dir(bind: str) -> str:
    """The state directory of the gateway listening on `bind`: one per port.

    Named by the port alone, so that `send --url http://localhost:8080/` finds
    the instance bound to 127.0.0.1:8080 or 0.0.0.0:8080 (one machine has at
    most one gateway per port), while gateways on other ports keep their
    alerts and secrets apart."""
    port = bind.rpartition(":")[2]
    return str(state_home() / f"gateway-{port if port.isdigit() else 'default'}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to change."""


def setting(default: Any, help: str, *, factory: Any = None) -> Any:
    """A configuration field with the help text the reference (docs/configuration.md) is built from."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# Where alerts go: settings, checked here like every other; the alerts package
# only reads them (it stores and delivers, gateway/alerts/).
SINK_KINDS = ("runner", "http", "slack", "email")


@dataclass(frozen=True)
class Sink:
    """Where alerts go, and which ones: empty `types`/`statuses` match all."""

    name: str
    kind: str
    url: str = ""
    secret: str = ""
    types: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    # email: `url` is smtp://HOST:PORT (or smtps:// for TLS from the start).
    to: tuple[str, ...] = ()
    sender: str = ""
    username: str = ""
    password: str = ""
    starttls: bool = False
    ca_file: str = ""

    def wants(self, alert_type: str, status: str) -> bool:
        return (not self.types or alert_type in self.types) and (not self.statuses or status in self.statuses)


DEFAULT_SINKS = (Sink(name="runner", kind="runner"),)


def parse_sinks(raw: Any, where: str) -> tuple[Sink, ...]:
    """Sinks from config: a list of tables with `kind`, and `url`/`secret` as the kind needs."""
    if not isinstance(raw, list):
        raise ValueError(f"{where}: alert_sinks must be a list of tables")
    sinks = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: alert_sinks[{i}] must be a table")
        kind = entry.get("kind")
        if kind not in SINK_KINDS:
            raise ValueError(f"{where}: alert_sinks[{i}].kind must be one of {', '.join(SINK_KINDS)}")
        url = str(entry.get("url", ""))
        if kind in ("http", "slack") and not url.startswith(("http://", "https://")):
            raise ValueError(f"{where}: alert_sinks[{i}] ({kind}) needs an http(s) url")
        if kind == "http" and not entry.get("secret"):
            raise ValueError(f"{where}: alert_sinks[{i}] (http) needs a secret to sign with")
        if kind == "email" and (not url.startswith(("smtp://", "smtps://")) or not entry.get("to") or not entry.get("sender")):
            raise ValueError(f"{where}: alert_sinks[{i}] (email) needs an smtp:// or smtps:// url, `to` and `sender`")
        unknown = set(entry) - {"name", "kind", "url", "secret", "types", "statuses", "to", "sender", "username", "password", "starttls", "ca_file"}
        if unknown:
            raise ValueError(f"{where}: alert_sinks[{i}]: unknown keys {', '.join(sorted(unknown))}")
        types, statuses = tuple(entry.get("types", ())), tuple(entry.get("statuses", ()))
        if set(types) - set(ALERT_TYPES) or set(statuses) - set(ALERT_STATUSES):
            raise ValueError(f"{where}: alert_sinks[{i}]: types are {', '.join(ALERT_TYPES)}; statuses {', '.join(ALERT_STATUSES)}")
        sinks.append(Sink(
            str(entry.get("name") or f"{kind}-{i}"), kind, url, str(entry.get("secret", "")), types, statuses,
            to=tuple(entry.get("to", ())), sender=str(entry.get("sender", "")), username=str(entry.get("username", "")),
            password=str(entry.get("password", "")), starttls=bool(entry.get("starttls", False)), ca_file=str(entry.get("ca_file", "")),
        ))
    names = [s.name for s in sinks]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: alert sink names must be unique")
    return tuple(sinks)


@dataclass(frozen=True)
class Deadlines:
    """Seconds each event type may take at the runner, end to end. Sent to
    the runner as the gRPC deadline."""

    prompt_run: float = setting(300.0, "Seconds a prompt run may take, streaming or not.")
    dataset_run: float = setting(3600.0, "Seconds a whole dataset run may take.")
    get_evals: float = setting(10.0, "Seconds the runner has to list its evals.")
    alert: float = setting(30.0, "Seconds the runner has to take an alert.")


@dataclass(frozen=True)
class GatewayConfig:
    secrets: tuple[str, ...] = setting(
        (), f"Webhook secrets; any of them verifies a request (rotation). From `{SECRET_ENV}`, comma-separated."
    )
    runners: tuple[str, ...] = setting(
        (DEFAULT_RUNNER,), "Runner targets: `HOST:PORT`, or a gRPC name such as `dns:///runners:50051`."
    )
    bind: str = setting(DEFAULT_BIND, "Address the gateway listens on, `HOST:PORT`.")
    workers: int = setting(1, "Worker processes of the HTTP server.")
    server: Literal["hypercorn", "granian"] = setting(
        "hypercorn",
        "HTTP server: `hypercorn` (Python), or `granian` (Rust; `pip install agentmark-gw[granian]`; "
        "less CPU per request, see benchmarks/README.md).",
    )
    loop: Literal["uvloop", "asyncio"] = setting(
        "uvloop", "Event loop of each worker: `uvloop` (libuv; less CPU per request, see benchmarks/README.md) or Python's own `asyncio`."
    )
    max_body_bytes: int = setting(10 * 1024 * 1024, "Bodies larger than this are refused with 413, unread.")
    max_unverified_body_bytes: int = setting(
        64 * 1024 * 1024,
        "Request-body bytes one worker holds, across all requests, before their signature is checked; "
        "a request arriving past it gets 503 (retry). At least `max_body_bytes`.",
    )
    deadlines: Deadlines = setting(None, "Per event type; see `[deadlines]` below.", factory=Deadlines)
    max_runner_message_bytes: int = setting(
        64 * 1024 * 1024, "Largest gRPC message accepted from a runner (messages can carry whole images)."
    )
    max_answer_bytes: int = setting(
        256 * 1024 * 1024,
        "Largest answer collected for a non-streaming run (and every image or speech run); past it the run is "
        "cancelled and the request gets 502.",
    )
    max_dataset_concurrency: int = setting(
        32, "A dataset run's `concurrency` is lowered to this before it reaches the runner (which may start that many workers at once)."
    )
    runner_client: Literal["rust", "grpcio"] = setting(
        "rust",
        "What reads runners' streamed answers: `rust` (tonic in the Rust extension, on a thread of its own; less CPU per "
        "token, see benchmarks/README.md) or `grpcio` (grpc.aio). Health checks and the other calls use grpc.aio either "
        "way; without the Rust extension, or for a `unix:` target, it is `grpcio`.",
    )
    datasets_dir: str | None = setting(
        None,
        "A folder holding the app's build output (`agentmark build`: datasets as `.jsonl`). With it, dataset runs for "
        "runners that ask for rendered prompts are read, sampled and rendered here and sent to them item by item. "
        "Without it, `AGENTMARK_API_KEY` and `AGENTMARK_APP_ID` in the environment make AgentMark's API the source.",
    )
    spread_dataset_runs: bool = setting(
        True,
        "Spread one dataset run's items over every healthy runner that takes items (an item whose runner fails is "
        "retried on another); false keeps each run on one runner.",
    )
    health_interval: float = setting(5.0, "Seconds between `grpc.health.v1` checks of each runner.")
    health_timeout: float = setting(2.0, "Seconds one health check may take.")
    heartbeat_interval: float = setting(
        15.0, "Seconds of silence on a stream after which a bare newline is written, so proxies keep it open; 0 turns it off."
    )
    keep_alive_timeout: float = setting(
        75.0,
        "Seconds an idle connection stays open, including one still sending its request headers (slowloris); "
        "keep it above the load balancer's idle timeout.",
    )
    body_timeout: float = setting(60.0, "Seconds a client has to send its whole request body; slower ones get 408.")
    shutdown_grace: float = setting(30.0, "On SIGTERM: seconds in-flight requests get to finish before they are cancelled.")
    tls_certfile: str | None = setting(None, "PEM certificate chain; with `tls_keyfile`, TLS (HTTP/1.1 and HTTP/2) is served directly.")
    tls_keyfile: str | None = setting(None, "PEM private key for `tls_certfile`.")
    allow_h2c: bool = setting(
        False,
        "Accept cleartext HTTP/2 (prior knowledge or `Upgrade: h2c`) on a port without TLS. Off: such connections are "
        "answered in HTTP/1.1 or closed; over TLS, HTTP/2 is always offered.",
    )
    replay_window: float = setting(
        0.0, "Refuse a byte-identical signed body seen again within this many seconds; 0 turns the guard off."
    )
    expose_internals: bool = setting(
        False,
        "Show HTTP clients what is otherwise only logged: runner addresses (in `/readyz`, `/metrics` labels and 503 "
        "messages) and a crashed runner's error details (gRPC INTERNAL, UNKNOWN, DATA_LOSS).",
    )
    log_format: Literal["json", "text"] = setting("json", "`json`: one JSON object per log line; `text`: for people.")
    state_dir: str = setting(
        "",
        "This gateway's own state: the alert outbox (unless `alerts_db` names another) and the webhook secret `up` generates. "
        "One per instance by default, so gateways on one machine share neither.",
    )
    alerts_db: str = setting(
        "",
        "The alert outbox: a SQLite file (WAL mode), created if missing; or a `postgresql://` URL, shared safely by several gateways.",
    )
    alert_sinks: tuple[Sink, ...] = setting(
        DEFAULT_SINKS, "Where alerts are delivered; see `[[alert_sinks]]` below. Default: the runner's `HandleAlert`."
    )
    alert_max_attempts: int = setting(8, "Delivery attempts per alert and sink before it becomes a dead letter.")
    alert_backoff: float = setting(1.0, "Seconds before the first retry; doubled for each later one (with jitter, at most 300).")
    alert_lease: float = setting(
        30.0, "Seconds a claimed delivery stays reserved for the process delivering it; after a crash, other processes take it over after this."
    )
    alert_dedupe_window: float = setting(
        3600.0,
        "Seconds in which an alert id received again with the status it last had is a duplicate (a retry): answered "
        "with `\"duplicate\": true` and not delivered again. After it, or under another status, it is a new occurrence.",
    )
    alert_cooldown: float = setting(0.0, "Seconds in which an alert id seen again under another status is stored as suppressed; 0: off.")

    def __post_init__(self) -> None:
        # Defaults that depend on other settings; an explicit value is kept.
        if not self.state_dir:
            object.__setattr__(self, "state_dir", default_state_dir(self.bind))
        if not self.alerts_db:
            object.__setattr__(self, "alerts_db", str(Path(self.state_dir) / "alerts.sqlite3"))

    @property
    def secret_file(self) -> Path:
        """Where `up` saves the secret it generated, and `send`, `sign` and `config check` find it."""
        return Path(self.state_dir) / SECRET_FILE_NAME

    def __repr__(self) -> str:
        return f"GatewayConfig({', '.join(f'{k}={v!r}' for k, v in self.masked().items())})"

    def masked(self) -> dict[str, Any]:
        """Every setting, secrets replaced by a count: safe to print or log."""
        values = asdict(self)
        values["secrets"] = f"<{len(self.secrets)} secret(s) hidden>"
        for sink in values["alert_sinks"]:
            for key in ("secret", "password"):
                if sink[key]:
                    sink[key] = "<hidden>"
        return values

    def require_secret(self) -> None:
        if not any(self.secrets):
            raise ConfigError(
                f"no webhook secret: set {SECRET_ENV} to the secret shown in the AgentMark "
                "dashboard (or list `secrets` in the config file). The gateway will not fall "
                "back to a default key."
            )


    def require_strong_secret(self) -> None:
        """For serving in production (`serve`, or the ASGI app run directly):
        refuse secrets anyone could sign with or guess. In-process apps
        (`create_app`, tests, `up` with its generated secret) skip this."""
        self.require_secret()
        for secret in self.secrets:
            if secret == PUBLIC_FALLBACK_SECRET:
                raise ConfigError(
                    f"webhook secret `{PUBLIC_FALLBACK_SECRET}` is AgentMark's public fallback key, which anyone can sign with: "
                    f"set {SECRET_ENV} to the secret shown in the AgentMark dashboard"
                )
            if len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"a webhook secret is shorter than {MIN_SECRET_LENGTH} characters: set {SECRET_ENV} to the secret shown "
                    "in the AgentMark dashboard (for a private test, `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )


def reference() -> str:
    """The configuration reference in Markdown, made from the fields above."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `agentmark_gw/gateway/config.py` by `python scripts/config_reference.py`;",
        "a test fails when this file and the code disagree.",
        "",
        "Sources, each overriding the one before: defaults, the TOML file (`--config FILE` or",
        "`AGENTMARK_GW_CONFIG`), environment variables, command-line flags. Lists in the",
        "environment are comma-separated. `agentmark-gw config check` prints the result.",
        "",
        "| key | environment variable | type | default | meaning |",
        "|---|---|---|---|---|",
    ]

    def row(key: str, env: str, f: Any, hint: Any, default: Any) -> str:
        shown = "" if default is None else f"`{json_default(default)}`"
        return f"| `{key}` | `{env}` | {_describe(hint)} | {shown} | {f.metadata['help']} |"

    def json_default(value: Any) -> str:
        return json.dumps(list(value) if isinstance(value, tuple) else value)

    defaults = GatewayConfig()
    for f in fields(GatewayConfig):
        if f.name == "deadlines":
            continue
        if f.name == "alert_sinks":
            lines.append(f"| `alert_sinks` | `{ENV_PREFIX}ALERT_SINKS` (JSON) | a list of tables | runner | {f.metadata['help']} |")
            continue
        if f.name == "state_dir":
            default = "`$XDG_STATE_HOME/agentmark-gw/gateway-PORT` (PORT: `bind`'s)"
            lines.append(f"| `state_dir` | `{ENV_PREFIX}STATE_DIR` | a string | {default} | {f.metadata['help']} |")
            continue
        if f.name == "alerts_db":
            lines.append(f"| `alerts_db` | `{ENV_PREFIX}ALERTS_DB` | a string | `STATE_DIR/alerts.sqlite3` | {f.metadata['help']} |")
            continue
        env = SECRET_ENV if f.name == "secrets" else ENV_PREFIX + f.name.upper()
        hint = _HINTS[f.name]
        if type(None) in typing.get_args(hint):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        lines.append(row(f.name, env, f, hint, getattr(defaults, f.name)))
    lines += ["", "## `[deadlines]`", "", Deadlines.__doc__.replace("\n    ", " ").strip() if Deadlines.__doc__ else "", ""]
    lines += ["| key | environment variable | type | default | meaning |", "|---|---|---|---|---|"]
    for f in fields(Deadlines):
        lines.append(row(f.name, f"{ENV_PREFIX}DEADLINES_{f.name.upper()}", f, _DEADLINE_HINTS[f.name], getattr(defaults.deadlines, f.name)))
    lines += [
        "",
        "## `[[alert_sinks]]`",
        "",
        "Each sink receives the alerts it matches, at least once, with retries (see docs/alerting.md).",
        "",
        "| key | meaning |",
        "|---|---|",
        "| `kind` | `runner` (the runner's `HandleAlert`), `http` (POSTs the alert JSON, signed), `slack` (an incoming webhook), or `email` (SMTP) |",
        "| `name` | a unique name, shown by `agentmark-gw alerts` (default: kind and position) |",
        "| `url` | for `http` and `slack`; for `email`, `smtp://HOST:PORT` (or `smtps://` for TLS from the start) |",
        "| `to`, `sender` | for `email`: the recipients and the From address |",
        "| `starttls`, `username`, `password`, `ca_file` | for `email`: STARTTLS, login, and a CA file to trust |",
        "| `secret` | for `http`: the key of the `x-agentmark-gw-signature-256` HMAC-SHA256 header |",
        "| `types` | only these alert types (`cost`, `latency`, `error_rate`); default all |",
        "| `statuses` | only these statuses (`triggered`, `resolved`); default all |",
    ]
    return "\n".join(lines) + "\n"


def load_config(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None, **flags: Any) -> GatewayConfig:
    """Defaults, then the TOML file at `path`, then `env` (default: the
    process environment), then `flags` (None values are ignored)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    deadlines: dict[str, float] = {}
    sources = [_from_file(Path(path)) if path is not None else {}, _from_env(env)]
    sources.append({k: v for k, v in flags.items() if v not in (None, ())})
    for source in sources:
        deadlines.update(source.pop("deadlines", {}))
        values.update(source)
    config = GatewayConfig(**values, deadlines=replace(Deadlines(), **deadlines))
    return _validated(config)


_FIELDS = {f.name: f for f in fields(GatewayConfig)}
_DEADLINE_FIELDS = {f.name: f for f in fields(Deadlines)}
_HINTS = typing.get_type_hints(GatewayConfig)
_DEADLINE_HINTS = typing.get_type_hints(Deadlines)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    where = f"config file {path}"
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "alert_sinks":
            try:
                values[key] = parse_sinks(value, where)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            continue
        if key == "deadlines":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [deadlines] must be a table")
            values["deadlines"] = {k: _typed(v, _DEADLINE_HINTS, k, f"{where}: deadlines.{k}", _DEADLINE_FIELDS) for k, v in value.items()}
        else:
            values[key] = _typed(value, _HINTS, key, f"{where}: {key}", _FIELDS)
    return values


def _from_env(env: typing.Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    deadlines: dict[str, Any] = {}
    secret = env.get(SECRET_ENV)
    if secret:
        values["secrets"] = tuple(s.strip() for s in secret.split(",") if s.strip())
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in NOT_SETTINGS or key.startswith("_"):
            continue
        if key.startswith("deadlines_"):
            short = key[len("deadlines_") :]
            deadlines[short] = _typed(_parse_env(text, _DEADLINE_HINTS.get(short)), _DEADLINE_HINTS, short, name, _DEADLINE_FIELDS)
        elif key == "secrets":
            raise ConfigError(f"{name}: put webhook secrets in {SECRET_ENV} (comma-separated for rotation)")
        elif key == "alert_sinks":
            try:
                values[key] = parse_sinks(json.loads(text), name)
            except ValueError as exc:
                raise ConfigError(f"{name}: a JSON list of sink tables, as in the config file ({exc})") from None
        else:
            values[key] = _typed(_parse_env(text, _HINTS.get(key)), _HINTS, key, name, _FIELDS)
    if deadlines:
        values["deadlines"] = deadlines
    return values


def _parse_env(text: str, hint: Any) -> Any:
    if hint is not None and typing.get_origin(hint) is tuple:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def _typed(value: Any, hints: dict[str, Any], key: str, where: str, known: dict[str, Any]) -> Any:
    """`value` converted to the type of `key`, or a ConfigError saying what is wrong."""
    if key not in known or key == "deadlines":
        raise ConfigError(f"{where}: unknown setting (known: {', '.join(sorted(known))})")
    hint = hints[key]
    optional = type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if value in ("", None):
            return None
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typing.get_origin(hint) is tuple:
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return tuple(value)
        if typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of strings"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _validated(config: GatewayConfig) -> GatewayConfig:
    if any(not secret.strip() for secret in config.secrets):
        # An empty secret would verify signatures made with the public key `DEFAULT`.
        raise ConfigError("secrets: an empty webhook secret is not allowed")
    if not config.runners:
        raise ConfigError("no runner: give at least one --runner HOST:PORT (or `runners` in the config file)")
    if config.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes must be positive")
    if config.max_dataset_concurrency < 1:
        raise ConfigError("max_dataset_concurrency must be at least 1")
    if config.max_answer_bytes <= 0:
        raise ConfigError("max_answer_bytes must be positive")
    if config.max_unverified_body_bytes < config.max_body_bytes:
        # Otherwise a body of the largest allowed size could never be read.
        raise ConfigError("max_unverified_body_bytes must be at least max_body_bytes")
    if config.alert_max_attempts < 1:
        raise ConfigError("alert_max_attempts must be at least 1")
    if config.workers < 1:
        raise ConfigError("workers must be at least 1")
    for name in ("health_interval", "health_timeout", "alert_lease", "alert_backoff", "keep_alive_timeout", "body_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if config.shutdown_grace < 0 or config.replay_window < 0 or config.heartbeat_interval < 0 or config.alert_dedupe_window < 0:
        raise ConfigError("shutdown_grace, replay_window, heartbeat_interval and alert_dedupe_window cannot be negative")
    for name, seconds in asdict(config.deadlines).items():
        if seconds <= 0:
            raise ConfigError(f"deadlines.{name} must be positive")
    host, sep, port = config.bind.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"bind address {config.bind!r} is not HOST:PORT")
    if (config.tls_certfile is None) != (config.tls_keyfile is None):
        raise ConfigError("TLS needs both tls_certfile and tls_keyfile")
    for name in ("tls_certfile", "tls_keyfile"):
        path = getattr(config, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{name}: no such file {path}")
    if config.datasets_dir is not None and not Path(config.datasets_dir).is_dir():
        raise ConfigError(f"datasets_dir: no such folder {config.datasets_dir}")
    return config
