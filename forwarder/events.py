"""The forwarder's vocabulary: what a Kafka record becomes and what Legiti is told."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

TRACK_LOGIN = "track_login"
TRACK_LOGOUT = "track_logout"
TOOLS = (TRACK_LOGIN, TRACK_LOGOUT)


class ActionType(StrEnum):
    LOGIN_SUCCESS = "login_success"
    LOGIN_FAILURE = "login_failure"
    LOGOUT = "logout"

    @property
    def tool(self) -> str:
        """The `track_auth` form this action is sent as (limits and policy are per tool)."""
        return TRACK_LOGOUT if self is ActionType.LOGOUT else TRACK_LOGIN


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A Kafka record as consumed, kept whole so a dead letter can carry it unchanged."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One `track_auth` call to make. `key` de-duplicates and becomes the Idempotency-Key."""

    key: str
    user_id: str
    action: ActionType


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a record cannot become a call; `reason` is the dead-letter reason header."""

    reason: str
    detail: str
