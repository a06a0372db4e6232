"""Deployments replicated across three real voters (and a node that joins later), each with
its own serf agent, etcd member and API token: deploy on one node, call on another; redeploy
and remove anywhere; a node that cannot deploy a version says so in /system/nodes.

Every node has an admin token of its own, so the pulls between daemons only work with the
cluster's token (derived from the gossip key).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faasd.builders import expected_y, make_function
from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.apis import Api, X, start, voters
from tests.faasd.cluster.nodes import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def ips(addresses: Addresses) -> Iterator[list[str]]:
    with addresses.lease(4) as taken:
        yield taken


@pytest.fixture(scope="module")
def apis(root: Path, ips: list[str]) -> Iterator[list[Api]]:
    with voters(root, ips[:3]) as started:
        yield started


def test_deployed_on_one_node_callable_on_another_then_redeployed_and_removed(
        apis: list[Api], root: Path) -> None:
    a, b, c = apis
    source = make_function(root / "src", "linear")
    status, doc = b.request("POST", "/system/functions", {"path": str(source)})
    assert status == 201, doc
    wanted = b.call("linear")
    assert wanted == pytest.approx(expected_y(X), rel=1e-6)
    assert wait_for("c serves linear", lambda: c.call("linear"), 20) == wanted
    assert wait_for("a serves linear", lambda: a.call("linear"), 20) == wanted

    # a new version, deployed on a: every node answers with it
    make_function(root / "src", "linear", scale=2.0)
    assert a.request("PUT", "/system/functions", {"path": str(source)})[0] == 200
    doubled = pytest.approx([2 * y for y in expected_y(X)], rel=1e-6)
    for api in (b, c):
        wait_for("the new version everywhere", lambda api=api: api.call("linear") == doubled,
                 20)

    # removed on c: gone everywhere
    assert c.request("DELETE", "/system/functions", {"functionName": "linear"})[0] == 200
    for api in (a, b):
        wait_for("linear removed everywhere", lambda api=api: not api.has("linear"), 20)
    assert b.call("linear") is None
    docs = [api.request("GET", "/system/nodes")[1] for api in apis]
    assert all(n["replication"]["failed"] == {"functions": {}, "workflows": {}}
               for d in docs for n in d["nodes"])


def test_every_node_reports_its_state_to_the_leader(apis: list[Api], root: Path) -> None:
    """The scheduler's view of the cluster: each node's free vCPUs, queues and warm sandboxes
    reach the leader (msgpack reports, `faasd/cluster/node_state.py`); only the leader takes
    them."""
    leader_name = wait_for("a leader", lambda: apis[0].request("GET", "/system/nodes")[1][
        "leader"], 30)
    leader = next(api for api in apis if f"node-{api.node.ip}" == leader_name)
    other = next(api for api in apis if api is not leader)
    name = f"node-{other.node.ip}"
    source = make_function(root / "state-src", "probe")
    assert other.request("POST", "/system/functions", {"path": str(source)})[0] == 201
    assert other.call("probe") == pytest.approx(expected_y(X), rel=1e-6)

    def reported() -> dict[str, Any] | None:
        """The state of the node holding probe's warm sandbox (the leader placed the call:
        on any node), once that node's report of it reached the leader."""
        doc = leader.request("GET", "/system/nodes")[1]
        for node in doc["nodes"]:
            state: dict[str, Any] | None = node.get("state")
            if state and any(w["function"] == "probe" and w["idle"] for w in state["warm"]):
                return state
        return None

    state = wait_for("the leader sees the warm sandbox of probe", reported, 10)
    assert state["total_vcpu"] >= 1 and 0 <= state["free_vcpu"] <= state["total_vcpu"]
    assert state["age_ms"] >= 0 and state["queued"] == {}
    doc = leader.request("GET", "/system/nodes")[1]
    assert all("state" in n for n in doc["nodes"])  # the leader's own report included
    # a node that does not lead takes no report and shows no other node's state
    status, refusal = other.request("PUT", f"/system/nodes/{name}/state", {"x": 1})
    assert status == 409 and refusal["leader"] == leader_name
    assert all("state" not in n for n in other.request("GET", "/system/nodes")[1]["nodes"])
    request = urllib.request.Request(leader.node.url + "/metrics",
                                     headers={"Authorization": f"Bearer {leader.token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        metrics = reply.read().decode()
    assert f'faasd_cluster_state_staleness_seconds_count{{node="{name}"}}' in metrics
    assert other.request("DELETE", "/system/functions", {"functionName": "probe"})[0] == 200


def test_a_node_started_later_catches_up_and_reports_what_it_cannot_deploy(
        apis: list[Api], root: Path, ips: list[str]) -> None:
    a, b, c = apis
    small = make_function(root / "src", "small")
    wide = make_function(root / "src", "wide", "resources: {vcpu: 2}\n")
    for source in (small, wide):
        assert a.request("POST", "/system/functions", {"path": str(source)})[0] == 201
    wait_for("b has both", lambda: b.has("small") and b.has("wide"), 20)

    # a worker with one vCPU joins: it catches up on `small`, and cannot take `wide`
    config = root / "one-vcpu.yaml"
    config.write_text("node_vcpu: 1\n")
    late = start(root, ips[3], "--join", ips[1], "--config", str(config))
    try:
        # (the leader may first place the call on a node still installing `small`: it is
        # placed again until one runs it)
        assert wait_for("the late node serves small", lambda: late.call("small"), 40) == (
            pytest.approx(expected_y(X), rel=1e-6))
        assert not late.has("wide")

        late_name = f"node-{ips[3]}"

        def reported() -> dict[str, Any] | None:
            seen = c.listed_replication(late_name)  # from another node, once gossip says
            wide: dict[str, Any] | None = seen and seen["failed"]["functions"].get("wide")
            return wide

        failure = wait_for("the late node's failure seen from c", reported, 20)
        assert "asks for vcpu 2" in failure["error"] and len(failure["digest"]) == 64
        assert failure["state"] == "failed"
        own = late.replication(late_name)
        assert own["failed"] == {"functions": {"wide": failure}, "workflows": {}}
        assert sorted(own["functions"]) == ["small", "wide"]
    finally:
        late.node.kill()
