"""Failover time of the leader election: kill the leader's daemon (SIGKILL), time until the
two other nodes agree on a new leader at a higher term; restart the killed node; repeat.

Three voters on 127.0.0.x addresses that nothing else uses (reserved as the cluster tests
reserve theirs, so the benchmark can run beside them), started by the tests' helpers; data on
/dev/shm. The time runs from the kill to the first poll (every 20 ms, over HTTP
`GET /system/nodes`) where both survivors name the same new leader. Each kill also takes the
node's etcd member; when that member was etcd's raft leader, etcd first elects a new raft
leader and renews every lease, so those kills take longer (the reference measured 4.4 s).

    .venv/bin/python benchmarks/cluster_failover.py [--kills 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.nodes import Node, shm_dir, start_node, wait_for


def agreed(nodes: list[Node]) -> tuple[str, int] | None:
    views = {(d["leader"], d["term"]) for d in (n.nodes() for n in nodes)}
    view = next(iter(views))
    return view if len(views) == 1 and view[0] is not None else None


def raft_leader(node: Node) -> bool:
    """Whether `node`'s etcd member is etcd's raft leader (its own status says so)."""
    request = urllib.request.Request(f"http://{node.ip}:2379/v3/maintenance/status",
                                     data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=2) as reply:
        status = json.load(reply)
    return bool(status["header"]["member_id"] == status["leader"])


def new_leader(nodes: list[Node], old: str) -> Callable[[], tuple[str, int] | None]:
    def check() -> tuple[str, int] | None:
        view = agreed(nodes)
        return view if view is not None and view[0] != old else None

    return check


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    with Addresses().lease(3) as ips:
        return run(ips, args.kills)


def run(ips: list[str], kills: int) -> int:
    root = shm_dir()
    key = root / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    flags = ("--voter", "--gossip-key-file", str(key))
    nodes: dict[str, Node] = {}
    times: list[float] = []
    raft_times: list[float] = []
    other_times: list[float] = []
    try:
        nodes[ips[0]] = start_node(root, ips[0], *flags)
        for ip in ips[1:]:
            nodes[ip] = start_node(root, ip, *flags, "--join", ips[0])
        for kill in range(1, kills + 1):
            leader, term = wait_for("a leader", lambda: agreed(list(nodes.values())), 30)
            victim = next(n for n in nodes.values() if f"node-{n.ip}" == leader)
            others = [n for n in nodes.values() if n is not victim]
            raft = raft_leader(victim)
            started = time.monotonic()
            victim.kill()
            new, new_term = wait_for("a new leader", new_leader(others, leader), 30,
                                     every_s=0.02)
            took = time.monotonic() - started
            times.append(took)
            (raft_times if raft else other_times).append(took)
            held = " (it held etcd's raft leadership)" if raft else ""
            print(f"kill {kill}: {leader} (term {term}){held} -> {new} (term {new_term}): "
                  f"{took:.2f} s", flush=True)
            nodes[victim.ip] = start_node(root, victim.ip, *flags)
            try:
                wait_for("three alive", lambda: all(
                    sum(m["status"] == "alive" for m in n.nodes()["nodes"]) == 3
                    for n in nodes.values()), 30)
            except AssertionError:
                for n in nodes.values():
                    print(n.ip, [(m["name"], m["status"]) for m in n.nodes()["nodes"]])
                print(nodes[victim.ip].log()[-3000:])
                raise
    finally:
        for node in nodes.values():
            node.kill()
        shutil.rmtree(root, ignore_errors=True)
    for label, series in (("all kills", times), ("raft leader too", raft_times),
                          ("raft leader elsewhere", other_times)):
        if series:
            print(f"{label}: n={len(series)} median {statistics.median(series):.2f} s, "
                  f"min {min(series):.2f} s, max {max(series):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
