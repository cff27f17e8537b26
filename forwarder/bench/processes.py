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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from forwarder.sandbox.broker import free_port
from forwarder.sandbox.legiti import TOKEN
from forwarder.sandbox.process import Child, clean_environment, wait_http

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A process of the benchmark misbehaved; the message says which and where its log is."""


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
        await self.child.stop()


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
            await self.child.stop()
            raise
        return self

    async def stop(self) -> None:
        await self.child.stop()


def delivery_rate(stats: dict[str, Any]) -> float:
    """Accepted requests per second between the first and the last one, as the sink saw them."""
    span = stats["wall_last_accepted_at"] - stats["wall_first_accepted_at"]
    if stats["accepted"] < 2 or span <= 0:
        raise BenchError(f"too few deliveries to measure a rate: {stats}")
    return float((stats["accepted"] - 1) / span)


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
