"""The Kafka side: consume, pause under back-pressure, commit the finished prefix.

The poll loop never blocks on the sink. When the pipeline is full (in-flight
bound, rate limits, an outage or bad credentials all end up there) the
partitions are paused (only those whose commit lags, when that is the problem)
and `getmany` keeps being called, which returns nothing
but tells the group coordinator this member is alive: waiting can last hours
without exceeding `max_poll_interval_ms` or triggering a rebalance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from forwarder.engine.pipeline import Pipeline
from forwarder.kafka.records import to_record
from forwarder.ops.logs import RepeatSuppressor, get_logger
from forwarder.ops.metrics import Metrics

POLL_TIMEOUT_MS = 100
COMMIT_TIMEOUT = 5.0
"""aiokafka retries a commit forever on retriable errors (a deleted topic, a coordinator
that does not come back); bounded, a stuck commit is counted and tried at the next tick
instead of holding the lock that the rebalance callback and shutdown wait for."""
CLOSE_STEP_TIMEOUT = 3.0
"""The final commit and leaving the group each get this long at shutdown, so that a
stop always ends within FORWARDER_SHUTDOWN_TIMEOUT_SECONDS plus a few of these."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._source.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._source.partitions_assigned(assigned)


class KafkaSource:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: list[str],
        pipeline: Pipeline,
        metrics: Metrics,
        commit_interval: float,
        *,
        max_poll_records: int,
        settle_timeout: float,
        rebalanced: Callable[[int, int, float], None] | None = None,
    ) -> None:
        """`settle_timeout`: how long a revocation waits for the revoked partitions'
        sends (within the group's rebalance timeout). `rebalanced(assigned, total, now)`
        hears of every change of assignment: how many partitions this member holds of
        all the subscribed topics' (the limits split by partition share use it)."""
        self._consumer: AIOKafkaConsumer | None = consumer
        self._topics = topics
        self._rebalanced = rebalanced
        self._pipeline = pipeline
        self._metrics = metrics
        self._commit_interval = commit_interval
        self._max_poll_records = max_poll_records
        self._settle_timeout = settle_timeout
        self._committed: dict[tuple[str, int], int] = {}
        self._commit_lock = asyncio.Lock()
        self._log = get_logger("forwarder.kafka.source")
        self._throttle = RepeatSuppressor(30.0)
        self.in_group = False
        consumer.subscribe(topics, listener=_Rebalance(self))

    # Main loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set; then pause everything and return (the caller drains).

        Each poll races the stop signal: while the group rebalances, `getmany` can wait
        for the new assignment far longer than its timeout, and SIGTERM must not."""
        assert self._consumer is not None
        consumer = self._consumer
        committer = asyncio.create_task(self._commit_loop(stop), name="committer")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            while not stop.is_set():
                self._apply_backpressure(consumer)
                poll = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self._max_records())
                )
                await asyncio.wait((poll, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError, KafkaError):
                        await poll
                    break
                try:
                    batch = poll.result()
                except KafkaError as exc:
                    self._warn("kafka poll failed; retrying", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)
                    continue
                if batch:
                    await self._pipeline.submit_batch(
                        [to_record(message) for messages in batch.values() for message in messages]
                    )
        finally:
            stopping.cancel()
            consumer.pause(*consumer.assignment())
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    def _max_records(self) -> int:
        """`getmany(max_records=…)` overrides the consumer's own `max_poll_records`, so
        the setting is applied here, with the room left in the buffer."""
        room = self._pipeline.max_buffered - self._pipeline.buffered
        return max(1, min(self._max_poll_records, room))

    def _apply_backpressure(self, consumer: AIOKafkaConsumer) -> None:
        """Pause what the pipeline says to, per partition, every round (new assignments
        arrive unpaused), and resume the rest."""
        paused = self._pipeline.partitions_to_pause()
        held: list[TopicPartition] = []
        free: list[TopicPartition] = []
        for tp in consumer.assignment():
            (held if (tp.topic, tp.partition) in paused else free).append(tp)
        consumer.pause(*held)
        consumer.resume(*free)

    # Offsets --------------------------------------------------------------------------

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._commit_interval)
            try:
                await self.commit()
                self._update_lag()
            except Exception as exc:  # commits must outlive any one failure
                self._warn("offset commit loop error; continuing", exc)

    async def commit(
        self, only: set[tuple[str, int]] | None = None, within: float = COMMIT_TIMEOUT
    ) -> None:
        """Commit every partition's finished prefix that moved since the last commit."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            offsets = {
                partition: offset
                for partition, offset in self._pipeline.committable().items()
                if self._committed.get(partition) != offset and (only is None or partition in only)
            }
            if not offsets:
                return
            try:
                await asyncio.wait_for(
                    consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()}),
                    within,
                )
            except (CommitFailedError, KafkaError, TimeoutError) as exc:
                self._metrics.commits.labels(result="failed").inc()
                self._warn("offset commit failed; will retry", exc)
                return
            self._committed.update(offsets)
            self._metrics.commits.labels(result="ok").inc()

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        committable = self._pipeline.committable()
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            done = committable.get(
                (tp.topic, tp.partition), self._committed.get((tp.topic, tp.partition))
            )
            if done is None:
                continue
            self._metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
                max(0, highwater - done)
            )

    # Rebalance ------------------------------------------------------------------------

    async def partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before the partitions move: let their sends under way be answered and send
        what was consumed ahead of delivered events (bounded by the settle timeout, inside
        the rebalance timeout), commit what is finished, then forget them. The new owner
        then starts after everything this member delivered, and never sends a user's
        next event while this member's request for the previous one is on the wire."""
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        self.in_group = False
        if partitions:
            settled = await self._pipeline.settle(partitions, self._settle_timeout)
            if not settled:
                self._log.warning(
                    "revoked partitions not settled within the timeout; their unfinished"
                    " events will be read again by the new owner",
                    timeout_seconds=self._settle_timeout,
                )
        # After the settling sends (nobody else holds the partitions before this returns).
        self._share_changed(exclude=partitions)
        await self.commit(partitions)
        self._pipeline.revoke(partitions)
        for topic, partition in partitions:
            self._committed.pop((topic, partition), None)
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(topic, str(partition))
        if revoked:
            self._log.info(
                "partitions revoked", partitions=sorted(f"{t}-{p}" for t, p in partitions)
            )

    def partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.in_group = True
        self._metrics.rebalances.inc()
        self._share_changed()
        self._pipeline.assign((tp.topic, tp.partition) for tp in assigned)
        self._log.info(
            "partitions assigned",
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in assigned),
        )

    def _share_changed(self, exclude: set[tuple[str, int]] | None = None) -> None:
        """Tell the limits how many partitions this member holds now, of how many. A
        topic whose partition count is not known yet counts as held by others, so the
        share can only come out too small."""
        consumer = self._consumer
        if self._rebalanced is None or consumer is None:
            return
        held = {(tp.topic, tp.partition) for tp in consumer.assignment()} - (exclude or set())
        total = 0
        for topic in self._topics:
            partitions = consumer.partitions_for_topic(topic)
            total += len(partitions) if partitions else 0
        known = {topic for topic in self._topics if consumer.partitions_for_topic(topic)}
        assigned = sum(1 for topic, _ in held if topic in known)
        self._rebalanced(assigned, max(total, 1), time.monotonic())

    # Shutdown ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Commit the finished prefix and leave the group (so the rebalance is immediate)."""
        consumer = self._consumer
        if consumer is None:
            return
        await self.commit(within=CLOSE_STEP_TIMEOUT)
        self.in_group = False
        try:
            await asyncio.wait_for(consumer.stop(), CLOSE_STEP_TIMEOUT)
        except TimeoutError:
            self._log.warning("leaving the group timed out; the group will expire this member")
        self._consumer = None

    def _warn(self, message: str, exc: BaseException) -> None:
        suppressed = self._throttle.allow(message, time.monotonic())
        if suppressed is not None:
            self._log.warning(message, error=repr(exc), suppressed=suppressed)
