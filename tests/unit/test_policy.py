"""The gateway's policy document as the forwarder reads it: who may be called, how often."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from forwarder.core.events import TRACK_LOGIN, TRACK_LOGOUT
from forwarder.core.policy import ALLOW_ALL, PolicyError, ToolPolicy, load_policy, parse_policy
from forwarder.limits.rate import Rate

ISSUE_EXAMPLE = {
    "version": "1",
    "default": "deny",
    "tools": {
        "track_login": {
            "limits": [
                {"counter": "track_login_rate", "window": "minute", "max": 30, "scope": "grant"}
            ]
        },
        "track_logout": {"action": "deny", "reason": "not used"},
    },
}


def test_the_example_from_the_issue() -> None:
    policy = parse_policy(ISSUE_EXAMPLE)
    login = policy.for_tool(TRACK_LOGIN)
    assert login.allowed
    assert login.limits == (Rate(30, 60.0),)
    logout = policy.for_tool(TRACK_LOGOUT)
    assert not logout.allowed
    assert logout.reason == "not used"
    assert policy.shared == ()


def test_load_policy_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(orjson.dumps(ISSUE_EXAMPLE))
    assert load_policy(path) == parse_policy(ISSUE_EXAMPLE)


def test_load_policy_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(PolicyError, match=r"absent\.json"):
        load_policy(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PolicyError, match=r"broken\.json.*not JSON"):
        load_policy(broken)


def test_default_deny_denies_absent_tools() -> None:
    policy = parse_policy({"default": "deny", "tools": {}})
    for tool in (TRACK_LOGIN, TRACK_LOGOUT):
        assert not policy.for_tool(tool).allowed
        assert "default" in policy.for_tool(tool).reason


def test_default_allow_and_missing_default_allow_absent_tools() -> None:
    documents: list[dict[str, Any]] = [{"default": "allow"}, {}, {"tools": {}}]
    for document in documents:
        policy = parse_policy(document)
        for tool in (TRACK_LOGIN, TRACK_LOGOUT):
            assert policy.for_tool(tool) == ToolPolicy()
        assert policy.shared == ()


def test_allow_all_allows_everything_unlimited() -> None:
    for tool in (TRACK_LOGIN, TRACK_LOGOUT):
        assert ALLOW_ALL.for_tool(tool) == ToolPolicy(True, "", ())
    assert ALLOW_ALL.shared == ()


def test_track_auth_limits_are_shared_by_both_tools() -> None:
    policy = parse_policy(
        {
            "default": "deny",
            "tools": {
                "track_auth": {"limits": [{"window": "second", "max": 5}]},
                "track_logout": {"limits": [{"window": "hour", "max": 100}]},
            },
        }
    )
    assert policy.shared == (Rate(5, 1.0),)
    # track_auth stands for both forms, so default deny does not deny the absent one.
    assert policy.for_tool(TRACK_LOGIN).allowed
    assert policy.for_tool(TRACK_LOGIN).limits == ()
    assert policy.for_tool(TRACK_LOGOUT).allowed
    assert policy.for_tool(TRACK_LOGOUT).limits == (Rate(100, 3600.0),)


def test_track_auth_deny_denies_both_tools_even_if_allowed_on_their_own() -> None:
    policy = parse_policy(
        {
            "default": "allow",
            "tools": {
                "track_auth": {"action": "deny", "reason": "paused by ops"},
                "track_login": {"limits": [{"window": "minute", "max": 30}]},
            },
        }
    )
    for tool in (TRACK_LOGIN, TRACK_LOGOUT):
        assert not policy.for_tool(tool).allowed
        assert policy.for_tool(tool).reason == "paused by ops"
    assert policy.shared == ()


def test_an_explicit_deny_of_one_tool_stands_beside_an_allowed_track_auth() -> None:
    policy = parse_policy(
        {"tools": {"track_auth": {}, "track_logout": {"action": "deny"}}, "default": "deny"}
    )
    assert policy.for_tool(TRACK_LOGIN).allowed
    assert not policy.for_tool(TRACK_LOGOUT).allowed
    assert policy.for_tool(TRACK_LOGOUT).reason  # a reason is always given


def test_multiple_limits_and_every_window() -> None:
    limits = [
        {"window": "second", "max": 5},
        {"window": "minute", "max": 30},
        {"window": "hour", "max": 1000},
        {"window": "day", "max": 10000},
    ]
    policy = parse_policy({"tools": {"track_login": {"limits": limits}}})
    assert policy.for_tool(TRACK_LOGIN).limits == (
        Rate(5, 1.0),
        Rate(30, 60.0),
        Rate(1000, 3600.0),
        Rate(10000, 86400.0),
    )


def test_unrelated_tools_are_ignored() -> None:
    policy = parse_policy({"default": "deny", "tools": {"track_payment": {"action": "allow"}}})
    assert not policy.for_tool(TRACK_LOGIN).allowed


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ([], "must be a JSON object"),
        ("deny", "must be a JSON object"),
        ({"default": "maybe"}, "default"),
        ({"default": None}, "default"),
        ({"tools": []}, "'tools'"),
        ({"tools": {"track_login": "allow"}}, "tools.track_login must be an object"),
        ({"tools": {"track_login": {"action": "block"}}}, "tools.track_login.action"),
        ({"tools": {"track_login": {"limits": {}}}}, "tools.track_login.limits must be a list"),
        ({"tools": {"track_login": {"limits": [5]}}}, r"tools.track_login.limits\[0\] must"),
        (
            {"tools": {"track_login": {"limits": [{"window": "week", "max": 5}]}}},
            r"tools\.track_login\.limits\[0\]\.window",
        ),
        (
            {"tools": {"track_login": {"limits": [{"max": 5}]}}},
            r"tools\.track_login\.limits\[0\]\.window",
        ),
        (
            {
                "tools": {
                    "track_logout": {
                        "limits": [{"window": "minute", "max": 5}, {"window": "hour", "max": 0}]
                    }
                }
            },
            r"tools\.track_logout\.limits\[1\]\.max",
        ),
        (
            {"tools": {"track_auth": {"limits": [{"window": "minute", "max": "30"}]}}},
            r"tools\.track_auth\.limits\[0\]\.max",
        ),
        (
            {"tools": {"track_auth": {"limits": [{"window": "minute", "max": True}]}}},
            r"tools\.track_auth\.limits\[0\]\.max",
        ),
        (
            {"tools": {"track_auth": {"limits": [{"window": "minute", "max": 2.5}]}}},
            r"tools\.track_auth\.limits\[0\]\.max",
        ),
        (
            {"tools": {"track_auth": {"limits": [{"window": "minute"}]}}},
            r"tools\.track_auth\.limits\[0\]\.max",
        ),
    ],
)
def test_bad_documents_name_the_path(document: Any, where: str) -> None:
    with pytest.raises(PolicyError, match=where):
        parse_policy(document)


def test_policy_error_is_a_value_error() -> None:
    """Configuration validation reports ValueErrors as bad settings."""
    assert issubclass(PolicyError, ValueError)


def test_counter_names_are_kept_and_versions_checked() -> None:
    policy = parse_policy(
        {
            "version": "1",
            "tools": {
                "track_login": {"limits": [{"counter": "auth", "window": "minute", "max": 9}]},
            },
        }
    )
    (limit,) = policy.for_tool(TRACK_LOGIN).limits
    assert limit.counter == "auth"
    with pytest.raises(PolicyError, match="unsupported version '2'"):
        parse_policy({"version": "2", "tools": {}})
    with pytest.raises(PolicyError, match="max must be an integer from 1 to 1000000"):
        parse_policy({"tools": {"track_login": {"limits": [{"window": "day", "max": 10**7}]}}})
