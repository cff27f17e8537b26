"""`forwarder dlq stats | show | replay`: read the dead-letter topic, and send dead letters
back where they came from once their cause is fixed.

`stats` and `show` read without joining a group or committing, so they can run at any
time next to the forwarder. `replay` reads as a consumer group of its own,
`<group id>.replay`, and commits as it publishes: the committed offset is where the
next replay starts, which is what makes a replay resumable and keeps it from sending a
dead letter twice. A dead letter the selection passes over is committed past as well
(the next run replays only what arrived since); `--from-beginning` starts over on
purpose. A replay stops at the end offsets it saw when it started, so dead letters that
the replayed records produce again wait for the next run instead of looping.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import heapq
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    UnknownError,
    UnsupportedVersionError,
)

from forwarder import __version__
from forwarder.config import KafkaToolSettings
from forwarder.core.dead_letters import (
    REASONS,
    REJECTED,
    DeadLetter,
    Selection,
    Unreadable,
    parse_moment,
    read_dead_letter,
)
from forwarder.core.offsets import PartitionOffsets
from forwarder.kafka.options import consumer_options, producer_options
from forwarder.kafka.reader import KafkaReader, ReadError
from forwarder.kafka.records import to_record
from forwarder.runtime import install_signal_handlers

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_INTERRUPTED = 130
POLL_TIMEOUT_MS = 200
PROGRESS_INTERVAL = 5.0
SHOW_DETAIL_CHARS = 80
MIN_VALUE_CHARS = 24

# The command line -----------------------------------------------------------------------


def _moment(text: str) -> int:
    try:
        return int(parse_moment(text, time.time()) * 1000)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return number


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        default=[],
        metavar="REASON",
        help=f"only dead letters with this reason (repeatable): {', '.join(REASONS)}",
    )
    parser.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="only dead letters written at or after TIME: ISO-8601 (UTC unless it says"
        " otherwise) or an age such as 30m, 2h, 1d",
    )
    parser.add_argument(
        "--until", type=_moment, metavar="TIME", help="only dead letters written before TIME"
    )


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    """`dlq` and its subcommands on `commands` (argparse subparsers); returns the parsers
    that still need the configuration options (the caller owns those)."""
    text = "inspect and replay the dead letters in FORWARDER_DLQ_TOPIC"
    dlq = commands.add_parser("dlq", help=text, description=text)
    subcommands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    stats = subcommands.add_parser(
        "stats",
        help="count the dead letters by reason, source topic and HTTP status",
        description="Count the dead letters by reason, source topic and HTTP status (for"
        " rejected), with the oldest and newest; reads without joining a group.",
    )
    show = subcommands.add_parser(
        "show",
        help="print dead letters, one a line",
        description="Print dead letters, one a line (or a JSON object a line with --json):"
        " time, reason, detail, source topic/partition/offset, attempts, key and value.",
    )
    replay = subcommands.add_parser(
        "replay",
        help="publish dead letters back to their source topic",
        description="Publish the selected dead letters back to the topic and partition they"
        " came from: key, value and headers as they were, without the x-forwarder-* headers."
        " Reads as the consumer group '<FORWARDER_KAFKA_GROUP_ID>.replay' and commits as it"
        " goes, so a second run replays only what arrived since; stops at the end offsets"
        " seen at its start.",
    )
    for parser in (stats, show, replay):
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    for parser in (show, replay):
        _add_selection(parser)
    show.add_argument(
        "--limit", type=_positive, metavar="N", help="only the N most recent matching ones"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="count what would be replayed; write nothing"
    )
    replay.add_argument(
        "--to-topic",
        metavar="TOPIC",
        help="publish to TOPIC (partitioned by key) instead of each record's source topic",
    )
    replay.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest dead letter, not where the last replay stopped",
    )
    return [stats, show, replay]


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(frozenset(args.reason), args.since, args.until)


async def run(settings: KafkaToolSettings, args: argparse.Namespace) -> int:
    """Run one `dlq` subcommand; the exit code: 0 done, 1 failed, 2 bad arguments,
    130 interrupted."""
    try:
        selection = _selection(args) if args.dlq_command != "stats" else Selection()
    except ValueError as exc:
        print(f"forwarder dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    try:
        if args.dlq_command == "stats":
            return await _stats(settings, args.json)
        if args.dlq_command == "show":
            return await _show(settings, selection, args.limit, args.json)
        if args.to_topic == settings.kafka.dead_letter_topic:
            print(
                f"forwarder dlq replay: --to-topic {args.to_topic} is the dead-letter topic",
                file=sys.stderr,
            )
            return EXIT_BAD_ARGUMENTS
        options = ReplayOptions(
            selection, args.to_topic, args.from_beginning, args.dry_run, args.json
        )
        return await _replay(settings, options)
    except (KafkaError, ReadError) as exc:
        print(f"forwarder dlq {args.dlq_command}: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        # `forwarder dlq show | head`: the reader has all it wanted. Point stdout at
        # /dev/null so that flushing it at exit does not fail a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def describe_error(exc: BaseException) -> str:
    """The error's class and message, once each (aiokafka's messages often repeat the class)."""
    text = str(exc)
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if text.startswith(f"{name}: ") else f"{name}: {text}"


# Presentation ---------------------------------------------------------------------------


def iso_time(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bytes_fields(name: str, data: bytes | None) -> dict[str, str | None]:
    """`name` as text when it is UTF-8, else `name_base64`: JSON cannot carry raw bytes."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode()}


