"""Issue 14, findings 4-8, against the real broker and the Legiti stand-in: a misconfigured
endpoint halts instead of dead-lettering; stops end in time even with the brokers gone;
a revocation waits for the revoked partitions' requests; a clean stop re-sends nothing;
the smaller ones (the byte bound, max_poll_records, a decimal Retry-After, a token file
that cannot be read)."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict

from forwarder.sandbox.broker import SandboxBroker
from forwarder.sandbox.legiti import LegitiStub
from forwarder.sandbox.process import ForwarderProcess
from forwarder.sandbox.settings import sandbox_env
from forwarder.sandbox.topics import Outgoing
from forwarder.sandbox.topics import produce as produce_records
from tests.conftest import eventually
from tests.factories import native, native_series
from tests.integration.kafka_helpers import create_topic, metric, produce, running, settings, unique


def keys(stub: LegitiStub) -> list[str | None]:
    return [received.idempotency_key for received in stub.accepted]


# Finding 4: a misconfigured endpoint -------------------------------------------------------


async def test_a_wrong_base_url_halts_without_dead_letters(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique("wrong-url"))
    await produce(broker.bootstrap, topic, [native(f"w{i}", f"u{i}") for i in range(50)])
    config = settings(broker.bootstrap, topic, legiti.url + "/not-the-api")
    async with running(config) as forwarder:
        await eventually(lambda: metric(forwarder, "forwarder_sink_misconfigured") == 1)
        assert forwarder.readiness()["sink_configuration"] is False
        # It probes with backoff (1 s doubling) and never dead-letters.
        await eventually(
            lambda: metric(forwarder, "forwarder_sink_requests_total", code="404") >= 2
        )
        pipeline = forwarder.pipeline
        assert pipeline is not None
        assert pipeline.committable() == {}
    # The first requests went out together; after the first answer, only probes.
    assert metric(forwarder, "forwarder_sink_requests_total", code="404") <= 50 + 4
    dead = sum(
        metric(forwarder, "forwarder_events_dead_lettered_total", reason=reason)
        for reason in ("rejected", "retries_exhausted")
    )
    assert dead == 0


async def test_a_redirect_for_everything_halts_and_heals_when_it_stops(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique("redirect"))
    legiti.faults.status = 307
    await produce(broker.bootstrap, topic, [native(f"r{i}", f"u{i}") for i in range(30)])
    async with running(settings(broker.bootstrap, topic, legiti.url)) as forwarder:
        await eventually(lambda: metric(forwarder, "forwarder_sink_misconfigured") == 1)
        legiti.faults.status = None
        await eventually(lambda: len(set(keys(legiti))) == 30, timeout=20)
        assert forwarder.readiness()["sink_configuration"] is True
    assert metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected") == 0


async def test_the_same_4xx_for_everyone_stops_instead_of_dead_lettering(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique("storm"))
    legiti.faults.status = 422  # a gateway rule or a wrong tenant: every request refused
    await produce(broker.bootstrap, topic, [native(f"s{i}", f"u{i}") for i in range(300)])
    config = settings(broker.bootstrap, topic, legiti.url, max_in_flight="4")
    async with running(config) as forwarder:
        await eventually(lambda: metric(forwarder, "forwarder_sink_misconfigured") == 1)
        dead_before_heal = metric(
            forwarder, "forwarder_events_dead_lettered_total", reason="rejected"
        )
        legiti.faults.status = None
        await eventually(lambda: len(legiti.accepted) >= 300 - dead_before_heal - 4, timeout=30)
    dead = metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected")
    # A few dozen dead letters at most (the storm has to be seen), not the stream.
    assert dead <= 30, dead
    assert len(set(keys(legiti))) + dead >= 300


# Finding 5: a stop always ends in time ------------------------------------------------------


async def test_sigterm_ends_in_time_with_the_brokers_gone(legiti, tmp_path) -> None:
    shutdown_timeout = 2.0
    with SandboxBroker() as own:
        topic = await create_topic(own.bootstrap, unique("gone"), partitions=2)
        await produce(own.bootstrap, topic, native_series("g", 200, users=20))
        legiti.faults.latency = 0.2
        env = sandbox_env(
            own.bootstrap, topic, legiti.url, shutdown_timeout_seconds=shutdown_timeout
        )
        async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:
            await legiti.wait_for(lambda: legiti.accepted_count >= 20, timeout=30)
            own.stop()  # the brokers vanish: commits and leaving the group cannot complete
            forwarder.terminate()
            signalled = time.monotonic()
            code = await forwarder.wait(60)
            took = time.monotonic() - signalled
    assert code == 0, forwarder.log_tail()
    # The drain's timeout, then at most three bounded steps (commit, leave, producer).
    assert took < shutdown_timeout + 12, f"shutdown took {took:.1f}s"


# Findings 6 and 7: revocations and clean stops --------------------------------------------


async def test_a_clean_sigterm_resends_nothing(broker, legiti, tmp_path) -> None:
    """The issue's measurement: 150 ms answers, 40 in flight, SIGTERM after ~200
    deliveries; before the fix, 85 events were sent again after the restart. One user's
    events are failing at the moment of the stop, so they sit unsent (waiting to be
    retried, and holding that user's later events) behind events already delivered."""
    total = 1200
    topic = await create_topic(broker.bootstrap, unique("clean-stop"), partitions=2)
    await produce(broker.bootstrap, topic, native_series("c", total, users=100))
    legiti.faults.latency = 0.15
    legiti.faults.status_for_user = {"user-3": 503}
    env = sandbox_env(
        broker.bootstrap, topic, legiti.url, max_in_flight=40, shutdown_timeout_seconds=20
    )
    async with ForwarderProcess(env, name="first", log_dir=tmp_path) as first:
        await legiti.wait_for(lambda: legiti.accepted_count >= 200, timeout=30)
        legiti.faults.status_for_user = {}
        first.terminate()
        assert await first.wait(40) == 0, first.log_tail()
    assert first.events("forwarder stopped")[-1]["drained"] is True
    legiti.faults.latency = 0.0
    async with ForwarderProcess(env, name="second", log_dir=tmp_path) as second:
        await legiti.wait_for(lambda: len(set(keys(legiti))) == total, timeout=60)
        second.terminate()
        assert await second.wait(30) == 0, second.log_tail()
    accepted = Counter(keys(legiti))
    assert set(accepted) == {f"c{i}" for i in range(total)}
    resent = sorted(key for key, count in accepted.items() if count > 1)
    assert resent == [], f"{len(resent)} re-sent after a clean stop: {resent[:10]}"


async def test_a_revocation_waits_for_the_revoked_partitions_requests(
    broker, legiti, tmp_path
) -> None:
    """Per-user order across a rebalance: a user's next request never reaches Legiti
    while the old owner's request for the previous event is still unanswered."""
    # Answers slower than the group takes to move a partition (Tansu: about a second).
    latency, total, partitions = 4.0, 120, 4
    topic = await create_topic(broker.bootstrap, unique("revoke"), partitions=partitions)
    # Keyed by user, as upstream services publish them: a user's events share a partition.
    await produce_records(
        broker.bootstrap,
        topic,
        [
            Outgoing(native(f"v{i}", f"user-{i % 40}"), f"user-{i % 40}".encode(), ())
            for i in range(total)
        ],
    )
    legiti.faults.latency = latency
    env = sandbox_env(broker.bootstrap, topic, legiti.url, max_in_flight=40)
    async with ForwarderProcess(env, name="a", log_dir=tmp_path) as a:
        await legiti.wait_for(lambda: legiti.total_count >= 40, timeout=30)
        async with ForwarderProcess(env, name="b", log_dir=tmp_path) as b:
            await eventually(lambda: bool(b.events("partitions assigned")), timeout=30)
            await legiti.wait_for(lambda: len(set(keys(legiti))) == total, timeout=60)
            b.terminate()
            assert await b.wait(30) == 0, b.log_tail()
        a.terminate()
        assert await a.wait(30) == 0, a.log_tail()
    by_user: dict[str | None, list[float]] = defaultdict(list)
    for received in sorted(legiti.requests, key=lambda r: r.at):
        by_user[received.user_id].append(received.at)
    overlaps = [
        (user, round(later - earlier, 3))
        for user, times in by_user.items()
        for earlier, later in itertools.pairwise(times)
        if later - earlier < latency * 0.9
    ]
    assert overlaps == [], (
        f"a user's next request went while the previous was unanswered: {overlaps}"
    )
    assert set(keys(legiti)) == {f"v{i}" for i in range(total)}


# Finding 8: the smaller ones ------------------------------------------------------------------


async def test_the_byte_bound_and_max_poll_records_bound_memory(broker, legiti) -> None:
    record_size, bound, per_poll = 20_000, 64 * 1024, 2
    topic = await create_topic(broker.bootstrap, unique("bytes"))
    big = [
        native(f"b{i}", f"u{i}")[:-1] + b', "pad": "' + b"x" * record_size + b'"}'
        for i in range(40)
    ]
    await produce(broker.bootstrap, topic, big)
    legiti.faults.latency = 0.2
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        max_buffered_bytes=str(bound),
        kafka_max_poll_records=str(per_poll),
    )
    peak = 0
    async with running(config) as forwarder:

        def delivered_all() -> bool:
            nonlocal peak
            if forwarder.pipeline is not None:
                peak = max(peak, forwarder.pipeline.buffered_bytes)
            return len(legiti.accepted) == 40

        await eventually(delivered_all, timeout=60)
    assert 0 < peak <= bound + per_poll * (record_size + 200), peak


