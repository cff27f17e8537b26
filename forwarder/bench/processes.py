"""The processes a benchmark run is made of, and what can be read about them from /proc.

Everything measured runs in a process of its own: the sink so that it never
steals the measured client's event loop, and the forwarder (and each limit) so
that its peak RSS and its CPU time belong to it alone and can be read from
/proc/PID, exactly as an operator's container metrics would see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import orjson

from forwarder.sandbox.broker import free_port

TOKEN = "test-token"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


class BenchError(RuntimeError):
    """A process of the benchmark misbehaved; the message says which and where its log is."""


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop, as `forwarder run` does, so every process measured uses the same loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but not running (waiting for a CPU).

    The second field of /proc/PID/task/*/schedstat. On a shared machine this is how
    much of a latency tail is the machine's, not the program's."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def stolen_cpu_seconds() -> float:
    """CPU time the hypervisor gave elsewhere while this machine's CPUs had work (the
    steal column of /proc/stat, all CPUs). A run with seconds of it measured the host as
    much as the program."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / _CLOCK_TICKS


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """VmRSS: the resident set size now, in MiB."""
    return _status_mb(pid, "VmRSS:")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the highest resident set size the process has had, in MiB."""
    return _status_mb(pid, "VmHWM:")


def clean_environment() -> dict[str, str]:
    """This process's environment without FORWARDER_* keys, so a stray variable in the
    caller's shell cannot change what is measured."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FORWARDER_")}


class Child:
    """A child process whose output goes to a log file that error messages point at."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"{self.name} exited with code {self.process.returncode}; see {self.log_path}"
            )

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_http(url: str, child: Child, within: float = 20.0, ok: int = 200) -> None:
    """Poll `url` until it answers `ok` (for at most `within` seconds), failing early if
    the child dies."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            child.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == ok:
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"{child.name}: {url} did not answer {ok} within {within}s")
            await asyncio.sleep(0.02)


