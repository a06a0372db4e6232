"""`GET /metrics`: Prometheus text exposition of the daemon's `faasd_*` metrics."""

from __future__ import annotations

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.metrics import CONTENT_TYPE


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
