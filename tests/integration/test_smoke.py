from __future__ import annotations

from tests.conftest import eventually
from tests.factories import native
from tests.integration.kafka_helpers import create_topic, produce, running, settings, unique


async def test_forwards_native_events(broker, legiti) -> None:
    topic = await create_topic(broker.bootstrap, unique())
    await produce(broker.bootstrap, topic, [native(f"e{i}", f"u{i % 7}") for i in range(50)])
    async with running(settings(broker.bootstrap, topic, legiti.url)):
        await eventually(lambda: len(legiti.accepted) == 50, what="50 deliveries")
    assert sorted(r.idempotency_key for r in legiti.accepted) == sorted(f"e{i}" for i in range(50))
