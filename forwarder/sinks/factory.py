"""The sink named by the configuration, built with what it needs.

The engine only ever holds a `Sink`; this is the one place that knows which
sinks exist. `credentials` is the token source the running forwarder re-reads
(a rotated Secret file), when the sink has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from forwarder.config import SinkSettings
from forwarder.sinks.base import Sink
from forwarder.sinks.credentials import TokenError, TokenSource
from forwarder.sinks.legiti.client import LegitiSink


class SinkSetupError(RuntimeError):
    """A file the sink needs cannot be read; the message names the setting."""


@dataclass(frozen=True)
class BuiltSink:
    sink: Sink
    credentials: TokenSource | None
    describe: str
    """Where events go, for the start-up log line (no secrets)."""


def build_sink(settings: SinkSettings) -> BuiltSink:
    try:
        if settings.api_token is not None:
            token = TokenSource(token=settings.api_token.get_secret_value())
        else:
            token = TokenSource(path=settings.api_token_file)
    except TokenError as exc:
        raise SinkSetupError(f"FORWARDER_LEGITI_API_TOKEN_FILE: {exc}") from exc
    sink = LegitiSink(
        settings.base_url,
        token,
        timeout=settings.http_timeout_seconds,
        max_connections=settings.max_in_flight,
    )
    return BuiltSink(sink, token, f"legiti {settings.base_url}")
