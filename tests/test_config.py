"""Configuration: defaults, a TOML file, AGENTMARK_GW_* variables and flags,
in that order; every mistake refused with a message that says what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentmark_gw.gateway.config import ConfigError, Deadlines, GatewayConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(env={})
    assert config == GatewayConfig()
    assert config.runners == ("127.0.0.1:50051",) and config.max_body_bytes == 10 * 1024 * 1024
    assert config.deadlines.dataset_run > config.deadlines.prompt_run


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, 'runners = ["a:1", "b:2"]\nbind = "0.0.0.0:9000"\nworkers = 2\n[deadlines]\nprompt_run = 20\nget_evals = 3\n')
    env = {"AGENTMARK_GW_WORKERS": "3", "AGENTMARK_GW_DEADLINES_GET_EVALS": "4.5", "AGENTMARK_WEBHOOK_SECRET": "new, old"}
    config = load_config(path, env=env, bind="127.0.0.1:1")
    assert config.runners == ("a:1", "b:2")
    assert config.workers == 3
    assert config.bind == "127.0.0.1:1"
    assert config.deadlines == Deadlines(prompt_run=20, get_evals=4.5)
    assert config.secrets == ("new", "old")


def test_lists_from_the_environment_are_comma_separated() -> None:
    config = load_config(env={"AGENTMARK_GW_RUNNERS": "dns:///runners:50051, 10.0.0.2:50051"})
    assert config.runners == ("dns:///runners:50051", "10.0.0.2:50051")


def test_secrets_are_never_shown() -> None:
    config = load_config(env={"AGENTMARK_WEBHOOK_SECRET": "hunter2,hunter3"})
    assert "hunter" not in repr(config)
    assert "hunter" not in str(config.masked())
    assert config.masked()["secrets"] == "<2 secret(s) hidden>"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENTMARK_GW_WORKERS": "two"}, "AGENTMARK_GW_WORKERS: expected an integer, got 'two'"),
        ({"AGENTMARK_GW_WORKERS": "0"}, "workers must be at least 1"),
        ({"AGENTMARK_GW_MAX_BODY_BYTES": "1.5"}, "AGENTMARK_GW_MAX_BODY_BYTES: expected an integer, got '1.5'"),
        ({"AGENTMARK_GW_DEADLINES_PROMPT_RUN": "soon"}, "AGENTMARK_GW_DEADLINES_PROMPT_RUN: expected a number, got 'soon'"),
        ({"AGENTMARK_GW_DEADLINES_PROMPT_RUN": "-1"}, "deadlines.prompt_run must be positive"),
        ({"AGENTMARK_GW_DEADLINES_PROMPT_RUN": "inf"}, "expected a number, got 'inf'"),
        ({"AGENTMARK_GW_TIMEOUT": "3"}, "AGENTMARK_GW_TIMEOUT: unknown setting"),
        ({"AGENTMARK_GW_BIND": "8080"}, "bind address '8080' is not HOST:PORT"),
        ({"AGENTMARK_GW_LOG_FORMAT": "xml"}, "AGENTMARK_GW_LOG_FORMAT: expected one of 'json', 'text', got 'xml'"),
        ({"AGENTMARK_GW_TLS_CERTFILE": "/nonexistent.pem"}, "TLS needs both tls_certfile and tls_keyfile"),
        ({"AGENTMARK_GW_SECRETS": "x"}, "put webhook secrets in AGENTMARK_WEBHOOK_SECRET"),
        ({"AGENTMARK_GW_RUNNERS": " , "}, "no runner"),
    ],
)
def test_mistakes_in_the_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as refused:
        load_config(env=env)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workers = ", "is not valid TOML"),
        ('runners = "a:1"', "runners: expected a list of strings"),
        ("max_body_bytes = true", "max_body_bytes: expected an integer, got True"),
        ("colour = 1", "colour: unknown setting"),
        ("deadlines = 5", "[deadlines] must be a table"),
        ("[deadlines]\nforever = 1", "deadlines.forever: unknown setting"),
    ],
)
def test_mistakes_in_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(write(tmp_path, text), env={})
    assert message in str(refused.value)
    assert str(tmp_path) in str(refused.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", env={})


def test_serve_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="AGENTMARK_WEBHOOK_SECRET"):
        load_config(env={}).require_secret()


def test_an_empty_secret_among_several_is_refused(tmp_path: Path) -> None:
    # An empty secret would accept signatures made with the public key "DEFAULT".
    with pytest.raises(ConfigError, match="an empty webhook secret is not allowed"):
        load_config(write(tmp_path, 'secrets = ["", "real"]'), env={})


def test_the_configuration_reference_matches_the_schema() -> None:
    from agentmark_gw.gateway.config import reference

    documented = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert documented.read_text() == reference(), "run: python scripts/config_reference.py"


def test_every_refusal_message_is_in_the_troubleshooting_guide() -> None:
    """Each message the gateway's code can refuse with has its row in docs/troubleshooting.md."""
    import ast as python_ast

    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "troubleshooting.md").read_text()
    refusals = {"Refusal", "BadRequest", "Unauthorized", "RunnerUnavailable", "ExecutionFailed"}
    missing = []
    for source in (root / "python" / "agentmark_gw" / "gateway").glob("*.py"):
        for node in python_ast.walk(python_ast.parse(source.read_text())):
            if isinstance(node, python_ast.Call) and getattr(node.func, "id", None) in refusals and node.args:
                first = node.args[0]
                if isinstance(first, python_ast.Constant):
                    text = str(first.value)
                elif isinstance(first, python_ast.JoinedStr) and isinstance(first.values[0], python_ast.Constant):
                    text = str(first.values[0].value)  # the constant start of an f-string
                else:
                    continue
                if text not in guide:
                    missing.append(f"{source.name}: {text}")
    assert missing == []


def test_settings_and_the_event_vocabulary_do_not_load_the_alerts_package() -> None:
    # Alerts build on config and webhook, never the other way: reading the
    # settings or parsing a body loads no outbox, SQLite, SMTP, TLS or HTTP client.
    heavy = ("agentmark_gw.gateway.alerts", "sqlite3", "smtplib", "ssl", "httpx")
    code = (
        "import sys, agentmark_gw.gateway.config, agentmark_gw.gateway.webhook\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith({heavy[0]!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    assert loaded == "[]"
