"""The gateway stand-in reads its policy as a gateway would: the forwarder's own reading of
the same file (`core.policy`) is tested against it only through the wire, so the two are
written apart."""

from __future__ import annotations

import pytest

from forwarder.sandbox.gateway import GatewayPolicy, PolicyFileError


def test_default_deny_allows_only_what_is_listed() -> None:
    policy = GatewayPolicy.parse({"version": "1", "default": "deny", "tools": {"track_login": {}}})

    assert policy.rule("track_login").allowed
    refused = policy.rule("track_logout")
    assert not refused.allowed
    assert "default is deny" in refused.reason
    assert not policy.rule("anything_else").allowed


def test_default_allow_and_an_explicit_denial() -> None:
    policy = GatewayPolicy.parse(
        {"version": "1", "tools": {"track_logout": {"action": "deny", "reason": "not used"}}}
    )

    assert policy.rule("track_login").allowed
    assert policy.rule("track_logout") == (False, "not used", ())


def test_limits_keep_their_counter_window_and_scope() -> None:
    limits = [
        {"counter": "logins", "window": "minute", "max": 30, "scope": "grant"},
        {"window": "day", "max": 1000},
    ]
    policy = GatewayPolicy.parse({"version": "1", "tools": {"track_login": {"limits": limits}}})

    first, second = policy.rule("track_login").limits
    assert (first.counter, first.window, first.max, first.per_grant) == (
        "logins",
        "minute",
        30,
        True,
    )
    assert (second.counter, second.window, second.max, second.per_grant) == (
        "track_login:day",
        "day",
        1000,
        False,
    )


def test_track_auth_stands_for_both_tools_and_its_limits_are_shared() -> None:
    shared = [{"counter": "auth", "window": "second", "max": 5}]
    policy = GatewayPolicy.parse(
        {
            "version": "1",
            "default": "deny",
            "tools": {"track_auth": {"limits": shared}, "track_logout": {"limits": []}},
        }
    )

    assert [limit.counter for limit in policy.rule("track_login").limits] == ["auth"]
    assert [limit.counter for limit in policy.rule("track_logout").limits] == ["auth"]
    denied = GatewayPolicy.parse({"version": "1", "tools": {"track_auth": {"action": "deny"}}})
    assert not denied.rule("track_login").allowed
    assert not denied.rule("track_logout").allowed


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"version": "2"},
        {"default": "maybe"},
        {"tools": []},
        {"tools": {"track_login": "yes"}},
        {"tools": {"track_login": {"limits": [{"window": "week", "max": 1}]}}},
        {"tools": {"track_login": {"limits": [{"window": "minute", "max": 0}]}}},
    ],
)
def test_a_policy_the_gateway_cannot_use_is_refused(document: object) -> None:
    with pytest.raises(PolicyFileError):
        GatewayPolicy.parse(document)
