"""Whether the MCP server offers the tools the forwarder calls, with arguments it accepts.

Checked once, at start, against `tools/list`: a wrong tool name or a server whose
tools want other arguments would otherwise turn every event into a dead letter.
The check validates the very arguments the sink builds (`messages.tool_arguments`)
for the fullest and the barest event of each action against each tool's declared
`inputSchema`, with the JSON Schema dialect the schema names (2020-12 by default, as
MCP says), so whatever the schema says (required fields, types, enums, extra
properties refused) is judged by a JSON Schema library rather than by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from jsonschema import Draft202012Validator, exceptions, validators

from forwarder.core.events import ActionType, AuthEvent
from forwarder.sinks.mcp.messages import tool_arguments

# The fullest and the barest event of each action: every argument the sink may send.
_SAMPLES = tuple(
    AuthEvent("sample", "user-1", action, *attempt)
    for action in ActionType
    for attempt in (("203.0.113.7", "Mozilla/5.0", 1795176000.5), (None, None, None))
)


def problems(
    listed: Mapping[str, Any],
    tools: Mapping[str, str],
    settings: Mapping[str, str],
    denied: AbstractSet[str] = frozenset(),
) -> list[str]:
    """What stops the forwarder from calling the server as configured; empty when nothing.

    `listed` maps each tool the server offers to its `inputSchema`; `tools` maps the
    forwarder's tool (`track_login`, `track_logout`) to the server's name for it, and
    `settings` names the setting behind each. A tool in `denied` (the policy's
    forwarder tools) is never called, so it may be missing or different."""
    found: list[str] = []
    for tool, name in tools.items():
        if tool in denied:
            continue
        if name not in listed:
            offered = ", ".join(sorted(listed)) or "none"
            found.append(
                f"the MCP server offers no tool {name!r} ({settings[tool]}); it offers: {offered}"
            )
            continue
        refusal = _refusal(listed[name], tool)
        if refusal is not None:
            found.append(
                f"tool {name!r} does not accept the arguments the forwarder sends: {refusal}"
            )
    return found


def _refusal(schema: Any, tool: str) -> str | None:
    if not isinstance(schema, dict):
        return f"its inputSchema is not an object: {schema!r}"
    validator_class = validators.validator_for(schema, default=Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except exceptions.SchemaError as exc:
        return f"its inputSchema is not valid JSON Schema: {exc.message}"
    validator = validator_class(schema)
    for event in _SAMPLES:
        if event.action.tool != tool:
            continue
        arguments = tool_arguments(event)
        error = exceptions.best_match(validator.iter_errors(arguments))
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path)
            return f"{error.message}{f' (at {where})' if where else ''} for {arguments}"
    return None
