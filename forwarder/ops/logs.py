"""Structured logs: one JSON object per line, secrets scrubbed, floods throttled.

Operators read these at 3 a.m. during an outage, which is exactly when a naive
forwarder writes one line per failed request. State changes are logged; repeats
of the same warning are folded into one line a period with a `suppressed` count.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"',]+")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret so that no log line can ever carry it, whatever field it hides in."""
    if value and len(value) >= 4:
        _secrets.add(value)


def _scrub_text(text: str) -> str:
    text = _BEARER.sub(r"\1[redacted]", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, dict):
        # JSON keys are strings: a (topic, partition) key would make the renderer raise.
        return {_scrub_text(str(key)): _scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, bytes):
        return _scrub_text(value.decode("utf-8", "replace"))
    if value is None or isinstance(value, bool | int | float):
        return value
    # Anything else is rendered with str() (an exception, say): scrub what it would show.
    text = str(value)
    scrubbed = _scrub_text(text)
    return value if scrubbed == text else scrubbed


def scrub_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        event_dict[key] = _scrub(value)
    return event_dict


def _json_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure(level: str = "INFO", fmt: str = "json") -> None:
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiokafka logs through the standard library; route it through the same scrubbing.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StdlibFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level), logging.WARNING))


class _StdlibFormatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        message = _scrub_text(record.getMessage())
        if not self._json:
            return f"{record.levelname.lower():<8} {record.name}: {message}"
        entry = {
            "event": message,
            "logger": record.name,
            "level": record.levelname.lower(),
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
        }
        if record.exc_info:
            entry["exception"] = _scrub_text(self.formatException(record.exc_info))
        return _json_dumps(entry)


class RepeatSuppressor:
    """Lets a log line through once per `period` per key and counts what it held back
    (so an outage writes one line a period, not one per failed request)."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet. Otherwise log, mentioning the returned number of suppressed repeats."""
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


def get_logger(name: str, **context: Any) -> Any:
    return structlog.get_logger(name).bind(**context)


def event_fields(topic: str, partition: int, offset: int, key: str | None) -> dict[str, Any]:
    """The fields every per-event line carries, so one grep finds an event's whole story."""
    return {"event_key": key, "topic": topic, "partition": partition, "offset": offset}
