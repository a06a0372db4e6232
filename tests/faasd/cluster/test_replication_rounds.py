"""The replicator's rounds against a real etcd member, with two small kinds of its own: one
that only takes what it is given ("base", as functions), and one whose records need a base of
the same name first ("built", as workflows). Each round is driven by hand (`sync_once`), so
what happens in which round is exact."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from faasd.cluster.deployments import STATUS_PREFIX, Deployment
from faasd.cluster.etcd_client import EtcdClient
from faasd.cluster.etcd_member import EtcdMember, EtcdSettings
from faasd.cluster.replication import NotYet, Replicator
from faasd.errors import DeployError
from tests.faasd.cluster.nodes import require_engines, shm_dir

pytestmark = pytest.mark.cluster


@dataclass
class Shelf:
    """A kind whose 'service' is a dict name -> digest; `needs` names the shelf whose entry
    of the same name must be there first; digests in `bad` cannot be served at all."""

    label: str
    needs: Shelf | None = None
    bad: set[str] = field(default_factory=set)
    items: dict[str, str] = field(default_factory=dict)
    installs: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"test/{self.label}/"

    async def served(self) -> dict[str, str]:
        return dict(self.items)

    async def current(self, name: str) -> tuple[str, dict[str, Any] | None]:
        return self.items.get(name, ""), {"on": self.label}

    async def install(self, record: Deployment, sources: list[str]) -> None:
        self.installs.append(record.name)
        if record.digest in self.bad:
            raise DeployError(f"{record.digest} does not load here")
        if self.needs is not None and record.name not in self.needs.items:
            raise NotYet(f"waiting for {record.name} on {self.needs.label}")
        self.items[record.name] = record.digest

    async def remove(self, name: str) -> None:
        del self.items[name]

    async def close(self) -> None:
        return None


@pytest.fixture
async def etcd(loopback: Callable[[int], list[str]]) -> AsyncIterator[EtcdClient]:
    require_engines()
    work = shm_dir()
    (ip,) = loopback(1)
    member = EtcdMember(EtcdSettings(name="e1", host=ip, data_dir=work / "etcd"),
                        work / "etcd.log")
    await member.start([])
    client = EtcdClient([member.settings.client_url])
    try:
        yield client
    finally:
        await client.close()
        await member.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def kinds() -> Iterator[tuple[Shelf, Shelf]]:
    base = Shelf("base", bad={"broken"})
    yield base, Shelf("built", needs=base)


def replicator(etcd: EtcdClient, kinds: tuple[Shelf, Shelf]) -> Replicator:
    return Replicator(name="me", http="127.0.0.1:1", kinds=list(kinds), etcd=lambda: etcd,
                      members=lambda: [])


async def put(etcd: EtcdClient, kind: Shelf, name: str, digest: str) -> None:
    """A record as another node makes it."""
    await etcd.put(kind.prefix + name, Deployment(name, digest, "other", "o:1").to_json())


async def reported(etcd: EtcdClient) -> Any:
    raw = await etcd.get_prefix(STATUS_PREFIX + "me")
    return json.loads(raw[STATUS_PREFIX + "me"]) if raw else None


async def test_a_record_waits_each_round_for_what_it_needs_and_a_bad_one_is_left_alone(
        etcd: EtcdClient, kinds: tuple[Shelf, Shelf]) -> None:
    base, built = kinds
    rep = replicator(etcd, kinds)
    try:
        await put(etcd, built, "w", "d1")
        await put(etcd, base, "b", "broken")
        await rep.sync_once()
        failed = rep.status()["failed"]
        assert failed["built"]["w"] == {"digest": "d1", "error": "waiting for w on base",
                                        "state": "waiting"}
        assert failed["base"]["b"]["state"] == "failed"
        assert await reported(etcd) == failed  # what other nodes' /system/nodes show

        await rep.sync_once()  # waiting: tried again; failed: not, the record is the same
        assert built.installs == ["w", "w"] and base.installs == ["b"]

        # what w needs arrives, and is applied before w in the same round
        await put(etcd, base, "w", "d0")
        await rep.sync_once()
        assert built.items == {"w": "d1"} and base.items == {"w": "d0"}
        assert rep.status()["failed"] == {"base": {"b": failed["base"]["b"]}, "built": {}}

        await put(etcd, base, "b", "fixed")  # a new version of the bad one: tried at once
        await rep.sync_once()
        assert base.items["b"] == "fixed"
        assert rep.status() == {"base": ["b", "w"], "built": ["w"],
                                "failed": {"base": {}, "built": {}}}
        assert await reported(etcd) is None
    finally:
        await rep.stop()


async def test_a_local_change_is_recorded_and_stands_in_for_the_record_until_then(
        etcd: EtcdClient, kinds: tuple[Shelf, Shelf]) -> None:
    built = kinds[1]
    await put(etcd, built, "w", "d1")
    rep = replicator(etcd, kinds)
    elsewhere = Shelf("built", items={"w": "d1"})  # a node that serves w already
    offline = replicator(etcd, (Shelf("base"), elsewhere))
    try:
        await rep.sync_once()
        await offline.sync_once()
        assert not offline.recorded("built")["w"].removed

        # removed there while etcd is out of reach: the removal stands in for the record at
        # once, though it is not recorded yet
        offline.etcd = lambda: None
        del elsewhere.items["w"]
        offline.on_change("built", "w", removed=True)
        await asyncio.sleep(0)
        assert offline.recorded("built")["w"].removed
        assert (await etcd.get_prefix(built.prefix)) == {
            built.prefix + "w": Deployment("w", "d1", "other", "o:1").to_json()}

        # deployed here: recorded with the kind's content, and applied nowhere else
        built.items["w"] = "d2"
        rep.on_change("built", "w")
        await asyncio.gather(*rep._tasks)  # the recording
        assert rep.recorded("built")["w"].digest == "d2"
        record = Deployment.from_json((await etcd.get_prefix(built.prefix))[built.prefix + "w"])
        assert record == Deployment("w", "d2", "me", "127.0.0.1:1", {"on": "built"})
        await rep.sync_once()
        assert built.installs == ["w"]  # the first round's wait only
    finally:
        await rep.stop()
        await offline.stop()


class SlowReads:
    """The etcd client, but the next read's answer arrives only after `meanwhile()` ran:
    a change made on this node while a round's read of etcd was on its way."""

    def __init__(self, etcd: EtcdClient) -> None:
        self.etcd = etcd
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        answer = await self.etcd.get_prefix(prefix)
        if self.meanwhile is not None:
            change, self.meanwhile = self.meanwhile, None
            await change()
        return answer

    async def put(self, key: str, value: str) -> int:
        return await self.etcd.put(key, value)

    async def delete(self, key: str) -> None:
        await self.etcd.delete(key)


