"""What the engine executes against what the policies see: profile error, noise, interference,
and the charged scheduling time."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from esg.model import Config, Workflow
from esg.policy import Action, Completion, Event, Snapshot
from esg.pricing import Pricing
from esg.sim.cli import main
from esg.sim.cluster import ClusterSpec
from esg.sim.engine import EngineSettings, Simulation
from esg.sim.execution import ExecutionModel
from esg.sim.workloads import custom_scenario as scenario
from tests.esg.sim.test_sim_engine import CPU, GPU, Fixed, fake_timer

PRICING = Pricing(cpu_per_s=1.0, gpu_per_s=10.0)
WRONG = ExecutionModel(factor_low=0.8, factor_high=1.3, noise_sigma=0.0)


def _settings(model: ExecutionModel, seed: int = 0, **kw: object) -> EngineSettings:
    return replace(EngineSettings(execution=model, seed=seed, pricing=PRICING), **kw)


def _run(policy: Fixed, sc, settings: EngineSettings,  # type: ignore[no-untyped-def]
         timer: Callable[[], float] | None = None):
    cluster = ClusterSpec(nodes=1, cold_start_cpu_s=0.0, cold_start_gpu_extra_s=0.0)
    return Simulation(sc, policy, cluster, timer=timer or fake_timer(),
                      settings=settings).run()


class Watching(Fixed):
    """Fixed, remembering the profile it was shown and the execution times it was told."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.seen_ms: list[float] = []
        self.told_s: list[float] = []

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        self.seen_ms.append(snapshot.profiles["f"].latency_ms[self.config])
        if isinstance(event, Completion):
            self.told_s.append(event.exec_s)
        return super().on_event(event, snapshot)


def test_profile_error_scales_what_runs_by_the_seeded_factor_and_the_policy_sees_the_profile(
) -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 40.0}}, arrivals=[0.0, 1.0])
    factor = WRONG.factors(["f"], seed=7)["f"]
    assert 0.8 <= factor <= 1.3 and factor != pytest.approx(1.0, abs=1e-3)
    policy = Watching(CPU)
    record = _run(policy, sc, _settings(WRONG, seed=7))
    latencies = [r.latency_s for r in record.requests.values()]
    assert latencies == pytest.approx([0.04 * factor] * 2)
    # Billed on what ran: 2 vCPUs × 1 $/vCPU·s × the executed time.
    assert [r.cost for r in record.requests.values()] == pytest.approx([0.08 * factor] * 2)
    assert set(policy.seen_ms) == {40.0}
    assert policy.told_s == pytest.approx([0.04 * factor] * 2)
    # Exact profiles (the default) run the table.
    exact = _run(Fixed(CPU), sc, _settings(replace(WRONG, factor_low=1.0, factor_high=1.0)))
    assert [r.latency_s for r in exact.requests.values()] == pytest.approx([0.04] * 2)


def test_factors_are_per_function_per_seed_and_independent_of_the_other_functions() -> None:
    one = WRONG.factors(["a"], seed=1)
    two = WRONG.factors(["a", "b"], seed=1)
    assert one["a"] == two["a"] != two["b"]
    assert WRONG.factors(["a"], seed=2)["a"] != one["a"]
    many = WRONG.factors([f"f{i}" for i in range(200)], seed=0).values()
    assert 0.8 <= min(many) < 0.85 and 1.25 < max(many) <= 1.3


def test_noise_has_the_configured_spread() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[float(i) for i in range(400)])
    model = ExecutionModel(noise_sigma=0.3)
    record = _run(Fixed(CPU), sc, _settings(model, seed=3))
    logs = [math.log(r.latency_s / 0.01) for r in record.requests.values()
            if r.latency_s is not None]
    assert statistics.pstdev(logs) == pytest.approx(0.3, rel=0.15)
    assert abs(statistics.mean(logs)) < 0.05  # median 1


