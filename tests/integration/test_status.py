"""`forwarder status` against two real `forwarder run` processes sharing a group: both are
listed, every partition has its committed offset and end, and the lag falls to zero."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.settings import sandbox_env
from tests.conftest import wait_until
from tests.factories import native
from tests.integration.kafka_helpers import create_topic, produce, unique
from tests.integration.test_dlq import child_env, forwarder_cli, kafka_env

EVENTS_PER_PARTITION = 60


async def test_status_shows_both_processes_and_the_lag_falling_to_zero(
    broker, legiti, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    topic = await create_topic(bootstrap, unique(), partitions=2)
    await create_topic(bootstrap, f"{topic}.dlq")
    for partition in (0, 1):
        await produce(
            bootstrap,
            topic,
            [native(f"e-{partition}-{i}", f"u-{i}") for i in range(EVENTS_PER_PARTITION)],
            partition=partition,
        )
    await produce(bootstrap, topic, [b"{not json"], partition=1)
    env = kafka_env(bootstrap, topic)

    before = await forwarder_cli("status", "--json", env=env)
    assert before.returncode == 0, before.stderr
    waiting = before.json()
    assert waiting["members"] == []
    assert [(p["partition"], p["committed"], p["lag"]) for p in waiting["partitions"]] == [
        (0, None, EVENTS_PER_PARTITION),
        (1, None, EVENTS_PER_PARTITION + 1),
    ]

    settings = sandbox_env(bootstrap, topic, legiti.url)
    async with (
        ForwarderProcess(settings, name="one", log_dir=tmp_path) as one,
        ForwarderProcess(settings, name="two", log_dir=tmp_path) as two,
    ):
        await one.wait_ready()
        await two.wait_ready()
        latest: dict[str, Any] = {}

        async def caught_up() -> bool:
            result = await forwarder_cli("status", "--json", env=env)
            assert result.returncode == 0, result.stderr
            latest.update(result.json())
            return len(latest["members"]) == 2 and latest["total_lag"] == 0

        await wait_until(caught_up, timeout=60, what="two members and no lag")
        assert latest["group"] == f"group-{topic}"
        assert latest["state"] == "Stable"
        assert [
            (p["partition"], p["committed"], p["end"], p["lag"]) for p in latest["partitions"]
        ] == [
            (0, EVENTS_PER_PARTITION, EVENTS_PER_PARTITION, 0),
            (1, EVENTS_PER_PARTITION + 1, EVENTS_PER_PARTITION + 1, 0),
        ]
        assert latest["dead_letter_topic"] == f"{topic}.dlq"
        assert latest["dead_letters"] == 1
        owned = [m["partitions"] for m in latest["members"] if m["partitions"] is not None]
        # Brokers that report assignments (Apache Kafka does; the sandbox's Tansu 0.6 leaves
        # them empty) must report each partition owned by exactly one member.
        assert sorted(p["partition"] for partitions in owned for p in partitions) == (
            [0, 1] if owned else []
        )
        owners = {p["owner"] for p in latest["partitions"]}
        assert owners <= {m["member_id"] for m in latest["members"]} | {None}

        text = await forwarder_cli("status", env=env)
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith(f"group group-{topic}: Stable, 2 member(s)")
        for member in latest["members"]:
            assert member["member_id"] in text.stdout
        assert "total lag 0" in text.stdout
        assert f"dead-letter topic {topic}.dlq: 1" in text.stdout

        assert len(legiti.accepted) == 2 * EVENTS_PER_PARTITION


async def test_watch_refreshes_until_interrupted(broker) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "status",
        "--watch",
        "0.2",
        "--json",
        env=child_env(kafka_env(broker.bootstrap, topic)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        snapshots = [orjson.loads(await process.stdout.readline()) for _ in range(3)]
        process.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert [snapshot["group"] for snapshot in snapshots] == [f"group-{topic}"] * 3
    assert all(orjson.loads(line)["group"] == f"group-{topic}" for line in rest.splitlines())
