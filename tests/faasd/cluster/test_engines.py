"""The Serf client and the elector against real engines: serf agents and an etcd member on
loopback addresses of each test's own (`loopback`), started by the same supervisors the
daemon uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from faasd.clock import SystemClock
from faasd.cluster.elector import Elector
from faasd.cluster.errors import SerfRpcError
from faasd.cluster.etcd_client import EtcdClient, LeaderKey
from faasd.cluster.etcd_member import EtcdMember, EtcdSettings
from faasd.cluster.leadership import Leader
from faasd.cluster.node import ClusterNode
from faasd.cluster.serf_agent import SerfAgent, SerfSettings
from faasd.cluster.serf_client import SerfClient
from faasd.cluster.settings import cluster_settings
from tests.faasd.cluster.addresses import engine_ports_free
from tests.faasd.cluster.nodes import require_engines, shm_dir

pytestmark = pytest.mark.cluster

Loopback = Callable[[int], list[str]]


@pytest.fixture
def work() -> Iterator[Path]:
    require_engines()
    root = shm_dir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def agent(root: Path, ip: str, peers: list[str]) -> SerfAgent:
    return SerfAgent(SerfSettings(node=f"n-{ip}", bind=(ip, 7946), rpc=(ip, 7373),
                                  tags={"role": "worker"}, profile="local"),
                     root / ip, peers)


async def next_event(events: AsyncIterator[dict[str, Any]], kind: str) -> dict[str, Any]:
    async def find() -> dict[str, Any]:
        async for event in events:
            if event["Event"] == kind:
                return event
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(find(), 20)


async def test_the_serf_client_against_a_real_agent(work: Path, loopback: Loopback) -> None:
    ip_a, ip_b = loopback(2)
    a = agent(work, ip_a, [])
    await a.start()
    b = agent(work, ip_b, [f"{ip_a}:7946"])
    try:
        # without the token: the error reply has no body, and the connection stays usable
        bare = await SerfClient.connect(ip_a, 7373)
        with pytest.raises(SerfRpcError, match="Authentication required"):
            await asyncio.wait_for(bare.members(), 5)
        with pytest.raises(SerfRpcError, match="Authentication required"):
            await asyncio.wait_for(bare.members(), 5)
        await bare.close()

        client = a.client
        events = client.stream("member-join,member-leave,member-update,user").__aiter__()
        await b.start()
        joined = await next_event(events, "member-join")
        assert f"n-{ip_b}" in [m["Name"] for m in joined["Members"]]
        members = {m.name: m for m in await a.members()}
        assert members[f"n-{ip_b}"].address == f"{ip_b}:7946"
        assert members[f"n-{ip_b}"].alive and members[f"n-{ip_a}"].role == "worker"

        await b.set_tags({"http": f"{ip_b}:8080"})  # merged with role, seen by a
        for _ in range(100):
            if (await a.members())[-1].tags.get("http"):
                break
            await asyncio.sleep(0.05)
        seen = {m.name: m for m in await a.members()}[f"n-{ip_b}"]
        assert seen.tags == {"role": "worker", "http": f"{ip_b}:8080"}

        await b.client.event("hint", b"\x01\x02")
        user = await next_event(events, "user")
        assert (user["Name"], user["Payload"]) == ("hint", b"\x01\x02")
        with pytest.raises(SerfRpcError, match="exceeds configured limit of 512 bytes"):
            await b.client.event("big", b"x" * 600)

        await b.stop()  # a graceful leave; it returns once the agent has exited
        assert not b.supervisor.running and engine_ports_free(ip_b)
        left = await next_event(events, "member-leave")
        assert [m["Name"] for m in left["Members"]] == [f"n-{ip_b}"]
        with contextlib.suppress(StopAsyncIteration):
            await events.aclose()  # type: ignore[attr-defined]
    finally:
        await b.stop()
        await a.stop()


async def test_election_resign_hands_over_at_a_higher_term(
        work: Path, loopback: Loopback) -> None:
    (ip,) = loopback(1)
    member = EtcdMember(EtcdSettings(name="e1", host=ip, data_dir=work / "etcd"),
                        work / "etcd.log")
    await member.start([])
    url = member.settings.client_url
    clock = SystemClock()
    a = Elector(EtcdClient([url]), "a", clock, campaign=True, poll_s=0.05)
    b = Elector(EtcdClient(["http://127.0.0.9:1", url]), "b", clock, campaign=True,
                poll_s=0.05)  # its first endpoint is dead: the client moves on
    watcher = EtcdClient([url])
    try:
        a.start()
        await wait_until(a.is_leader)
        term = a.leader().term
        b.start()
        await wait_until(lambda: b.leader().name == "a")
        assert not b.is_leader() and b.leader().term == term
        observed = watcher.observe("faasd/leader").__aiter__()
        first = await asyncio.wait_for(observed.__anext__(), 5)
        assert (first.name, first.term) == ("a", term)

        await a.stop()  # resigns and revokes its lease: b need not wait for a TTL
        await wait_until(b.is_leader, timeout_s=5)
        assert b.leader().term > term
        second = await asyncio.wait_for(observed.__anext__(), 5)
        assert (second.name, second.term) == ("b", b.leader().term)
        assert await watcher.leader("faasd/leader") is not None
    finally:
        await a.stop()
        await b.stop()
        for client in (a.client, b.client, watcher):
            await client.close()
        await member.stop()
    assert engine_ports_free(ip)  # stop returned once etcd had exited


async def wait_until(check: Any, timeout_s: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


async def test_a_voter_with_etcd_urls_campaigns_there_and_runs_no_member(
        work: Path, loopback: Loopback) -> None:
    ip_etcd, ip_voter = loopback(2)
    external = EtcdMember(EtcdSettings(name="ext", host=ip_etcd, data_dir=work / "ext"),
                          work / "ext.log")
    await external.start([])
    settings = cluster_settings(ip_voter, voter=True, node_name="v",
                                etcd=[external.settings.client_url])
    node = ClusterNode(settings, vcpu=2, work_dir=work / "v", clock=SystemClock())
    seen: list[Leader] = []
    node.on_leader_change(seen.append)
    try:
        await node.start(f"{ip_voter}:8080")
        await wait_until(node.is_leader)
        assert node.etcd is None  # the election runs on the given cluster
        doc = await node.nodes()
        assert (doc["leader"], doc["self"]) == ("v", {"name": "v", "leader": True})
        assert doc["nodes"][0]["address"] == f"{ip_voter}:8080"
        assert seen[-1] == node.leader() and node.fence.max_term == node.leader().term
        reader = EtcdClient([external.settings.client_url])
        try:
            assert await reader.leader("faasd/leader") == LeaderKey("v", node.leader().term)
        finally:
            await reader.close()
    finally:
        await node.stop()
        await external.stop()


async def test_a_node_left_alone_rejoins_the_peers_it_knew(
        work: Path, loopback: Loopback, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # Workers only (no etcd): x, then y joins x. x leaves and comes back as a fresh node that
    # knows nobody; y, finding itself alone, rejoins x's address by itself. Before x comes
    # back, y's rejoins fail (nothing listens there): a failed join's reply carries a body,
    # and y's RPC connection must stay in step through it (it once did not, and y's member
    # list froze: this test failed whenever a busy machine made x's restart slow).
    monkeypatch.setattr("faasd.cluster.node.REJOIN_EVERY_S", 0.5)
    caplog.set_level(logging.INFO, logger="faasd.cluster")

    def worker(ip: str, join: list[str], name: str, state: str) -> ClusterNode:
        return ClusterNode(cluster_settings(ip, join=join, node_name=name), vcpu=1,
                           work_dir=work / state, clock=SystemClock(), refresh_s=0.2)

    ip_x, ip_y = loopback(2)
    x = worker(ip_x, [], "x", "x1")
    y = worker(ip_y, [ip_x], "y", "y")
    await x.start(f"{ip_x}:8080")
    await y.start(f"{ip_y}:8080")
    x2: ClusterNode | None = None
    try:
        await wait_until(lambda: {m.name for m in y.members() if m.alive} == {"x", "y"})
        await x.stop()
        # stop returned once x's agent had exited: its address is free for x2 at once
        assert engine_ports_free(ip_x)
        await wait_until(lambda: any("serf could not rejoin" in r.getMessage()
                                     for r in caplog.records))
        x2 = worker(ip_x, [], "x", "x2")  # a new state dir: no peers, no snapshot
        await x2.start(f"{ip_x}:8080")
        await wait_until(lambda: {m.name for m in x2.members() if m.alive} == {"x", "y"},
                         timeout_s=20)
        await wait_until(lambda: {m.name for m in y.members() if m.alive} == {"x", "y"})
        lost = [r.getMessage() for r in caplog.records if "connection was lost" in r.getMessage()]
        assert lost == []  # the connection stayed in step: no reconnect was needed
    finally:
        await y.stop()
        await x.stop()
        if x2 is not None:
            await x2.stop()
