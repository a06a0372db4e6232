"""How fresh the leader's view of the other nodes is under load: the time from a change on a node
(a call queued, a batch started or ended) to the arrival of the report that carries it; the
leader's time per scheduling decision meanwhile; and what entering at a node that does not
lead adds to a call.

Three voters on 127.0.0.x addresses nothing else uses, started by the tests' helpers (data on
/dev/shm, encrypted gossip). A small function is deployed at one node and reaches all three;
then closed-loop callers load the two nodes that do not lead for `--seconds`. The leader
counts each report's staleness on arrival in `faasd_cluster_state_staleness_seconds{node}`;
the script reads it before and after the load, per node: reports, mean, and the share within
10, 25 and 100 ms (the histogram's bucket bounds). Every node's clock is this machine's, so
the figure has no clock skew in it. Over the same load the leader's
`faasd_scheduler_decision_seconds` gives the mean decision (snapshot of the three nodes and
the policy's call) and the share within 100 µs and 1 ms. Last, one caller alone sends
`--calls` calls alternately to the leader and to a node that does not lead: the latency of
each, as the caller sees it (p50, p90), and the difference of the medians.

    .venv/bin/python benchmarks/cluster_state.py [--seconds 20] [--callers 2] [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faasd_bench.prom import Samples, parse

from tests.faasd.builders import make_function
from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.nodes import Node, shm_dir, start_node, wait_for

METRIC = "faasd_cluster_state_staleness_seconds"
DECISIONS = "faasd_scheduler_decision_seconds"
BODY = json.dumps({"x": [[1.0, 2.0, 3.0, 4.0]]}).encode()


def leader_of(nodes: list[Node]) -> Node | None:
    names = {n.nodes()["leader"] for n in nodes}
    name = names.pop() if len(names) == 1 else None
    return next((n for n in nodes if f"node-{n.ip}" == name), None)


def serves(url: str) -> bool:
    with urllib.request.urlopen(url + "/system/function/linear", timeout=5) as reply:
        return bool(reply.status == 200)


def scrape(node: Node) -> Samples:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as reply:
        return parse(reply.read().decode())


def within(before: Samples, after: Samples, node: str, bound: str) -> float:
    key = (f"{METRIC}_bucket", frozenset({("node", node), ("le", bound)}))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def load(nodes: list[Node], callers: int, seconds: float) -> int:
    done = 0
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + seconds

        async def caller(node: Node) -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.post(f"{node.url}/function/linear", data=BODY,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    done += r.status == 200

        await asyncio.gather(*(caller(n) for n in nodes for _ in range(callers)))
    return done


async def entry_latencies(leader: Node, other: Node, calls: int) -> dict[str, list[float]]:
    """One caller, alternating: each call's latency (s) by where it entered."""
    times: dict[str, list[float]] = {"leader": [], "other": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(calls):
            for label, node in (("leader", leader), ("other", other)):
                started = time.perf_counter()
                async with session.post(f"{node.url}/function/linear", data=BODY,
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                times[label].append(time.perf_counter() - started)
    return times


def decision_line(before: Samples, after: Samples) -> str:
    def value(name: str, labels: frozenset[tuple[str, str]] = frozenset()) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    count = value(f"{DECISIONS}_count")
    if not count:
        return "no scheduling decisions at the leader"
    shares = "  ".join(
        f"<= {label} {value(f'{DECISIONS}_bucket', frozenset({('le', b)})) / count:.1%}"
        for label, b in (("100 us", "0.0001"), ("1 ms", "0.001")))
    return (f"leader: {count:.0f} scheduling decisions, mean "
            f"{value(f'{DECISIONS}_sum') / count * 1e6:.0f} us  {shares}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(ips: list[str], seconds: float, callers: int, calls: int) -> int:
    root = shm_dir()
    key = root / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    flags = ("--voter", "--gossip-key-file", str(key))
    nodes: list[Node] = []
    try:
        nodes.append(start_node(root, ips[0], *flags))
        nodes += [start_node(root, ip, *flags, "--join", ips[0]) for ip in ips[1:]]
        leader = wait_for("a leader", lambda: leader_of(nodes), 30)
        workers = [n for n in nodes if n is not leader]
        source = make_function(root / "src", "linear")
        request = urllib.request.Request(
            workers[0].url + "/system/functions", json.dumps({"path": str(source)}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=60).close()
        for node in workers:
            wait_for("linear everywhere", functools.partial(serves, node.url), 30)
        asyncio.run(load(workers, 1, 2.0))  # warm sandboxes on both
        before = scrape(leader)
        served = asyncio.run(load(workers, callers, seconds))
        after = scrape(leader)
        latencies = asyncio.run(entry_latencies(leader, workers[0], calls))
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{served} calls in {seconds:g} s at the two nodes that do not lead "
          f"({callers} closed-loop callers each)")
    for node in workers:
        name = f"node-{node.ip}"
        count = within(before, after, name, "+Inf")
        total = (after.get((f"{METRIC}_sum", frozenset({("node", name)})), 0.0)
                 - before.get((f"{METRIC}_sum", frozenset({("node", name)})), 0.0))
        shares = "  ".join(
            f"<= {float(b) * 1000:g} ms {within(before, after, name, b) / count:.1%}"
            for b in ("0.01", "0.025", "0.1")) if count else ""
        mean = f"{total / count * 1000:.1f} ms" if count else "-"
        print(f"{name}: {count:.0f} reports ({count / seconds:.0f}/s), mean staleness {mean}  "
              f"{shares}")
    print(decision_line(before, after))
    for label, values in latencies.items():
        print(f"entering at the {'leader' if label == 'leader' else 'other node'}: "
              f"{len(values)} calls, p50 {percentile(values, 0.5) * 1000:.2f} ms, "
              f"p90 {percentile(values, 0.9) * 1000:.2f} ms")
    extra = percentile(latencies["other"], 0.5) - percentile(latencies["leader"], 0.5)
    print(f"a call entering at a node that does not lead: +{extra * 1000:.2f} ms at the median")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with Addresses().lease(3) as ips:
        return run(ips, args.seconds, args.callers, args.calls)


if __name__ == "__main__":
    sys.exit(main())