def _text(data: bytes | None) -> str:
    return "-" if data is None else data.decode("utf-8", "backslashreplace")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def dead_letter_json(item: DeadLetter | Unreadable) -> dict[str, Any]:
    record = item.record
    entry: dict[str, Any] = {
        "time": iso_time(record.timestamp_ms),
        "timestamp_ms": record.timestamp_ms,
        "dlq_partition": record.partition,
        "dlq_offset": record.offset,
    }
    if isinstance(item, DeadLetter):
        entry |= {
            "reason": item.reason,
            "detail": item.detail,
            "source_topic": item.source_topic,
            "source_partition": item.source_partition,
            "source_offset": item.source_offset,
            "attempts": item.attempts,
            "http_status": item.http_status,
            **_bytes_fields("response_body", item.response_body),
        }
        headers = item.replay_headers
    else:
        entry |= {"reason": None, "problem": item.problem}
        headers = record.headers
    entry |= _bytes_fields("key", record.key) | _bytes_fields("value", record.value)
    entry["headers"] = [
        [name, value.decode("utf-8", "backslashreplace")] for name, value in headers
    ]
    return entry


def dead_letter_line(item: DeadLetter | Unreadable, width: int | None) -> str:
    """One line for a person; with a terminal `width`, the detail and the value are cut
    to fit (`--json` shows them whole)."""
    record = item.record
    if isinstance(item, DeadLetter):
        status = f" status={item.http_status}" if item.http_status is not None else ""
        head = (
            f"{iso_time(record.timestamp_ms)} {item.reason}"
            f" {item.source_topic}/{item.source_partition}@{item.source_offset}"
            f" attempts={item.attempts}{status}"
        )
        detail = item.detail
    else:
        head = f"{iso_time(record.timestamp_ms)} unreadable dlq/{record.partition}@{record.offset}"
        detail = item.problem
    key = _text(record.key)
    value = _text(record.value)
    if width is not None:
        detail = _clip(detail, SHOW_DETAIL_CHARS)
        key = _clip(key, SHOW_DETAIL_CHARS)
    line = f"{head} key={key} detail={orjson.dumps(detail).decode()} value="
    if width is not None:
        value = _clip(value, max(MIN_VALUE_CHARS, width - len(line)))
    return line + value


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common()) or "none"


def _write_json(stream: TextIO, value: Any) -> None:
    stream.write(orjson.dumps(value).decode() + "\n")


# stats ---------------------------------------------------------------------------------