class SinkProcess:
    """The fast Legiti stand-in (`forwarder.sandbox.legiti`) in a process of its own.

    `recording` swaps in the benchmark's recording variant, which keeps every
    accepted request's arrival time and writes them out when stopped."""

    def __init__(self, log_dir: Path, *, recording_to: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        module = "forwarder.sandbox.legiti"
        extra = ["--no-record"]
        if recording_to is not None:
            module, extra = "forwarder.bench.recording_sink", ["--dump", str(recording_to)]
        argv = [sys.executable, "-m", module, "--port", str(self.port), *extra]
        self.child = Child(
            "sink" if recording_to is None else "recording-sink",
            argv,
            log_dir,
            {
                **clean_environment(),
                "PYTHONUNBUFFERED": "1",
            },
        )
        self._client = httpx.AsyncClient(base_url=self.url, timeout=5.0)

    async def start(self) -> SinkProcess:
        try:
            await wait_http(f"{self.url}/_stub/stats", self.child)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stats(self) -> dict[str, Any]:
        response = await self._client.get("/_stub/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    async def reset(self) -> None:
        (await self._client.post("/_stub/reset")).raise_for_status()

    async def wait_accepted(
        self, expected: int, within: float, watch: Child | None = None
    ) -> dict[str, Any]:
        """Poll the counters until `expected` requests were accepted (for at most `within`
        seconds, failing early if the sink or `watch` dies); returns the stats."""
        deadline = time.monotonic() + within
        while True:
            stats = await self.stats()
            if stats["accepted"] >= expected:
                return stats
            self.child.check_alive()
            if watch is not None:
                watch.check_alive()
            if time.monotonic() > deadline:
                where = f"; see {watch.log_path}" if watch is not None else ""
                raise BenchError(
                    f"the sink accepted {stats['accepted']} of {expected} requests "
                    f"within {within:.0f}s (statuses {stats['status_counts']}){where}"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        await self._client.aclose()
        self.child.stop()


class McpServerProcess:
    """The sandbox MCP server (`forwarder.sandbox.mcp_server`, the official SDK's server)
    in a process of its own, answering in JSON, in front of the Legiti stand-in at
    `legiti_url`."""

    def __init__(self, log_dir: Path, legiti_url: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "forwarder.sandbox.mcp_server",
            "--json",
            "--legiti",
            legiti_url,
            "--legiti-token",
            TOKEN,
        ]
        env = {**clean_environment(), "PYTHONUNBUFFERED": "1"}
        self.child = Child("mcp-server", argv, log_dir, env)
        self.url = ""

    async def start(self, within: float = 30.0) -> McpServerProcess:
        """Wait for the `listening URL` line it prints once it serves."""
        deadline = time.monotonic() + within
        try:
            while not self.url:
                self.child.check_alive()
                for line in self.child.output().splitlines():
                    if line.startswith("listening "):
                        self.url = line.removeprefix("listening ").strip()
                if time.monotonic() > deadline:
                    raise BenchError(f"the MCP server did not start; see {self.child.log_path}")
                await asyncio.sleep(0.02)
        except BaseException:
            self.child.stop()
            raise
        return self

    def stop(self) -> None:
        self.child.stop()


def delivery_rate(stats: dict[str, Any]) -> float:
    """Accepted requests per second between the first and the last one, as the sink saw them."""
    span = stats["wall_last_accepted_at"] - stats["wall_first_accepted_at"]
    if stats["accepted"] < 2 or span <= 0:
        raise BenchError(f"too few deliveries to measure a rate: {stats}")
    return float((stats["accepted"] - 1) / span)


class ForwarderProcess:
    """`python -m forwarder run`, configured the way an operator would: through FORWARDER_*."""

    def __init__(self, log_dir: Path, name: str, settings: dict[str, str]) -> None:
        self.metrics_port = free_port()
        env = {
            **clean_environment(),
            "FORWARDER_LEGITI_API_TOKEN": TOKEN,
            "FORWARDER_METRICS_HOST": "127.0.0.1",
            "FORWARDER_METRICS_PORT": str(self.metrics_port),
            **settings,
        }
        self.child = Child(name, [sys.executable, "-m", "forwarder", "run"], log_dir, env)
        self.cpu_at_start = 0.0

    @property
    def pid(self) -> int:
        return self.child.pid

    async def wait_started(self) -> None:
        """Wait for the metrics port; from here on, CPU time is the pipeline's, not imports'."""
        await wait_http(f"http://127.0.0.1:{self.metrics_port}/healthz", self.child)
        self.cpu_at_start = cpu_seconds(self.pid)

    async def wait_ready(self, within: float = 30.0) -> None:
        """In the consumer group with partitions assigned: records produced now are read."""
        await wait_http(f"http://127.0.0.1:{self.metrics_port}/readyz", self.child, within)

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
            return response.text

    def cpu_since_start(self) -> float:
        return cpu_seconds(self.pid) - self.cpu_at_start

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self) -> int | None:
        """SIGTERM, as Kubernetes would; the exit code is reported, not judged: a shutdown
        problem is the daemon's tests' business, and the numbers were taken before."""
        return self.child.stop()


def _worker_argv(module: str, arguments: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", module, orjson.dumps(arguments).decode()]


def worker_child(log_dir: Path, name: str, module: str, arguments: dict[str, Any]) -> Child:
    """A worker that runs until stopped rather than to completion."""
    return Child(name, _worker_argv(module, arguments), log_dir, clean_environment())


async def wait_line(child: Child, line: str, within: float = 30.0) -> None:
    """Wait until the child has printed `line` (flushed), failing early if it dies."""
    deadline = time.monotonic() + within
    while line not in child.output().splitlines():
        child.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not print {line!r} within {within}s")
        await asyncio.sleep(0.02)


async def run_worker(
    log_dir: Path, name: str, module: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """Run `python -m module '<json>'` to completion; parse the JSON line it prints last."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *_worker_argv(module, arguments),
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=log,
        )
        stdout, _ = await process.communicate()
    if process.returncode != 0:
        raise BenchError(f"{name} exited with code {process.returncode}; see {log_path}")
    lines = stdout.decode().strip().splitlines()
    if not lines:
        raise BenchError(f"{name} printed no result; see {log_path}")
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result
