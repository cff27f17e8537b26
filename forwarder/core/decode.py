"""Kafka record → AuthEvent, for the three shapes upstream services publish.

The shape is decided per record, so producers can migrate one at a time:
`ce_specversion` header → CloudEvents binary mode; a JSON object with
`specversion` → CloudEvents structured mode; anything else → the native shape.
Every failure is an `Invalid` with a reason and a detail a person can act on;
nothing raises, because one bad record must never stop a partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from forwarder.core.dead_letters import EMPTY_VALUE, INVALID_EVENT, INVALID_JSON
from forwarder.core.events import ActionType, AuthEvent, Invalid

MAX_USER_ID_LENGTH = 256
# The key travels as the Idempotency-Key header; servers refuse headers of many KB.
MAX_KEY_LENGTH = 1024
_CE_SPECVERSION = "1.0"


@dataclass(frozen=True, slots=True)
class CloudEventTypes:
    """Suffixes of a CloudEvents `type` that decide the action (configurable per deployment)."""

    login_success: str = "login.succeeded"
    login_failure: str = "login.failed"
    logout: str = "logout"

    def action(self, ce_type: str) -> ActionType | None:
        if ce_type.endswith(self.login_success):
            return ActionType.LOGIN_SUCCESS
        if ce_type.endswith(self.login_failure):
            return ActionType.LOGIN_FAILURE
        if ce_type.endswith(self.logout):
            return ActionType.LOGOUT
        return None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.invalid = Invalid(reason, detail)


def decode(
    value: bytes | None,
    headers: tuple[tuple[str, bytes], ...],
    types: CloudEventTypes,
) -> AuthEvent | Invalid:
    try:
        event = _decode(value, headers, types)
    except _Reject as rejected:
        return rejected.invalid
    if len(event.key) > MAX_KEY_LENGTH:
        return Invalid(INVALID_EVENT, f"the event's key is longer than {MAX_KEY_LENGTH} characters")
    return event


def _decode(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...], types: CloudEventTypes
) -> AuthEvent:
    ce_headers = {name[3:]: raw for name, raw in headers if name.startswith("ce_")}
    if "specversion" in ce_headers:
        return _binary_cloudevent(ce_headers, value, types)
    document = _json_object(value)
    if "specversion" in document:
        return _structured_cloudevent(document, types)
    return _native(document)


def _json_object(value: bytes | None) -> dict[str, Any]:
    if value is None or not value.strip():
        raise _Reject(EMPTY_VALUE, "record value is null or empty")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8:
            raise _Reject(INVALID_JSON, f"value is not valid UTF-8: {utf8}") from None
        raise _Reject(INVALID_JSON, f"value is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise _Reject(INVALID_EVENT, f"expected a JSON object, got {type(document).__name__}")
    return document


def _native(document: dict[str, Any]) -> AuthEvent:
    event_id = _non_empty_string(document, "event_id")
    kind = document.get("type")
    if kind == "logout":
        action = ActionType.LOGOUT
    elif kind == "login":
        success = document.get("success")
        if not isinstance(success, bool):
            raise _Reject(INVALID_EVENT, "field 'success' must be true or false for a login")
        action = ActionType.LOGIN_SUCCESS if success else ActionType.LOGIN_FAILURE
    else:
        raise _Reject(INVALID_EVENT, f"field 'type' must be 'login' or 'logout', got {kind!r}")
    return AuthEvent(
        event_id,
        _user_id(document.get("user_id"), "user_id"),
        action,
        _optional_string(document, "ip", "ip"),
        _optional_string(document, "user_agent", "user_agent"),
        _timestamp(document.get("occurred_at"), "occurred_at"),
    )


def _structured_cloudevent(document: dict[str, Any], types: CloudEventTypes) -> AuthEvent:
    if document.get("specversion") != _CE_SPECVERSION:
        raise _Reject(
            INVALID_EVENT, f"unsupported CloudEvents specversion {document.get('specversion')!r}"
        )
    ce_id = _non_empty_string(document, "id")
    source = _non_empty_string(document, "source")
    action = _ce_action(_non_empty_string(document, "type"), types)
    if "time" in document and document["time"] is None:
        raise _Reject(INVALID_EVENT, "field 'time' must be an RFC 3339 timestamp string")
    timestamp = _timestamp(document.get("time"), "time")
    data = document.get("data")
    if not isinstance(data, dict):
        raise _Reject(INVALID_EVENT, "CloudEvent 'data' must be a JSON object with 'user_id'")
    return AuthEvent(
        cloudevent_key(source, ce_id),
        _user_id(data.get("user_id"), "data.user_id"),
        action,
        _optional_string(data, "ip", "data.ip"),
        _optional_string(data, "user_agent", "data.user_agent"),
        timestamp,
    )


def _binary_cloudevent(
    ce: dict[str, bytes], value: bytes | None, types: CloudEventTypes
) -> AuthEvent:
    attributes = {}
    for name in ("specversion", "id", "source", "type"):
        raw = ce.get(name)
        try:
            text = raw.decode("utf-8") if raw is not None else ""
        except UnicodeDecodeError:
            raise _Reject(INVALID_EVENT, f"header ce_{name} is not valid UTF-8") from None
        if not text:
            raise _Reject(INVALID_EVENT, f"header ce_{name} is missing or empty")
        attributes[name] = text
    if attributes["specversion"] != _CE_SPECVERSION:
        raise _Reject(
            INVALID_EVENT, f"unsupported CloudEvents specversion {attributes['specversion']!r}"
        )
    action = _ce_action(attributes["type"], types)
    timestamp = _binary_time(ce.get("time"))
    data = _json_object(value)
    return AuthEvent(
        cloudevent_key(attributes["source"], attributes["id"]),
        _user_id(data.get("user_id"), "user_id"),
        action,
        _optional_string(data, "ip", "ip"),
        _optional_string(data, "user_agent", "user_agent"),
        timestamp,
    )


def _binary_time(raw: bytes | None) -> float | None:
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(INVALID_EVENT, "header ce_time is not valid UTF-8") from None
    return _timestamp(text, "ce_time")


def cloudevent_key(source: str, ce_id: str) -> str:
    """CloudEvents are unique by (source, id); both go into the key, the id last.

    The source's own `%` and `#` are escaped, so the first `#` always ends it and two
    different pairs never share a key (`a#b` + `c` versus `a` + `b#c`)."""
    return f"{source.replace('%', '%25').replace('#', '%23')}#{ce_id}"


def _ce_action(ce_type: str, types: CloudEventTypes) -> ActionType:
    action = types.action(ce_type)
    if action is None:
        raise _Reject(INVALID_EVENT, f"CloudEvent type {ce_type!r} is not a login or logout type")
    return action


def _non_empty_string(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise _Reject(INVALID_EVENT, f"field {name!r} must be a non-empty string, got {value!r}")
    return value


def _user_id(value: object, name: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise _Reject(INVALID_EVENT, f"field {name!r} must be a non-empty string, got {value!r}")
    if len(value) > MAX_USER_ID_LENGTH:
        raise _Reject(
            INVALID_EVENT, f"field {name!r} is longer than {MAX_USER_ID_LENGTH} characters"
        )
    return value


def _optional_string(document: dict[str, Any], field: str, name: str) -> str | None:
    """What the event says about the attempt (`ip`, `user_agent`): absent or null is None;
    anything but a string is refused, as a wrong `occurred_at` is, rather than dropped."""
    value = document.get(field)
    if value is None or isinstance(value, str):
        return value
    raise _Reject(INVALID_EVENT, f"field {name!r} must be a string, got {value!r}")


def _timestamp(value: object, name: str) -> float | None:
    """An RFC 3339 timestamp as Unix seconds; None when the event has none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject(INVALID_EVENT, f"field {name!r} must be an RFC 3339 timestamp string")
    try:
        # RFC 3339 allows a lower-case "t" and "z"; fromisoformat only upper-case ones.
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:
        raise _Reject(
            INVALID_EVENT, f"field {name!r} is not an RFC 3339 timestamp: {value!r}"
        ) from None
    if parsed.tzinfo is None or "t" not in value.lower():
        raise _Reject(
            INVALID_EVENT, f"field {name!r} needs a date, a time and an offset: {value!r}"
        )
    return parsed.timestamp()