async def test_a_removal_made_here_while_a_round_reads_etcd_is_not_undone_by_it(
        etcd: EtcdClient, kinds: tuple[Shelf, Shelf]) -> None:
    base = kinds[0]
    await put(etcd, base, "f", "d1")
    slow = SlowReads(etcd)
    rep = replicator(etcd, kinds)
    rep.etcd = lambda: slow  # type: ignore[assignment,return-value]
    try:
        await rep.sync_once()
        assert base.items == {"f": "d1"}

        async def remove_and_record() -> None:  # etcd has answered "f is deployed"
            del base.items["f"]
            rep.on_change("base", "f", removed=True)
            await asyncio.gather(*rep._tasks)  # the removal is recorded

        slow.meanwhile = remove_and_record
        await rep.sync_once()  # it read f as deployed, but f's removal is newer
        assert base.items == {} and base.installs == ["f"]
        await rep.sync_once()
        assert base.items == {} and base.installs == ["f"]
        assert rep.recorded("base")["f"].removed
    finally:
        await rep.stop()


async def test_a_removal_made_here_while_the_same_name_installs_is_recorded(
        etcd: EtcdClient, kinds: tuple[Shelf, Shelf]) -> None:
    base = kinds[0]
    await put(etcd, base, "f", "d1")
    rep = replicator(etcd, kinds)
    install = base.install

    async def install_then_removed_here(record: Deployment, sources: list[str]) -> None:
        await install(record, sources)
        rep.on_change("base", "f")  # the install's own change: not recorded
        # a user's removal before the install has returned (its clean-up still running)
        del base.items["f"]
        rep.on_change("base", "f", removed=True)

    base.install = install_then_removed_here  # type: ignore[method-assign]
    try:
        await rep.sync_once()
        await asyncio.gather(*rep._tasks)
        assert rep.recorded("base")["f"].removed
        record = Deployment.from_json((await etcd.get_prefix(base.prefix))[base.prefix + "f"])
        assert record is not None and record.removed and record.origin == "me"
        await rep.sync_once()  # and the next round does not bring f back
        assert base.items == {} and base.installs == ["f"]
    finally:
        await rep.stop()
