"""`forwarder dlq replay` when things go wrong or are asked for on purpose: a record that
cannot be published, an operator's Ctrl-C, --from-beginning and --to-topic; and the
commands' exit codes for bad configuration and unreachable brokers."""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson

from forwarder.core.dead_letters import REJECTED, RETRIES_EXHAUSTED, dead_letter_headers
from forwarder.core.events import SourceRecord
from forwarder.sandbox.broker import free_port
from forwarder.sandbox.topics import Outgoing
from forwarder.sandbox.topics import produce as produce_records
from tests.conftest import wait_until
from tests.factories import native
from tests.integration.kafka_helpers import committed, create_topic, unique
from tests.integration.test_dlq import child_env, everything, forwarder_cli, kafka_env


def dead_letter(topic: str, i: int, *, partition: int = 0, reason: str = REJECTED) -> Outgoing:
    key, value = f"e-{i}".encode(), native(f"e-{i}", f"u-{i % 7}")
    origin = SourceRecord(topic, partition, i, key, value, (("n", str(i).encode()),), 0)
    headers = dead_letter_headers(origin, reason, "legiti answered 400", 1, status=400)
    return Outgoing(value, key, headers)


async def test_a_record_that_cannot_be_published_stops_the_replay(broker) -> None:
    """Committed is exactly what was published; a re-run starts with the failed record."""
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique())
    dlq = await create_topic(bootstrap, f"{topic}.dlq")
    letters = [dead_letter(topic, 0), dead_letter(topic, 1), dead_letter(topic, 2, partition=7)]
    await produce_records(bootstrap, dlq, [*letters, dead_letter(topic, 3)])
    env = kafka_env(bootstrap, topic)

    failed = await forwarder_cli("dlq", "replay", "--json", env=env)
    assert failed.returncode == 1, failed.stderr
    summary = failed.json()
    assert summary["outcome"] == "failed"
    assert (summary["replayed"], summary["failed"]) == (2, 1)
    assert f"dead letter {dlq}/0@2" in summary["error"]
    assert f"topic {topic} has no partition 7" in summary["error"]
    assert await committed(bootstrap, f"group-{topic}.replay", dlq) == {0: 2}
    assert [r.key for r in await everything(bootstrap, topic)] == [b"e-0", b"e-1"]

    again = await forwarder_cli("dlq", "replay", env=env)
    assert again.returncode == 1
    assert f"dead letter {dlq}/0@2" in again.stdout
    assert "a re-run starts with this record" in again.stdout
    assert "replayed 0 of 1 dead letters" in again.stdout
    assert [r.key for r in await everything(bootstrap, topic)] == [b"e-0", b"e-1"]


async def test_an_interrupted_replay_resumes_without_duplicates(broker) -> None:
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique())
    dlq = await create_topic(bootstrap, f"{topic}.dlq")
    count = 600
    await produce_records(bootstrap, dlq, [dead_letter(topic, i) for i in range(count)])
    # One dead letter a poll: the replay publishes and commits one at a time, slowly
    # enough that the interruption lands in the middle.
    env = kafka_env(bootstrap, topic, kafka_max_poll_records="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "dlq",
        "replay",
        "--json",
        env=child_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def started() -> bool:
            return len(await everything(bootstrap, topic)) > 0

        await wait_until(started, what="the first dead letter replayed")
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 130, stderr.decode()
    first = orjson.loads(stdout)
    assert first["outcome"] == "interrupted"
    assert 0 < first["replayed"] < count
    assert len(await everything(bootstrap, topic)) == first["replayed"]
    assert await committed(bootstrap, f"group-{topic}.replay", dlq) == {0: first["replayed"]}

    rest = await forwarder_cli("dlq", "replay", "--json", env=kafka_env(bootstrap, topic))
    assert rest.returncode == 0, rest.stderr
    assert rest.json()["replayed"] == count - first["replayed"]
    keys = [record.key for record in await everything(bootstrap, topic)]
    assert keys == [f"e-{i}".encode() for i in range(count)], "each once, in the DLQ's order"


async def test_two_replays_at_once_share_the_partitions_and_send_each_once(broker) -> None:
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique())
    dlq = await create_topic(bootstrap, f"{topic}.dlq", partitions=2)
    count = 400
    letters = [dead_letter(topic, i) for i in range(count)]
    await produce_records(
        bootstrap,
        dlq,
        [Outgoing(d.value, d.key, d.headers, partition=i % 2) for i, d in enumerate(letters)],
    )
    env = kafka_env(bootstrap, topic, kafka_max_poll_records="5")
    first, second = await asyncio.gather(
        forwarder_cli("dlq", "replay", "--json", env=env),
        forwarder_cli("dlq", "replay", "--json", env=env),
    )
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.json()["replayed"] + second.json()["replayed"] == count
    keys = sorted(record.key for record in await everything(bootstrap, topic))
    assert keys == sorted(d.key for d in letters), "every dead letter once, none twice"


