"""ESG_Dispatch: OpenWhisk's home-node progression, slice validity, preference order, fit."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esg.dispatch import (
    candidate_nodes,
    fits,
    gpu_for,
    home_progression,
    pairwise_coprimes,
    place,
    slice_is_valid,
)
from esg.model import MIG_SIZES, Config
from esg.policy import Dispatch, NodeView
from esg.search import Plan
from esg.testing import job, node, snapshot


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        # 16: odd numbers, minus 9 and 15 (they share a factor 3 with 3).
        (16, (1, 3, 5, 7, 11, 13)),
        (6, (1, 5)),
        (1, (1,)),
        # 10: 1, 3, 7, 9? gcd(3, 9) = 3, so 9 is out.
        (10, (1, 3, 7)),
    ],
)
def test_pairwise_coprimes(n: int, expected: tuple[int, ...]) -> None:
    assert pairwise_coprimes(n) == expected


@pytest.mark.parametrize("count", [1, 2, 5, 16])
def test_home_progression_visits_every_node_once_from_the_hashed_home(count: int) -> None:
    order = home_progression("app/f", count)
    assert sorted(order) == list(range(count))
    h = zlib.crc32(b"app/f")  # the stable hash: the same in every process
    assert order[0] == h % count
    if count > 1:
        step = (order[1] - order[0]) % count
        assert step in pairwise_coprimes(count)
        assert all((order[i + 1] - order[i]) % count == step for i in range(count - 1))


def test_mig_slices_come_in_instance_sizes_only() -> None:
    assert [u for u in range(8) if slice_is_valid(u, "mig")] == list(MIG_SIZES)
    assert all(slice_is_valid(u, "mps") for u in range(1, 8))
    mig = node("n", gpu_units=(7, 3))
    assert gpu_for(mig, 3) == 1  # best fit: the GPU with 3 free, not the one with 7
    assert gpu_for(mig, 4) == 0
    assert gpu_for(mig, 5) is None  # 7 units free, but there is no 5g MIG profile
    assert gpu_for(node("n", gpu_units=(7, 3), mode="mps"), 5) == 0


@pytest.mark.parametrize(
    ("view", "config", "expected"),
    [
        (node("n", vcpu=4), Config(1, 4), (True, None)),
        (node("n", vcpu=4, free_vcpu=3), Config(1, 4), (False, None)),
        (node("n", vcpu=4, healthy=False), Config(1, 1), (False, None)),
        (node("n", gpu_units=(2,)), Config(1, 1, 2), (True, 0)),
        (node("n", gpu_units=(2,)), Config(1, 1, 3), (False, None)),
        (node("n", gpu_units=()), Config(1, 1, 1), (False, None)),
    ],
)
def test_fits(view: object, config: Config, expected: tuple[bool, int | None]) -> None:
    assert fits(view, config) == expected  # type: ignore[arg-type]


def test_preference_is_warm_then_input_nodes_then_the_home_progression() -> None:
    config = Config(1, 2)
    nodes = [node(f"n{i}") for i in range(6)]
    nodes[3] = node("n3", warm={("f", config): 1})
    nodes[1] = node("n1", warm={("f", config): 2, ("f", Config(1, 1)): 1})
    progression = [f"n{i}" for i in home_progression("app/f", 6)]
    jobs = [job(0, input_node="n1"), job(1, input_node="n2"), job(2, input_node="n2")]
    order = [n.name for n in candidate_nodes(nodes, "f", config, jobs, "app/f")]
    # Warm at this config: n1 (it also holds an input) before n3. Then the input nodes, n2
    # (two inputs) before n1. Then the OpenWhisk progression from the home node.
    rest = [name for name in progression if name not in ("n1", "n2", "n3")]
    assert order == ["n1", "n3", "n2", *rest]
    # Another configuration is warm nowhere: locality first, then home and its progression.
    other = [n.name for n in candidate_nodes(nodes, "f", Config(2, 2), jobs, "app/f")]
    assert other == ["n2", "n1", *[p for p in progression if p not in ("n1", "n2")]]


def _plan(config: Config) -> Plan:
    return Plan(cost=1.0, latency_ms=1.0, feasible=True, configs={"f": config})


def test_place_pops_plans_in_priority_order_until_one_fits() -> None:
    nodes = [node("n0", vcpu=8, gpu_units=(3,)), node("n1", vcpu=8, gpu_units=(7,))]
    plans = [_plan(Config(1, 16)), _plan(Config(2, 4, 5)), _plan(Config(2, 4, 4))]
    placement = place(plans, "f", [job(0), job(1)], nodes, "app/f")
    # 16 vCPUs fit no node; 5 units is not a MIG size; 4 units fit n1's 7-unit GPU only.
    assert placement is not None
    assert (placement.plan_index, placement.node, placement.gpu) == (2, "n1", 0)


def test_place_returns_nothing_when_nothing_fits() -> None:
    nodes = [node("n0", vcpu=8, free_vcpu=1, gpu_units=(0,))]
    assert place([_plan(Config(1, 2)), _plan(Config(1, 1, 1))], "f", [job(0)], nodes, "k") is None


CONFIGS = st.builds(
    Config, batch=st.integers(1, 4), vcpu=st.integers(1, 16), vgpu=st.integers(0, 7)
)


@settings(max_examples=200, deadline=None)
@given(
    free=st.lists(
        st.tuples(st.integers(0, 16), st.lists(st.integers(0, 7), max_size=2), st.booleans()),
        min_size=1,
        max_size=4,
    ),
    requests=st.lists(st.lists(CONFIGS, min_size=1, max_size=4), min_size=1, max_size=12),
)
def test_dispatch_never_over_commits_a_node_nor_hands_out_an_invalid_mig_size(
    free: list[tuple[int, list[int], bool]], requests: list[list[Config]]
) -> None:
    nodes = [
        node(f"n{i}", vcpu=16, free_vcpu=v, gpu_units=tuple(g), mode="mig" if m else "mps")
        for i, (v, g, m) in enumerate(free)
    ]
    jobs = [job(i) for i in range(len(requests))]
    snap = snapshot(nodes=nodes, jobs=jobs)
    for i, configs in enumerate(requests):
        placement = place([_plan(c) for c in configs], "f", [jobs[i]], snap.nodes, "app/f")
        if placement is None:
            continue
        target = snap.node(placement.node)
        assert target.free_vcpu >= placement.config.vcpu
        if placement.config.vgpu:
            gpu = next(g for g in target.gpus if g.index == placement.gpu)
            assert gpu.free_units >= placement.config.vgpu
            assert gpu.mode != "mig" or placement.config.vgpu in MIG_SIZES
        dispatch = Dispatch(
            "app", "f", (jobs[i].id,), placement.config, placement.node, gpu=placement.gpu
        )
        snap = snap.reserve(dispatch)
        for view in snap.nodes:
            assert view.free_vcpu >= 0
            assert all(g.free_units >= 0 for g in view.gpus)


def test_place_takes_a_node_only_when_its_setup_fits_the_plans_allowance() -> None:
    # n0 is cold for Config(1, 2) (setup 300 ms), n1 is warm but listed second. The first plan
    # allows 100 ms of setup: only n1 will do. A plan allowing 500 ms takes the first node in
    # preference order that fits, and warm nodes come first: still n1. With n1 full, the
    # 100-ms plan fits nowhere and the next one (500 ms) goes cold on n0.
    config = Config(1, 2)
    warm_n1 = {("f", config): 1}

    def setup_ms(view: NodeView, c: Config) -> float:
        return 0.0 if view.warm.get(("f", c), 0) else 300.0

    nodes = [node("n0"), node("n1", warm=warm_n1)]
    plans = [_plan(config), _plan(config)]
    got = place(plans, "f", [job(0)], nodes, "k", allowance_ms=[100.0, 500.0], setup_ms=setup_ms)
    assert got is not None and (got.plan_index, got.node) == (0, "n1")
    full = [node("n0"), node("n1", free_vcpu=0, warm=warm_n1)]
    got = place(plans, "f", [job(0)], full, "k", allowance_ms=[100.0, 500.0], setup_ms=setup_ms)
    assert got is not None and (got.plan_index, got.node) == (1, "n0")
    # Without the second plan nothing is placed: the jobs wait rather than miss.
    none = place(plans[:1], "f", [job(0)], full, "k", allowance_ms=[100.0], setup_ms=setup_ms)
    assert none is None
