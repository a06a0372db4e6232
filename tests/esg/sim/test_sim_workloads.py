"""Workloads and profiles: the applications, L, the arrival process, measured CPU fits."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest

from esg.model import Config
from esg.pricing import DEFAULT_PRICING
from esg.sim.cluster import ClusterSpec
from esg.sim.functions import (
    CpuFit,
    FunctionSpec,
    GpuModel,
    build_profile,
    latency_ms,
    load_models,
)
from esg.sim.slo_unit import cheapest
from esg.sim.workloads import (
    GRID_LOAD_LEVELS,
    GRID_SLO_FACTORS,
    SLO_FACTORS,
    ArrivalModel,
    default_apps,
    make_scenario,
    reference_config,
)


def test_the_four_applications_are_valid_dags_with_shares_summing_to_one() -> None:
    apps = default_apps()
    assert [a.name for a in apps] == [
        "image-classification", "depth-recognition", "background-elimination",
        "expanded-image-classification",
    ]
    assert sum(a.share for a in apps) == pytest.approx(1.0)
    sc = make_scenario("light", "moderate", cluster=ClusterSpec(nodes=1), seed=0,
                       duration_s=0.2, warmup_s=0.1)
    assert len(sc.workflows["expanded-image-classification"].functions) == 6
    assert sc.workflows["background-elimination"].entries() == ("be-preprocess",)


def test_slo_is_factor_times_l_and_l_is_the_cheapest_critical_path() -> None:
    cluster = ClusterSpec(nodes=1)
    cells = {slo: make_scenario("light", slo, cluster=cluster, seed=0, duration_s=0.1,
                                warmup_s=0.1) for slo in GRID_SLO_FACTORS}
    assert GRID_SLO_FACTORS["tight"] == 0.6 and set(SLO_FACTORS) < set(GRID_SLO_FACTORS)
    moderate = cells["moderate"]
    assert moderate.reference_s is not None
    for slo, factor in GRID_SLO_FACTORS.items():
        for app, wf in cells[slo].workflows.items():
            assert wf.slo_s == pytest.approx(factor * moderate.reference_s[app])
    # image-classification is a chain and light load is carried by the cheapest configurations:
    # L = the sum of each stage's cheapest configuration's latency + 2 transfers.
    wf = moderate.workflows["image-classification"]
    stages = sum(
        moderate.profiles[f].latency_ms[cheapest(moderate.profiles[f], DEFAULT_PRICING)] / 1000
        for f in wf.functions
    )
    transfers = cluster.transfer_s(3 * 224 * 224 * 4) + cluster.transfer_s(4 * 1024)
    assert moderate.reference_s["image-classification"] == pytest.approx(stages + transfers)
    # Running everything at those configurations misses 0.6 x L by construction.
    assert cells["tight"].workflows["image-classification"].slo_s < stages


def test_arrivals_are_seeded_bursty_and_keep_the_mean_rate() -> None:
    model = ArrivalModel()
    a = model.times(200.0, 60.0, random.Random(1))
    assert a == model.times(200.0, 60.0, random.Random(1))
    assert a != model.times(200.0, 60.0, random.Random(2))
    assert len(a) / 60.0 == pytest.approx(200.0, rel=0.15)
    gaps = [y - x for x, y in itertools.pairwise(a)]
    cv = statistics.pstdev(gaps) / statistics.mean(gaps)
    assert cv > 1.05  # burstier than Poisson (CV = 1), as the Azure trace is
    # The diurnal cycle: the middle of the run (the peak) is busier than the start.
    start = sum(1 for t in a if t < 10)
    middle = sum(1 for t in a if 25 <= t < 35)
    assert middle > 1.5 * start


def test_heavier_load_means_more_requests() -> None:
    cluster = ClusterSpec(nodes=1)
    counts = [len(make_scenario(load, "moderate", cluster=cluster, seed=0, duration_s=2.0,
                                warmup_s=0.5).arrivals) for load in GRID_LOAD_LEVELS]
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_cpu_fit_reproduces_its_measurements() -> None:
    measured = {"b1_t1": 30.0, "b4_t1": 120.0, "b1_t2": 16.5, "b4_t2": 67.0}
    fit = CpuFit.from_measurements(measured)
    assert fit.latency_ms(1, 1) == pytest.approx(30.0)
    assert fit.latency_ms(4, 1) == pytest.approx(120.0)
    # Serial fraction from the better 2-thread ratio: min(16.5/30, 67/120) = 0.55 -> s = 0.1.
    assert fit.serial_fraction == pytest.approx(0.1)
    assert fit.latency_ms(1, 2) == pytest.approx(16.5)


def test_profiles_from_the_measured_models_behave_physically() -> None:
    models = load_models()
    assert {"resnet50", "squeezenet", "densenet121"} <= set(models)
    spec = FunctionSpec("x", "resnet50", host_ms=1.0, output_kb=4.0)
    gpu = GpuModel()
    profile = build_profile(spec, models)
    table = profile.latency_ms
    # More slice units are faster; bigger batches take longer; more vCPUs help on the CPU.
    assert table[Config(1, 2, 7)] < table[Config(1, 2, 1)]
    assert table[Config(8, 2, 1)] > table[Config(1, 2, 1)]
    assert table[Config(1, 8, 0)] < table[Config(1, 1, 0)]
    # Batching on a slice is cheaper per item than one at a time.
    assert table[Config(8, 2, 1)] / 8 < table[Config(1, 2, 1)]
    assert latency_ms(spec, Config(1, 2, 1), models, gpu) == table[Config(1, 2, 1)]
    host_only = build_profile(FunctionSpec("h", None, 4.0, 1.0), models)
    assert all(c.vgpu == 0 for c in host_only.latency_ms)
    assert reference_config(spec) == Config(4, 2, 1)


def test_every_policy_sees_the_clusters_cold_start_times_in_the_limits() -> None:
    cluster = ClusterSpec(nodes=1, cold_start_cpu_s=0.3, cold_start_gpu_extra_s=0.5)
    sc = make_scenario("light", "moderate", cluster=cluster, seed=0, duration_s=0.1,
                       warmup_s=0.1)
    assert sc.limits
    for limits in sc.limits.values():
        assert limits.cold_start_ms == pytest.approx(300.0)
        assert limits.cold_start_gpu_ms == pytest.approx(500.0)


def test_the_large_applications_have_12_to_16_functions_and_two_or_three_fork_join_regions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from esg.model import Workflow
    from esg.sim.cli import main
    from esg.sim.workflow_file import parse_workflow_file
    from esg.sim.workloads import large_apps
    from esg.slo import sequential_dominators

    for app in large_apps():
        names = [f.name for f in app.functions]
        assert 12 <= len(names) <= 16
        workflow = Workflow.from_edges(app.name, names, app.edges, 1.0)
        forks = [f for f in names if len(workflow.successors(f)) > 1]
        joins = [f for f in names if len(workflow.predecessors(f)) > 1]
        assert 2 <= len(forks) == len(joins) <= 3
        # Each region re-joins: forks and joins are all on the chain every request takes.
        assert set(forks) | set(joins) <= set(sequential_dominators(workflow))
        # As a workflow file: SLO = 1.3 x the fastest critical path + 0.2 ms per hop on it.
        assert main(["workflow", app.name, "--slo-x", "1.3"]) == 0
        spec = parse_workflow_file(json.loads(capsys.readouterr().out))
        assert spec.workflow.functions == tuple(names)
        with_hops, hops = spec.critical_path(0.2)
        assert spec.slo_ms == pytest.approx(1.3 * (with_hops - 0.2 * hops) + 0.2 * hops,
                                            abs=1e-3)
