"""The daemon-to-daemon paths of a call placed across the cluster (msgpack; admin scope, which
the cluster's token has). `faasd/cluster/entry.py` has the protocol.

* `POST /system/cluster/jobs` (to the leader): an entry node's tickets; the leader queues them
  and answers with the ones it refused and why (409 on a node that does not lead);
* `POST /system/cluster/assign` (to an entry node): run these calls of a batch on a worker;
  answered with how the batch went, once it has run (409 for a stale term);
* `POST /system/cluster/run` (to a worker): an entry node's share of a batch, answered with
  each call's result (409 for a stale term);
* `POST /system/cluster/outputs` (to the node holding a workflow stage's outputs): a
  successor's node reads them, once (`faasd/cluster/outputs.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from faasd.api.keys import SERVICES
from faasd.cluster.entry import Entry
from faasd.cluster.errors import NotRun
from faasd.cluster.messages import (
    MessageError,
    decode_assignment,
    decode_run,
    decode_tickets,
    encode_refusals,
    encode_run_reply,
    encode_summary,
)
from faasd.cluster.node import Cluster
from faasd.cluster.outputs import decode_pull, encode_pulled
from faasd.cluster.peers import MSGPACK
from faasd.cluster.worker import Worker
from faasd.errors import BadRequest, Conflict, FaasdError, NotFound
from faasd.gateway import NO_ITEM, Invocation
from faasd.services import Services

T = TypeVar("T")


def _in_cluster(services: Services) -> tuple[Cluster, Entry, Worker]:
    if services.cluster is None or services.entry is None or services.worker is None:
        raise NotFound("this node is not in a cluster: no other node places calls here")
    return services.cluster, services.entry, services.worker


async def _decoded(request: web.Request, decode: Callable[[bytes], T]) -> T:
    """The request's body as `decode` reads it; a malformed one is a 400 that says why."""
    try:
        return decode(await request.read())
    except MessageError as exc:
        raise BadRequest(str(exc)) from None


def _msgpack(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=MSGPACK)


async def take_jobs(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    cluster, _, _ = _in_cluster(services)
    if not cluster.is_leader():
        leader = cluster.leader().name
        raise Conflict(f"{cluster.name} is not the leader; place calls with "
                       f"{leader or 'the leader, once one is elected'}", leader=leader)
    tickets = await _decoded(request, decode_tickets)
    now = services.clock.now()
    refused: dict[str, FaasdError] = {}
    for ticket in tickets:
        try:
            try:
                version, _ = services.catalog.get(ticket.function)
            except NotFound:
                raise NotRun(f"the leader {cluster.name} has no function {ticket.function!r} "
                             "yet (its deployment is still reaching every node)") from None
            services.controller.submit(Invocation(
                id=ticket.id, function=ticket.function, version=version, item=NO_ITEM,
                start_s=now - ticket.age_s, deadline_s=now + ticket.left_s, app=ticket.app,
                request_id=ticket.request_id, submitted_s=now, entry=ticket.entry,
                input_node=ticket.input_node))
        except FaasdError as exc:
            refused[ticket.id] = exc
    return _msgpack(encode_refusals(refused))


async def assign(request: web.Request) -> web.Response:
    _, entry, _ = _in_cluster(request.app[SERVICES])
    summary = await entry.assigned(await _decoded(request, decode_assignment))
    return _msgpack(encode_summary(summary))


async def outputs(request: web.Request) -> web.Response:
    _, _, worker = _in_cluster(request.app[SERVICES])
    wanted = await _decoded(request, decode_pull)
    return _msgpack(encode_pulled(worker.serve_outputs(wanted)))


async def run(request: web.Request) -> web.Response:
    _, _, worker = _in_cluster(request.app[SERVICES])
    reply = await worker.run(await _decoded(request, decode_run))
    return _msgpack(b"".join(bytes(b) for b in encode_run_reply(reply)))
