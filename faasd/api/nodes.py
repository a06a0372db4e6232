"""`GET /system/nodes`: the cluster's members and its leader (a lone node lists itself)."""

from __future__ import annotations

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.cluster.node import SoloCluster


async def list_nodes(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    cluster = services.cluster
    if cluster is None:
        solo = SoloCluster(services.config.node_name or "faasd", services.config.vcpu_capacity)
        host = request.host
        await solo.start(host)
        cluster = solo
    return web.json_response(await cluster.nodes())
