"""How fresh the leader's view of the other nodes is under load: the time from a change on a node
(a call queued, a batch started or ended) to the arrival of the report that carries it.

Three voters on 127.0.0.x addresses nothing else uses, started by the tests' helpers (data on
/dev/shm, encrypted gossip). A small function is deployed at one node and reaches all three;
then closed-loop callers load the two nodes that do not lead for `--seconds`. The leader
counts each report's staleness on arrival in `faasd_cluster_state_staleness_seconds{node}`;
the script reads it before and after the load, per node: reports, mean, and the share within
10, 25 and 100 ms (the histogram's bucket bounds). Every node's clock is this machine's, so
the figure has no clock skew in it.

    .venv/bin/python benchmarks/cluster_state.py [--seconds 20] [--callers 2]
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


def run(ips: list[str], seconds: float, callers: int) -> int:
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
        calls = asyncio.run(load(workers, callers, seconds))
        after = scrape(leader)
    finally:
        for node in nodes:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{calls} calls in {seconds:g} s at the two nodes that do not lead "
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
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=2)
    args = parser.parse_args()
    with Addresses().lease(3) as ips:
        return run(ips, args.seconds, args.callers)


if __name__ == "__main__":
    sys.exit(main())
