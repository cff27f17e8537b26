"""Shared fixtures: a real broker (Tansu) and a real Redis for the session, a real HTTP Legiti
stand-in per test, and a private Redis for tests that take it away."""

from __future__ import annotations

import asyncio
import inspect
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


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 15.0,  # noqa: ASYNC109 - the deadline reads best inline
    what: str = "",
) -> None:
    """Wait for a condition instead of sleeping a guessed amount of time.

    The predicate may be a coroutine function, for conditions that need a round trip."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        answer = predicate()
        return await answer if inspect.isawaitable(answer) else answer

    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def legiti() -> AsyncIterator[object]:
    from forwarder.sandbox.legiti import LegitiStub

    async with LegitiStub() as stub:
        yield stub
