"""`forwarder status` without a broker: a DescribeGroups answer decoded (assignments in the
consumer protocol's own encoding), and offsets turned into per-partition lag."""

from __future__ import annotations

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import GroupAuthorizationFailedError

from forwarder.commands.status import group_status
from forwarder.kafka.reader import Extent, GroupDescription, Member, decode_assignment, parse_group


def assignment(*partitions: tuple[str, list[int]]) -> bytes:
    encoded: bytes = ConsumerProtocolMemberAssignment(0, list(partitions), b"").encode()
    return encoded


def raw_group(*members: tuple[str, str, str, bytes], error: int = 0) -> tuple[object, ...]:
    """One group of a DescribeGroups v1-v2 response, as aiokafka hands it over."""
    return (
        error,
        "legiti-forwarder",
        "Stable",
        "consumer",
        "roundrobin",
        [(member_id, client, host, b"", data) for member_id, client, host, data in members],
    )


def test_assignments_are_decoded_from_the_consumer_protocol() -> None:
    data = assignment(("auth-events", [2, 0]), ("other", [1]))
    assert decode_assignment(data) == (("auth-events", 0), ("auth-events", 2), ("other", 1))


def test_an_empty_assignment_is_not_reported_rather_than_none_owned() -> None:
    assert decode_assignment(b"") is None


def test_a_described_group_with_its_members() -> None:
    group = parse_group(
        raw_group(
            ("f-1-a", "legiti-forwarder/1.0", "/10.0.0.5", assignment(("auth-events", [0]))),
            ("f-2-b", "legiti-forwarder/1.0", "/10.0.0.6", b""),
        )
    )
    assert group == GroupDescription(
        group_id="legiti-forwarder",
        state="Stable",
        protocol="roundrobin",
        members=(
            Member("f-1-a", "legiti-forwarder/1.0", "/10.0.0.5", (("auth-events", 0),)),
            Member("f-2-b", "legiti-forwarder/1.0", "/10.0.0.6", None),
        ),
    )


def test_a_group_error_is_raised_as_its_kafka_error() -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        parse_group(raw_group(error=GroupAuthorizationFailedError.errno))


def described(*members: Member) -> GroupDescription:
    return GroupDescription("legiti-forwarder", "Stable", "roundrobin", members)


def test_lag_is_the_end_minus_the_committed_offset_per_partition() -> None:
    group = described(
        Member("m-1", "c", "/h1", (("auth-events", 0),)),
        Member("m-2", "c", "/h2", (("auth-events", 1), ("auth-events", 2))),
    )
    status = group_status(
        group,
        {"auth-events": {0: Extent(0, 120), 1: Extent(10, 50), 2: Extent(0, 0)}},
        {"auth-events": {0: 115, 1: 50}},
        "auth-events.dlq",
        {0: Extent(3, 10)},
    )
    rows = [(r.partition, r.owner, r.committed, r.end, r.lag) for r in status.partitions]
    assert rows == [(0, "m-1", 115, 120, 5), (1, "m-2", 50, 50, 0), (2, "m-2", None, 0, 0)]
    assert status.total_lag == 5
    assert status.dead_letters == 7


def test_a_partition_never_committed_lags_by_what_is_stored() -> None:
    status = group_status(
        described(), {"auth-events": {0: Extent(40, 100)}}, {}, "auth-events.dlq", None
    )
    assert status.partitions[0].lag == 60
    assert status.partitions[0].committed is None
    assert status.dead_letters is None


def test_json_and_text_name_members_partitions_and_the_dead_letter_topic() -> None:
    status = group_status(
        described(
            Member("m-1", "legiti-forwarder/1.0", "/10.0.0.5", (("auth-events", 0),)),
            Member("m-2", "", "", None),
        ),
        {"auth-events": {0: Extent(0, 12), 1: Extent(0, 3)}},
        {"auth-events": {0: 12}},
        "auth-events.dlq",
        {0: Extent(0, 4)},
    )
    data = status.as_json()
    assert data["members"] == [
        {
            "member_id": "m-1",
            "client_id": "legiti-forwarder/1.0",
            "host": "/10.0.0.5",
            "partitions": [{"topic": "auth-events", "partition": 0}],
        },
        {"member_id": "m-2", "client_id": "", "host": "", "partitions": None},
    ]
    assert data["partitions"][1] == {
        "topic": "auth-events",
        "partition": 1,
        "owner": None,
        "committed": None,
        "end": 3,
        "lag": 3,
    }
    assert (data["total_lag"], data["dead_letter_topic"], data["dead_letters"]) == (
        3,
        "auth-events.dlq",
        4,
    )
    text = list(status.lines())
    assert text[0] == "group legiti-forwarder: Stable, 2 member(s)"
    assert any(
        line.split() == ["m-1", "legiti-forwarder/1.0", "/10.0.0.5", "auth-events/0"]
        for line in text
    )
    assert any("m-2" in line and "not reported by the broker" in line for line in text)
    assert any(line.split() == ["auth-events/0", "12", "12", "0", "m-1"] for line in text)
    assert any(line.split() == ["auth-events/1", "-", "3", "3", "-"] for line in text)
    assert text[-2:] == ["total lag 3", "dead-letter topic auth-events.dlq: 4"]
