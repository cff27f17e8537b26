"""Kafka record → AuthEvent or Invalid, for every shape and every way to get it wrong."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forwarder.core.dead_letters import EMPTY_VALUE, INVALID_EVENT, INVALID_JSON
from forwarder.core.decode import MAX_USER_ID_LENGTH, CloudEventTypes, cloudevent_key, decode
from forwarder.core.events import ActionType, AuthEvent, Invalid
from tests.factories import DROP, native_document, structured_cloudevent

TYPES = CloudEventTypes()
REASONS = {EMPTY_VALUE, INVALID_EVENT, INVALID_JSON}


def run(document: Any, headers: tuple[tuple[str, bytes], ...] = ()) -> AuthEvent | Invalid:
    return decode(orjson.dumps(document), headers, TYPES)


def rejected(result: AuthEvent | Invalid, reason: str, *words: str) -> None:
    assert isinstance(result, Invalid), result
    assert result.reason == reason, result
    assert result.detail
    for word in words:
        assert word in result.detail, result.detail


# Native shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "action"),
    [
        ({"type": "login", "success": True}, ActionType.LOGIN_SUCCESS),
        ({"type": "login", "success": False}, ActionType.LOGIN_FAILURE),
        ({"type": "logout", "success": DROP}, ActionType.LOGOUT),
        ({"type": "logout", "success": "whatever"}, ActionType.LOGOUT),
    ],
)
def test_native_actions(fields: dict[str, Any], action: ActionType) -> None:
    assert run(native_document(**fields)) == AuthEvent("7f3c2a9e-0001", "u-123", action)


def test_native_example_from_the_issue() -> None:
    value = (
        b'{"event_id": "7f3c2a9e-aa", "type": "login", "success": false, "user_id": "u-123",'
        b' "occurred_at": "2026-11-20T12:00:00Z", "ip": "203.0.113.7", "user_agent": "curl/8"}'
    )
    assert decode(value, (), TYPES) == AuthEvent(
        "7f3c2a9e-aa", "u-123", ActionType.LOGIN_FAILURE, "203.0.113.7", "curl/8", 1795176000.0
    )


@pytest.mark.parametrize(
    ("user_id", "sent"), [(42, "42"), (0, "0"), (-7, "-7"), (2**63, str(2**63))]
)
def test_integer_user_id_becomes_its_decimal_string(user_id: int, sent: str) -> None:
    result = run(native_document(user_id=user_id))
    assert isinstance(result, AuthEvent)
    assert result.user_id == sent


@pytest.mark.parametrize(
    "user_id",
    ["ユーザー-1", "Ünïcödé", "emoji-🙂", " padded ", "a" * MAX_USER_ID_LENGTH, "🙂" * 256, "x"],
)
def test_user_id_is_kept_exactly(user_id: str) -> None:
    result = run(native_document(user_id=user_id))
    assert isinstance(result, AuthEvent)
    assert result.user_id == user_id


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-11-20T12:00:00Z",
        "2026-11-20T12:00:00.123Z",
        "2026-11-20T12:00:00.123456+05:30",
        "2026-11-20T12:00:00-08:00",
        "2026-11-20t12:00:00z",  # RFC 3339 allows lower case
        None,
    ],
)
def test_valid_occurred_at_is_accepted(occurred_at: str | None) -> None:
    assert isinstance(run(native_document(occurred_at=occurred_at)), AuthEvent)


@pytest.mark.parametrize(
    "occurred_at",
    [
        "yesterday",
        "2026-11-20",  # no time
        "2026-11-20T12:00:00",  # no offset
        "2026-13-20T12:00:00Z",
        "",
        1763640000,
        True,
        {"at": "2026-11-20T12:00:00Z"},
    ],
)
def test_invalid_occurred_at_is_rejected(occurred_at: object) -> None:
    rejected(run(native_document(occurred_at=occurred_at)), INVALID_EVENT, "occurred_at")


def test_unknown_fields_are_ignored() -> None:
    document = native_document(extra={"nested": [1, 2]}, whatever=None, success=True)
    assert run(document) == AuthEvent("7f3c2a9e-0001", "u-123", ActionType.LOGIN_SUCCESS)


# What the event says about the attempt (for the MCP tools) ---------------------------


def test_native_attempt_details_are_kept() -> None:
    result = run(
        native_document(
            ip="2001:db8::1", user_agent="Mozilla/5.0 (X11)", occurred_at="1970-01-01T00:01:40Z"
        )
    )
    assert isinstance(result, AuthEvent)
    assert (result.ip, result.user_agent, result.timestamp) == (
        "2001:db8::1",
        "Mozilla/5.0 (X11)",
        100.0,
    )


@pytest.mark.parametrize(
    ("occurred_at", "timestamp"),
    [
        ("2026-11-20T12:00:00.250Z", 1795176000.25),
        ("2026-11-20T13:30:00+01:30", 1795176000.0),
        ("2026-11-20t12:00:00z", 1795176000.0),
    ],
)
def test_occurred_at_becomes_unix_seconds(occurred_at: str, timestamp: float) -> None:
    result = run(native_document(occurred_at=occurred_at))
    assert isinstance(result, AuthEvent)
    assert result.timestamp == timestamp


def test_absent_or_null_attempt_details_are_none() -> None:
    for document in (
        native_document(),
        native_document(ip=None, user_agent=None, occurred_at=None),
    ):
        result = run(document)
        assert isinstance(result, AuthEvent)
        assert (result.ip, result.user_agent, result.timestamp) == (None, None, None)


@pytest.mark.parametrize("field", ["ip", "user_agent"])
@pytest.mark.parametrize("value", [17, True, ["203.0.113.7"], {"v4": "203.0.113.7"}])
def test_attempt_details_that_are_not_strings_are_invalid(field: str, value: object) -> None:
    rejected(run(native_document(**{field: value})), INVALID_EVENT, field)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"event_id": DROP}, ["event_id"]),
        ({"event_id": ""}, ["event_id"]),
        ({"event_id": None}, ["event_id"]),
        ({"event_id": 17}, ["event_id"]),
        ({"type": DROP}, ["type"]),
        ({"type": "signup"}, ["type", "signup"]),
        ({"type": "LOGIN"}, ["type"]),
        ({"type": ["login"]}, ["type"]),
        ({"type": "login", "success": DROP}, ["success"]),
        ({"type": "login", "success": "true"}, ["success"]),
        ({"type": "login", "success": 1}, ["success"]),
        ({"type": "login", "success": None}, ["success"]),
        ({"user_id": DROP}, ["user_id"]),
        ({"user_id": ""}, ["user_id"]),
        ({"user_id": None}, ["user_id"]),
        ({"user_id": True}, ["user_id"]),
        ({"user_id": False}, ["user_id"]),
        ({"user_id": ["u-1"]}, ["user_id"]),
        ({"user_id": {"id": "u-1"}}, ["user_id"]),
        ({"user_id": 1.5}, ["user_id"]),
        ({"user_id": "a" * (MAX_USER_ID_LENGTH + 1)}, ["user_id", "256"]),
        ({"user_id": "🙂" * (MAX_USER_ID_LENGTH + 1)}, ["user_id", "256"]),
    ],
)
def test_native_invalid_events(fields: dict[str, Any], words: list[str]) -> None:
    rejected(run(native_document(**fields)), INVALID_EVENT, *words)


@pytest.mark.parametrize("document", [[], [native_document()], "login", 42, None, True])
def test_json_that_is_not_an_object_is_an_invalid_event(document: Any) -> None:
    rejected(run(document), INVALID_EVENT, "object")


@pytest.mark.parametrize(
    "value",
    [b"{", b"not json", b'{"event_id": "a",}', b"{'a': 1}", b"NaN", b'{"a": 1e400}', b"\x00"],
)
def test_bad_json_is_invalid_json(value: bytes) -> None:
    rejected(decode(value, (), TYPES), INVALID_JSON, "JSON")


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe{}", b'{"event_id": "\xc3\x28"}', b"\x80", b'{"user_id": "\xed\xa0\x80"}'],
)
def test_invalid_utf8_is_invalid_json(value: bytes) -> None:
    rejected(decode(value, (), TYPES), INVALID_JSON, "UTF-8")


@pytest.mark.parametrize("value", [None, b"", b" ", b"\n\t\r ", b"   \n"])
def test_empty_values(value: bytes | None) -> None:
    rejected(decode(value, (), TYPES), EMPTY_VALUE)


def test_whitespace_around_json_is_fine() -> None:
    assert isinstance(
        decode(b"\n  " + orjson.dumps(native_document()) + b"  \n", (), TYPES), AuthEvent
    )


def test_unrelated_headers_do_not_change_the_shape() -> None:
    headers = (("traceparent", b"00-abc"), ("content-type", b"application/json"))
    assert isinstance(run(native_document(), headers), AuthEvent)


# CloudEvents, structured mode ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ce_type", "action"),
    [
        ("com.example.auth.login.succeeded", ActionType.LOGIN_SUCCESS),
        ("com.example.auth.login.failed", ActionType.LOGIN_FAILURE),
        ("com.example.auth.logout", ActionType.LOGOUT),
        ("login.succeeded", ActionType.LOGIN_SUCCESS),
        ("logout", ActionType.LOGOUT),
    ],
)
def test_structured_cloudevent(ce_type: str, action: ActionType) -> None:
    result = run(structured_cloudevent(type=ce_type))
    assert isinstance(result, AuthEvent)
    assert result.action is action
    assert result.user_id == "u-9"
    assert "evt-9" in result.key
    assert "//auth.example.com/eu" in result.key
    assert result.key == cloudevent_key("//auth.example.com/eu", "evt-9")


def test_structured_key_distinguishes_sources_with_the_same_id() -> None:
    first = run(structured_cloudevent(source="a"))
    second = run(structured_cloudevent(source="b"))
    assert isinstance(first, AuthEvent)
    assert isinstance(second, AuthEvent)
    assert first.key != second.key


def test_structured_integer_user_id_and_no_time() -> None:
    result = run(structured_cloudevent(time=DROP, data={"user_id": 77}))
    assert isinstance(result, AuthEvent)
    assert result.user_id == "77"
    assert result.timestamp is None


def test_structured_attempt_details_come_from_data_and_time() -> None:
    result = run(
        structured_cloudevent(
            ip="198.51.100.1",  # an extension attribute, not the attempt's address
            data={"user_id": "u-9", "ip": "203.0.113.7", "user_agent": "okhttp/4"},
        )
    )
    assert isinstance(result, AuthEvent)
    assert (result.ip, result.user_agent, result.timestamp) == (
        "203.0.113.7",
        "okhttp/4",
        1795176000.0,
    )


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"type": "com.example.auth.password.changed"}, ["password.changed"]),
        ({"type": DROP}, ["type"]),
        ({"type": ""}, ["type"]),
        ({"id": DROP}, ["id"]),
        ({"id": ""}, ["id"]),
        ({"id": 5}, ["id"]),
        ({"source": DROP}, ["source"]),
        ({"source": ""}, ["source"]),
        ({"specversion": "0.3"}, ["specversion", "0.3"]),
        ({"specversion": "2.0"}, ["specversion"]),
        ({"specversion": 1.0}, ["specversion"]),
        ({"specversion": None}, ["specversion"]),
        ({"data": DROP}, ["data"]),
        ({"data": None}, ["data"]),
        ({"data": "u-9"}, ["data"]),
        ({"data": ["u-9"]}, ["data"]),
        ({"data": {}}, ["user_id"]),
        ({"data": {"user_id": ""}}, ["user_id"]),
        ({"data": {"user_id": True}}, ["user_id"]),
        ({"data": {"user_id": "x" * 257}}, ["user_id"]),
        ({"time": "not a time"}, ["time"]),
        ({"time": None}, ["time"]),
        ({"time": 1795176000}, ["time"]),
        ({"data": {"user_id": "u-9", "ip": 7}}, ["data.ip"]),
        ({"data": {"user_id": "u-9", "user_agent": ["x"]}}, ["data.user_agent"]),
    ],
)
def test_structured_invalid(fields: dict[str, Any], words: list[str]) -> None:
    rejected(run(structured_cloudevent(**fields)), INVALID_EVENT, *words)


# CloudEvents, binary mode ------------------------------------------------------------


def ce_headers(**overrides: bytes | None) -> tuple[tuple[str, bytes], ...]:
    headers: dict[str, bytes | None] = {
        "ce_specversion": b"1.0",
        "ce_id": b"bin-1",
        "ce_source": b"/auth/us",
        "ce_type": b"com.example.auth.login.succeeded",
        "ce_time": b"2026-11-20T12:00:00Z",
        "content-type": b"application/json",
    }
    headers.update({f"ce_{name}": value for name, value in overrides.items()})
    return tuple((name, value) for name, value in headers.items() if value is not None)


def test_binary_cloudevent() -> None:
    result = decode(b'{"user_id": "u-bin"}', ce_headers(), TYPES)
    assert result == AuthEvent(
        cloudevent_key("/auth/us", "bin-1"),
        "u-bin",
        ActionType.LOGIN_SUCCESS,
        timestamp=1795176000.0,
    )
    assert "bin-1" in result.key


def test_binary_attempt_details_come_from_data_and_the_time_header() -> None:
    value = b'{"user_id": "u-bin", "ip": "203.0.113.9", "user_agent": "ios/17"}'
    result = decode(value, ce_headers(time=b"2026-11-20T12:00:01.5Z"), TYPES)
    assert isinstance(result, AuthEvent)
    assert (result.ip, result.user_agent, result.timestamp) == (
        "203.0.113.9",
        "ios/17",
        1795176001.5,
    )
    untimed = decode(b'{"user_id": "u-bin"}', ce_headers(time=None), TYPES)
    assert isinstance(untimed, AuthEvent)
    assert untimed.timestamp is None


def test_binary_cloudevent_takes_precedence_over_the_value_shape() -> None:
    """With ce_ headers the value is `data`, even if it looks like a native event."""
    result = decode(
        orjson.dumps(native_document(user_id="from-data")), ce_headers(type=b"x.logout"), TYPES
    )
    assert isinstance(result, AuthEvent)
    assert result.action is ActionType.LOGOUT
    assert result.user_id == "from-data"
    assert result.key == cloudevent_key("/auth/us", "bin-1")


def test_binary_cloudevent_with_unicode_attributes() -> None:
    headers = ce_headers(id="ид-1".encode(), source="/认证".encode())
    result = decode(b'{"user_id": 5}', headers, TYPES)
    assert isinstance(result, AuthEvent)
    assert result[:3] == (cloudevent_key("/认证", "ид-1"), "5", ActionType.LOGIN_SUCCESS)


@pytest.mark.parametrize(
    ("overrides", "value", "reason", "words"),
    [
        ({"id": None}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_id"]),
        ({"id": b""}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_id"]),
        ({"source": None}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_source"]),
        ({"type": None}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_type"]),
        ({"type": b"com.example.signup"}, b'{"user_id": "u"}', INVALID_EVENT, ["signup"]),
        ({"specversion": b"0.3"}, b'{"user_id": "u"}', INVALID_EVENT, ["specversion"]),
        ({"specversion": b""}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_specversion"]),
        ({"id": b"\xff"}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_id", "UTF-8"]),
        ({}, b'{"user_id": ""}', INVALID_EVENT, ["user_id"]),
        ({}, b'{"other": 1}', INVALID_EVENT, ["user_id"]),
        ({}, b'["u"]', INVALID_EVENT, ["object"]),
        ({}, b"{", INVALID_JSON, ["JSON"]),
        ({}, b"\xff", INVALID_JSON, ["UTF-8"]),
        ({}, None, EMPTY_VALUE, []),
        ({}, b"  ", EMPTY_VALUE, []),
        ({"time": b"yesterday"}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_time"]),
        ({"time": b"\xff"}, b'{"user_id": "u"}', INVALID_EVENT, ["ce_time", "UTF-8"]),
        ({}, b'{"user_id": "u", "ip": 1}', INVALID_EVENT, ["ip"]),
    ],
)
def test_binary_invalid(
    overrides: dict[str, bytes | None], value: bytes | None, reason: str, words: list[str]
) -> None:
    rejected(decode(value, ce_headers(**overrides), TYPES), reason, *words)


# Configurable suffixes -----------------------------------------------------------------


def test_custom_suffixes() -> None:
    types = CloudEventTypes(login_success="signin.ok", login_failure="signin.denied", logout="bye")
    expected = {
        "acme.signin.ok": ActionType.LOGIN_SUCCESS,
        "acme.signin.denied": ActionType.LOGIN_FAILURE,
        "acme.bye": ActionType.LOGOUT,
    }
    for ce_type, action in expected.items():
        result = decode(orjson.dumps(structured_cloudevent(type=ce_type)), (), types)
        assert isinstance(result, AuthEvent)
        assert result.action is action
        binary = decode(b'{"user_id": "u"}', ce_headers(type=ce_type.encode()), types)
        assert isinstance(binary, AuthEvent)
        assert binary.action is action
    # The default suffixes no longer match.
    rejected(
        decode(orjson.dumps(structured_cloudevent(type="x.login.succeeded")), (), types),
        INVALID_EVENT,
    )


def test_suffix_must_be_at_the_end() -> None:
    rejected(run(structured_cloudevent(type="com.example.logout.requested")), INVALID_EVENT)
    rejected(run(structured_cloudevent(type="login.succeeded.v2")), INVALID_EVENT)


# Decode never raises -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["event_id", "type", "success", "user_id", "occurred_at", "specversion", "id", "source",
     "data", "time"]
)  # fmt: skip
documents = st.dictionaries(field_names, json_values | st.sampled_from(["login", "logout", "1.0"]))
header_names = st.sampled_from(
    ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type", "x-other"]
) | st.text(max_size=12)
headers = st.lists(
    st.tuples(header_names, st.binary(max_size=20) | st.sampled_from([b"1.0", b"logout"])),
    max_size=6,
).map(tuple)


def check(result: AuthEvent | Invalid) -> None:
    if isinstance(result, Invalid):
        assert result.reason in REASONS
        assert result.detail
    else:
        assert isinstance(result, AuthEvent)
        assert result.key
        assert 0 < len(result.user_id) <= MAX_USER_ID_LENGTH or result.user_id.lstrip("-").isdigit()
        assert isinstance(result.action, ActionType)


@settings(max_examples=100, deadline=None)
@given(value=st.none() | st.binary(max_size=200), headers=headers)
def test_decode_never_raises_on_arbitrary_bytes(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...]
) -> None:
    check(decode(value, headers, TYPES))


@settings(max_examples=60, deadline=None)
@given(document=documents | json_values, headers=headers)
def test_decode_never_raises_on_arbitrary_json(
    document: Any, headers: tuple[tuple[str, bytes], ...]
) -> None:
    # The stdlib encoder: it also writes integers beyond 64 bits and escaped lone surrogates.
    check(decode(json.dumps(document).encode(), headers, TYPES))


@settings(max_examples=100, deadline=None)
@given(
    event_id=st.text(min_size=1),
    user_id=st.text(min_size=1, max_size=MAX_USER_ID_LENGTH),
    success=st.booleans(),
)
def test_any_well_formed_native_login_is_accepted_verbatim(
    event_id: str, user_id: str, success: bool
) -> None:
    result = run({"event_id": event_id, "type": "login", "success": success, "user_id": user_id})
    expected = ActionType.LOGIN_SUCCESS if success else ActionType.LOGIN_FAILURE
    assert result == AuthEvent(event_id, user_id, expected)


def test_cloudevent_keys_of_different_pairs_never_collide() -> None:
    """A URI source may hold a `#`: ("a#b", "c") and ("a", "b#c") are different events,
    and one must not be dropped as a duplicate of the other."""
    assert cloudevent_key("a#b", "c") != cloudevent_key("a", "b#c")
    assert cloudevent_key("a%23b", "c") != cloudevent_key("a#b", "c")
    assert cloudevent_key("//auth.example.com/eu", "evt-9") == "//auth.example.com/eu#evt-9"


@settings(max_examples=100, deadline=None)
@given(
    first=st.tuples(st.text(alphabet="ab#%23", min_size=1), st.text(alphabet="ab#%23", min_size=1)),
    second=st.tuples(
        st.text(alphabet="ab#%23", min_size=1), st.text(alphabet="ab#%23", min_size=1)
    ),
)
def test_cloudevent_key_is_injective(first: tuple[str, str], second: tuple[str, str]) -> None:
    same_key = cloudevent_key(*first) == cloudevent_key(*second)
    assert same_key == (first == second)
    assert first[1] in cloudevent_key(*first)


def test_keys_longer_than_a_header_can_carry_are_invalid() -> None:
    rejected(run(native_document(event_id="x" * 1025)), INVALID_EVENT, "longer than 1024")
    assert isinstance(run(native_document(event_id="x" * 1024)), AuthEvent)
