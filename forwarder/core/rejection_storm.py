"""Telling a misconfiguration from bad events: the same 4xx for most recent requests,
across many users, is the forwarder's fault, not the events'.

Legiti refuses an event with a 4xx, and a refused event is dead-lettered. But when
a gateway rule, a wrong path or a wrong tenant makes every request fail the same
way, dead-lettering would empty the stream into the dead-letter topic at full
speed. Events of one bad user are not that: they are one user. So the last
`window` verdicts are kept; when one rejection code makes up at least `min_share`
of them, for at least `min_users` different users, the send gate treats further
answers with that code as a misconfiguration (halt, report, keep the events).
"""

from __future__ import annotations

from collections import deque


class RejectionStorm:
    __slots__ = ("_codes", "_min_share", "_min_users", "_recent", "_users", "_window")

    def __init__(self, window: int = 50, min_share: float = 0.8, min_users: int = 10) -> None:
        self._window = window
        self._min_share = min_share
        self._min_users = min_users
        self._recent: deque[tuple[str | None, str]] = deque()
        self._codes: dict[str, int] = {}
        self._users: dict[str, dict[str, int]] = {}

    def observe(self, code: str | None, user: str) -> None:
        """One verdict: `code` is the rejection's code, None for an accepted event."""
        recent = self._recent
        recent.append((code, user))
        if code is not None:
            self._codes[code] = self._codes.get(code, 0) + 1
            users = self._users.setdefault(code, {})
            users[user] = users.get(user, 0) + 1
        if len(recent) > self._window:
            old_code, old_user = recent.popleft()
            if old_code is not None:
                self._forget(old_code, old_user)

    def raging(self, code: str) -> bool:
        """Whether `code` answers most recent requests across many users."""
        count = self._codes.get(code, 0)
        return (
            len(self._recent) >= self._window // 2
            and count >= self._min_share * len(self._recent)
            and len(self._users.get(code, ())) >= self._min_users
        )

    def clear(self) -> None:
        """Start over (the configuration was fixed)."""
        self._recent.clear()
        self._codes.clear()
        self._users.clear()

    def _forget(self, code: str, user: str) -> None:
        self._codes[code] -= 1
        if not self._codes[code]:
            del self._codes[code]
        users = self._users[code]
        users[user] -= 1
        if not users[user]:
            del users[user]
            if not users:
                del self._users[code]