@dataclass
class DeadLetterStats:
    """Counts over a dead-letter topic, built one record at a time."""

    total: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_source_topic: Counter[str] = field(default_factory=Counter)
    rejected_by_status: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, item: DeadLetter | Unreadable) -> None:
        self.total += 1
        moment = item.record.timestamp_ms
        self.oldest_ms = moment if self.oldest_ms is None else min(self.oldest_ms, moment)
        self.newest_ms = moment if self.newest_ms is None else max(self.newest_ms, moment)
        if isinstance(item, Unreadable):
            self.unreadable += 1
            return
        self.by_reason[item.reason] += 1
        self.by_source_topic[item.source_topic] += 1
        if item.reason == REJECTED:
            status = "none" if item.http_status is None else str(item.http_status)
            self.rejected_by_status[status] += 1

    def as_json(self, topic: str) -> dict[str, Any]:
        return {
            "topic": topic,
            "total": self.total,
            "by_reason": dict(self.by_reason.most_common()),
            "by_source_topic": dict(self.by_source_topic.most_common()),
            "rejected_by_http_status": dict(self.rejected_by_status.most_common()),
            "unreadable": self.unreadable,
            "oldest": None if self.oldest_ms is None else iso_time(self.oldest_ms),
            "newest": None if self.newest_ms is None else iso_time(self.newest_ms),
        }

    def lines(self, topic: str) -> Iterator[str]:
        yield f"{topic}: {self.total} dead letters"
        if self.oldest_ms is not None and self.newest_ms is not None:
            yield f"  oldest {iso_time(self.oldest_ms)}, newest {iso_time(self.newest_ms)}"
        yield f"  by reason:          {_counts(self.by_reason)}"
        yield f"  by source topic:    {_counts(self.by_source_topic)}"
        yield f"  rejected by status: {_counts(self.rejected_by_status)}"
        if self.unreadable:
            yield f"  unreadable (no x-forwarder-* headers): {self.unreadable}"


async def _stats(settings: KafkaToolSettings, as_json: bool) -> int:
    topic = settings.kafka.dead_letter_topic
    stats = DeadLetterStats()
    async with KafkaReader(settings.kafka) as reader:
        extents = await reader.extents(topic)
        ranges = {p: (extent.start, extent.end) for p, extent in extents.items()}
        async for record in reader.read(topic, ranges):
            stats.add(read_dead_letter(record))
    if as_json:
        _write_json(sys.stdout, stats.as_json(topic))
    else:
        print("\n".join(stats.lines(topic)))
    return EXIT_OK


# show ----------------------------------------------------------------------------------


