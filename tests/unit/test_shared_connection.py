"""FORWARDER_REDIS_URL and FORWARDER_REDIS_PASSWORD_FILE: what is accepted, what is
refused (naming the setting), and that the password never shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from forwarder.ops.logs import scrub_secrets
from forwarder.shared.connection import redis_target


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://cache", "redis://cache"),
        ("rediss://cache.example.com:6380/2", "rediss://cache.example.com:6380/2"),
        ("redis://:s3cr3t-pw@cache:6379/1", "redis://:****@cache:6379/1"),
        ("redis://forwarder:s3cr3t-pw@cache:6379", "redis://forwarder:****@cache:6379"),
        ("redis://forwarder@cache/3", "redis://forwarder@cache/3"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        (
            "rediss://:p%40ss%2Fword@cache/0?ssl_cert_reqs=required",
            "rediss://:****@cache/0?ssl_cert_reqs=required",
        ),
    ],
)
def test_accepted_urls_and_how_they_are_shown(url: str, shown: str) -> None:
    assert redis_target(url, "group").display == shown


def test_the_password_comes_from_the_url_decoded() -> None:
    target = redis_target("redis://:p%40ss%2Fword@cache/0", "group")
    assert target.password == "p@ss/word"


def test_the_password_comes_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-the-file\n")
    target = redis_target("redis://cache:6379/0", "group", secret)
    assert target.password == "from-the-file"
    assert "from-the-file" not in target.display


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379", "FORWARDER_REDIS_URL must start with redis:// or rediss://"),
        ("cache:6379", "FORWARDER_REDIS_URL must start with redis:// or rediss://"),
        ("redis://:6379/0", "FORWARDER_REDIS_URL names no host"),
        ("redis://cache:port/0", "FORWARDER_REDIS_URL has an invalid port"),
        ("redis://cache:6379/zero", "FORWARDER_REDIS_URL path must be a database number"),
        ("redis://cache:6379/0#x", "FORWARDER_REDIS_URL must not have a #fragment"),
    ],
)
def test_refused_urls_name_the_setting(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        redis_target(url, "group")


def test_a_password_in_both_places_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("one")
    with pytest.raises(ValueError, match="FORWARDER_REDIS_PASSWORD_FILE is set and"):
        redis_target("redis://:two-pw@cache/0", "group", secret)


@pytest.mark.parametrize("content", [None, "\n"])
def test_a_missing_or_empty_password_file_is_refused(tmp_path: Path, content: str | None) -> None:
    secret = tmp_path / "password"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(ValueError, match="FORWARDER_REDIS_PASSWORD_FILE: "):
        redis_target("redis://cache/0", "group", secret)


def test_passwords_are_scrubbed_from_log_lines(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("file-password-1")
    redis_target("redis://cache/0", "group", secret)
    redis_target("redis://:url%2Dpassword-2@cache/0", "group")
    line = scrub_secrets(
        structlog.get_logger(),
        "warning",
        {"event": "oops", "error": "auth failed for file-password-1 and url-password-2"},
    )
    assert "file-password-1" not in str(line)
    assert "url-password-2" not in str(line)


def test_keys_are_prefixed_by_the_group() -> None:
    target = redis_target("redis://cache/0", "payments-forwarder")
    assert target.prefix == "forwarder:{payments-forwarder}:"
    assert target.dedupe_prefix == "forwarder:payments-forwarder:dedupe:"
    assert redis_target("redis://cache/0", "other").prefix != target.prefix
