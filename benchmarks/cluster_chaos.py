"""Chaos under load: kill the leader (SIGKILL) and a worker over and over while callers call
at every node; count the calls accepted and answered, the errors by kind, the calls run twice,
and each leader kill's failover time.

Three voters and one worker (no --voter) on 127.0.0.x addresses that nothing else uses
(reserved as the cluster tests reserve theirs), started by the tests' helpers; data on
/dev/shm; encrypted gossip. Two functions report every run of a call to a recorder of this
script (`tests/faasd/cluster/recorder.py`) and hold their sandbox `--hold-ms`: `again`
(idempotent) and `once` (`idempotent: false`, so a call is never run twice: a call whose
worker dies mid-run answers 502 worker_lost). Both have an SLO (`--slo-ms`, 200 ms), shorter
than a failover: a call that waits one out must be answered late, not given up. Closed-loop
callers, `--callers` per function at each node, send each call a key of its own.

Rounds alternate: a leader kill, then a worker kill (the worker node, or a voter that does not
lead when `--worker-kills` exceeds the leader kills). A leader kill is timed from the kill to
the first poll (every 20 ms, `GET /system/nodes`) where the other nodes name the same new
leader at a higher term. The killed node restarts on its state directory (rejoining) and the
next round waits until every node is alive again and `--settle` seconds have passed.

A call entering the killed node dies with it (its caller gets a connection error, and would
retry at another node): counted apart, as "entry killed". Every other call must be answered.

    .venv/bin/python benchmarks/cluster_chaos.py [--leader-kills 20] [--worker-kills 10]
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.client
import itertools
import json
import os
import shutil
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faasd.cluster.addresses import Addresses
from tests.faasd.cluster.nodes import Node, shm_dir, start_node, wait_for
from tests.faasd.cluster.recorder import Recorder

FUNCTIONS = ("once", "again")


def agreed(nodes: list[Node]) -> tuple[str, int] | None:
    views = {(d["leader"], d["term"]) for d in (n.nodes() for n in nodes)}
    view = next(iter(views))
    return view if len(views) == 1 and view[0] is not None else None


def new_leader(nodes: list[Node], old: str, term: int) -> Callable[[], tuple[str, int] | None]:
    def check() -> tuple[str, int] | None:
        view = agreed(nodes)
        return view if view is not None and view[0] != old and view[1] > term else None
    return check


class Load:
    """Closed-loop callers at every node; what each call got, by call key."""

    def __init__(self, nodes: dict[str, Node], callers: int) -> None:
        self.nodes = nodes
        self.outcomes: dict[str, tuple[str, str]] = {}  # key: (function, outcome)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.keys = itertools.count(1)
        #: kills of each node so far: a call that fails across one died with its entry node
        self.kills: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self.caller, args=(ip, f), daemon=True)
                        for ip in nodes for f in FUNCTIONS for _ in range(callers)]

    def caller(self, ip: str, function: str) -> None:
        while not self.stop.is_set():
            with self.lock:
                key = str(next(self.keys))
            node, kills = self.nodes[ip], self.kills[ip]
            outcome = call(node, function, key)
            if outcome.startswith("connection") and self.kills[ip] != kills:
                outcome = "entry killed"
            with self.lock:
                self.outcomes[key] = (function, outcome)
            if outcome == "entry killed":
                time.sleep(0.2)  # until the node is back

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> int:
        """Stop; the number of callers still waiting for an answer after 120 s."""
        self.stop.set()
        for thread in self.threads:
            thread.join(120)
        return sum(t.is_alive() for t in self.threads)


def call(node: Node, function: str, key: str) -> str:
    request = urllib.request.Request(
        f"{node.url}/function/{function}", data=key.encode(), method="POST",
        headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()
            return str(reply.status)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("reason", "")
        except ValueError:
            reason = ""
        return f"{exc.code} {reason}".strip()
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
        return "entry killed" if node.process.poll() is not None else f"connection: {exc}"
    except TimeoutError:
        return "no answer in 120 s"


def deploy(node: Node, source: Path) -> None:
    request = urllib.request.Request(
        node.url + "/system/functions", json.dumps({"path": str(source)}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=60).close()


def serves_all(node: Node) -> bool:
    for function in FUNCTIONS:
        with urllib.request.urlopen(f"{node.url}/system/function/{function}", timeout=5):
            pass
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leader-kills", type=int, default=5)
    parser.add_argument("--worker-kills", type=int, default=5)
    parser.add_argument("--callers", type=int, default=2, help="per function at each node")
    parser.add_argument("--hold-ms", type=float, default=50.0)
    parser.add_argument("--slo-ms", type=float, default=200.0,
                        help="both functions' SLO: a call that waits out a failover is "
                             "answered late, not given up (0: no SLO)")
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    with Addresses().lease(4) as ips:
        return run(ips, args)


def run(ips: list[str], args: argparse.Namespace) -> int:
    root = shm_dir()
    key = root / "gossip.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode())
    keyed = ("--gossip-key-file", str(key))
    flags = {ip: (*keyed, "--voter") for ip in ips[:3]} | {ips[3]: keyed}
    nodes: dict[str, Node] = {}
    recorder = Recorder()
    failovers: list[float] = []
    load: Load | None = None
    hung = 0
    try:
        nodes[ips[0]] = start_node(root, ips[0], *flags[ips[0]])
        for ip in ips[1:]:
            nodes[ip] = start_node(root, ip, *flags[ip], "--join", ips[0])
        for function in FUNCTIONS:
            deploy(nodes[ips[0]], recorder.function(root / "src", function,
                                                    function == "again", args.hold_ms / 1000,
                                                    args.slo_ms or None))
        for node in nodes.values():
            wait_for("both functions on every node", lambda n=node: serves_all(n), 60)
        load = Load(nodes, args.callers)
        load.start()
        order = [k for pair in itertools.zip_longest(
            ["leader"] * args.leader_kills, ["worker"] * args.worker_kills) for k in pair if k]
        for number, kind in enumerate(order, 1):
            time.sleep(args.settle)
            voters = [nodes[ip] for ip in ips[:3]]
            leader, term = wait_for("a leader", functools.partial(agreed, voters), 30)
            if kind == "leader":
                victim = next(n for n in voters if f"node-{n.ip}" == leader)
            else:
                victim = nodes[ips[3]]
            started = time.monotonic()
            load.kills[victim.ip] += 1
            victim.kill()
            if kind == "leader":
                others = [n for n in voters if n is not victim]
                new, new_term = wait_for("a new leader", new_leader(others, leader, term), 30,
                                         every_s=0.02)
                took = time.monotonic() - started
                failovers.append(took)
                print(f"round {number}: killed the leader {leader} (term {term}) -> {new} "
                      f"(term {new_term}) in {took:.2f} s", flush=True)
            else:
                print(f"round {number}: killed the worker node-{victim.ip}", flush=True)
            nodes[victim.ip] = start_node(root, victim.ip, *flags[victim.ip],
                                          "--join", next(ip for ip in ips if ip != victim.ip))
            wait_for("all four alive", lambda: all(
                sum(m["status"] == "alive" for m in n.nodes()["nodes"]) == 4
                for n in nodes.values()), 60)
        time.sleep(args.settle)
    finally:
        if load is not None:
            hung = load.finish()
        for node in nodes.values():
            node.kill()
        recorder.close()
        shutil.rmtree(root, ignore_errors=True)
    assert load is not None
    report(load, recorder, failovers, hung)
    return 0


def report(load: Load, recorder: Recorder, failovers: list[float], hung: int) -> None:
    by_kind: Counter[tuple[str, str]] = Counter(load.outcomes.values())
    entry_killed = sum(n for (_, o), n in by_kind.items() if o == "entry killed")
    accepted = len(load.outcomes) - entry_killed
    answered = sum(n for (_, o), n in by_kind.items() if o[:3].isdigit())
    twice = {f: sum(1 for k, (g, _) in load.outcomes.items() if g == f and recorder.runs[k] > 1)
             for f in FUNCTIONS}
    print(f"calls: {len(load.outcomes)} sent, {entry_killed} died with their entry node, "
          f"{accepted} accepted by nodes that stayed up, {answered} answered, "
          f"{hung} caller(s) never answered")
    for (function, outcome), count in sorted(by_kind.items()):
        print(f"  {function:5s} {outcome:20s} {count}")
    print(f"run twice: once {twice['once']} (must be 0), again {twice['again']} (allowed: "
          "at least once)")
    if failovers:
        print(f"leader failover: n={len(failovers)} median {statistics.median(failovers):.2f} s, "
              f"min {min(failovers):.2f} s, max {max(failovers):.2f} s")


if __name__ == "__main__":
    sys.exit(main())