async def test_a_decimal_retry_after_is_honoured(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique("decimal"))
    legiti.faults.script.extend([503])
    legiti.faults.retry_after = "1.5"
    await produce(broker.bootstrap, topic, [native("d0", "u0")])
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.accepted) == 1, timeout=20)
    first, second = legiti.requests[0], legiti.requests[1]
    assert second.at - first.at >= 1.4  # the sandbox backoff alone would retry within 0.5 s


async def test_an_unreadable_token_file_is_reported_once_a_minute(broker, legiti, tmp_path) -> None:
    topic = await create_topic(broker.bootstrap, unique("token-file"))
    token_file = tmp_path / "token"
    token_file.write_text("test-token\n", encoding="utf-8")
    env = sandbox_env(broker.bootstrap, topic, legiti.url, legiti_api_token_file=str(token_file))
    del env["FORWARDER_LEGITI_API_TOKEN"]
    async with ForwarderProcess(env, log_dir=tmp_path) as forwarder:
        await forwarder.wait_ready()
        token_file.unlink()
        await eventually(
            lambda: bool(
                forwarder.events("cannot re-read the API token file; the last token stays in use")
            ),
            timeout=10,
        )
        reported_at = time.monotonic()
        # The file is checked every second: a few checks later, still one line.
        await eventually(lambda: time.monotonic() - reported_at > 3.5, timeout=10)
        await produce(broker.bootstrap, topic, [native("t0", "u0")])
        await legiti.wait_for(lambda: legiti.accepted_count == 1, timeout=20)
        lines = forwarder.events("cannot re-read the API token file; the last token stays in use")
    assert len(lines) == 1, lines


