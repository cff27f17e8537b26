"""`forwarder status`: the consumer group as the brokers see it, without Prometheus.

Its state and members (client id, host, the partitions each owns), and per source
partition the committed offset, the high watermark and the lag between them; then the
dead-letter topic's size. It reads the group's description and committed offsets from
the coordinator and never joins the group, so asking does not cause a rebalance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.errors import KafkaError

from forwarder.commands.dlq import describe_error, iso_time
from forwarder.config import KafkaSettings, KafkaToolSettings
from forwarder.kafka.reader import Extent, GroupDescription, KafkaReader, Member, ReadError
from forwarder.runtime import install_signal_handlers

EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_WATCH_SECONDS = 2.0
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(commands: Any) -> argparse.ArgumentParser:
    text = "show the consumer group: members, their partitions, committed offsets and lag"
    parser: argparse.ArgumentParser = commands.add_parser(
        "status", help=text, description=text + "."
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--watch",
        nargs="?",
        const=DEFAULT_WATCH_SECONDS,
        type=_seconds,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until interrupted",
    )
    return parser


@dataclass(frozen=True, slots=True)
class PartitionState:
    topic: str
    partition: int
    owner: str | None
    committed: int | None
    end: int
    lag: int


@dataclass(frozen=True, slots=True)
class GroupStatus:
    group: GroupDescription
    partitions: tuple[PartitionState, ...]
    dead_letter_topic: str
    dead_letters: int | None
    """Records in the dead-letter topic; None when it does not exist (yet)."""

    @property
    def total_lag(self) -> int:
        return sum(row.lag for row in self.partitions)

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group.group_id,
            "state": self.group.state,
            "protocol": self.group.protocol,
            "members": [
                {
                    "member_id": member.member_id,
                    "client_id": member.client_id,
                    "host": member.host,
                    "partitions": None
                    if member.partitions is None
                    else [{"topic": t, "partition": p} for t, p in member.partitions],
                }
                for member in self.group.members
            ],
            "partitions": [
                {
                    "topic": row.topic,
                    "partition": row.partition,
                    "owner": row.owner,
                    "committed": row.committed,
                    "end": row.end,
                    "lag": row.lag,
                }
                for row in self.partitions
            ],
            "total_lag": self.total_lag,
            "dead_letter_topic": self.dead_letter_topic,
            "dead_letters": self.dead_letters,
        }

    def lines(self) -> Iterator[str]:
        group = self.group
        yield f"group {group.group_id}: {group.state}, {len(group.members)} member(s)"
        yield from _table(
            ["member", "client id", "host", "partitions"],
            [
                [member.member_id, member.client_id or "-", member.host or "-", _owned(member)]
                for member in group.members
            ],
        )
        yield ""
        yield from _table(
            ["partition", "committed", "end", "lag", "owner"],
            [
                [
                    f"{row.topic}/{row.partition}",
                    "-" if row.committed is None else str(row.committed),
                    str(row.end),
                    str(row.lag),
                    row.owner or "-",
                ]
                for row in self.partitions
            ],
        )
        yield f"total lag {self.total_lag}"
        dead_letters = "does not exist" if self.dead_letters is None else self.dead_letters
        yield f"dead-letter topic {self.dead_letter_topic}: {dead_letters}"


def _owned(member: Member) -> str:
    if member.partitions is None:
        return "not reported by the broker"
    return ", ".join(f"{topic}/{partition}" for topic, partition in member.partitions) or "none"


def _table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    if not rows:
        return
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def group_status(
    group: GroupDescription,
    extents: Mapping[str, Mapping[int, Extent]],
    committed: Mapping[str, Mapping[int, int]],
    dead_letter_topic: str,
    dead_letter_extents: Mapping[int, Extent] | None,
) -> GroupStatus:
    """Lag is the high watermark minus the committed offset; for a partition the group
    never committed, minus the oldest stored offset (what a new group reads from the
    earliest would still have to read)."""
    owners = {
        partition: member.member_id
        for member in group.members
        for partition in member.partitions or ()
    }
    rows = []
    for topic in sorted(extents):
        for partition, extent in sorted(extents[topic].items()):
            done = committed.get(topic, {}).get(partition)
            rows.append(
                PartitionState(
                    topic=topic,
                    partition=partition,
                    owner=owners.get((topic, partition)),
                    committed=done,
                    end=extent.end,
                    lag=max(0, extent.end - (extent.start if done is None else done)),
                )
            )
    return GroupStatus(
        group=group,
        partitions=tuple(rows),
        dead_letter_topic=dead_letter_topic,
        dead_letters=None
        if dead_letter_extents is None
        else sum(extent.records for extent in dead_letter_extents.values()),
    )


async def collect(reader: KafkaReader, kafka: KafkaSettings) -> GroupStatus:
    group = await reader.describe_group(kafka.group_id)
    extents = {topic: await reader.extents(topic) for topic in kafka.topics}
    committed = {
        topic: await reader.committed(kafka.group_id, topic, list(extents[topic]))
        for topic in kafka.topics
    }
    try:
        dead_letters: dict[int, Extent] | None = await reader.extents(kafka.dead_letter_topic)
    except ReadError:
        dead_letters = None
    return group_status(group, extents, committed, kafka.dead_letter_topic, dead_letters)


def _show(status: GroupStatus, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(status.as_json()).decode() + "\n")
    else:
        print("\n".join(status.lines()))
    sys.stdout.flush()


async def run(settings: KafkaToolSettings, args: argparse.Namespace) -> int:
    """Once, or with --watch every few seconds until SIGINT/SIGTERM (exit 0). In --watch
    a failed refresh is shown and the next one tried; once, it exits 1."""
    try:
        async with KafkaReader(settings.kafka) as reader:
            if args.watch is None:
                _show(await collect(reader, settings.kafka), args.json)
                return EXIT_OK
            await _watch(reader, settings.kafka, args.watch, args.json)
            return EXIT_OK
    except (KafkaError, ReadError) as exc:
        print(f"forwarder status: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED


async def _watch(reader: KafkaReader, kafka: KafkaSettings, every: float, as_json: bool) -> None:
    terminal = sys.stdout.isatty() and not as_json
    stop = asyncio.Event()
    install_signal_handlers(stop)
    while not stop.is_set():
        try:
            status = await collect(reader, kafka)
        except (KafkaError, ReadError) as exc:
            print(f"forwarder status: {describe_error(exc)}", file=sys.stderr)
        else:
            if terminal:
                sys.stdout.write(_CLEAR_SCREEN)
                print(f"{iso_time(int(time.time() * 1000))}, every {every:g}s")
            _show(status, as_json)
            if not terminal and not as_json:
                print()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
