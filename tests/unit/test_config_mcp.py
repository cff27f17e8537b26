"""`FORWARDER_SINK=mcp`: its settings, what it requires and what it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from forwarder.config import ConfigError, LegitiSinkSettings, McpSinkSettings, load_settings, masked

KAFKA = {"FORWARDER_KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FORWARDER_KAFKA_TOPICS": "auth-events"}
MCP = {
    **KAFKA,
    "FORWARDER_SINK": "mcp",
    "FORWARDER_MCP_URL": "https://gateway.example.com/mcp/legiti/",
    "FORWARDER_MCP_TOKEN": "grant-5e1f-never-shown",
}


def test_the_mcp_sink_needs_neither_legiti_url_nor_token() -> None:
    settings = load_settings(MCP)

    assert isinstance(settings.sink, McpSinkSettings)
    assert settings.sink.url == "https://gateway.example.com/mcp/legiti/"
    assert settings.sink.token is not None
    assert settings.sink.token.get_secret_value() == "grant-5e1f-never-shown"
    assert (settings.sink.login_tool, settings.sink.logout_tool) == ("track_login", "track_logout")
    assert settings.sink.max_in_flight == 64


def test_the_shown_configuration_masks_the_grant_token() -> None:
    shown = masked(load_settings({**MCP, "FORWARDER_MCP_LOGIN_TOOL": "legiti__track_login"}))

    assert shown["sink"]["sink"] == "mcp"
    assert shown["sink"]["mcp_token"] == "********"
    assert shown["sink"]["mcp_login_tool"] == "legiti__track_login"
    assert "grant-5e1f-never-shown" not in str(shown)
    assert "legiti_base_url" not in shown["sink"]


def test_no_token_is_fine_for_a_server_without_authentication(tmp_path: Path) -> None:
    without = {key: value for key, value in MCP.items() if key != "FORWARDER_MCP_TOKEN"}
    token_file = tmp_path / "grant"
    with_file = {**without, "FORWARDER_MCP_TOKEN_FILE": str(token_file)}
    plain, from_file = load_settings(without).sink, load_settings(with_file).sink
    assert isinstance(plain, McpSinkSettings)
    assert isinstance(from_file, McpSinkSettings)
    assert (plain.token, plain.token_file) == (None, None)
    assert (from_file.token, from_file.token_file) == (None, token_file)


def test_the_legiti_sink_is_still_the_default() -> None:
    settings = load_settings(
        {
            **KAFKA,
            "FORWARDER_LEGITI_BASE_URL": "https://api.example.com",
            "FORWARDER_LEGITI_API_TOKEN": "t0k3n",
        }
    )
    assert isinstance(settings.sink, LegitiSinkSettings)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"FORWARDER_MCP_URL": None}, "FORWARDER_MCP_URL: required"),
        ({"FORWARDER_MCP_URL": "gateway.example.com/mcp"}, "FORWARDER_MCP_URL"),
        ({"FORWARDER_MCP_TOKEN_FILE": "/run/grant"}, "FORWARDER_MCP_TOKEN_FILE"),
        ({"FORWARDER_MCP_LOGOUT_TOOL": ""}, "FORWARDER_MCP_LOGOUT_TOOL"),
    ],
)
def test_a_bad_mcp_setting_is_named(change: dict[str, str | None], named: str) -> None:
    environ = {**MCP, **change}
    with pytest.raises(ConfigError) as caught:
        load_settings({key: value for key, value in environ.items() if value is not None})
    assert len(caught.value.problems) == 1
    assert named in caught.value.problems[0]
    assert "grant-5e1f-never-shown" not in str(caught.value)
