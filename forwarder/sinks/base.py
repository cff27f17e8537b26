"""The one seam between the engine and whatever receives the events.

A sink is chosen by configuration (`sinks.factory`); the engine holds it as a
`Sink` and acts only on the `Outcome` it returns, so adding a sink never
touches the engine.
"""

from __future__ import annotations

from typing import Protocol

from forwarder.core.events import AuthEvent
from forwarder.sinks.outcome import Outcome


class Sink(Protocol):
    async def send(self, event: AuthEvent) -> Outcome:
        """Deliver one event and say what the answer means; never raise for an answer."""

    async def aclose(self) -> None:
        """Release connections (and any server-side session)."""
