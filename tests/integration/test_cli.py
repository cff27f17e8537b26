"""The `forwarder` command as an operator meets it: help, check-config, bad
configurations at `run`, precedence of the configuration sources, and `demo`."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

VALID = {
    "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
    "FORWARDER_KAFKA_TOPICS": "auth-events",
    "FORWARDER_LEGITI_BASE_URL": "http://127.0.0.1:9",
    "FORWARDER_LEGITI_API_TOKEN": "tok-3f9a1c-never-shown",
}


def forwarder(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `python -m forwarder ARGS` with exactly these FORWARDER_* variables."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("FORWARDER_")}
    return subprocess.run(
        [sys.executable, "-m", "forwarder", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def effective(*args: str, env: Mapping[str, str]) -> dict[str, object]:
    """check-config's output by public name (it prints them grouped by section)."""
    result = forwarder("check-config", *args, env=env)
    assert result.returncode == 0, result.stderr
    sections: dict[str, dict[str, object]] = json.loads(result.stdout)
    return {name: value for section in sections.values() for name, value in section.items()}


def test_help_lists_the_commands_and_one_flag_per_setting() -> None:
    top = forwarder("--help")
    assert top.returncode == 0, top.stderr
    for command in ("run", "check-config", "demo"):
        assert command in top.stdout
    run = forwarder("run", "--help")
    assert run.returncode == 0, run.stderr
    for flag in ("--config", "--max-in-flight", "--kafka-topics", "--legiti-api-token-file"):
        assert flag in run.stdout


def test_check_config_prints_json_with_secrets_masked() -> None:
    env = {
        **VALID,
        "FORWARDER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FORWARDER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "FORWARDER_KAFKA_SASL_USERNAME": "forwarder",
        "FORWARDER_KAFKA_SASL_PASSWORD": "sasl-pw-77d2e1-never-shown",
    }
    result = forwarder("check-config", env=env)
    assert result.returncode == 0, result.stderr
    config = effective(env=env)
    assert config["legiti_api_token"] == "********"
    assert config["kafka_sasl_password"] == "********"
    assert config["kafka_sasl_username"] == "forwarder"
    assert config["kafka_topics"] == ["auth-events"]
    assert config["dead_letter_topic"] == "auth-events.dlq"
    assert config["max_in_flight"] == 64
    for secret in ("tok-3f9a1c-never-shown", "sasl-pw-77d2e1-never-shown"):
        assert secret not in result.stdout
        assert secret not in result.stderr


def test_check_config_names_each_bad_key_on_its_own_line() -> None:
    env = {key: value for key, value in VALID.items() if key != "FORWARDER_KAFKA_TOPICS"} | {
        "FORWARDER_MAX_IN_FLIGHT": "0",
        "FORWARDER_RATE_LIMIT": "abc",
    }
    result = forwarder("check-config", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), lines
    for key in ("FORWARDER_MAX_IN_FLIGHT", "FORWARDER_RATE_LIMIT", "FORWARDER_KAFKA_TOPICS"):
        assert sum(key in line for line in lines) == 1, (key, lines)
    assert len(lines) == 3, lines
    assert "Traceback" not in result.stderr


def _busy_port() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


@pytest.mark.parametrize(
    ("case", "overrides", "named"),
    [
        ("bad value", {"FORWARDER_MAX_IN_FLIGHT": "0"}, "FORWARDER_MAX_IN_FLIGHT"),
        ("missing topics", {"FORWARDER_KAFKA_TOPICS": None}, "FORWARDER_KAFKA_TOPICS"),
        (
            "unreadable token file",
            {"FORWARDER_LEGITI_API_TOKEN": None, "FORWARDER_LEGITI_API_TOKEN_FILE": "/nonexistent"},
            "FORWARDER_LEGITI_API_TOKEN_FILE",
        ),
        ("metrics port taken", {"FORWARDER_METRICS_PORT": "BUSY"}, "FORWARDER_METRICS_PORT"),
    ],
)
def test_run_with_a_bad_configuration_exits_2_with_one_line(
    case: str, overrides: dict[str, str | None], named: str
) -> None:
    env = dict(VALID)
    with _busy_port() as busy:
        for key, value in overrides.items():
            if value is None:
                env.pop(key)
            else:
                env[key] = str(busy.getsockname()[1]) if value == "BUSY" else value
        env["FORWARDER_METRICS_HOST"] = "127.0.0.1"
        result = forwarder("run", env=env, timeout=20)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (case, result.stderr)
    assert len(lines) == 1, (case, lines)
    assert named in lines[0], (case, lines)
    assert "Traceback" not in result.stderr


