"""The profiler with a real fork server, real sandboxes and a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from esg.model import Config
from faasd.profiles.plan import Kind, plan
from faasd.profiles.profiler import Profiler, Settings
from faasd.profiles.sample import NoSample, load_sample
from faasd.profiles.store import ProfileStore
from faasd.sandbox.items import TensorItem
from faasd.sandbox.pool import SandboxPool

from .conftest import linear_function, loaded

#: preprocess fails for every body: a sample that parses but cannot run
REFUSING_HANDLER = """
def preprocess(body, content_type):
    raise ValueError("this handler reads nothing")
"""


async def test_small_profile_measures_fills_and_cleans_up(
    pool: SandboxPool, tmp_path: Path
) -> None:
    version, info = await loaded(pool, linear_function(tmp_path / "functions"))
    item = load_sample(version, info)
    assert isinstance(item, TensorItem) and item.tensors["x"].shape == (1, 4)
    store = ProfileStore(tmp_path / "profiles.sqlite")
    store.set_current("lin", 1)
    small = plan(Kind.SMALL, max_batch=4, node_vcpu=2)  # batches 1, 4 x vCPUs 1, 2
    serving = Config(4, 1)
    await pool.prewarm(version, serving, 1)  # a serving sandbox the profile must leave alone

    events = [e async for e in Profiler(store, pool, version, item, small,
                                        Settings(repetitions=3, warmup=1)).run()]

    assert [e["event"] for e in events] == ["start", "point", "point", "point", "point", "done"]
    assert [(e["batch"], e["vcpu"]) for e in events[1:5]] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(e["latency_ms"] > 0 for e in events[1:5])
    # the 2-vCPU configurations needed a new sandbox; the prewarmed 1-vCPU one ran both
    # batch sizes of its shape
    assert [("cold_start_ms" in e) for e in events[1:5]] == [False, True, False, True]
    points = store.points("lin", 1)
    assert set(points) == set(small.grid)
    assert {c for c, p in points.items() if not p.fitted} == set(small.measure)
    assert all(points[c].count == 3 for c in small.measure)
    assert all(points[c].fitted and points[c].count == 0 for c in small.fill)
    profile = store.profiles()["lin"]
    assert profile.version == events[-1]["profile_version"]
    cold = store.cold_starts("lin", 1)
    assert cold is not None and cold.count == 2 and cold.mean_ms > 0
    # the profile's own sandboxes are gone, the serving one is still warm (at every batch size)
    assert pool.warm_counts() == {("lin", Config(b, 1)): 1 for b in range(1, 5)}
    assert pool.stats().alive == {"lin": 1}
    store.close()


async def test_a_sample_that_fails_in_the_sandbox_is_reported(
    pool: SandboxPool, tmp_path: Path
) -> None:
    directory = linear_function(tmp_path / "functions", sample=None, handler=REFUSING_HANDLER)
    (directory / "sample.png").write_bytes(b"not really a png")
    version, info = await loaded(pool, directory)
    item = load_sample(version, info)
    store = ProfileStore(tmp_path / "profiles.sqlite")
    run = Profiler(store, pool, version, item, plan(Kind.SMALL, 1, 1)).run()
    assert (await anext(run))["event"] == "start"
    with pytest.raises(NoSample, match=r"reads nothing.*fix the sample"):
        await anext(run)
    assert store.profile("lin", 1) is None  # nothing recorded
    store.close()


async def test_no_sample_names_the_files_to_add(pool: SandboxPool, tmp_path: Path) -> None:
    version, info = await loaded(pool, linear_function(tmp_path / "functions", sample=None))
    with pytest.raises(NoSample, match=r"add sample\.json") as caught:
        load_sample(version, info)
    assert caught.value.status == 400


async def test_a_sample_that_does_not_fit_the_model(pool: SandboxPool, tmp_path: Path) -> None:
    directory = linear_function(tmp_path / "functions", sample='{"x": [[1, 2, 3]]}')
    version, info = await loaded(pool, directory)
    with pytest.raises(NoSample, match=r"sample\.json cannot be used") as caught:
        load_sample(version, info)
    assert caught.value.extra["file"] == "sample.json"
