"""What `GET /system/nodes` and `faasd nodes` show: members and the leader, as JSON (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faasd.cluster.leadership import Leader
from faasd.cluster.members import TAG_VCPU, Member


def nodes_doc(me: str, members: Iterable[Member], leader: Leader) -> dict[str, Any]:
    """`{"leader": NAME|None, "term": N, "self": {...}, "nodes": [...]}`, nodes by name.

    A node's `address` is its HTTP HOST:PORT (its `http` tag; the gossip address when it has
    none), `gossip` its Serf address; `term` is set on the leader only.
    """
    nodes = []
    for m in sorted(members, key=lambda m: m.name):
        leads = m.name == leader.name
        vcpu = m.tags.get(TAG_VCPU, "")
        nodes.append({
            "name": m.name,
            "address": m.http or m.address,
            "gossip": m.address,
            "role": m.role,
            "status": m.status.value,
            "leader": leads,
            "term": leader.term if leads else None,
            "vcpu": int(vcpu) if vcpu.isdigit() else None,
        })
    return {
        "leader": leader.name,
        "term": leader.term,
        "self": {"name": me, "leader": leader.name == me},
        "nodes": nodes,
    }
