"""Child processes of the tests and the benchmark, `forwarder run` first among them.

A forwarder in a process of its own is the real thing: it can be sent SIGTERM or
SIGKILL, and its CPU time and memory are its own. Its output goes to a log file that
every error message points at, and its metrics port is chosen up front so that the
caller knows where `/metrics`, `/healthz` and `/readyz` are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from forwarder.sandbox.broker import free_port
from forwarder.sandbox.samples import Samples

_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 30


class ChildFailed(RuntimeError):
    """A child process exited, or did not answer, when it should have."""


def clean_environment() -> dict[str, str]:
    """This process's environment without FORWARDER_* keys, so that a stray variable in
    the caller's shell cannot change what a child does."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}


class Child:
    """A child process in a session of its own, its stdout and stderr in `log_path`."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: Mapping[str, str]) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def failure(self, what: str) -> ChildFailed:
        """An error saying what went wrong, where the whole log is and how it ends."""
        return ChildFailed(
            f"{self.name} {what}; see {self.log_path}, which ends:\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        if not self.running():
            raise self.failure(f"exited with code {self.returncode}")

    def terminate(self) -> None:
        """SIGTERM: the graceful stop Kubernetes sends."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the child and anything it started: a crash, nothing gets to run."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """The exit code, waited for without blocking this process's event loop (which
        may be serving the child, as an in-process Legiti stand-in does)."""
        deadline = time.monotonic() + timeout
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                raise self.failure(f"still running {timeout}s later")
            await asyncio.sleep(_POLL_INTERVAL)
        return code

    async def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `grace`; the exit code."""
        self.terminate()
        try:
            return await self.wait(grace)
        except ChildFailed:
            self.kill()
        return self.process.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


async def wait_http(url: str, child: Child, within: float = 20.0, ok: int = 200) -> None:
    """Poll `url` until it answers `ok` (for at most `within` seconds), failing early if
    the child that serves it exits."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            child.check_alive()
            try:
                response = await client.get(url)
            except httpx.HTTPError as exc:
                last = repr(exc)
            else:
                if response.status_code == ok:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            if time.monotonic() > deadline:
                raise child.failure(f"did not answer {ok} at {url} within {within}s (last: {last})")
            await asyncio.sleep(_POLL_INTERVAL)


class ForwarderProcess(Child):
    """`python -m forwarder run`, configured as an operator would: through FORWARDER_*
    variables (`forwarder.sandbox.settings.sandbox_env`) and nothing else.

    As an async context manager it is gone on exit, whatever the caller did: SIGTERM,
    then SIGKILL if it does not leave in time."""

    def __init__(self, env: Mapping[str, str], *, log_dir: Path, name: str = "forwarder") -> None:
        self.metrics_port = int(env.get("FORWARDER_METRICS_PORT") or 0) or free_port()
        self.base_url = f"http://127.0.0.1:{self.metrics_port}"
        environment = {
            **clean_environment(),
            **env,
            "FORWARDER_METRICS_PORT": str(self.metrics_port),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "forwarder", "run"]
        super().__init__(name, argv, log_dir, environment)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=5.0)

    async def stop(self, grace: float = 30.0) -> int:
        try:
            return await super().stop(grace)
        finally:
            await self._http.aclose()

    # HTTP ------------------------------------------------------------------------------

    async def get(self, path: str) -> httpx.Response:
        return await self._http.get(path)

    async def probe(self, path: str) -> int | None:
        """The status of GET path, or None while nothing answers."""
        try:
            return (await self._http.get(path)).status_code
        except httpx.TransportError:
            return None

    async def readiness(self) -> tuple[int, dict[str, Any]] | None:
        """The status and body of /readyz, or None while nothing answers."""
        try:
            response = await self._http.get("/readyz")
        except httpx.TransportError:
            return None
        return response.status_code, response.json()

    async def wait_started(self, within: float = 20.0) -> None:
        """Until /healthz answers: imported, configured and serving, maybe not yet ready."""
        await wait_http(f"{self.base_url}/healthz", self, within)

    async def wait_ready(self, within: float = 30.0) -> None:
        """Until /readyz answers 200: in the consumer group with partitions assigned, so
        records produced from now on are read."""
        await wait_http(f"{self.base_url}/readyz", self, within)

    async def metrics(self) -> Samples:
        response = await self._http.get("/metrics")
        response.raise_for_status()
        return Samples.parse(response.text)

    async def metric(self, name: str, **labels: str) -> float:
        return (await self.metrics()).value(name, **labels)

    # Logs ------------------------------------------------------------------------------

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (complete lines only)."""
        text = self.output()
        complete = text if text.endswith("\n") else text.rpartition("\n")[0]
        entries = []
        for number, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise self.failure(f"wrote line {number}, not a JSON log line: {line!r}") from None
        return entries

    def events(self, event: str) -> list[dict[str, Any]]:
        """Log entries whose `event` message is exactly `event`."""
        return [line for line in self.log_lines() if line.get("event") == event]
