"""The gateway's policy file, read as limits and permissions for the two tools.

The forwarder enforces on its own side what the gateway would enforce anyway, so
that a denied call is dead-lettered with a clear reason instead of being sent,
refused and retried, and an allowance is spent evenly instead of in 429s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from forwarder.core.events import TOOLS
from forwarder.limits.rate import MAX_COUNT, WINDOWS, Rate

SHARED_TOOL = "track_auth"


class PolicyError(ValueError):
    """The policy file cannot be understood; the message says where."""


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    allowed: bool = True
    reason: str = ""
    limits: tuple[Rate, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """What the forwarder may call and how often; `shared` limits apply to both tools."""

    tools: dict[str, ToolPolicy] = field(default_factory=dict)
    shared: tuple[Rate, ...] = ()

    def for_tool(self, tool: str) -> ToolPolicy:
        return self.tools.get(tool, ToolPolicy())


ALLOW_ALL = Policy()


def load_policy(path: Path) -> Policy:
    try:
        document = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise PolicyError(f"policy file {path}: not JSON: {exc}") from exc
    return parse_policy(document)


def parse_policy(document: Any) -> Policy:
    """Interpret a policy document.

    A tool absent from `tools` follows `default`, except that an allowed
    `track_auth` entry stands for both tools, since both are forms of that call.
    """
    if not isinstance(document, dict):
        raise PolicyError("policy: the document must be a JSON object")
    version = document.get("version", "1")
    if str(version) != "1":
        raise PolicyError(
            f"policy: unsupported version {version!r}; this forwarder reads version 1"
        )
    default = document.get("default", "allow")
    if default not in ("allow", "deny"):
        raise PolicyError(f"policy: default must be 'allow' or 'deny', got {default!r}")
    entries = document.get("tools", {})
    if not isinstance(entries, dict):
        raise PolicyError("policy: 'tools' must be an object")
    parsed = {name: _entry(name, entry) for name, entry in entries.items()}
    shared = parsed.get(SHARED_TOOL)
    tools: dict[str, ToolPolicy] = {}
    for tool in TOOLS:
        own = parsed.get(tool)
        if shared is not None and not shared.allowed:
            tools[tool] = shared
        elif own is not None:
            tools[tool] = own
        elif shared is not None or default == "allow":
            tools[tool] = ToolPolicy()
        else:
            tools[tool] = ToolPolicy(False, "absent from the policy, whose default is deny")
    return Policy(tools, shared.limits if shared is not None and shared.allowed else ())


def _entry(name: str, entry: Any) -> ToolPolicy:
    if not isinstance(entry, dict):
        raise PolicyError(f"policy: tools.{name} must be an object")
    action = entry.get("action", "allow")
    if action not in ("allow", "deny"):
        raise PolicyError(f"policy: tools.{name}.action must be 'allow' or 'deny'")
    if action == "deny":
        return ToolPolicy(False, str(entry.get("reason") or "denied by policy"))
    limits = entry.get("limits", [])
    if not isinstance(limits, list):
        raise PolicyError(f"policy: tools.{name}.limits must be a list")
    return ToolPolicy(True, "", tuple(_limit(name, i, limit) for i, limit in enumerate(limits)))


def _limit(name: str, index: int, limit: Any) -> Rate:
    where = f"policy: tools.{name}.limits[{index}]"
    if not isinstance(limit, dict):
        raise PolicyError(f"{where} must be an object")
    window, count = limit.get("window"), limit.get("max")
    if window not in WINDOWS:
        raise PolicyError(f"{where}.window must be one of {', '.join(WINDOWS)}, got {window!r}")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise PolicyError(f"{where}.max must be an integer from 1 to {MAX_COUNT}, got {count!r}")
    counter = limit.get("counter")
    return Rate(count, WINDOWS[window], counter if isinstance(counter, str) else None)
