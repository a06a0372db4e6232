"""L, the SLO unit: the critical path of the cheapest configuration that sustains the load,
on a table worked by hand."""

from __future__ import annotations

import pytest

from esg.model import Config, Profile, Workflow
from esg.pricing import Pricing
from esg.sim.cluster import ClusterSpec
from esg.sim.slo_unit import Application, cheapest, slo_unit

PRICING = Pricing(cpu_per_s=1.0, gpu_per_s=10.0)
ALONE, BATCHED, SLICED = Config(1, 1, 0), Config(4, 1, 0), Config(1, 1, 1)
# $ per request: ALONE 1 x 10 ms = 0.01; BATCHED 1 x 20 ms / 4 = 0.005 (the cheapest);
# SLICED (1 + 10) x 2 ms = 0.022.
PROFILES = {
    "f": Profile("f", {ALONE: 10.0, BATCHED: 20.0, SLICED: 2.0}),
    "g": Profile("g", {ALONE: 5.0}),
}
APP = Application(Workflow.from_edges("a", ["f", "g"], [("f", "g")], 1.0), 1.0,
                  {"f": 0.0, "g": 0.0})
ONE_NODE = ClusterSpec(nodes=1)  # 16 vCPUs, 7 slice units; a 0-byte transfer costs 0.2 ms


@pytest.mark.parametrize(
    ("load_rps", "f_config", "capacity_rps", "sustained", "l_ms"),
    [
        # Cheapest everywhere: 20/4 + 5 = 10 vCPU-ms per request, 16 vCPUs -> 1,600 req/s.
        # L = 20 ms + 0.2 ms transfer + 5 ms.
        (1000.0, BATCHED, 1600.0, True, 25.2),
        # 2,000 req/s needs more: ALONE would lower the capacity (15 vCPU-ms -> 1,067); SLICED
        # needs 2 + 5 = 7 vCPU-ms (2,286 req/s) and 2 unit-ms (3,500): it is taken.
        (2000.0, SLICED, 16 / 0.007, True, 7.2),
        # 3,000 req/s is beyond every assignment: the best reached, flagged.
        (3000.0, SLICED, 16 / 0.007, False, 7.2),
    ],
)
def test_l_is_the_critical_path_of_the_cheapest_assignment_that_carries_the_load(
    load_rps: float, f_config: Config, capacity_rps: float, sustained: bool, l_ms: float
) -> None:
    unit = slo_unit((APP,), PROFILES, ONE_NODE, load_rps, PRICING)
    assert unit.configs == {"f": f_config, "g": ALONE}
    assert unit.capacity_rps == pytest.approx(capacity_rps)
    assert unit.sustained is sustained
    assert unit.l_s["a"] * 1000 == pytest.approx(l_ms)


def test_cheapest_breaks_cost_ties_by_latency() -> None:
    # 1 vCPU x 10 ms and 2 vCPUs x 5 ms both cost 0.01 $ per request; the faster one wins
    # although its (batch, vCPUs, slice) tuple is the larger.
    profile = Profile("h", {Config(1, 1, 0): 10.0, Config(1, 2, 0): 5.0, Config(4, 1, 0): 45.0})
    assert cheapest(profile, PRICING) == Config(1, 2, 0)
