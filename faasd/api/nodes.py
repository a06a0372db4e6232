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
On the leader, every node's entry also has `state`: what that node last reported of itself
(`faasd/cluster/node_state.py`): `{"total_vcpu", "free_vcpu", "healthy", "queued", "running",
"warm": [{"function", "vcpu", "vgpu", "idle"}], "gpus": [...], "age_ms"}`, `age_ms` being
how long ago the node read it. Other nodes do not hold the others' state and show none.

`PUT /system/nodes/{name}/state` is how a node reports (msgpack, admin scope: the cluster's
token); only the leader takes it (409 elsewhere, naming the leader).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.api.strict_json import json_response
from faasd.cluster.node import SoloCluster
from faasd.cluster.node_state import NodeState
from faasd.cluster.state_reporter import take
from faasd.errors import BadRequest, Conflict, NotFound
from faasd.services import Services


def this_node(services: Services) -> dict[str, Any]:
    """This node's resources as the scheduler sees them."""
    node = services.controller.snapshot().nodes[0]
    doc = {
        "healthy": node.healthy,
        "total_vcpu": node.total_vcpu,
        "free_vcpu": node.free_vcpu,
        "gpus": services.gpus.describe(),
    }
    if services.worker is not None:  # workflow stages' outputs kept here for their successors
        doc["outputs"] = services.worker.outputs.describe()
    return doc


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
    if services.state_book is not None and cluster.is_leader():
        now = services.clock.wall()
        for node in doc["nodes"]:
            state = services.state_book.get(node["name"])
            if state is not None:
                node["state"] = state.as_json(now - state.as_of_wall)
    if services.replicator is not None:
        doc = await services.replicator.annotate(doc)
    return json_response(doc)


async def put_state(request: web.Request) -> web.Response:
    """A node's report of its own state, taken by the leader (see the module docstring)."""
    services = request.app[SERVICES]
    cluster, book = services.cluster, services.state_book
    if cluster is None or book is None:
        raise NotFound("this node is not in a cluster: it keeps no other node's state")
    if not cluster.is_leader():
        leader = cluster.leader().name
        raise Conflict(f"{cluster.name} is not the leader; report node state to "
                       f"{leader or 'the leader, once one is elected'}", leader=leader)
    name = request.match_info["name"]
    try:
        state = NodeState.decode(await request.read())
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if state.node != name:
        raise BadRequest(f"the report is {state.node!r}'s state, sent as {name!r}'s")
    if all(m.name != name for m in cluster.members()):
        raise NotFound(f"no member named {name!r} in the cluster's gossip (yet)")
    take(book, state, services.clock.wall(), services.state_arrived)
    return web.Response(status=204)
