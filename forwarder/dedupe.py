"""Which event keys were delivered recently, with bounded memory.

Only *delivered* keys enter the window: a copy that arrives while the first is
still in flight is held back by the scheduler (see `ordering.py`), and a key whose
first copy was dead-lettered stays unknown so that a later copy is sent.
"""

from __future__ import annotations

from collections import OrderedDict


class DeliveredWindow:
    """Keys delivered within the last `ttl` seconds, at most `max_entries` of them.

    Insertion-ordered, so the oldest delivery is always first: expiry and
    eviction both pop from the front in O(1). Timestamps are the caller's clock.
    """

    __slots__ = ("_delivered", "max_entries", "ttl")

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._delivered: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._delivered)

    def contains(self, key: str, now: float) -> bool:
        delivered_at = self._delivered.get(key)
        return delivered_at is not None and now - delivered_at < self.ttl

    def add(self, key: str, now: float) -> None:
        if self.max_entries == 0 or self.ttl <= 0:
            return
        self._delivered[key] = now
        self._delivered.move_to_end(key)
        self._expire(now)
        while len(self._delivered) > self.max_entries:
            self._delivered.popitem(last=False)

    def _expire(self, now: float) -> None:
        delivered = self._delivered
        while delivered:
            oldest_key, oldest_at = next(iter(delivered.items()))
            if now - oldest_at < self.ttl:
                return
            del delivered[oldest_key]
