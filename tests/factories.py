"""The records and events tests feed the forwarder, built one way everywhere.

A test names only what it is about (an offset, a user, an action) and takes the
rest from here, so that a change to the event format is made once.
"""

from __future__ import annotations

from typing import Any

import orjson

from forwarder.core.events import ActionType, SourceRecord

DROP: Any = object()
"""As a field value of a document factory: leave the field out altogether."""

ACTION_CYCLE = (ActionType.LOGIN_SUCCESS, ActionType.LOGIN_FAILURE, ActionType.LOGOUT)
"""The actions `native_series` goes through, event by event."""


def _document(defaults: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`defaults` with `fields` added or replacing them by their JSON name, and the
    fields given as `DROP` left out."""
    document = {**defaults, **fields}
    return {name: value for name, value in document.items() if value is not DROP}


def native_document(
    event_id: str = "7f3c2a9e-0001",
    user_id: object = "u-123",
    kind: str = "login",
    success: object = True,
    **fields: Any,
) -> dict[str, Any]:
    """A native event as a JSON object (the issue's example unless told otherwise).
    `success` is only written for a login: a logout has none."""
    defaults: dict[str, Any] = {"event_id": event_id, "type": kind}
    if kind == "login":
        defaults["success"] = success
    defaults["user_id"] = user_id
    return _document(defaults, fields)


def structured_cloudevent(**fields: Any) -> dict[str, Any]:
    """A CloudEvent in structured mode: a login failure of user `u-9`."""
    defaults = {
        "specversion": "1.0",
        "id": "evt-9",
        "source": "//auth.example.com/eu",
        "type": "com.example.auth.login.failed",
        "time": "2026-11-20T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {"user_id": "u-9", "ip": "203.0.113.7"},
    }
    return _document(defaults, fields)


def native(
    event_id: str, user_id: str | int, kind: str = "login", success: bool | None = True
) -> bytes:
    """A native event as the bytes of a Kafka record's value."""
    return orjson.dumps(native_document(event_id, user_id, kind, success))


def native_action(event_id: str, user_id: str, action: ActionType) -> bytes:
    """The native event that decodes to `action`."""
    if action is ActionType.LOGOUT:
        return native(event_id, user_id, "logout")
    return native(event_id, user_id, "login", action is ActionType.LOGIN_SUCCESS)


def native_series(prefix: str, count: int, users: int, start: int = 0) -> list[bytes]:
    """Events `{prefix}{i}` for i from `start`: user `user-{i % users}`, the action
    `ACTION_CYCLE[i % 3]`."""
    return [
        native_action(f"{prefix}{i}", f"user-{i % users}", ACTION_CYCLE[i % 3])
        for i in range(start, start + count)
    ]


def record(
    value: bytes | None = b"{}",
    *,
    topic: str = "auth",
    partition: int = 0,
    offset: int = 0,
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
    timestamp_ms: int = 0,
) -> SourceRecord:
    """A consumed Kafka record."""
    return SourceRecord(topic, partition, offset, key, value, headers, timestamp_ms)
