"""The one seam between the engine and whatever receives the events.

A sink is chosen by configuration (`sinks.factory`); the engine holds it as a
`Sink` and acts only on the `Outcome` it returns, so adding a sink never
touches the engine.
"""

from __future__ import annotations

from typing import Protocol

from forwarder.core.events import AuthEvent
from forwarder.sinks.outcome import Outcome


class SinkMisconfigured(RuntimeError):
    """The far end cannot take the events as configured (wrong URL, a missing tool);
    the message names the setting to check."""


class Sink(Protocol):
    async def open(self) -> None:
        """Prepare before the first event (a session, a check of what the far end offers).

        Raises `SinkMisconfigured` when the far end cannot take these events as
        configured: the forwarder then reports not ready and sends nothing."""

    async def send(self, event: AuthEvent) -> Outcome:
        """Deliver one event and say what the answer means; never raise for an answer."""

    async def aclose(self) -> None:
        """Release connections (and any server-side session)."""
