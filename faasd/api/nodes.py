"""`GET /system/nodes`: the nodes faasd schedules on, with their vCPUs and GPU slices.

On one node the list holds the node itself: `[{"name", "healthy", "total_vcpu", "free_vcpu",
"gpus": [{"index", "uuid", "name", "mode", "healthy", "memory_mb", "total_units", "free_units",
"instances": [{"uuid", "profile", "units", "memory_mb", "in_use"}]}]}]` (`instances` is empty
outside MIG mode).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.services import Services


def this_node(services: Services) -> dict[str, Any]:
    node = services.controller.snapshot().nodes[0]
    return {
        "name": node.name,
        "healthy": node.healthy,
        "total_vcpu": node.total_vcpu,
        "free_vcpu": node.free_vcpu,
        "gpus": services.gpus.describe(),
    }


async def list_nodes(request: web.Request) -> web.Response:
    return web.json_response([this_node(request.app[SERVICES])])