def test_configuration_precedence_defaults_env_toml_flags(tmp_path: Path) -> None:
    """Issue #2: environment, TOML file and CLI flags, in rising precedence."""
    env = {
        **VALID,
        "FORWARDER_MAX_IN_FLIGHT": "6",
        "FORWARDER_HTTP_TIMEOUT_SECONDS": "3",
        "FORWARDER_KAFKA_GROUP_ID": "group-from-env",
    }
    only_env = effective(env=env)
    assert only_env["max_in_flight"] == 6
    assert only_env["kafka_group_id"] == "group-from-env"
    assert only_env["shutdown_timeout_seconds"] == 20.0  # a default

    toml = tmp_path / "forwarder.toml"
    toml.write_text(
        "\n".join(
            [
                'kafka_topics = ["toml-a", "toml-b"]',
                'kafka_group_id = "group-from-toml"',
                'legiti_api_token = "toml-token-5b1e-never-shown"',
                "max_in_flight = 5",
                'rate_limit = "30/minute"',
            ]
        ),
        encoding="utf-8",
    )
    env_toml = effective("--config", str(toml), env=env)
    assert env_toml["max_in_flight"] == 5
    assert env_toml["kafka_group_id"] == "group-from-toml"
    assert env_toml["kafka_topics"] == ["toml-a", "toml-b"]
    assert env_toml["dead_letter_topic"] == "toml-a.dlq"
    assert env_toml["rate_limit"] == "30/minute"
    assert env_toml["http_timeout_seconds"] == 3.0  # the environment still counts
    assert env_toml["kafka_bootstrap_servers"] == VALID["FORWARDER_KAFKA_BOOTSTRAP_SERVERS"]
    assert env_toml["legiti_api_token"] == "********"
    assert env_toml["shutdown_timeout_seconds"] == 20.0

    # FORWARDER_CONFIG_FILE is the same as --config.
    assert effective(env={**env, "FORWARDER_CONFIG_FILE": str(toml)}) == env_toml

    all_three = effective(
        "--config", str(toml), "--max-in-flight", "7", "--kafka-topics", "flag-t", env=env
    )
    assert all_three["max_in_flight"] == 7
    assert all_three["kafka_topics"] == ["flag-t"]
    assert all_three["kafka_group_id"] == "group-from-toml"
    assert all_three["http_timeout_seconds"] == 3.0


def test_a_bad_value_in_the_toml_file_is_named_as_the_file_spells_it(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("max_in_flight = 0\nno_such_setting = 1\n", encoding="utf-8")
    result = forwarder("check-config", "--config", str(toml), env=VALID)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("max_in_flight" in line and str(toml) in line for line in lines), lines
    assert any("no_such_setting" in line for line in lines), lines
    assert len(lines) == 2, lines


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{pattern!r} not in the demo's output:\n{text}"
    return int(match.group(1))


def test_fleet_demo_shares_one_limit_and_one_memory_of_keys() -> None:
    result = forwarder("demo", "--replicas", "3", "--events", "900", timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    limit = _number(r"^\s*group limit\s+(\d+)/second", out)
    assert _number(r"^\s*busiest second\s+(\d+) requests", out) <= limit
    assert _number(r"^\s*known by Redis\s+(\d+)", out) > 0
    requests = _number(r"^\s*legiti accepted\s+(\d+) requests", out)
    assert _number(r"(\d+) distinct keys", out) == requests
    assert all(_number(rf"^\s*replica {n} forwarded (\d+)", out) > 0 for n in range(3))


def test_demo_runs_offline_and_prints_the_summary() -> None:
    result = forwarder("demo", "--metrics-port", "0", timeout=90)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    published = _number(r"published (\d+) records", out)
    consumed = _number(r"^\s*consumed\s+(\d+)\s*$", out)
    forwarded = {
        action: _number(rf"^\s*forwarded {action}\s+(\d+)", out)
        for action in ("login_success", "login_failure", "logout")
    }
    duplicates = _number(r"^\s*duplicates\s+(\d+)", out)
    dead = {
        reason: _number(rf"^\s*dead-lettered {reason}\s+(\d+)", out)
        for reason in ("invalid_json", "invalid_event", "empty_value", "rejected")
    }
    assert consumed == published >= 1000
    assert all(count > 0 for count in forwarded.values()), forwarded
    assert duplicates > 0
    assert all(count > 0 for count in dead.values()), dead
    # Every consumed record ended one way or another.
    total_dead = sum(
        int(n) for n in re.findall(r"^\s*dead-lettered \w+\s+(\d+)", out, re.MULTILINE)
    )
    assert sum(forwarded.values()) + duplicates + total_dead == consumed
    assert re.search(r"throughput\s+\d[\d,]*(\.\d+)? records/s", out), out
    assert re.search(r"metrics were served at http://127\.0\.0\.1:\d+/metrics", out), out
