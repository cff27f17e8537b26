"""`/metrics`, `/healthz` and `/readyz` on one port, served from the event loop.

Serving from the event loop itself (not a side thread, as prometheus-client's
own server would) is the point of `/healthz`: if the loop is wedged, the probe
fails and Kubernetes restarts the pod.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forwarder.ops.metrics import Metrics

ReadinessCheck = Callable[[], dict[str, bool]]


class HealthServer:
    def __init__(self, metrics: Metrics, readiness: ReadinessCheck, host: str, port: int) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        listener = socket.create_server((self._host, self._port), reuse_port=False)
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _checks(self) -> dict[str, bool]:
        checks = self._readiness()
        self._metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        self._checks()
        return web.Response(
            body=generate_latest(self._metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _serve_health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _serve_ready(self, _request: web.Request) -> web.Response:
        checks = self._checks()
        ready = all(checks.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status=200 if ready else 503,
        )
