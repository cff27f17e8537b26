"""Whether the shared state is reachable: one line when it is lost, one when it is back.

The limits and the de-duplication store both talk to Redis, and either may be
the first to notice that it went away or came back; they report here, so the
operator reads one warning per outage (not one per failed call) and one
`forwarder_shared_state_up` gauge says which mode the replica is in.
"""

from __future__ import annotations

from collections.abc import Callable

from forwarder.ops.logs import get_logger

LOST = (
    "shared state unreachable; limits fall back to this replica's partition share"
    " and de-duplication to this replica's memory until it is back"
)


class SharedStatus:
    """Up or down, as last seen by any user of the connection; starts down (unknown)."""

    def __init__(self, display: str, on_change: Callable[[bool], None] | None = None) -> None:
        self._display = display
        self._on_change = on_change
        self._log = get_logger("forwarder.shared")
        self.up = False
        self._announced = False

    def reached(self) -> None:
        if self.up:
            return
        self.up = True
        if self._announced:
            self._log.info(
                "shared state reachable again; limits and de-duplication are the group's"
            )
        else:
            self._log.info("shared state reachable; limits and de-duplication are the group's")
        self._announced = True
        if self._on_change is not None:
            self._on_change(True)

    def forgotten(self) -> None:
        """Redis answers but lost its data (restarted without persistence)."""
        self._log.warning(
            "shared state lost its data (a Redis restart?); limits hold back for a window"
            " and de-duplication forgets what was delivered before",
            redis=self._display,
        )

    def lost(self, error: BaseException) -> None:
        if not self.up and self._announced:
            return
        self.up = False
        self._announced = True
        self._log.warning(
            LOST,
            redis=self._display,
            error=repr(error),
        )
        if self._on_change is not None:
            self._on_change(False)