# Finding 3: the credentials halt ----------------------------------------------------------


async def test_a_probe_that_times_out_does_not_release_the_bad_token(
    broker, legiti, tmp_path
) -> None:
    """Before the fix, a timed-out probe closed the halt and released every waiting
    request with the bad token (65 of them in the issue's reproduction)."""
    topic = await create_topic(broker.bootstrap, unique("probe-timeout"))
    await produce(broker.bootstrap, topic, [native(f"p{i}", f"u{i}") for i in range(200)])
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n", encoding="utf-8")
    config = settings(
        broker.bootstrap,
        topic,
        legiti.url,
        legiti_api_token="",
        legiti_api_token_file=str(token_file),
        http_timeout_seconds="0.5",
        max_in_flight="32",
    )
    async with running(config) as forwarder:
        await eventually(lambda: metric(forwarder, "forwarder_credentials_valid") == 0)
        await eventually(
            lambda: forwarder.pipeline is not None and forwarder.pipeline.in_flight == 0
        )
        legiti.faults.latency = 1.0  # every probe now times out
        before = legiti.total_count
        await legiti.wait_for(lambda: legiti.total_count >= before + 2, timeout=15)
        assert legiti.total_count <= before + 3, "a timed-out probe released the waiting sends"
        assert metric(forwarder, "forwarder_credentials_valid") == 0
        legiti.faults.latency = 0.0
        replaced = tmp_path / "token.new"
        replaced.write_text("test-token\n", encoding="utf-8")
        replaced.replace(token_file)
        await eventually(lambda: len(set(keys(legiti))) == 200, timeout=30)
    assert metric(forwarder, "forwarder_events_dead_lettered_total", reason="rejected") == 0
