"""How a node pulls a recorded deployment: the deploying node first, then any other member that
serves the same digest; files whose digest differs from the record are refused (real HTTP
servers on 127.0.0.1 stand in for the other daemons; no engines needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from faasd.archive import pack, tree_digest
from faasd.cluster.deployments import Action, Deployment, Step, plan
from faasd.cluster.members import TAG_HTTP, Member, Status
from faasd.cluster.replicated_functions import FunctionKind, PullFailed
from faasd.cluster.replication import Replicator
from tests.faasd.builders import make_function

HITS = web.AppKey("hits", list)


def server_for(archive: bytes, digest: str) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        request.app[HITS].append(request.path)
        return web.Response(body=archive, headers={"X-Faasd-Digest": digest})

    app = web.Application()
    app[HITS] = []
    app.router.add_get("/system/function/{name}/archive", handler)
    return app


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    good = make_function(tmp_path / "good", "linear")
    bad = make_function(tmp_path / "bad", "linear", scale=3.0)
    digest = tree_digest(good)
    apps = {
        # claims the recorded digest but sends other files (a corrupt or lying copy)
        "liar": server_for(pack(bad), digest),
        # serves an older version: says so in its header, is skipped without a download
        "old": server_for(pack(bad), tree_digest(bad)),
        "good": server_for(pack(good), digest),
    }
    running = {name: TestServer(app, host="127.0.0.1") for name, app in apps.items()}
    for server in running.values():
        await server.start_server()
    yield {"digest": digest, "apps": apps,
           "http": {n: f"127.0.0.1:{s.port}" for n, s in running.items()}}
    for server in running.values():
        await server.close()


def replicator(tmp_path: Path, members: list[Member]) -> Replicator:
    kind = FunctionKind(catalog=None, scratch=tmp_path / "s",  # type: ignore[arg-type]
                        max_bytes=1 << 24)
    return Replicator(name="me", http="127.0.0.1:1", kinds=[kind], etcd=lambda: None,
                      members=lambda: members)


async def pull(rep: Replicator, record: Deployment, work: Path) -> Path:
    """What a node's pull of `record` gets from the sources it would try."""
    work.mkdir()
    kind = rep.kinds[0]
    assert isinstance(kind, FunctionKind)
    return await kind._pull(record, rep._sources(record), work)


def member(name: str, http: str, status: Status = Status.ALIVE) -> Member:
    return Member(name, "127.0.0.1:7946", status, {TAG_HTTP: http})


async def test_a_dead_origin_and_a_wrong_copy_are_passed_over_for_a_good_one(
        tmp_path: Path, servers: dict[str, Any]) -> None:
    http = servers["http"]
    record = Deployment("linear", servers["digest"], "origin", "127.0.0.1:1")  # origin: dead
    members = [member("liar", http["liar"]), member("old", http["old"]),
               member("gone", "127.0.0.1:2", Status.FAILED), member("good", http["good"])]
    rep = replicator(tmp_path, members)
    try:
        directory = await pull(rep, record, tmp_path / "pull")
        assert tree_digest(directory) == servers["digest"]
        assert [len(servers["apps"][n][HITS]) for n in ("liar", "old", "good")] == [1, 1, 1]
    finally:
        await rep.stop()


async def test_no_node_with_the_digest_is_a_pull_failure_naming_each_answer(
        tmp_path: Path, servers: dict[str, Any]) -> None:
    http = servers["http"]
    record = Deployment("linear", servers["digest"], "liar", http["liar"])
    rep = replicator(tmp_path, [member("old", http["old"])])
    try:
        with pytest.raises(PullFailed, match=r"digest mismatch .*serves "):
            await pull(rep, record, tmp_path / "pull")
    finally:
        await rep.stop()


def test_plan_pulls_what_differs_removes_tombstones_and_publishes_unrecorded() -> None:
    records = {
        "same": Deployment("same", "d1", "a", "a:1"),
        "newer": Deployment("newer", "d3", "a", "a:1"),
        "missing": Deployment("missing", "d4", "a", "a:1"),
        "gone": Deployment("gone", "", "b", "b:1"),
        "gone-here-too": Deployment("gone-here-too", "", "b", "b:1"),
        "busy": Deployment("busy", "d9", "a", "a:1"),
    }
    local = {"same": "d1", "newer": "d2", "gone": "d5", "mine": "d6", "busy": "d0"}
    assert plan(records, local, busy={"busy"}) == [
        Action(Step.REMOVE, "gone", record=records["gone"]),
        Action(Step.PUBLISH, "mine", "d6"),
        Action(Step.PULL, "missing", "d4", records["missing"]),
        Action(Step.PULL, "newer", "d3", records["newer"]),
    ]


def test_a_record_round_trips_and_an_unreadable_one_is_none() -> None:
    record = Deployment("linear", "ab" * 32, "node-b", "127.0.0.3:8080")
    assert Deployment.from_json(record.to_json()) == record
    assert not record.removed and Deployment("x", "", "b", "b:1").removed
    assert Deployment.from_json("{not json") is None
    assert Deployment.from_json('{"name": "x"}') is None
