"""A `forwarder run` in a child process, for tests that need real signals and real crashes.

In-process forwarders (`kafka_helpers.running`) cannot be killed with SIGKILL or sent
SIGTERM; these tests need exactly that. The child's stderr (its JSON log) goes to a file
so a test can grep it after the fact, and the metrics port is picked up front so the
test knows where `/metrics`, `/healthz` and `/readyz` are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
from prometheus_client.parser import text_string_to_metric_families

from forwarder.sandbox.broker import free_port

TOKEN = "test-token"
KILL_GRACE = 10.0


def forwarder_env(
    bootstrap: str, topic: str, legiti_url: str, **overrides: str | int | float
) -> dict[str, str]:
    """FORWARDER_* settings tuned for tests: fast group joins, frequent commits, short backoff.

    Keyword overrides are setting names without the prefix (`max_in_flight=8`)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPICS": topic,
        "KAFKA_GROUP_ID": f"group-{topic}",
        "LEGITI_BASE_URL": legiti_url,
        "LEGITI_API_TOKEN": TOKEN,
        "METRICS_HOST": "127.0.0.1",
        "COMMIT_INTERVAL_SECONDS": "0.2",
        "RETRY_INITIAL_BACKOFF_SECONDS": "0.05",
        "RETRY_MAX_BACKOFF_SECONDS": "0.5",
        # The sandbox broker delays a join by half the session timeout.
        "KAFKA_SESSION_TIMEOUT_MS": "2000",
        "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "LOG_FORMAT": "json",
    }
    env.update({key.upper(): str(value) for key, value in overrides.items()})
    return {f"FORWARDER_{key}": value for key, value in env.items()}


def sample_key(name: str, labels: Mapping[str, str] | None = None) -> str:
    """`name{a="1",b="2"}` with labels sorted; just `name` without labels."""
    if not labels:
        return name
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample_key(sample.name, sample.labels)] = sample.value
    return samples


class ForwarderProcess:
    """`python -m forwarder run` with the given FORWARDER_* settings.

    Use as a (sync or async) context manager: on exit the process is gone, whatever
    the test did (SIGTERM, then SIGKILL if it does not leave within KILL_GRACE)."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        name: str = "forwarder",
        args: tuple[str, ...] = ("run",),
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.metrics_port = int(env.get("FORWARDER_METRICS_PORT") or free_port())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")},
            **env,
            "FORWARDER_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        self.args = args
        directory = log_dir or Path(tempfile.mkdtemp(prefix="forwarder-test-"))
        self.stderr_path = directory / f"{name}-{self.metrics_port}.stderr.log"
        self.stdout_path = directory / f"{name}-{self.metrics_port}.stdout.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._client: httpx.AsyncClient | None = None

    # Lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> Self:
        assert self.process is None, "already started"
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "forwarder", *self.args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        self.started_at = time.monotonic()
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        """SIGTERM: the graceful stop Kubernetes sends."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing in the process gets to run."""
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """The exit code, waiting without blocking the test's event loop (in-process stubs)."""
        assert self.process is not None, "not started"
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} still running {timeout}s later; log tail:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.02)
        return code

    def cleanup(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    async def __aenter__(self) -> Self:
        return self.start() if self.process is None else self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                # Wait asynchronously: the in-process Legiti stub must keep answering
                # or the child's drain would hang on it.
                with contextlib.suppress(AssertionError):
                    await self.wait(KILL_GRACE)
        finally:
            self.kill()  # only if it is still there
            if self._client is not None:
                await self._client.aclose()

    # HTTP --------------------------------------------------------------------------------

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=2.0)
        return self._client

    async def get(self, path: str) -> httpx.Response:
        return await self._http.get(path)

    async def probe(self, path: str) -> int | None:
        """The status of GET path, or None while nothing answers."""
        try:
            return (await self._http.get(path)).status_code
        except httpx.TransportError:
            return None

    async def readiness(self) -> tuple[int, dict[str, Any]] | None:
        try:
            response = await self._http.get("/readyz")
        except httpx.TransportError:
            return None
        return response.status_code, response.json()

    async def wait_ready(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before it was ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            last = await self.readiness()
            if last is not None and last[0] == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} not ready after {timeout}s (last /readyz: {last}); "
                    f"log tail:\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as {'name{label="value",...}': value}."""
        response = await self._http.get("/metrics")
        response.raise_for_status()
        return parse_metrics(response.text)

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).get(sample_key(name, labels), 0.0)

    # Logs ----------------------------------------------------------------------------------

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self) -> str:
        try:
            return self.stdout_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (complete lines only; a line that is not JSON raises)."""
        text = self.stderr()
        complete = text if text.endswith("\n") else text.rpartition("\n")[0]
        entries = []
        for number, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(
                    f"{self.name}'s stderr line {number} is not a JSON log line: {line!r}\n"
                    f"log tail:\n{self.log_tail()}"
                ) from None
        return entries

    def events(self, event: str) -> list[dict[str, Any]]:
        """Log entries whose `event` message is exactly `event`."""
        return [line for line in self.log_lines() if line.get("event") == event]


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float = 30.0,  # noqa: ASYNC109
    what: str = "",
) -> None:
    """`eventually` for conditions that must be awaited (an HTTP probe, a metric)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.05)
