"""The sink named by the configuration, built with what it needs.

The engine only ever holds a `Sink`; this is the one place that knows which
sinks exist. `credentials` is the token source the running forwarder re-reads
(a rotated Secret file), when the sink has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from forwarder.config import LegitiSinkSettings, McpSinkSettings, SinkSettings
from forwarder.core.events import TOOLS
from forwarder.core.policy import ALLOW_ALL, Policy
from forwarder.sinks.base import Sink
from forwarder.sinks.credentials import TokenError, TokenSource
from forwarder.sinks.legiti.client import LegitiSink
from forwarder.sinks.mcp.client import McpSink


class SinkSetupError(RuntimeError):
    """A file the sink needs cannot be read; the message names the setting."""


@dataclass(frozen=True)
class BuiltSink:
    sink: Sink
    credentials: TokenSource | None
    describe: str
    """Where events go, for the start-up log line (no secrets)."""


def build_sink(settings: SinkSettings, policy: Policy = ALLOW_ALL) -> BuiltSink:
    """`policy` is the forwarder's policy file: the MCP sink does not expect the tools it
    denies to be offered, and reads its limit windows when a denial names none."""
    if isinstance(settings, McpSinkSettings):
        return _mcp(settings, policy)
    return _legiti(settings)


def _legiti(settings: LegitiSinkSettings) -> BuiltSink:
    token = _token(settings.api_token, settings.api_token_file, "FORWARDER_LEGITI_API_TOKEN_FILE")
    assert token is not None  # the settings require one of the two
    sink = LegitiSink(
        settings.base_url,
        token,
        timeout=settings.http_timeout_seconds,
        max_connections=settings.max_in_flight,
    )
    return BuiltSink(sink, token, f"legiti {settings.base_url}")


def _mcp(settings: McpSinkSettings, policy: Policy) -> BuiltSink:
    token = _token(settings.token, settings.token_file, "FORWARDER_MCP_TOKEN_FILE")
    sink = McpSink(
        settings.url,
        token,
        timeout=settings.http_timeout_seconds,
        max_connections=settings.max_in_flight,
        login_tool=settings.login_tool,
        logout_tool=settings.logout_tool,
        denied={tool for tool in TOOLS if not policy.for_tool(tool).allowed},
        limit_windows={
            tool: [rate.window for rate in (*policy.for_tool(tool).limits, *policy.shared)]
            for tool in TOOLS
        },
    )
    tools = f"{settings.login_tool}, {settings.logout_tool}"
    return BuiltSink(sink, token, f"mcp {settings.url} ({tools})")


def _token(secret: SecretStr | None, path: Path | None, setting: str) -> TokenSource | None:
    try:
        if secret is not None:
            return TokenSource(token=secret.get_secret_value())
        if path is not None:
            return TokenSource(path=path)
    except TokenError as exc:
        raise SinkSetupError(f"{setting}: {exc}") from exc
    return None