class NewestFirst:
    """Keeps the `limit` most recent items by (time, partition, offset) without holding
    the whole topic in memory."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._heap: list[tuple[tuple[int, int, int], DeadLetter | Unreadable]] = []

    def add(self, item: DeadLetter | Unreadable) -> None:
        record = item.record
        entry = ((record.timestamp_ms, record.partition, record.offset), item)
        if len(self._heap) < self._limit:
            heapq.heappush(self._heap, entry)
        elif entry[0] > self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def oldest_first(self) -> list[DeadLetter | Unreadable]:
        return [item for _, item in sorted(self._heap, key=lambda entry: entry[0])]


async def _show(
    settings: KafkaToolSettings, selection: Selection, limit: int | None, as_json: bool
) -> int:
    """Without `limit`, lines stream in the dead-letter topic's order; with it, the newest
    `limit` are printed oldest first."""
    topic = settings.kafka.dead_letter_topic
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and not as_json else None
    newest = NewestFirst(limit) if limit is not None else None

    def emit(item: DeadLetter | Unreadable) -> None:
        if as_json:
            _write_json(sys.stdout, dead_letter_json(item))
        else:
            print(dead_letter_line(item, width))

    async with KafkaReader(settings.kafka) as reader:
        extents = await reader.extents(topic)
        ranges = {p: (extent.start, extent.end) for p, extent in extents.items()}
        async for record in reader.read(topic, ranges):
            item = read_dead_letter(record)
            if not selection.matches(item):
                continue
            if newest is None:
                emit(item)
            else:
                newest.add(item)
    for item in newest.oldest_first() if newest is not None else ():
        emit(item)
    return EXIT_OK


# replay --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    selection: Selection
    to_topic: str | None = None
    from_beginning: bool = False
    dry_run: bool = False
    as_json: bool = False


def replay_target(
    item: DeadLetter | Unreadable, selection: Selection, to_topic: str | None
) -> tuple[str, int | None] | None:
    """Where a dead letter goes back to: (topic, partition), the partition None when the
    producer's partitioner picks it by key; None when it is not replayed. A record goes
    back to the very partition it came from, unless `to_topic` names another topic."""
    if not isinstance(item, DeadLetter) or not selection.matches(item):
        return None
    if to_topic is not None:
        return to_topic, None
    return item.source_topic, item.source_partition


@dataclass
class ReplayTally:
    """What a replay (or a dry run) did with each dead letter it read."""

    read: int = 0
    replayed_by_reason: Counter[str] = field(default_factory=Counter)
    replayed_by_topic: Counter[str] = field(default_factory=Counter)
    passed_over: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    failed: int = 0
    published_not_committed: int = 0

    @property
    def replayed(self) -> int:
        return sum(self.replayed_by_reason.values())

    def skip(self, item: DeadLetter | Unreadable) -> None:
        if isinstance(item, Unreadable):
            self.unreadable += 1
        else:
            self.passed_over[item.reason] += 1

    def replay(self, item: DeadLetter, topic: str) -> None:
        self.replayed_by_reason[item.reason] += 1
        self.replayed_by_topic[topic] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "replayed": self.replayed,
            "replayed_by_reason": dict(self.replayed_by_reason.most_common()),
            "replayed_by_topic": dict(self.replayed_by_topic.most_common()),
            "passed_over_by_reason": dict(self.passed_over.most_common()),
            "unreadable": self.unreadable,
            "failed": self.failed,
            "published_not_committed": self.published_not_committed,
        }

    def lines(self, dry_run: bool) -> Iterator[str]:
        verb = "would replay" if dry_run else "replayed"
        yield f"  {verb} by reason:   {_counts(self.replayed_by_reason)}"
        yield f"  {verb} to topic:    {_counts(self.replayed_by_topic)}"
        yield f"  passed over (not selected): {_counts(self.passed_over)}"
        yield f"  skipped, unreadable (no x-forwarder-* headers): {self.unreadable}"
        if not dry_run:
            yield f"  failed: {self.failed}"
        if self.published_not_committed:
            yield (
                f"  published after the failed one but not committed: "
                f"{self.published_not_committed} (a re-run publishes them again)"
            )


@dataclass
class ReplayReport:
    topic: str
    group: str
    options: ReplayOptions
    tally: ReplayTally
    outcome: str = "done"
    error: str | None = None
    idempotent: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "dry_run": self.options.dry_run,
            "outcome": self.outcome,
            "error": self.error,
            "idempotent": self.idempotent,
            **self.tally.as_json(),
        }

    def lines(self) -> Iterator[str]:
        tally = self.tally
        if self.options.dry_run:
            yield (
                f"dry run: would replay {tally.replayed} of the {tally.read} dead letters"
                f" {self.topic} holds past group {self.group}'s position; nothing was written"
            )
        else:
            yield (
                f"replayed {tally.replayed} of {tally.read} dead letters read from {self.topic}"
                f" (group {self.group}): {self.outcome}"
            )
        yield from tally.lines(self.options.dry_run)
        if self.error:
            yield f"error: {self.error}"


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def update(self, read: int, replayed: int) -> None: ...

    def finish(self) -> None: ...


class ProgressLine:
    """A plain line on a stream that is not a terminal (a log, a CI job), at most once an
    interval, so a long replay shows it is alive without flooding the log."""

    def __init__(
        self,
        stream: TextIO,
        interval: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._total = 0
        self._shown_at: float | None = None
        self._last = (0, 0)

    def start(self, total: int) -> None:
        self._total = total
        self._shown_at = self._clock()
        self._stream.write(f"replay: {total} dead letters to read\n")

    def update(self, read: int, replayed: int) -> None:
        self._last = (read, replayed)
        now = self._clock()
        if self._shown_at is not None and now - self._shown_at >= self._interval:
            self._shown_at = now
            self._write()

    def finish(self) -> None:
        if self._shown_at is not None:
            self._write()

    def _write(self) -> None:
        read, replayed = self._last
        self._stream.write(f"replay: read {read}/{self._total}, replayed {replayed}\n")
        self._stream.flush()


class ProgressBar:
    """rich's progress bar, on the terminal's stderr (stdout keeps the summary)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[replayed]} replayed"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task: Any = None

    def start(self, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("replay", total=total, replayed=0)

    def update(self, read: int, replayed: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=read, replayed=replayed)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()


class ReplayFailed(Exception):
    """The replay stopped on a record it could not publish (or a position it could not commit)."""


class _Refused(Exception):
    """Publishing cannot work for this record whatever the brokers say."""


@dataclass
class _Sent:
    partition: int
    offset: int
    item: DeadLetter
    topic: str
    result: asyncio.Future[Any]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._replay.partitions_revoked()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._replay.partitions_assigned(assigned)


class Replay:
    """Read the dead-letter topic as a group member, publish the selected dead letters,
    commit what is published, stop at `ends`.

    A batch is published, acknowledged and committed as a whole under `_lock`, and a
    rebalance waits for that lock: when partitions move to another replay, everything
    this one published from them is committed first, so the other carries on from there.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        topic: str,
        ends: dict[int, int],
        options: ReplayOptions,
        progress: Progress,
        stop: asyncio.Event,
    ) -> None:
        self.tally = ReplayTally()
        self._consumer = consumer
        self._producer = producer
        self._topic = topic
        self._ends = ends
        self._options = options
        self._progress = progress
        self._stop = stop
        self._lock = asyncio.Lock()
        self._generation = 0
        self._joined = False
        self._seen: set[int] = set()
        self._ledgers: dict[int, PartitionOffsets] = {}
        self._committed: dict[int, int] = {}
        self._partitions: dict[str, set[int]] = {}
        self._total: int | None = None

    async def partitions_revoked(self) -> None:
        async with self._lock:
            self._generation += 1

    async def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        """New partitions start paused: a batch that `getmany` hands out across the
        rebalance then cannot come from them, so it is dropped whole and the partitions
        are read from the position the assignment gave them (the committed offset)."""
        async with self._lock:
            self._generation += 1
            self._joined = True
            self._ledgers = {}
            self._consumer.pause(*assigned)
            fresh = [tp for tp in assigned if tp.partition not in self._seen]
            self._seen.update(tp.partition for tp in fresh)
            if self._options.from_beginning and fresh:
                await self._consumer.seek_to_beginning(*fresh)

    async def run(self) -> bool:
        """True when every assigned partition reached its end; False when interrupted."""
        consumer = self._consumer
        consumer.subscribe([self._topic], listener=_Listener(self))
        while not self._stop.is_set():
            if self._joined:
                if not consumer.assignment():
                    raise ReplayFailed(
                        "another replay holds every partition of the dead-letter topic in"
                        " this group; let it finish"
                    )
                if await self._finished(consumer.assignment()):
                    return True
                # No await between these two: a rebalance cannot slip in unnoticed.
                consumer.resume(*consumer.assignment())
            generation = self._generation
            batch = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
            async with self._lock:
                if batch and generation == self._generation:
                    await self._process(batch)
        return False

    async def _finished(self, assigned: frozenset[TopicPartition]) -> bool:
        positions = {tp.partition: await self._consumer.position(tp) for tp in assigned}
        if self._total is None:
            self._total = sum(
                max(0, self._ends.get(p, position) - position) for p, position in positions.items()
            )
            self._progress.start(self._total)
        return all(position >= self._ends.get(p, position) for p, position in positions.items())

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        sent: list[_Sent] = []
        failure: tuple[DeadLetter, BaseException] | None = None
        for tp, messages in sorted(batch.items()):
            ledger = self._ledgers.setdefault(tp.partition, PartitionOffsets())
            end = self._ends.get(tp.partition, -1)
            for message in messages:
                if message.offset >= end:
                    break
                self.tally.read += 1
                ledger.track(message.offset)
                item = read_dead_letter(to_record(message))
                target = replay_target(item, self._options.selection, self._options.to_topic)
                if target is None or not isinstance(item, DeadLetter):
                    self.tally.skip(item)
                    ledger.finish(message.offset)
                    continue
                try:
                    result = await self._publish(item, *target)
                except (KafkaError, _Refused) as exc:
                    self.tally.failed += 1
                    failure = (item, exc)
                    break
                sent.append(_Sent(tp.partition, message.offset, item, target[0], result))
            if failure is not None:
                break
        for entry in sent:
            try:
                await entry.result
            except KafkaError as exc:
                self.tally.failed += 1
                failure = failure or (entry.item, exc)
                continue
            self._ledgers[entry.partition].finish(entry.offset)
            self.tally.replay(entry.item, entry.topic)
        await self._commit()
        self._progress.update(self.tally.read, self.tally.replayed)
        if failure is not None:
            self.tally.published_not_committed = sum(
                1
                for entry in sent
                if entry.result.exception() is None
                and entry.offset >= (self._committed.get(entry.partition) or 0)
            )
            raise ReplayFailed(self._failure_text(*failure))

    async def _publish(self, item: DeadLetter, topic: str, partition: int | None) -> Any:
        if partition is not None:
            if topic not in self._partitions:
                self._partitions[topic] = set(await self._producer.partitions_for(topic))
            if partition not in self._partitions[topic]:
                count = len(self._partitions[topic])
                raise _Refused(f"topic {topic} has no partition {partition} (it has {count})")
        return await self._producer.send(
            topic,
            value=item.record.value,
            key=item.record.key,
            headers=list(item.replay_headers),
            partition=partition,
        )

    async def _commit(self) -> None:
        offsets = {
            partition: ledger.committable
            for partition, ledger in self._ledgers.items()
            if ledger.committable is not None
            and ledger.committable != self._committed.get(partition)
        }
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(self._topic, p): offset for p, offset in offsets.items()}
            )
        except KafkaError as exc:
            raise ReplayFailed(
                f"published dead letters but could not commit the replay position"
                f" ({describe_error(exc)}); a re-run publishes them again"
            ) from exc
        self._committed.update(offsets)

    def _failure_text(self, item: DeadLetter, exc: BaseException) -> str:
        record = item.record
        return (
            f"dead letter {record.topic}/{record.partition}@{record.offset} (reason"
            f" {item.reason}, from {item.source_topic}/{item.source_partition}"
            f"@{item.source_offset}) could not be published: {describe_error(exc)}."
            f" Everything before it is committed; a re-run starts with this record"
        )


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hold back a library's log lines about a failure this code reports itself."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


async def start_producer(options: dict[str, Any]) -> tuple[AIOKafkaProducer, bool]:
    """An idempotent producer (acks=all), so that the producer's own retries cannot write a
    record twice; where the brokers refuse one (no InitProducerId support, or no
    IdempotentWrite permission), a plain acks=all producer and a warning."""
    producer = AIOKafkaProducer(**options, enable_idempotence=True)
    try:
        with _quiet("aiokafka.producer.sender"):
            await producer.start()
    except (UnknownError, UnsupportedVersionError, ClusterAuthorizationFailedError) as exc:
        await producer.stop()
        print(
            "forwarder dlq replay: warning: the brokers refused an idempotent producer"
            f" ({describe_error(exc)}); publishing without idempotence: a send retried"
            " after a lost acknowledgement may be written twice",
            file=sys.stderr,
        )
    else:
        return producer, True
    producer = AIOKafkaProducer(**options)
    await producer.start()
    return producer, False


def replay_group(settings: KafkaToolSettings) -> str:
    return f"{settings.kafka.group_id}.replay"


async def _replay(settings: KafkaToolSettings, options: ReplayOptions) -> int:
    topic = settings.kafka.dead_letter_topic
    group = replay_group(settings)
    report = ReplayReport(topic, group, options, ReplayTally())
    async with KafkaReader(settings.kafka) as reader:
        extents = await reader.extents(topic)
        if options.dry_run:
            committed = (
                {}
                if options.from_beginning
                else await reader.committed(group, topic, list(extents))
            )
            ranges = {
                p: (max(extent.start, committed.get(p, extent.start)), extent.end)
                for p, extent in extents.items()
            }
            async for record in reader.read(topic, ranges):
                report.tally.read += 1
                item = read_dead_letter(record)
                target = replay_target(item, options.selection, options.to_topic)
                if target is None or not isinstance(item, DeadLetter):
                    report.tally.skip(item)
                else:
                    report.tally.replay(item, target[0])
            return _finish(report)
    ends = {p: extent.end for p, extent in extents.items()}
    consumer_kwargs = {
        **consumer_options(settings.kafka, group_id=group),
        "client_id": f"{settings.kafka.client_id}-replay/{__version__}",
        # A replay group without a commit has replayed nothing yet: start at the oldest.
        "auto_offset_reset": "earliest",
    }
    producer, report.idempotent = await start_producer(producer_options(settings.kafka))
    consumer = AIOKafkaConsumer(**consumer_kwargs)
    progress: Progress = ProgressBar() if sys.stderr.isatty() else ProgressLine(sys.stderr)
    stop = asyncio.Event()
    replay = Replay(consumer, producer, topic, ends, options, progress, stop)
    report.tally = replay.tally
    # SIGINT and SIGTERM end the replay between batches, after a commit, never mid-batch.
    install_signal_handlers(stop)
    try:
        await consumer.start()
        if not await replay.run():
            report.outcome = "interrupted"
    except ReplayFailed as exc:
        report.outcome, report.error = "failed", str(exc)
    except KafkaError as exc:
        report.outcome, report.error = "failed", describe_error(exc)
    finally:
        progress.finish()
        await consumer.stop()
        await producer.stop()
    return _finish(report)


def _finish(report: ReplayReport) -> int:
    if report.options.as_json:
        _write_json(sys.stdout, report.as_json())
    else:
        print("\n".join(report.lines()))
    if report.outcome == "failed":
        return EXIT_FAILED
    return EXIT_INTERRUPTED if report.outcome == "interrupted" else EXIT_OK
