"""Gateway configuration: embedded defaults, a TOML file, then the environment.

Secrets come from the environment (`AGENTMARK_WEBHOOK_SECRET`) or the file's
`secrets` list (several, for rotation). They are never logged: `__repr__`
masks them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

SECRET_ENV = "AGENTMARK_WEBHOOK_SECRET"
DEFAULT_RUNNER = "127.0.0.1:50051"
DEFAULT_BIND = "127.0.0.1:8080"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Deadlines:
    """Seconds each event type may take at the runner, end to end."""

    prompt_run: float = 300.0
    dataset_run: float = 3600.0
    get_evals: float = 10.0
    alert: float = 30.0


@dataclass(frozen=True)
class GatewayConfig:
    secrets: tuple[str, ...] = ()
    runners: tuple[str, ...] = (DEFAULT_RUNNER,)
    bind: str = DEFAULT_BIND
    max_body_bytes: int = 10 * 1024 * 1024
    deadlines: Deadlines = field(default_factory=Deadlines)
    # gRPC messages from runners can carry whole images; allow that much.
    max_runner_message_bytes: int = 64 * 1024 * 1024

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "secrets"}
        shown["secrets"] = f"<{len(self.secrets)} hidden>"
        return f"GatewayConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def require_secret(self) -> None:
        if not any(self.secrets):
            raise ConfigError(
                f"no webhook secret: set {SECRET_ENV} to the secret shown in the AgentMark "
                "dashboard (or list `secrets` in the config file). The gateway will not fall "
                "back to a default key."
            )


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> GatewayConfig:
    """Defaults, then the TOML file at `path`, then the environment, then
    `overrides` (command-line flags; None values are ignored)."""
    config = GatewayConfig()
    if path is not None:
        config = _apply_file(config, Path(path))
    secret = os.environ.get(SECRET_ENV)
    if secret:
        config = replace(config, secrets=(secret, *[s for s in config.secrets if s != secret]))
    given = {k: v for k, v in overrides.items() if v not in (None, ())}
    if "runners" in given:
        given["runners"] = tuple(given["runners"])
    return _validated(replace(config, **given))


def _apply_file(config: GatewayConfig, path: Path) -> GatewayConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(GatewayConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(unknown)}")
    values: dict[str, Any] = dict(raw)
    if "deadlines" in values:
        try:
            values["deadlines"] = Deadlines(**{k.replace("-", "_"): float(v) for k, v in raw["deadlines"].items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config file {path}: bad [deadlines]: {exc}") from None
    for name in ("secrets", "runners"):
        if name in values:
            values[name] = tuple(values[name])
    return replace(config, **values)


def _validated(config: GatewayConfig) -> GatewayConfig:
    if not config.runners:
        raise ConfigError("no runner: give at least one --runner HOST:PORT")
    if config.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes must be positive")
    host, sep, port = config.bind.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bind address {config.bind!r} is not HOST:PORT")
    return config
