"""Calls placed across three real voters by the leader (`faasd/cluster/entry.py`): a call can
enter at any node and run on any node; a workflow's stages run on several nodes and each
intermediate output is read once, by its successor's node, from the node that made it; a
worker killed or stopped mid-batch costs no call of an idempotent function and runs no call
of a non-idempotent one twice; a leader stopped
(SIGSTOP) or killed under a steady load loses none of the calls that entered at the nodes that
stay up.

Each node has its own admin token; the daemons talk to each other with the cluster's token.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faasd.builders import expected_y, make_function
from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.apis import Api, X, start, voters
from tests.faasd.cluster.nodes import wait_for
from tests.faasd.cluster.recorder import Recorder
from tests.faasd.workflows.builders import workflow_dir, write_op_model

pytestmark = pytest.mark.cluster

WANTED = expected_y(X)
#: 50 ms a call, one call a batch: a few callers keep more batches running than a node has
#: vCPUs, so the leader must place some elsewhere
SLOW = """
import time


def postprocess(outputs):
    time.sleep(0.05)
    return {"y": outputs["y"].tolist()}
"""


@pytest.fixture(scope="module")
def ips(addresses: Addresses) -> Iterator[list[str]]:
    """Three voters, then a worker."""
    with addresses.lease(4) as taken:
        yield taken


@pytest.fixture(scope="module")
def apis(root: Path, ips: list[str]) -> Iterator[list[Api]]:
    with voters(root, ips[:3]) as started:
        source = make_function(root / "src", "slow", handler=SLOW,
                               yaml="batching: {max_batch_size: 1}\n")
        status, doc = started[1].request("POST", "/system/functions", {"path": str(source)})
        assert status == 201, doc
        for api in started:
            wait_for(f"{api.node.ip} serves slow", lambda api=api: api.has("slow"), 30)
        yield started


def call(api: Api, timeout_s: float = 60) -> tuple[int, str, object]:
    """(status, the node that ran it per X-Faasd-Node, the answer's y or error)."""
    request = urllib.request.Request(
        api.node.url + "/function/slow", data=json.dumps({"x": [X]}).encode(),
        method="POST", headers={"Authorization": f"Bearer {api.token}",
                                "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            ran_on = reply.headers.get("X-Faasd-Node") or f"node-{api.node.ip}"
            return reply.status, ran_on, json.load(reply)["y"][0]
    except urllib.error.HTTPError as exc:
        return exc.code, "", json.load(exc)


def post_text(api: Api, path: str, text: str) -> tuple[int, dict[str, object]]:
    """POST `text` (text/plain) to `path` on `api`'s node: (status, JSON answer)."""
    request = urllib.request.Request(
        api.node.url + path, data=text.encode(), method="POST",
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def leader_of(apis: list[Api], above: int = 0) -> tuple[Api, int]:
    """The leader all of `apis` agree on, one of them, at a term above `above`."""
    by_name = {f"node-{api.node.ip}": api for api in apis}

    def agreed() -> tuple[str, int] | None:
        docs = [api.request("GET", "/system/nodes")[1] for api in apis]
        views = {(d["leader"], d["term"]) for d in docs}
        if len(views) != 1:
            return None
        name, term = next(iter(views))
        return (name, term) if name in by_name and term > above else None

    name, term = wait_for("the nodes agree on a leader", agreed, 30)
    return by_name[name], term


def test_a_call_entering_at_any_node_is_answered_and_calls_spread_over_the_nodes(
        apis: list[Api]) -> None:
    names = {f"node-{api.node.ip}" for api in apis}
    ran: Counter[tuple[str, str]] = Counter()
    failures: list[object] = []
    lock = threading.Lock()

    def caller(api: Api) -> None:
        for _ in range(15):
            status, node, answer = call(api)
            with lock:
                if status == 200 and answer == pytest.approx(WANTED, rel=1e-6):
                    ran[(f"node-{api.node.ip}", node)] += 1
                else:
                    failures.append((status, answer))

    # four callers per node: more batches at once than a node has vCPUs (two)
    threads = [threading.Thread(target=caller, args=(api,)) for api in apis for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sum(ran.values()) == 3 * 4 * 15
    assert {entry for entry, _ in ran} == names  # every node took calls
    assert {node for _, node in ran} <= names
    elsewhere = sum(n for (entry, node), n in ran.items() if entry != node)
    assert elsewhere > 0, f"no call ran on a node other than its entry: {dict(ran)}"


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_worker_lost_mid_batch_costs_no_idempotent_call_and_runs_none_twice(
        apis: list[Api], root: Path, ips: list[str], fault: str) -> None:
    """`kill`: SIGKILL (the connections drop at once). `stop`: SIGSTOP for 12 s (sockets and
    gossip stay up: the entry nodes' liveness probes find it out)."""
    recorder = Recorder()
    once, again = f"once-{fault}", f"again-{fault}"
    for function, idempotent in ((once, False), (again, True)):
        source = recorder.function(root / "rec", function, idempotent, hold_s=0.3)
        status, doc = apis[0].request("POST", "/system/functions", {"path": str(source)})
        assert status == 201, doc
    worker = start(root, ips[3], "--join", ips[0])
    leader, _ = leader_of(apis)
    name = f"node-{ips[3]}"

    def worker_ready() -> bool:
        doc = leader.request("GET", "/system/nodes")[1]
        listed = next((n for n in doc["nodes"] if n["name"] == name), {})
        return (all(api.has(once) and api.has(again) for api in [*apis, worker])
                and "state" in listed and listed["status"] == "alive")

    wait_for("the worker serves both and reports to the leader", worker_ready, 60)
    outcomes: Counter[tuple[str, int, str]] = Counter()
    answered: dict[str, tuple[str, int]] = {}  # call k: (function, status)
    slowest = [0.0]
    lock = threading.Lock()
    stop = threading.Event()
    keys = iter(range(1, 1_000_000))

    def caller(api: Api, function: str) -> None:
        while not stop.is_set():
            with lock:
                k = str(next(keys))
            started = time.monotonic()
            status, doc = post_text(api, f"/function/{function}", k)
            with lock:
                outcomes[(function, status, str(doc.get("reason", "")))] += 1
                answered[k] = (function, status)
                slowest[0] = max(slowest[0], time.monotonic() - started)

    # four callers a function at each voter: more 0.3 s batches than the voters' 6 vCPUs,
    # so the leader keeps some on the worker
    threads = [threading.Thread(target=caller, args=(api, function))
               for api in apis for function in (once, again) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        # the fault lands while the worker holds a call (each holds its sandbox 0.3 s)
        wait_for("the worker runs a call", lambda: recorder.running_under(
            worker.node.state_dir, answered, within_s=0.1), 30, every_s=0.01)
        if fault == "kill":
            worker.node.kill()
            time.sleep(3.0)
        else:
            worker.node.process.send_signal(signal.SIGSTOP)
            time.sleep(12.0)
            worker.node.process.send_signal(signal.SIGCONT)
            time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        recorder.close()
        worker.node.kill()
    assert not any(t.is_alive() for t in threads), "a call was never answered"
    # a stopped worker's calls go elsewhere after a few missed probes, not its HTTP timeout
    assert slowest[0] < 30.0, slowest
    # every call of the idempotent function was answered (retried elsewhere if need be); one
    # of the other either ran or says its worker was lost, and none ran twice
    assert {status for (function, status, _) in outcomes if function == again} == {200}
    assert {(status, reason) for (function, status, reason) in outcomes
            if function == once} <= {(200, ""), (502, "worker_lost")}
    assert outcomes[(once, 200, "")] > 0 and outcomes[(again, 200, "")] > 0
    runs = recorder.runs
    # the kill cut a call short: an idempotent one ran again, or the other said so
    assert (sum(runs.values()) > len(answered)
            or outcomes[(once, 502, "worker_lost")] > 0), (dict(outcomes), len(runs))
    for k, (function, status) in answered.items():
        if function == once:  # at most once: exactly once if it answered 200
            assert runs[k] == 1 if status == 200 else runs[k] <= 1, (k, status, runs[k])
        else:  # at least once
            assert runs[k] >= 1, (k, status)


def test_a_workflows_stages_run_on_several_nodes_and_each_output_is_read_once(
        apis: list[Api], root: Path) -> None:
    recorder = Recorder()
    try:
        directory = workflow_dir(root / "wf", "pipe", """
            slo_ms: 5000
            functions: [pipe-src, pipe-add]
            edges: [{from: pipe-src, to: pipe-add}]
        """)
        # the source holds its sandbox 50 ms a call: twelve callers keep more of them running
        # than one node has vCPUs, so stages land on different nodes
        recorder.function(directory, "pipe-src", True, hold_s=0.05)
        write_op_model(directory / "pipe-add" / "model.onnx", ["y"], "g", "Add", 1.0, width=3)
        (directory / "pipe-add" / "faasd.yaml").write_text("batching: {max_batch_size: 1}\n")
        status, doc = apis[0].request("POST", "/system/workflows", {"path": str(directory)})
        assert status == 201, doc
        for api in apis:
            wait_for("pipe everywhere", lambda api=api: api.request(
                "GET", "/system/workflow/pipe")[0] == 200, 30)
        answers: list[tuple[int, object, int]] = []
        lock = threading.Lock()

        def caller(api: Api, first: int) -> None:
            for k in range(first, first + 10):
                status, doc = post_text(api, "/workflow/pipe", str(k))
                with lock:
                    answers.append((status, doc, k))

        threads = [threading.Thread(target=caller, args=(api, 1000 * (i + 1)))
                   for i, api in enumerate(apis * 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        recorder.close()
    assert len(answers) == 120
    for status, doc, k in answers:
        assert status == 200, doc
        assert doc["g"][0] == pytest.approx([1.0, 1 + 0.1 * k, 1 + 0.2 * k], rel=1e-5)

    def reads() -> dict[str, int] | None:
        totals = {"held": 0, "served": 0, "read_here": 0}
        for api in apis:
            doc = api.request("GET", "/system/nodes")[1]
            me = doc["self"]["name"]
            outputs = next(n for n in doc["nodes"] if n["name"] == me)["outputs"]
            for key in totals:
                totals[key] += outputs[key]
        return totals if totals["held"] == 0 else None

    totals = wait_for("no output left held", reads, 10)
    # every call's intermediate output was read exactly once (a second read finds it gone),
    # and some were read across nodes, straight from the node that made them
    assert totals["served"] + totals["read_here"] == len(answers), totals
    assert totals["served"] > 0, totals


class SteadyLoad:
    """Closed-loop callers of `slow`, `per_node` at each of `apis`, from `with` to its end;
    every answer that is not a 200 with the right tensor is kept in `errors`."""

    def __init__(self, apis: list[Api], per_node: int) -> None:
        self.answered = 0
        self.errors: list[object] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, args=(api,))
                         for api in apis for _ in range(per_node)]

    def _caller(self, api: Api) -> None:
        while not self._stop.is_set():
            status, _, answer = call(api)
            with self._lock:
                self.answered += 1
                if status != 200 or answer != pytest.approx(WANTED, rel=1e-6):
                    self.errors.append((status, answer))

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        assert not any(t.is_alive() for t in self._threads), "a call was never answered"


def test_a_stopped_leader_is_replaced_under_load_and_its_calls_end_once_it_resumes(
        apis: list[Api]) -> None:
    leader, term = leader_of(apis)
    others = [api for api in apis if api is not leader]
    with SteadyLoad(apis, per_node=2) as load:
        time.sleep(1.0)
        leader.node.process.send_signal(signal.SIGSTOP)
        try:
            leader_of(others, above=term)
            before = load.answered
            wait_for("calls answered through the new leader",
                     lambda: load.answered > before + 20, 30)
        finally:
            leader.node.process.send_signal(signal.SIGCONT)
        time.sleep(2.0)  # the resumed node's queued calls go to the new leader
    assert load.errors == []


def test_killing_the_leader_under_load_loses_no_call_entering_at_the_others(
        apis: list[Api]) -> None:
    leader, term = leader_of(apis)
    others = [api for api in apis if api is not leader]
    with SteadyLoad(others, per_node=3) as load:
        time.sleep(1.0)
        before = load.answered
        leader.node.kill()
        leader_of(others, above=term)
        # the calls go on through the new leader
        wait_for("calls answered after the failover", lambda: load.answered > before + 20, 30)
    assert load.errors == []