async def test_from_beginning_to_another_topic_replays_what_was_replayed_before(broker) -> None:
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique())
    dlq = await create_topic(bootstrap, f"{topic}.dlq")
    other = await create_topic(bootstrap, f"{topic}-retry", partitions=3)
    await produce_records(
        bootstrap,
        dlq,
        [dead_letter(topic, i, reason=(REJECTED, RETRIES_EXHAUSTED)[i % 2]) for i in range(6)],
    )
    env = kafka_env(bootstrap, topic)
    first = await forwarder_cli("dlq", "replay", "--reason", "retries_exhausted", env=env)
    assert first.returncode == 0, first.stderr
    assert "replayed by reason:   retries_exhausted 3" in first.stdout
    assert "passed over (not selected): rejected 3" in first.stdout

    nothing_new = await forwarder_cli("dlq", "replay", "--json", env=env)
    assert nothing_new.json()["read"] == 0

    over = await forwarder_cli(
        "dlq", "replay", "--from-beginning", "--to-topic", other, "--json", env=env
    )
    assert over.returncode == 0, over.stderr
    assert over.json()["replayed_by_topic"] == {other: 6}
    copies = await everything(bootstrap, other)
    assert sorted(r.key for r in copies) == sorted(f"e-{i}".encode() for i in range(6))
    for record in copies:
        assert record.headers == (("n", record.key[2:]),)
    assert len(await everything(bootstrap, topic)) == 3


async def test_the_commands_need_only_kafka_settings_and_say_which_one_is_wrong(broker) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    await create_topic(broker.bootstrap, f"{topic}.dlq")
    top = await forwarder_cli("--help", env={})
    assert top.returncode == 0
    assert "dlq" in top.stdout
    assert "status" in top.stdout
    dlq_help = await forwarder_cli("dlq", "--help", env={})
    for command in ("stats", "show", "replay"):
        assert command in dlq_help.stdout

    missing = await forwarder_cli("dlq", "stats", env={"FORWARDER_KAFKA_TOPICS": topic})
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "FORWARDER_KAFKA_BOOTSTRAP_SERVERS" in missing.stderr

    bad_flag = await forwarder_cli(
        "status", "--kafka-max-poll-records", "0", env=kafka_env(broker.bootstrap, topic)
    )
    assert bad_flag.returncode == 2
    assert "--kafka-max-poll-records" in bad_flag.stderr

    bad_time = await forwarder_cli(
        "dlq", "show", "--since", "last tuesday", env=kafka_env(broker.bootstrap, topic)
    )
    assert bad_time.returncode == 2
    assert "--since" in bad_time.stderr

    window = await forwarder_cli(
        "dlq", "show", "--since", "1h", "--until", "2h", env=kafka_env(broker.bootstrap, topic)
    )
    assert window.returncode == 2
    assert "--since is not before --until" in window.stderr

    into_itself = await forwarder_cli(
        "dlq", "replay", "--to-topic", f"{topic}.dlq", env=kafka_env(broker.bootstrap, topic)
    )
    assert into_itself.returncode == 2
    assert f"--to-topic {topic}.dlq is the dead-letter topic" in into_itself.stderr

    empty = await forwarder_cli("dlq", "stats", env=kafka_env(broker.bootstrap, topic))
    assert empty.returncode == 0, empty.stderr
    assert f"{topic}.dlq: 0 dead letters" in empty.stdout

    nowhere = kafka_env(f"127.0.0.1:{free_port()}", topic)
    unreachable = await forwarder_cli("dlq", "stats", env=nowhere)
    assert unreachable.returncode == 1
    assert "forwarder dlq stats: KafkaConnectionError: Unable to bootstrap" in unreachable.stderr
