"""Real nodes' HTTP APIs, each with that node's own admin token (`faasd token create`), for the
cluster tests that deploy on one node and call another. Every node has a token of its own, so
the requests between daemons only work with the cluster's token (derived from the gossip
key)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.faasd.cluster.nodes import Node, require_engines, shm_dir, start_node

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

    def replication(self, node: str) -> dict[str, Any]:
        """`node`'s replication entry as this node's `/system/nodes` shows it."""
        replication = self.listed_replication(node)
        assert replication is not None, f"{node} is not among this node's members"
        return replication

    def listed_replication(self, node: str) -> dict[str, Any] | None:
        """`replication`, or None while gossip has not brought `node` here yet."""
        doc = self.request("GET", "/system/nodes")[1]
        found: dict[str, Any] | None = next(
            (n["replication"] for n in doc["nodes"] if n["name"] == node), None)
        return found


def token_for(state: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "faasd.cli", "token", "create", "--scope",
                           "admin", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()[-1]


def start(root: Path, ip: str, *flags: str) -> Api:
    """A node on `ip` with the cluster's gossip key (`keyed_root`) and a token of its own."""
    token = token_for(root / ip)
    return Api(start_node(root, ip, "--gossip-key-file", str(root / "gossip.key"), *flags),
               token)


@contextmanager
def voters(root: Path, ips: list[str]) -> Iterator[list[Api]]:
    """A voter on each of `ips` (the first starts the cluster, the others join it), each with
    a token of its own; killed when the block ends."""
    started: list[Api] = []
    try:
        started.append(start(root, ips[0], "--voter"))
        for ip in ips[1:]:
            started.append(start(root, ip, "--voter", "--join", ips[0]))
        yield started
    finally:
        for api in started:
            api.node.kill()


@contextmanager
def keyed_root() -> Iterator[Path]:
    """A tmpfs directory for the nodes' state, with a fresh gossip key in `gossip.key`."""
    require_engines()
    root = shm_dir()
    (root / "gossip.key").write_text(base64.b64encode(os.urandom(32)).decode())
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)
