"""Logs never carry a secret, and repeated warnings are folded."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import structlog

from forwarder.ops import logs
from forwarder.ops.logs import RepeatSuppressor, event_fields, register_secret, scrub_secrets

SECRET = "s3cr3t-t0ken-value"
"""Registered secrets stay registered for the life of the process, as in the daemon, so
every test here holds whatever else has been registered: a test expects a string to be
scrubbed only if it registered it, and kept only if nothing registers it."""


def scrub(**event: Any) -> dict[str, Any]:
    return dict(scrub_secrets(None, "info", event))


def test_registered_secret_is_removed_everywhere() -> None:
    register_secret(SECRET)
    out = scrub(
        event=f"token is {SECRET}",
        nested={"deeper": {"list": [f"x{SECRET}y", 1, None]}},
        items=("a", SECRET),
        raw=f"raw {SECRET}".encode(),
        number=42,
        flag=True,
    )
    text = orjson.dumps(out).decode()
    assert SECRET not in text
    assert out["event"] == "token is [redacted]"
    assert out["nested"]["deeper"]["list"] == ["x[redacted]y", 1, None]
    assert out["items"] == ["a", "[redacted]"]
    assert out["raw"] == "raw [redacted]"
    assert out["number"] == 42
    assert out["flag"] is True


def test_bearer_tokens_are_removed_even_when_not_registered() -> None:
    out = scrub(
        event="sending",
        headers={"Authorization": "Bearer xyz"},
        line="curl -H 'authorization: bearer abc.def-ghi' http://x",
        listed=["BEARER  tok123", "Bearer"],
    )
    text = orjson.dumps(out).decode()
    for token in ("xyz", "abc.def-ghi", "tok123"):
        assert token not in text
    assert out["headers"]["Authorization"] == "Bearer [redacted]"
    assert out["listed"][1] == "Bearer"


def test_short_or_empty_secrets_are_not_registered() -> None:
    """Scrubbing "a" from every line would make logs unreadable."""
    for value in (None, "", "abc"):
        register_secret(value)
    assert scrub(event="abc a b c")["event"] == "abc a b c"


def test_several_secrets() -> None:
    register_secret("first-secret")
    register_secret("second-secret")
    out = scrub(event="first-secret and second-secret")
    assert out["event"] == "[redacted] and [redacted]"


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], io.StringIO]]:
    """Configure logging as the daemon does, into a buffer; restore everything after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def into_buffer(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr("sys.stderr", stream)  # inside the test, after pytest's capture
        logs.configure("DEBUG", fmt)
        return stream

    try:
        yield into_buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_objects_are_scrubbed_by_what_they_would_render_as() -> None:
    register_secret(SECRET)
    error = ValueError(f"bad token {SECRET}")
    out = scrub(error=error, harmless=ValueError("nothing here"), number=1.5, none=None)
    assert out["error"] == "bad token [redacted]"
    assert isinstance(out["harmless"], ValueError)  # untouched when there is nothing to hide
    assert out["number"] == 1.5
    assert out["none"] is None


def test_dict_keys_are_scrubbed_and_made_strings() -> None:
    register_secret(SECRET)
    out = scrub(committed={("auth", 0): 12, 7: 1, SECRET: 2})
    assert out["committed"] == {"('auth', 0)": 12, "7": 1, "[redacted]": 2}


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_dict_with_tuple_keys_can_be_logged(
    configure: Callable[[str], io.StringIO], fmt: str
) -> None:
    """`forwarder stopped` logs the committed offsets, keyed by (topic, partition): the
    JSON renderer raised TypeError on them, crashing the shutdown path."""
    captured = configure(fmt)
    logs.get_logger("test").info("forwarder stopped", committed={("auth", 0): 12})
    assert "forwarder stopped" in captured.getvalue()
    assert "12" in captured.getvalue()
    if fmt == "json":
        assert orjson.loads(captured.getvalue())["committed"] == {"('auth', 0)": 12}


def test_rendered_json_line_carries_no_secret(configure: Callable[[str], io.StringIO]) -> None:
    register_secret(SECRET)
    captured = configure("json")
    log = logs.get_logger("test", token_hint=SECRET)
    try:
        raise RuntimeError(f"request failed with Authorization: Bearer {SECRET}")
    except RuntimeError:
        log.exception("failure", detail={"auth": f"Bearer {SECRET}"})
    logging.getLogger("aiokafka").warning("sasl password %s rejected", SECRET)
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2
    assert SECRET not in captured.getvalue()
    first, second = (orjson.loads(line) for line in lines)
    assert first["event"] == "failure"
    assert first["level"] == "error"
    assert "RuntimeError" in first["exception"]
    assert second["logger"] == "aiokafka"
    assert "[redacted]" in second["event"]


def test_throttle_lets_one_through_per_period_and_counts_the_rest() -> None:
    throttle = RepeatSuppressor(period=10.0)
    assert throttle.allow("retry", 0.0) == 0
    assert throttle.allow("retry", 1.0) is None
    assert throttle.allow("retry", 9.9) is None
    assert throttle.allow("other", 5.0) == 0  # keys are independent
    assert throttle.allow("retry", 10.0) == 2
    assert throttle.allow("retry", 10.5) is None
    assert throttle.allow("retry", 25.0) == 1
    assert throttle.allow("retry", 40.0) == 0


def test_throttle_period_runs_from_the_last_line_let_through() -> None:
    throttle = RepeatSuppressor(period=60.0)
    results = [throttle.allow("auth", float(t)) for t in range(0, 181, 15)]
    assert results == [0, None, None, None, 3, None, None, None, 3, None, None, None, 3]


def test_event_fields() -> None:
    assert event_fields("auth", 2, 17, "evt-1") == {
        "event_key": "evt-1",
        "topic": "auth",
        "partition": 2,
        "offset": 17,
    }
