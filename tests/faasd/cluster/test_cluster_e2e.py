"""Three real voters on 127.0.0.x addresses of their own, with their own serf agents and etcd
members.

The module starts the cluster once (about 10 s: a third etcd member may only be added once
the second has been connected for 5 s, etcd's strict reconfiguration check), then: every node
agrees on the members and the leader; a killed serf agent is restarted and rejoins; a leader
stopped with SIGSTOP is replaced, and knows it as soon as it resumes; killing
the leader's daemon moves leadership to another node at a higher term; the killed node,
restarted without --join (and without serf's snapshot), rejoins the peers it remembered;
a worker (no --voter) follows the election through the etcd URLs the voters
gossip.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.nodes import Node, require_engines, shm_dir, start_node, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ips(addresses: Addresses) -> Iterator[list[str]]:
    """Three voters' addresses, then the worker's."""
    with addresses.lease(4) as taken:
        yield taken


@pytest.fixture(scope="module")
def cluster(ips: list[str]) -> Iterator[dict[str, Node]]:
    require_engines()
    root = shm_dir()
    key = root / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    nodes: dict[str, Node] = {}
    try:
        first = ips[0]
        nodes[first] = start_node(root, first, "--voter", "--gossip-key-file", str(key))
        for ip in ips[1:3]:
            nodes[ip] = start_node(root, ip, "--voter", "--join", first,
                                   "--gossip-key-file", str(key))
        yield nodes
    finally:
        for node in nodes.values():
            node.kill()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def agreed(nodes: list[Node], count: int) -> tuple[str, int] | None:
    """(leader, term) when every node lists `count` alive members and the same leader."""
    docs = [n.nodes() for n in nodes]
    views = {(d["leader"], d["term"]) for d in docs}
    alive = [sum(m["status"] == "alive" for m in d["nodes"]) for d in docs]
    if len(views) == 1 and None not in next(iter(views)) and alive == [count] * len(docs):
        return next(iter(views))
    return None


def test_three_voters_agree_on_members_and_leader(cluster: dict[str, Node]) -> None:
    nodes = list(cluster.values())
    leader, term = wait_for("one leader seen by all", lambda: agreed(nodes, 3), 15)
    assert leader in {f"node-{ip}" for ip in cluster} and term > 0
    for node in nodes:
        doc = node.nodes()
        assert doc["self"]["name"] == f"node-{node.ip}"
        assert [(m["name"], m["address"], m["role"], m["status"]) for m in doc["nodes"]] == [
            (f"node-{n.ip}", f"{n.ip}:{n.port}", "voter", "alive")
            for n in sorted(nodes, key=lambda n: f"node-{n.ip}")]
        assert [m["name"] for m in doc["nodes"] if m["leader"]] == [leader]
        assert [m["term"] for m in doc["nodes"] if m["leader"]] == [term]
    table = subprocess.run([sys.executable, "-m", "faasd.cli", "nodes", "-g", nodes[1].url],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    assert f"node-{nodes[1].ip} (self)" in table
    assert any(line.startswith(leader) and " yes " in line for line in table.splitlines())


def test_a_killed_serf_agent_is_restarted_and_rejoins(cluster: dict[str, Node]) -> None:
    node = list(cluster.values())[1]
    old = node.engine_pid("serf")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    new = wait_for("a new serf agent", lambda: (p := node.engine_pid("serf")) != old and p, 15)
    assert new != old
    wait_for("the restart logged", lambda: "serf agent restarted" in node.log(), 15)
    nodes = list(cluster.values())
    wait_for("all three alive again", lambda: agreed(nodes, 3), 15)
    assert "warning" not in node.nodes()


def test_a_stopped_leader_is_replaced_and_knows_it_the_moment_it_resumes(
        cluster: dict[str, Node]) -> None:
    nodes = list(cluster.values())
    leader, term = wait_for("one leader seen by all", lambda: agreed(nodes, 3), 15)
    paused = next(n for n in nodes if f"node-{n.ip}" == leader)
    others = [n for n in nodes if n is not paused]
    os.kill(paused.process.pid, signal.SIGSTOP)  # its engines keep running: only faasd stops
    try:
        def replaced() -> tuple[str, int] | None:
            view = agreed(others, 3)
            return view if view is not None and view[0] != leader else None

        new_leader, new_term = wait_for("a new leader", replaced, 15)
        assert new_term > term
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)
    # Its lease ran out while it was stopped: its first answer already says it does not
    # lead (its own clock, not a fresh read from etcd, decides), and soon names the new one.
    doc = paused.nodes()
    assert not doc["self"]["leader"] and doc["leader"] != leader
    assert wait_for("the resumed node agrees", lambda: agreed(nodes, 3), 10) == (
        new_leader, new_term)


def test_killing_the_leaders_daemon_elects_another_at_a_higher_term(
        cluster: dict[str, Node]) -> None:
    nodes = list(cluster.values())
    leader, term = wait_for("one leader seen by all", lambda: agreed(nodes, 3), 15)
    victim = next(n for n in nodes if f"node-{n.ip}" == leader)
    others = [n for n in nodes if n is not victim]
    killed = time.monotonic()
    victim.kill()  # its serf agent and etcd member die with it

    def moved() -> tuple[str, int] | None:
        views = {(d["leader"], d["term"]) for d in (n.nodes() for n in others)}
        new = next(iter(views))
        return new if len(views) == 1 and new[0] not in (None, leader) else None

    new_leader, new_term = wait_for("a new leader", moved, 15, every_s=0.02)
    failover_s = time.monotonic() - killed
    print(f"failover: {leader} (term {term}) killed -> {new_leader} (term {new_term}) "
          f"in {failover_s:.2f} s")
    assert new_term > term
    # The target (5 s at the median, 10 s at most) is measured by
    # benchmarks/cluster_chaos.py; this bound only catches a broken failover on a busy box.
    assert failover_s < 12
    wait_for("the killed node seen as failed", lambda: all(
        m["status"] == "failed" for n in others for m in n.nodes()["nodes"]
        if m["name"] == leader), 15)

    # restarted without --join and without serf's snapshot: the peers faasd remembered
    # (peers.json) and the etcd data bring it back
    (victim.state_dir / "cluster" / "serf.snapshot").unlink()
    cluster[victim.ip] = back = start_node(victim.state_dir.parent, victim.ip, "--voter",
                                           "--gossip-key-file",
                                           str(victim.state_dir.parent / "gossip.key"))
    assert wait_for("all three alive again", lambda: agreed([back, *others], 3), 20) == (
        new_leader, new_term)


def test_a_worker_follows_the_election_through_the_voters_etcd(
        cluster: dict[str, Node], ips: list[str]) -> None:
    voters = list(cluster.values())
    leader = wait_for("one leader seen by all", lambda: agreed(voters, 3), 20)
    root = voters[0].state_dir.parent
    worker = start_node(root, ips[3], "--join", voters[1].ip, "--gossip-key-file",
                        str(root / "gossip.key"))
    try:
        # it found the election in the voters' etcd tags: same leader and term everywhere
        assert wait_for("the worker agrees", lambda: agreed([worker, *voters], 4), 20) == leader
        roles = {m["name"]: m["role"] for m in worker.nodes()["nodes"]}
        assert roles[f"node-{worker.ip}"] == "worker"
        assert sorted(r for n, r in roles.items() if n != f"node-{worker.ip}") == ["voter"] * 3
        assert worker.engine_pid("etcd") is None  # a worker runs no etcd member
    finally:
        worker.kill()