@pytest.mark.parametrize(
    ("config", "gpu", "second"),
    [
        # The second batch starts beside the first, which holds 2 of the node's 16 vCPUs:
        # 40 ms × (1 + 0.3 × 2/16) = 41.5 ms.
        (CPU, None, 0.0415),
        # On a slice, also 1 of the GPU's 7 units: 40 ms × (1 + 0.3 × 2/16 + 0.7 × 1/7) = 45.5 ms.
        (GPU, 0, 0.0455),
    ],
)
def test_interference_slows_a_batch_by_what_the_others_on_its_node_hold(
    config: Config, gpu: int | None, second: float
) -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {config: 40.0}}, arrivals=[0.0, 0.0, 1.0])
    model = ExecutionModel(noise_sigma=0.0, cpu_interference=0.3, gpu_interference=0.7)
    record = _run(Fixed(config, gpu=gpu), sc, _settings(model))
    # The first runs alone, the second beside it, the third alone again (a second later).
    assert [r.latency_s for r in record.requests.values()] == pytest.approx(
        [0.04, second, 0.04]
    )


def test_the_model_validates_and_names_its_error() -> None:
    assert ExecutionModel().profile_error == "0"
    assert ExecutionModel.realistic().profile_error == "0.8-1.3"
    for bad in ({"factor_low": 1.3, "factor_high": 0.8}, {"factor_low": 0.0},
                {"noise_sigma": -0.1}, {"cpu_interference": math.inf}):
        with pytest.raises(ValueError):
            ExecutionModel(**bad)  # type: ignore[arg-type]


def _steps(*readings: float) -> Callable[[], float]:
    values: Iterator[float] = iter(readings)
    return lambda: next(values)


def test_a_charged_dispatch_waits_the_measured_time_of_the_call_that_made_it() -> None:
    wf = Workflow.single("f", slo_s=1.0)
    sc = scenario(wf, {"f": {CPU: 10.0}}, arrivals=[0.0, 1.0])
    exact = ExecutionModel(noise_sigma=0.0)
    # Calls: arrival 1 takes 3 ms, completion 1 takes 1 ms, arrival 2 takes 7 ms, completion 2.
    clock = _steps(0.0, 0.003, 0.1, 0.101, 0.2, 0.207, 0.3, 0.3)
    record = _run(Fixed(CPU), sc, _settings(exact, charge_overhead=True), clock)
    assert record.overhead_ms == pytest.approx([3.0, 1.0, 7.0, 0.0])
    assert [b.start_s for b in record.batches] == pytest.approx([0.003, 1.007])
    assert [r.latency_s for r in record.requests.values()] == pytest.approx([0.013, 0.017])
    free = _run(Fixed(CPU), sc, _settings(exact), _steps(0.0, 0.003, 0.1, 0.101, 0.2, 0.207,
                                                        0.3, 0.3))
    assert [r.latency_s for r in free.requests.values()] == pytest.approx([0.01, 0.01])


def test_the_run_command_takes_the_execution_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.esg.sim.test_sim_run import _fan

    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(_fan()))
    common = ["run", "--workflow", str(path), "--policy", "fcfs", "--nodes", "1",
              "--requests", "5", "--cold-start-ms", "0", "--noise-sigma", "0"]

    def p50(*extra: str) -> dict[str, Any]:
        assert main([*common, *extra]) == 0
        return dict(json.loads(capsys.readouterr().out))

    exact, slow, slower = (p50(), p50("--profile-error", "1.25,1.25"),
                           p50("--profile-error", "1.5,1.5"))
    assert exact["profile_error"] == "0" and slow["profile_error"] == "1.25-1.25"
    # Requests 0.5 s apart run alone, so only the execution part of the path (not FCFS's
    # batch wait) grows, in proportion to the factor: +25 % of it, then +50 %.
    grew = slow["p50_ms"] - exact["p50_ms"]
    assert grew > 1.0
    assert slower["p50_ms"] - exact["p50_ms"] == pytest.approx(2 * grew, rel=1e-6)
    assert main([*common, "--interference", "0.3"]) == 2
    assert "--interference" in capsys.readouterr().err
