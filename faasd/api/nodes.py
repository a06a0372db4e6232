"""`GET /system/nodes`: the cluster's members and its leader (a lone node lists itself), and for
this node its vCPUs and GPU slices.

`{"leader", "term", "self": {"name", "leader"}, "nodes": [{"name", "address", "gossip", "role",
"status", "leader", "term", "vcpu", ...}]}`; this node's entry adds `healthy`, `total_vcpu`,
`free_vcpu` and `gpus: [{"index", "uuid", "name", "mode", "healthy", "memory_mb",
"total_units", "free_units", "instances": [{"uuid", "profile", "units", "memory_mb",
"in_use"}]}]` (`instances` is empty outside MIG mode). In a cluster every node has
`replication: {"functions": [...], "workflows": [...], "failed": {"functions": {name: {"digest",
"error", "state"}}, "workflows": {...}}}`: what is deployed cluster-wide, and what this node has
not applied, `waiting` (retried by itself: a workflow's functions not arrived yet) or `failed`
(not retried until it is redeployed) (`faasd/cluster/replication.py`).
Other members' resources reach the leader with the cluster's state, not through this view.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.cluster.node import SoloCluster
from faasd.services import Services


def this_node(services: Services) -> dict[str, Any]:
    """This node's resources as the scheduler sees them."""
    node = services.controller.snapshot().nodes[0]
    return {
        "healthy": node.healthy,
        "total_vcpu": node.total_vcpu,
        "free_vcpu": node.free_vcpu,
        "gpus": services.gpus.describe(),
    }


async def list_nodes(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    cluster = services.cluster
    if cluster is None:
        solo = SoloCluster(services.config.node_name or "faasd", services.config.vcpu_capacity)
        await solo.start(request.host)
        cluster = solo
    doc = await cluster.nodes()
    me = doc["self"]["name"]
    for node in doc["nodes"]:
        if node["name"] == me:
            node.update(this_node(services))
    if services.replicator is not None:
        doc = await services.replicator.annotate(doc)
    return web.json_response(doc)
