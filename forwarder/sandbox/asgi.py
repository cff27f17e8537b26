"""Serve an ASGI application (the sandbox MCP server, the gateway) in this event loop.

uvicorn's `Server.serve` takes over SIGINT and SIGTERM while it runs, which is right
for a server process and wrong for a test or for `forwarder demo`, whose own
handlers must keep working; so the server is started and shut down directly, on a
socket bound here (uvicorn exits the process when it cannot bind). The port is the
kernel's choice the first time and the same one after a restart. A stop is quick
and a little abrupt, as a restart in production would be: streams still open after
`grace` seconds are cut.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import uvicorn


class AsgiServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, grace: int = 1) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._grace = grace
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                self.app,
                log_level=logging.WARNING,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=self._grace,
            )
            config.load()
            server = uvicorn.Server(config)
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
        except SystemExit as exc:  # uvicorn's way of saying the application did not start
            sock.close()
            raise RuntimeError(f"the application on {self.host}:{self.port} did not start") from exc
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock

    async def stop(self) -> None:
        server, self._server = self._server, None
        sock, self._socket = self._socket, None
        if server is not None and sock is not None:
            await server.shutdown(sockets=[sock])
