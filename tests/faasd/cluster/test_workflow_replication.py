"""Workflows replicated across real nodes (a voter, a worker, and a node that joins later), each
with its own serf agent and API token: deploy a workflow on one node and call it on another;
update and remove it anywhere; a node that lacks a workflow's functions shows it waiting, and
serves it once they arrive; a function a workflow uses cannot be removed on any node.

The workflows bring their functions as subdirectories (element-wise ONNX graphs), which reach
the other nodes as functions of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.apis import Api, X, start
from tests.faasd.cluster.nodes import wait_for
from tests.faasd.workflows.builders import op_function, workflow_dir

pytestmark = pytest.mark.cluster

CHAIN = """
    slo_ms: {slo_ms}
    functions: [{first}, {second}]
    edges: [{{from: {first}, to: {second}}}]
"""


def chain(root: Path, name: str, add: float = 1.0, slo_ms: int = 5000, vcpu: int = 1) -> Path:
    """A workflow directory: `{name}-mul` (h = 2x) then `{name}-add` (g = h + add), which
    asks for `vcpu`."""
    directory = workflow_dir(root, name, CHAIN.format(
        slo_ms=slo_ms, first=f"{name}-mul", second=f"{name}-add"))
    op_function(directory, f"{name}-mul", ["x"], "h", "Mul", 2.0)
    op_function(directory, f"{name}-add", ["h"], "g", "Add", add,
                yaml=f"resources: {{vcpu: {vcpu}}}\n")
    return directory


def expected(add: float) -> list[float]:
    return [2 * x + add for x in X]


def run(api: Api, workflow: str) -> tuple[int, Any]:
    return api.request("POST", f"/workflow/{workflow}", {"x": [X]})


def answer(api: Api, workflow: str) -> list[float] | None:
    status, doc = run(api, workflow)
    return doc["g"][0] if status == 200 else None


def matches(got: list[float] | None, add: float) -> bool:
    return got is not None and np.allclose(got, expected(add), rtol=1e-6)


@pytest.fixture(scope="module")
def ips(addresses: Addresses) -> Iterator[list[str]]:
    with addresses.lease(3) as taken:
        yield taken


@pytest.fixture(scope="module")
def apis(root: Path, ips: list[str]) -> Iterator[list[Api]]:
    """A voter and a worker (no etcd member of its own: it uses the voter's)."""
    started: list[Api] = []
    try:
        started.append(start(root, ips[0], "--voter"))
        started.append(start(root, ips[1], "--join", ips[0]))
        yield started
    finally:
        for api in started:
            api.node.kill()


def test_deployed_on_one_node_runs_on_another_and_follows_an_update(
        apis: list[Api], root: Path) -> None:
    a, b = apis
    source = chain(root / "src", "pipe")
    status, doc = b.request("POST", "/system/workflows", {"path": str(source)})
    assert status == 201, doc
    assert matches(answer(b, "pipe"), 1.0)
    got = wait_for("a runs pipe", lambda: answer(a, "pipe"), 30)
    assert matches(got, 1.0), got
    status, doc = a.request("GET", "/system/workflow/pipe")
    assert status == 200 and doc["slo_ms"] == 5000 and doc["ready"], doc
    assert doc["functions"] == ["pipe-mul", "pipe-add"]

    # updated on a (its SLO and one of its functions): b follows
    chain(root / "src", "pipe", add=5.0, slo_ms=4000)
    status, doc = a.request("PUT", "/system/workflows", {"path": str(source)})
    assert status == 200 and doc["replaced_version"] == 1, doc
    wait_for("b runs the new pipe", lambda: matches(answer(b, "pipe"), 5.0), 30)
    wait_for("b has the new SLO",
             lambda: b.request("GET", "/system/workflow/pipe")[1]["slo_ms"] == 4000, 30)
    for api in apis:
        assert api.replication(f"node-{api.node.ip}")["failed"]["workflows"] == {}
        assert "pipe" in api.replication(f"node-{a.node.ip}")["workflows"]


def test_removed_on_one_node_is_removed_everywhere_and_guards_its_functions_until_then(
        apis: list[Api], root: Path) -> None:
    a, b = apis
    source = chain(root / "src", "gone")
    assert a.request("POST", "/system/workflows", {"path": str(source)})[0] == 201
    wait_for("b runs gone", lambda: matches(answer(b, "gone"), 1.0), 30)

    # while the workflow exists, no node lets its functions go
    for api in apis:
        status, doc = api.request("DELETE", "/system/functions", {"functionName": "gone-add"})
        assert status == 409 and doc["workflows"] == ["gone"], doc

    # removed on b, then its function at once, as a script would: gone on every node
    status, doc = b.request("DELETE", "/system/workflows", {"name": "gone"})
    assert status == 200 and doc["removed"] == "gone", doc
    status, doc = b.request("DELETE", "/system/functions", {"functionName": "gone-add"})
    assert status == 200, doc
    wait_for("a no longer has gone",
             lambda: a.request("GET", "/system/workflow/gone")[0] == 404, 30)
    status, doc = run(a, "gone")
    assert status == 404 and "no workflow named 'gone'" in doc["error"], doc
    wait_for("gone-add removed on a", lambda: not a.has("gone-add"), 30)
    assert a.has("gone-mul")  # only what was removed goes
    wait_for("nothing left waiting on a",
             lambda: a.replication(f"node-{a.node.ip}")["failed"] == {
                 "functions": {}, "workflows": {}}, 30)
    assert "gone" not in a.replication(f"node-{a.node.ip}")["workflows"]


def test_a_node_joining_later_catches_up_and_a_workflow_waits_for_its_functions(
        apis: list[Api], root: Path, ips: list[str]) -> None:
    a, b = apis
    assert a.request("POST", "/system/workflows",
                     {"path": str(chain(root / "src", "early"))})[0] == 201
    # its second function needs 2 vCPUs: the late node has 1
    wide = chain(root / "src", "wide", vcpu=2)
    assert b.request("POST", "/system/workflows", {"path": str(wide)})[0] == 201

    config = root / "one-vcpu.yaml"
    config.write_text("node_vcpu: 1\n")
    late = start(root, ips[2], "--join", ips[1], "--config", str(config))
    name = f"node-{ips[2]}"
    try:
        got = wait_for("the late node runs early", lambda: answer(late, "early"), 30)
        assert matches(got, 1.0), got

        def waiting() -> dict[str, Any] | None:
            seen = a.listed_replication(name)  # from another node, once gossip says
            entry: dict[str, Any] | None = seen and seen["failed"]["workflows"].get("wide")
            # wide-mul may be on its way still; wide-add never comes
            return entry if entry and "wide-mul" not in entry["error"] else None

        entry = wait_for("wide waiting on the late node for wide-add, seen from a", waiting, 30)
        assert entry["state"] == "waiting", entry
        assert entry["error"] == "waiting for function(s) wide-add to be deployed here", entry
        assert a.replication(name)["failed"]["functions"]["wide-add"]["state"] == "failed"
        status, doc = run(late, "wide")
        assert status == 404, doc
        # a workflow elsewhere still uses wide-mul: the late node refuses to remove it too
        status, doc = late.request("DELETE", "/system/functions", {"functionName": "wide-mul"})
        assert status == 409 and doc["workflows"] == ["wide"], doc

        # its function, redeployed to fit one vCPU, arrives: the workflow follows it
        fitting = op_function(root / "fit", "wide-add", ["h"], "g", "Add", 1.0)
        status, doc = a.request("PUT", "/system/functions", {"path": str(fitting)})
        assert status == 200, doc
        got = wait_for("the late node runs wide", lambda: answer(late, "wide"), 30)
        assert matches(got, 1.0), got
        assert late.replication(name)["failed"] == {"functions": {}, "workflows": {}}
    finally:
        late.node.kill()
