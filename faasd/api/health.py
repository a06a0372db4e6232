"""`GET /healthz`: 200 while the daemon is up, with what it serves and its sandboxes."""

from __future__ import annotations

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.config import faasd_version


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response(
        {
            "status": "ok",
            "ready": services.readiness.ready and services.controller.accepting,
            "version": faasd_version(),
            "functions": len(services.catalog.list()),
            "workflows": len(services.workflows.list()),
            "vcpu_capacity": services.config.vcpu_capacity,
            "queued": sum(services.controller.queue_lengths().values()),
            "in_flight": services.controller.pending_total(),
            "sandboxes": services.pool_stats(),
        }
    )

