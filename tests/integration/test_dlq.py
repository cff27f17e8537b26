"""`forwarder dlq` as an operator runs it, as a child process, against the real broker and a
forwarder that really dead-letters: stats and show, then a replay once the cause is fixed."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from forwarder.config import KafkaSettings, KafkaToolSettings, load
from forwarder.core.events import SourceRecord
from forwarder.kafka.reader import KafkaReader
from forwarder.sandbox.process import clean_environment
from forwarder.sandbox.settings import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS
from tests.conftest import wait_until
from tests.factories import native
from tests.integration.kafka_helpers import (
    committed,
    create_topic,
    produce,
    read_all,
    running,
    settings,
    unique,
)

BAD_USER = "u-bad"
CLI_TIMEOUT = 60.0


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout.strip(), f"no output; stderr:\n{self.stderr}"
        return orjson.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


def kafka_env(bootstrap: str, topic: str, **overrides: str) -> dict[str, str]:
    """What an operator's shell has: the Kafka settings only, no Legiti URL or token."""
    env = {
        "FORWARDER_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FORWARDER_KAFKA_TOPICS": topic,
        "FORWARDER_KAFKA_GROUP_ID": f"group-{topic}",
        "FORWARDER_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "FORWARDER_KAFKA_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_INTERVAL_MS),
        "FORWARDER_LOG_FORMAT": "console",
    }
    env.update({f"FORWARDER_{key.upper()}": value for key, value in overrides.items()})
    return env


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    return {**clean_environment(), **env}


async def forwarder_cli(*args: str, env: Mapping[str, str]) -> Ran:
    """`python -m forwarder ARGS`, awaited without blocking the loop (in-process forwarders
    and Legiti stand-ins keep running meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        *args,
        env=child_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


def kafka_settings(bootstrap: str, topic: str) -> KafkaSettings:
    env = {"FORWARDER_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FORWARDER_KAFKA_TOPICS": topic}
    return load(KafkaToolSettings, env).kafka


async def everything(bootstrap: str, topic: str) -> list[SourceRecord]:
    """Every record in the topic now, by partition and offset."""
    async with KafkaReader(kafka_settings(bootstrap, topic)) as reader:
        extents = await reader.extents(topic)
        ranges = {p: (extent.start, extent.end) for p, extent in extents.items()}
        records = [record async for record in reader.read(topic, ranges)]
    return sorted(records, key=lambda r: (r.partition, r.offset))


def event_headers(i: int) -> tuple[tuple[str, bytes], ...]:
    return (("traceparent", f"00-{i:032x}-01".encode()), ("tenant", b"acme"), ("tenant", b"x"))


async def test_rejected_dead_letters_are_shown_counted_and_replayed_once(broker, legiti) -> None:
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique(), partitions=2)
    dlq = await create_topic(bootstrap, f"{topic}.dlq")
    env = kafka_env(bootstrap, topic)
    legiti.faults.reject_user_ids = {BAD_USER}
    rejected: list[tuple[int, bytes, bytes, tuple[tuple[str, bytes], ...]]] = []
    for partition in (0, 1):
        for i in range(partition * 3, partition * 3 + 3):
            key, value = f"bad-{i}".encode(), native(f"bad-{i}", BAD_USER)
            rejected.append((partition, key, value, event_headers(i)))
            await produce(
                bootstrap, topic, [(value, event_headers(i))], partition=partition, key=key
            )
        await produce(
            bootstrap,
            topic,
            [native(f"ok-{partition}-{i}", "u-ok") for i in range(2)],
            partition=partition,
        )
    await produce(bootstrap, topic, [b"{not json", b"[1, 2"], partition=0)
    config = settings(bootstrap, topic, legiti.url)

    async with running(config):
        await read_all(bootstrap, dlq, 8)
        await legiti.wait_for(lambda: len(legiti.accepted) == 4)

        stats = await forwarder_cli("dlq", "stats", "--json", env=env)
        assert stats.returncode == 0, stats.stderr
        counted = stats.json()
        assert counted["topic"] == dlq
        assert counted["total"] == 8
        assert counted["by_reason"] == {"rejected": 6, "invalid_json": 2}
        assert counted["by_source_topic"] == {topic: 8}
        assert counted["rejected_by_http_status"] == {"400": 6}
        assert counted["oldest"] <= counted["newest"]

        shown = await forwarder_cli("dlq", "show", "--json", "--reason", "rejected", env=env)
        assert shown.returncode == 0, shown.stderr
        lines = shown.json_lines()
        assert sorted(
            (line["source_partition"], line["key"].encode(), line["value"].encode())
            for line in lines
        ) == sorted((p, key, value) for p, key, value, _ in rejected)
        assert {line["reason"] for line in lines} == {"rejected"}
        assert all(line["http_status"] == 400 and "400" in line["detail"] for line in lines)
        assert all(line["source_topic"] == topic and line["attempts"] >= 1 for line in lines)
        newest = await forwarder_cli("dlq", "show", "--limit", "1", env=env)
        assert newest.returncode == 0, newest.stderr
        assert len(newest.stdout.splitlines()) == 1
        assert f" {topic}/" in newest.stdout

        legiti.faults.reject_user_ids.clear()
        before = await everything(bootstrap, topic)
        dry = await forwarder_cli(
            "dlq", "replay", "--reason", "rejected", "--dry-run", "--json", env=env
        )
        assert dry.returncode == 0, dry.stderr
        assert dry.json()["replayed_by_reason"] == {"rejected": 6}
        assert dry.json()["passed_over_by_reason"] == {"invalid_json": 2}
        assert await everything(bootstrap, topic) == before, "a dry run writes nothing"
        assert await committed(bootstrap, f"group-{topic}.replay", dlq) == {0: None}

        replay = await forwarder_cli("dlq", "replay", "--reason", "rejected", "--json", env=env)
        assert replay.returncode == 0, replay.stderr
        summary = replay.json()
        assert summary["outcome"] == "done"
        assert summary["replayed_by_reason"] == {"rejected": 6}
        assert summary["replayed_by_topic"] == {topic: 6}
        assert summary["passed_over_by_reason"] == {"invalid_json": 2}
        assert summary["failed"] == 0

        after = await everything(bootstrap, topic)
        sent_back = [record for record in after if record not in before]
        assert sorted(
            (r.partition, r.key or b"", r.value or b"", r.headers) for r in sent_back
        ) == (sorted(rejected)), (
            "the same partition, key, value and headers, without any x-forwarder-* one"
        )

        def delivered() -> Counter[str | None]:
            return Counter(r.idempotency_key for r in legiti.accepted if r.user_id == BAD_USER)

        await legiti.wait_for(lambda: len(delivered()) == 6, timeout=20)

        again = await forwarder_cli("dlq", "replay", "--reason", "rejected", "--json", env=env)
        assert again.returncode == 0, again.stderr
        assert (again.json()["read"], again.json()["replayed"]) == (0, 0)
        assert await everything(bootstrap, topic) == after

        ends = Counter(record.partition for record in after)
        await wait_until(
            lambda: _committed_is(bootstrap, f"group-{topic}", topic, ends),
            what="the forwarder finished every record",
        )
        assert set(delivered().values()) == {1}, "each replayed event delivered once"
        assert len(legiti.accepted) == 10
        stats_after = await forwarder_cli("dlq", "stats", "--json", env=env)
        assert stats_after.json()["total"] == 8, "the invalid ones stayed, none came back"


async def _committed_is(bootstrap: str, group: str, topic: str, ends: Counter[int]) -> bool:
    offsets = await committed(bootstrap, group, topic, partitions=len(ends))
    return offsets == dict(ends)
