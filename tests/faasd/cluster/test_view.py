"""`GET /system/nodes` as a value, and on a lone daemon (no engines)."""

from __future__ import annotations

import aiohttp

from faasd.cluster.leadership import Leader
from faasd.cluster.members import Member, Status
from faasd.cluster.view import nodes_doc
from faasd.daemon import Daemon


def test_nodes_doc_marks_the_leader_and_its_term_only() -> None:
    members = [
        Member("b", "127.0.0.3:7946", Status.FAILED, {"role": "voter", "http": "127.0.0.3:80"}),
        Member("a", "127.0.0.2:7946", Status.ALIVE,
               {"role": "voter", "http": "127.0.0.2:80", "vcpu": "4"}),
        Member("c", "127.0.0.4:7946", Status.LEFT, {}),
    ]
    doc = nodes_doc("b", members, Leader("a", 7))
    assert doc["leader"] == "a" and doc["term"] == 7
    assert doc["self"] == {"name": "b", "leader": False}
    assert [(n["name"], n["address"], n["role"], n["status"], n["leader"], n["term"], n["vcpu"])
            for n in doc["nodes"]] == [
        ("a", "127.0.0.2:80", "voter", "alive", True, 7, 4),
        ("b", "127.0.0.3:80", "voter", "failed", False, None, None),
        ("c", "127.0.0.4:7946", "worker", "left", False, None, None),  # no http tag: gossip
    ]
    assert nodes_doc("b", members, Leader(None, 7))["leader"] is None


async def test_a_lone_daemon_lists_itself_as_leader_at_term_1(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/system/nodes") as r:
        assert r.status == 200
        doc = await r.json()
    me = doc["self"]["name"]
    assert (doc["leader"], doc["term"], doc["self"]["leader"]) == (me, 1, True)
    assert doc["nodes"] == [{"name": me, "address": f"127.0.0.1:{daemon.port}",
                             "gossip": f"127.0.0.1:{daemon.port}", "role": "voter",
                             "status": "alive", "leader": True, "term": 1,
                             "vcpu": daemon.config.vcpu_capacity,
                             # this node's resources as the scheduler sees them (no GPU here)
                             "healthy": True, "total_vcpu": daemon.config.vcpu_capacity,
                             "free_vcpu": daemon.config.vcpu_capacity, "gpus": []}]
