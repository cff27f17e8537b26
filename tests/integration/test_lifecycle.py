"""Lifecycle of `forwarder run` as a real process: kill -9, SIGTERM drain, rebalance
between two processes, and a broker that is not there yet at start.

Real broker (Tansu), real HTTP Legiti stub (in this process, so its records share
our monotonic clock), forwarders in child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter

from aiokafka import AIOKafkaProducer

from forwarder.sandbox.broker import SandboxBroker, free_port
from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.settings import sandbox_env
from tests.conftest import eventually, wait_until
from tests.factories import native_series
from tests.integration.kafka_helpers import committed, create_topic, produce, unique


def keys(stub) -> list[str]:
    return [received.idempotency_key for received in stub.accepted]


def assigned(forwarder: ForwarderProcess) -> list[str] | None:
    """The partitions of the last `partitions assigned` log line, None before any."""
    lines = forwarder.events("partitions assigned")
    return lines[-1]["partitions"] if lines else None


async def test_kill_9_mid_stream_loses_nothing_and_resends_about_a_second(
    broker, legiti, tmp_path
) -> None:
    total, crash_at, max_in_flight, commit_interval = 1500, 1000, 3, 0.5
    topic = await create_topic(broker.bootstrap, unique("kill9"), partitions=4)
    await produce(broker.bootstrap, topic, native_series("k", total, users=100))
    # At most max_in_flight / latency = 300 events/s, however fast the machine: the
    # bound below scales with the rate, so a slow rate keeps the test discriminating.
    legiti.faults.latency = 0.01
    env = sandbox_env(
        broker.bootstrap,
        topic,
        legiti.url,
        max_in_flight=max_in_flight,
        commit_interval_seconds=commit_interval,
    )
    group = env["FORWARDER_KAFKA_GROUP_ID"]

    async with ForwarderProcess(env, name="a", log_dir=tmp_path) as first:
        await legiti.wait_for(lambda: legiti.accepted_count >= crash_at // 4, timeout=30)
        window_start, counted_from = time.monotonic(), legiti.accepted_count
        await legiti.wait_for(lambda: legiti.accepted_count >= crash_at, timeout=30)
        first.kill()
        killed_at, at_kill = time.monotonic(), legiti.accepted_count
        assert first.returncode == -signal.SIGKILL
    # The traffic rate at the time of the crash, measured on this run.
    rate = (at_kill - counted_from) / (killed_at - window_start)
    assert at_kill < total, "the stream finished before the crash; nothing was tested"
    committed_at_crash = sum(
        o or 0 for o in (await committed(broker.bootstrap, group, topic, 4)).values()
    )

    legiti.faults.latency = 0.0  # the restart's speed is not under test
    async with ForwarderProcess(env, name="b", log_dir=tmp_path) as second:
        await legiti.wait_for(lambda: len(set(keys(legiti))) == total, timeout=60)
        second.terminate()
        assert await second.wait(30) == 0, second.log_tail()

    accepted = Counter(keys(legiti))
    assert set(accepted) == {f"k{i}" for i in range(total)}, "an event was lost"
    resent = sum(accepted.values()) - total
    # "About one second of traffic": what was delivered since the last commit (at most a
    # commit interval ago), what was in flight, plus half a second of slack for jitter.
    bound = 2 * max_in_flight + (commit_interval + 0.5) * rate
    assert resent <= bound, (
        f"{resent} events re-sent after kill -9 with {at_kill}/{total} delivered and"
        f" {committed_at_crash} committed; allowed {bound:.0f}"
        f" ({commit_interval + 0.5} s at {rate:.0f}/s"
        f" + 2 x max_in_flight)"
    )
    # The restarted forwarder committed everything when it was stopped.
    assert sum((await committed(broker.bootstrap, group, topic, 4)).values()) == total


async def test_sigterm_drains_in_flight_commits_finished_prefix_and_exits_0(
    broker, legiti, tmp_path
) -> None:
    total, users, max_in_flight, shutdown_timeout = 120, 8, 8, 5.0
    topic = await create_topic(broker.bootstrap, unique("drain"), partitions=1)
    await produce(broker.bootstrap, topic, native_series("d", total, users=users))
    legiti.faults.latency = 0.5
    env = sandbox_env(
        broker.bootstrap,
        topic,
        legiti.url,
        max_in_flight=max_in_flight,
        shutdown_timeout_seconds=shutdown_timeout,
    )
    group = env["FORWARDER_KAFKA_GROUP_ID"]

    async with ForwarderProcess(env, name="a", log_dir=tmp_path) as first:
        await legiti.wait_for(lambda: legiti.accepted_count >= 2 * users, timeout=30)
        in_flight = await first.metric("forwarder_in_flight_events")
        assert in_flight > 0, "nothing in flight: the test would not test a drain"
        first.terminate()
        signalled = time.monotonic()
        answered_at_signal = legiti.total_count
        code = await first.wait(shutdown_timeout + 10)
        took = time.monotonic() - signalled
    assert code == 0, first.log_tail()
    assert took < shutdown_timeout + 5, f"drain took {took:.1f}s"
    # The drain waited for the answers to what was in flight, and sent nothing new.
    assert legiti.total_count > answered_at_signal, "in-flight requests were abandoned"
    assert legiti.total_count <= answered_at_signal + 2 * max_in_flight, "kept sending"
    assert all(r.status == 201 for r in legiti.requests)
    stopped = first.events("forwarder stopped")
    assert stopped, first.log_tail()
    assert stopped[-1]["drained"] is True

    # The committed offset is exactly the end of the delivered prefix: events finish
    # out of order across users, so it is the first offset Legiti has not accepted.
    delivered_before = Counter(keys(legiti))
    offsets = {int(key[1:]) for key in delivered_before}
    first_gap = next(i for i in range(total + 1) if i not in offsets)
    assert (await committed(broker.bootstrap, group, topic, 1))[0] == first_gap

    legiti.faults.latency = 0.0
    async with ForwarderProcess(env, name="b", log_dir=tmp_path):
        await legiti.wait_for(lambda: len(set(keys(legiti))) == total, timeout=30)
    accepted = Counter(keys(legiti))
    assert set(accepted) == {f"d{i}" for i in range(total)}
    resent = {key for key, n in accepted.items() if n > 1}
    # Only what was delivered beyond the committed prefix may come again, never below it.
    assert all(int(key[1:]) >= first_gap for key in resent), sorted(resent)
    assert all(n <= 2 for n in accepted.values())


class Stream:
    """Produces events continuously (a load generator, not a synchronisation device)."""

    def __init__(self, bootstrap: str, topic: str, users: int = 50) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.users = users
        self.produced: list[str] = []
        self._halt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            index = 0
            while not self._halt.is_set():
                batch = native_series("r", 25, self.users, start=index)
                await asyncio.gather(*[await producer.send(self.topic, value) for value in batch])
                self.produced.extend(f"r{i}" for i in range(index, index + 25))
                index += 25
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._halt.wait(), 0.1)
        finally:
            await producer.stop()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._halt.set()
        if self._task is not None:
            await self._task


async def test_rebalance_between_two_processes_loses_nothing(broker, legiti, tmp_path) -> None:
    max_in_flight, partitions = 8, 4
    topic = await create_topic(broker.bootstrap, unique("rebalance"), partitions=partitions)
    legiti.faults.latency = 0.01
    env = sandbox_env(broker.bootstrap, topic, legiti.url, max_in_flight=max_in_flight)
    group = env["FORWARDER_KAFKA_GROUP_ID"]
    stream = Stream(broker.bootstrap, topic)

    async def consumed(member: ForwarderProcess) -> float:
        return await member.metric("forwarder_events_consumed_total")

    async with ForwarderProcess(env, name="a", log_dir=tmp_path) as a:
        await a.wait_ready()
        stream.start()
        try:
            await legiti.wait_for(lambda: legiti.accepted_count >= 100, timeout=30)
            async with ForwarderProcess(env, name="b", log_dir=tmp_path) as b:
                # Both members hold partitions: the group split them between the two.
                await eventually(
                    lambda: (
                        bool(assigned(a))
                        and bool(assigned(b))
                        and sorted([*assigned(a), *assigned(b)])
                        == [f"{topic}-{p}" for p in range(partitions)]
                    ),
                    timeout=30,
                    what="the partitions split between a and b",
                )
                await b.wait_ready()
                # Both work on the stream at the same time.
                a_from, b_from = await consumed(a), await consumed(b)

                async def both_consuming() -> bool:
                    return await consumed(a) >= a_from + 50 and await consumed(b) >= b_from + 50

                await wait_until(both_consuming, what="a and b both consuming")
                a.terminate()
                assert await a.wait(30) == 0, a.log_tail()
                await eventually(
                    lambda: len(assigned(b) or ()) == partitions, timeout=30, what="b takes all"
                )
                # The stream went on during the hand-over; b must deliver all of it.
                await stream.stop()
                produced = set(stream.produced)
                await legiti.wait_for(lambda: set(keys(legiti)) >= produced, timeout=30)
                b.terminate()
                assert await b.wait(30) == 0, b.log_tail()
        finally:
            await stream.stop()

    accepted = Counter(keys(legiti))
    assert set(accepted) == produced, "an event was lost"
    duplicates = sum(accepted.values()) - len(produced)
    # Each of the two rebalances may re-send what was in flight or finished past the
    # committed prefix of the moving partitions, not more.
    assert duplicates <= 4 * max_in_flight, f"{duplicates} duplicates over two rebalances"
    offsets = await committed(broker.bootstrap, group, topic, partitions)
    assert sum(o or 0 for o in offsets.values()) == len(produced)


async def test_unreachable_broker_at_start_waits_then_forwards(legiti, tmp_path) -> None:
    port = free_port()
    topic = unique("late-broker")
    env = sandbox_env(f"127.0.0.1:{port}", topic, legiti.url)

    def warnings(forwarder: ForwarderProcess) -> list[dict[str, object]]:
        return [
            line
            for line in forwarder.log_lines()
            if line.get("level") == "warning" and "cannot start the kafka" in str(line["event"])
        ]

    async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:
        await eventually(lambda: bool(warnings(forwarder)), 20, "a warning about the broker")
        warning = warnings(forwarder)[0]
        assert "retrying" in str(warning["event"])
        assert "retry_in_seconds" in warning
        assert str(port) in str(warning["error"])
        # Alive (the same process, not a crash loop), healthy, not ready.
        assert forwarder.running(), forwarder.log_tail()
        assert await forwarder.probe("/healthz") == 200
        readiness = await forwarder.readiness()
        assert readiness is not None
        assert readiness[0] == 503
        assert readiness[1]["checks"]["consumer_group"] is False
        assert "Traceback" not in forwarder.output()

        with SandboxBroker(port=port) as late:
            await create_topic(late.bootstrap, topic, partitions=2)
            await forwarder.wait_ready(within=40)
            await produce(late.bootstrap, topic, native_series("late", 50, users=5))
            await legiti.wait_for(lambda: len(set(keys(legiti))) == 50, timeout=30)
            forwarder.terminate()
            assert await forwarder.wait(20) == 0
    assert set(keys(legiti)) == {f"late{i}" for i in range(50)}
    assert "Traceback" not in forwarder.output()
