"""`GET /healthz`: 200 while the daemon is up, with what it serves, its sandboxes and its GPU
slices (as `GET /system/nodes` shows them)."""

from __future__ import annotations

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.config import faasd_version


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return json_response(
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
            "gpus": services.gpus.describe(),
        }
    )

