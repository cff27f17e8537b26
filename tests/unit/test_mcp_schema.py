"""The start-up check: both tools offered, and their input schemas accept what is sent."""

from __future__ import annotations

from typing import Any

import pytest

from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT
from forwarder.sinks.mcp.schema import problems

NAMES = {TRACK_LOGIN: "track_login", TRACK_LOGOUT: "track_logout"}
SETTINGS = {TRACK_LOGIN: "FORWARDER_MCP_LOGIN_TOOL", TRACK_LOGOUT: "FORWARDER_MCP_LOGOUT_TOOL"}

ATTEMPT = {
    "ip": {"type": "string"},
    "user_agent": {"type": "string"},
    "timestamp": {"type": "number"},
}
LOGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"account_id": {"type": "string"}, "success": {"type": "boolean"}, **ATTEMPT},
    "required": ["account_id"],
}
LOGOUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"account_id": {"type": "string"}, **ATTEMPT},
    "required": ["account_id"],
}
# What the official Python SDK derives from `ip: str | None = None` and the like.
SDK_LOGIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "track_loginArguments",
    "properties": {
        "account_id": {"title": "Account Id", "type": "string"},
        "success": {"default": True, "title": "Success", "type": "boolean"},
        "ip": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "user_agent": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "timestamp": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
    },
    "required": ["account_id"],
}


def listed(**overrides: Any) -> dict[str, Any]:
    tools: dict[str, Any] = {"track_login": LOGIN_SCHEMA, "track_logout": LOGOUT_SCHEMA}
    tools.update(overrides)
    return {name: schema for name, schema in tools.items() if schema is not None}


def test_the_tools_as_the_legiti_server_defines_them_pass() -> None:
    assert problems(listed(), NAMES, SETTINGS) == []
    assert problems(listed(track_login=SDK_LOGIN_SCHEMA), NAMES, SETTINGS) == []


def test_a_permissive_schema_passes() -> None:
    assert problems(listed(track_login={"type": "object"}, track_logout={}), NAMES, SETTINGS) == []


def test_a_missing_tool_names_its_setting_and_what_is_offered() -> None:
    found = problems(listed(track_logout=None, other_tool={}), NAMES, SETTINGS)

    assert len(found) == 1
    assert "'track_logout'" in found[0]
    assert "FORWARDER_MCP_LOGOUT_TOOL" in found[0]
    assert "other_tool, track_login" in found[0]


def test_renamed_tools_are_looked_up_by_their_configured_names() -> None:
    names = {TRACK_LOGIN: "legiti__track_login", TRACK_LOGOUT: "legiti__track_logout"}
    tools = {"legiti__track_login": LOGIN_SCHEMA, "legiti__track_logout": LOGOUT_SCHEMA}

    assert problems(tools, names, SETTINGS) == []
    assert len(problems(listed(), names, SETTINGS)) == 2


def test_a_denied_tool_may_be_missing_or_different() -> None:
    hidden = listed(track_logout=None)
    different = listed(track_logout={"type": "object", "required": ["session_id"]})

    assert problems(hidden, NAMES, SETTINGS, denied={TRACK_LOGOUT}) == []
    assert problems(different, NAMES, SETTINGS, denied={TRACK_LOGOUT}) == []
    assert len(problems(different, NAMES, SETTINGS)) == 1


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({**LOGIN_SCHEMA, "required": ["account_id", "device_id"]}, ["'device_id'", "required"]),
        ({**LOGIN_SCHEMA, "required": ["account_id", "ip"]}, ["'ip'", "required"]),
        (
            {
                **LOGIN_SCHEMA,
                "properties": {**LOGIN_SCHEMA["properties"], "account_id": {"type": "integer"}},
            },
            ["integer", "account_id"],
        ),
        (
            {
                **LOGIN_SCHEMA,
                "properties": {**LOGIN_SCHEMA["properties"], "timestamp": {"type": "integer"}},
            },
            ["integer", "timestamp"],
        ),
        (
            {"type": "object", "properties": {"account_id": {}}, "additionalProperties": False},
            ["Additional properties"],
        ),
        ({"type": "object", "properties": {"success": {"enum": ["yes", "no"]}}}, ["success"]),
        ({"type": "wrong"}, ["not valid JSON Schema"]),
        ("a string", ["not an object"]),
    ],
)
def test_a_schema_that_refuses_the_arguments_is_a_problem(schema: Any, words: list[str]) -> None:
    found = problems(listed(track_login=schema), NAMES, SETTINGS)

    assert len(found) == 1
    assert "'track_login' does not accept the arguments" in found[0]
    for word in words:
        assert word in found[0]


def test_the_dialect_the_schema_names_is_used() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"account_id": {"type": "string"}},
        "dependencies": {"ip": ["user_agent"]},
        "required": ["account_id"],
    }

    assert problems(listed(track_login=draft7, track_logout=draft7), NAMES, SETTINGS) == []
