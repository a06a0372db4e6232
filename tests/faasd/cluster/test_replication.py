"""Deployments replicated across three real voters (and a node that joins later), each with
its own serf agent, etcd member and API token: deploy on one node, call on another; redeploy
and remove anywhere; a node that cannot deploy a version says so in /system/nodes.

Every node has an admin token of its own, so the pulls between daemons only work with the
cluster's token (derived from the gossip key).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faasd.builders import expected_y, make_function
from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.nodes import Node, require_engines, shm_dir, start_node, wait_for

pytestmark = pytest.mark.cluster

X = [1.0, 2.0, 3.0, 4.0]


class Api:
    """One node's HTTP API with that node's admin token."""

    def __init__(self, node: Node, token: str) -> None:
        self.node, self.token = node, token

    def request(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        data = None if doc is None else json.dumps(doc).encode()
        request = urllib.request.Request(
            self.node.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def call(self, name: str) -> list[float] | None:
        status, doc = self.request("POST", f"/function/{name}", {"x": [X]})
        return doc["y"][0] if status == 200 else None

    def has(self, name: str) -> bool:
        return self.request("GET", f"/system/function/{name}")[0] == 200


def token_for(state: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "faasd.cli", "token", "create", "--scope",
                           "admin", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()[-1]


def start(root: Path, ip: str, *flags: str) -> Api:
    token = token_for(root / ip)
    return Api(start_node(root, ip, "--gossip-key-file", str(root / "gossip.key"), *flags),
               token)


@pytest.fixture(scope="module")
def ips(addresses: Addresses) -> Iterator[list[str]]:
    with addresses.lease(4) as taken:
        yield taken


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    require_engines()
    root = shm_dir()
    (root / "gossip.key").write_text(base64.b64encode(os.urandom(32)).decode())
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture(scope="module")
def apis(root: Path, ips: list[str]) -> Iterator[list[Api]]:
    started: list[Api] = []
    try:
        started.append(start(root, ips[0], "--voter"))
        for ip in ips[1:3]:
            started.append(start(root, ip, "--voter", "--join", ips[0]))
        yield started
    finally:
        for api in started:
            api.node.kill()


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
    assert all(n["replication"]["failed"] == {} for d in docs for n in d["nodes"])


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
        assert wait_for("the late node serves small", lambda: late.call("small"), 20) == (
            pytest.approx(expected_y(X), rel=1e-6))
        assert not late.has("wide")

        late_name = f"node-{ips[3]}"

        def reported() -> dict[str, Any] | None:
            doc = c.request("GET", "/system/nodes")[1]  # seen from another node
            entry = next(n for n in doc["nodes"] if n["name"] == late_name)
            return entry["replication"]["failed"].get("wide")

        failure = wait_for("the late node's failure seen from c", reported, 20)
        assert "asks for vcpu 2" in failure["error"] and len(failure["digest"]) == 64
        own = late.request("GET", "/system/nodes")[1]
        assert [n["replication"]["failed"] for n in own["nodes"] if n["name"] == late_name] == [
            {"wide": failure}]
        assert sorted(own["nodes"][0]["replication"]["functions"]) == ["small", "wide"]
    finally:
        late.node.kill()
