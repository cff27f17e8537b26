"""Shared fixtures: a real broker (Tansu) and a real Redis for the session, a real HTTP Legiti
stand-in per test, and a private Redis for tests that take it away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from forwarder.ops.logs import configure
from forwarder.sandbox.broker import SandboxBroker
from forwarder.sandbox.redis import SandboxRedis


@pytest.fixture(scope="session", autouse=True)
def quiet_logs() -> None:
    """Per-event debug lines would flood the captured output and slow the tests down."""
    configure("WARNING", "console")


@pytest.fixture(scope="session")
def broker() -> Iterator[SandboxBroker]:
    with SandboxBroker() as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[SandboxRedis]:
    """One redis-server for the session: tests keep apart by using their own group ids."""
    with SandboxRedis() as running:
        yield running


@pytest.fixture
def private_redis() -> Iterator[SandboxRedis]:
    """A redis-server of this test's own, which it may `stop()` and `start()` again."""
    with SandboxRedis() as server:
        yield server


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float = 30.0,  # noqa: ASYNC109 - the deadline reads best inline
    what: str = "",
    interval: float = 0.05,
) -> None:
    """Wait for a condition that must be awaited (an HTTP probe, a scraped metric)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


async def eventually(
    predicate: Callable[[], bool],
    timeout: float = 15.0,  # noqa: ASYNC109 - the deadline reads best inline
    what: str = "",
) -> None:
    """Wait for a condition instead of sleeping a guessed amount of time."""

    async def holds() -> bool:
        return predicate()

    await wait_until(holds, timeout, what or str(predicate), interval=0.02)


@pytest.fixture
async def legiti() -> AsyncIterator[object]:
    from forwarder.sandbox.legiti import LegitiStub

    async with LegitiStub() as stub:
        yield stub
