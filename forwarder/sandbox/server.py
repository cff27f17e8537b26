"""What the sandbox's server processes (the broker, Redis) have in common: a loopback
port, and a process group of their own that `stop` kills whole, at once, as a crash
or a lost node would end them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Self


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port (racy by nature, good enough for loopback tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LocalServer(ABC):
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def start(self, timeout: float = 10.0) -> Self:
        """Start the process and return once it answers, or raise."""

    def stop(self) -> None:
        """Kill the server and its children at once (SIGKILL to the process group)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
