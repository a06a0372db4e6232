"""The four applications, their SLOs and their arrivals: one `Scenario` per grid cell.

Applications (ESG §5.1 names them; their DAGs and models are not published, so these are ours,
built from the ImageNet architectures we measured, each a stand-in for the paper's model):

* image-classification: preprocess → resnet50 → label
* depth-recognition: preprocess → densenet121 (depth encoder stand-in) → colorize
* background-elimination: preprocess → {inception_v2 (segmentation stand-in),
  squeezenet (edge stand-in)} → composite
* expanded-image-classification: preprocess → {squeezenet, shufflenet, inception_v1,
  resnet50} → vote (an ensemble; the largest DAG)

**L** (the SLO unit) of an application is the critical path of the cheapest configuration
that sustains the cell's load (`esg.sim.slo_unit`: each function at its cheapest profiled
configuration per request, made faster only where the cluster could not carry the load;
warm, unqueued, no batch-fill wait, one inter-node transfer per edge). The paper's strict,
moderate and relaxed SLOs are 0.8, 1.0 and 1.2 × L; the report adds tight, 0.6 × L. Below
1.0 × L running everything cheaply misses, so a scheduler must choose what to pay for.

**Arrivals** follow the published statistics of the Azure Functions trace (Shahrad et al.,
"Serverless in the Wild", ATC'20): a strong diurnal cycle (peak ≈ 3× trough) and bursty
inter-arrival times (CV > 1). Each application's rate is a Poisson process modulated by a
sinusoid (amplitude 0.5, one compressed "day" per measured window) and a two-state Markov
burst process (×2.5 for a mean 0.5 s, calm for a mean 5 s, normalised to keep the mean),
sampled by thinning from a seeded RNG. The warm-up runs at the diurnal peak rate with bursts;
its cold starts are instant (`EngineSettings.instant_warmup`), so every policy enters the
measured window with the sandbox pool its own choices need, as a cluster that has served this
load for hours would. Popularity is skewed like the trace's head: 40/25/20/15 % of requests.
**Load** light/normal/heavy = 20/40/60 % of the cluster's capacity at the reference
configuration without batching (batch 1, 2 vCPUs, a 1-unit slice for DNN functions; the
binding one of vCPUs and slice units); the report adds intense and full, 80 and 100 %. A burst
at the diurnal peak offers ~3.3× the mean rate: twice that capacity at heavy load, which only
policies that batch, queue or drop can ride out.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from esg.model import Config, Profile, Workflow
from esg.policy import FunctionLimits
from esg.pricing import DEFAULT_PRICING, Pricing
from esg.refine import Point
from esg.sim.cluster import ClusterSpec
from esg.sim.functions import ConfigGrid, FunctionSpec, build_profile, load_models
from esg.sim.slo_unit import Application, slo_unit

#: The paper's three settings of each axis (the daemon's benchmark runs these).
SLO_FACTORS: dict[str, float] = {"strict": 0.8, "moderate": 1.0, "relaxed": 1.2}
LOAD_LEVELS: dict[str, float] = {"light": 0.2, "normal": 0.4, "heavy": 0.6}
#: The report's grid: a tighter SLO and the loads at which capacity binds.
GRID_SLO_FACTORS: dict[str, float] = {"tight": 0.6, **SLO_FACTORS}
GRID_LOAD_LEVELS: dict[str, float] = {**LOAD_LEVELS, "intense": 0.8, "full": 1.0}

_IMAGE_KB = 3 * 224 * 224 * 4 / 1024


@dataclass(frozen=True)
class App:
    name: str
    functions: tuple[FunctionSpec, ...]
    edges: tuple[tuple[str, str], ...]
    share: float


def _pre(prefix: str) -> FunctionSpec:
    return FunctionSpec(f"{prefix}-preprocess", None, host_ms=4.0, output_kb=_IMAGE_KB)


def _dnn(prefix: str, model: str, host_ms: float = 0.5, output_kb: float = 4.0) -> FunctionSpec:
    return FunctionSpec(f"{prefix}-{model}", model, host_ms=host_ms, output_kb=output_kb)


def _fan(
    prefix: str, middle: tuple[FunctionSpec, ...], last: FunctionSpec
) -> tuple[tuple[FunctionSpec, ...], tuple[tuple[str, str], ...]]:
    first = _pre(prefix)
    edges = [(first.name, m.name) for m in middle] + [(m.name, last.name) for m in middle]
    return (first, *middle, last), tuple(edges)


def default_apps() -> tuple[App, ...]:
    apps = []
    for name, prefix, middle, last, share in (
        (
            "image-classification",
            "ic",
            (_dnn("ic", "resnet50"),),
            FunctionSpec("ic-label", None, 0.3, 1.0),
            0.40,
        ),
        (
            "depth-recognition",
            "dr",
            (_dnn("dr", "densenet121", 2.0, 196.0),),
            FunctionSpec("dr-colorize", None, 3.0, 150.0),
            0.20,
        ),
        (
            "background-elimination",
            "be",
            (_dnn("be", "inception_v2", 2.0, 49.0), _dnn("be", "squeezenet", 1.0, 49.0)),
            FunctionSpec("be-composite", None, 5.0, 150.0),
            0.25,
        ),
        (
            "expanded-image-classification",
            "eic",
            tuple(_dnn("eic", m) for m in ("squeezenet", "shufflenet", "inception_v1", "resnet50")),
            FunctionSpec("eic-vote", None, 0.3, 1.0),
            0.15,
        ),
    ):
        functions, edges = _fan(prefix, middle, last)
        apps.append(App(name, functions, edges, share))
    return tuple(apps)


def _regions(name: str, stages: tuple[tuple[FunctionSpec, ...], ...]) -> App:
    """A DAG of stages in sequence; a stage of several functions is a fork/join region (each
    of its functions takes the previous stage's every output and feeds the next stage's)."""
    functions = tuple(f for stage in stages for f in stage)
    edges = tuple(
        (a.name, b.name) for first, then in itertools.pairwise(stages) for a in first for b in then
    )
    return App(name, functions, edges, 1.0)


def large_apps() -> tuple[App, ...]:
    """Workflows larger than the paper's (its "large workflows" motivation), built from the
    same measured models: 12-16 functions with two or three fork/join regions.

    * video-analytics (12): decode → resize → {detect (resnet50), segment (inception_v2),
      classify (squeezenet)} → fuse → {caption (densenet121), tag (shufflenet), embed
      (inception_v1), ocr (host work)} → rank → render
    * twin-fanout (12): the shape of issue 18's measurement, a → 4 branches → c → 4 branches →
      e → g, with the four branches on four different models
    * triple-fanout (16): three regions of 3, 2 and 4 branches, with a 2-function chain
      between the last two
    """
    va = "va"
    video = _regions("video-analytics", (
        (FunctionSpec(f"{va}-decode", None, 3.0, _IMAGE_KB),),
        (FunctionSpec(f"{va}-resize", None, 1.5, _IMAGE_KB),),
        (_dnn(va, "resnet50", 1.0, 8.0), _dnn(va, "inception_v2", 2.0, 49.0),
         _dnn(va, "squeezenet")),
        (FunctionSpec(f"{va}-fuse", None, 1.0, 16.0),),
        (_dnn(va, "densenet121", 1.0, 2.0), _dnn(va, "shufflenet"), _dnn(va, "inception_v1"),
         FunctionSpec(f"{va}-ocr", None, 6.0, 1.0)),
        (FunctionSpec(f"{va}-rank", None, 0.5, 1.0),),
        (FunctionSpec(f"{va}-render", None, 2.0, 150.0),),
    ))
    models = ("squeezenet", "shufflenet", "inception_v1", "resnet50")
    twin = _regions("twin-fanout", (
        (FunctionSpec("tw-a", None, 2.0, _IMAGE_KB),),
        tuple(_dnn("tw-b", m) for m in models),
        (FunctionSpec("tw-c", None, 1.0, _IMAGE_KB),),
        tuple(_dnn("tw-d", m) for m in reversed(models)),
        (FunctionSpec("tw-e", None, 1.0, 1.0),),
        (FunctionSpec("tw-g", None, 0.5, 1.0),),
    ))
    triple = _regions("triple-fanout", (
        (FunctionSpec("tf-decode", None, 3.0, _IMAGE_KB),),
        (_dnn("tf-r1", "squeezenet"), _dnn("tf-r1", "shufflenet"), _dnn("tf-r1", "resnet50")),
        (FunctionSpec("tf-merge1", None, 1.0, _IMAGE_KB),),
        (_dnn("tf-r2", "inception_v1"), _dnn("tf-r2", "densenet121")),
        (FunctionSpec("tf-merge2", None, 1.0, _IMAGE_KB),),
        (FunctionSpec("tf-crop", None, 2.0, _IMAGE_KB),),
        (_dnn("tf-r3", "squeezenet"), _dnn("tf-r3", "shufflenet"), _dnn("tf-r3", "inception_v2"),
         FunctionSpec("tf-r3-hist", None, 3.0, 1.0)),
        (FunctionSpec("tf-merge3", None, 1.0, 1.0),),
        (FunctionSpec("tf-out", None, 0.5, 1.0),),
    ))
    return video, twin, triple


def app_tables(app: App, grid: ConfigGrid | None = None) -> dict[str, dict[Config, float]]:
    """Each function's latency table (ms per configuration) from the measured models."""
    models = load_models()
    return {
        spec.name: dict(build_profile(spec, models, grid).latency_ms) for spec in app.functions
    }


def reference_config(spec: FunctionSpec, batch: int = 4) -> Config:
    return Config(batch=batch, vcpu=2, vgpu=1 if spec.gpu_capable else 0)


@dataclass(frozen=True)
class ArrivalModel:
    """Diurnal × two-state burst modulation of a Poisson process (see the module docstring)."""

    diurnal_amplitude: float = 0.5
    burst_factor: float = 2.5
    burst_mean_s: float = 0.5
    calm_mean_s: float = 5.0

    def times(
        self, rate_rps: float, duration_s: float, rng: random.Random, *, diurnal: bool = True
    ) -> list[float]:
        """Arrival times in [0, duration_s) with mean rate `rate_rps` (without the diurnal
        cycle when `diurnal` is False: bursts only)."""
        on, off = self.burst_mean_s, self.calm_mean_s
        norm = (off + on * self.burst_factor) / (on + off)
        amplitude = self.diurnal_amplitude if diurnal else 0.0
        peak = rate_rps * (1 + amplitude) * self.burst_factor / norm
        bursting, switch_at = False, rng.expovariate(1 / off)
        t, out = 0.0, list[float]()
        while True:
            t += rng.expovariate(peak)
            if t >= duration_s:
                return out
            while t >= switch_at:
                bursting = not bursting
                switch_at += rng.expovariate(1 / (on if bursting else off))
            phase = 2 * math.pi * t / duration_s - math.pi / 2
            rate = rate_rps * (1 + amplitude * math.sin(phase))
            rate *= (self.burst_factor if bursting else 1.0) / norm
            if rng.random() * peak < rate:
                out.append(t)


@dataclass(frozen=True)
class Scenario:
    """Everything one simulation run needs besides the policy."""

    name: str
    workflows: Mapping[str, Workflow]
    profiles: Mapping[str, Profile]
    limits: Mapping[str, FunctionLimits]
    output_bytes: Mapping[str, float]
    arrivals: tuple[tuple[float, str], ...]
    measure_from_s: float = 0.0
    reference_s: Mapping[str, float] | None = None
    #: Per application: what a call spends outside its stages' batches (ms; hops between
    #: stages and the answer's rendering, as the daemon measures them). The engine adds it to
    #: each call's latency and the policies see it (`Snapshot.outside_ms`). Absent: 0.
    outside_ms: Mapping[str, float] = field(default_factory=dict)
    #: Per application: what a call takes beyond what the daemon accounts for (ms; the HTTP
    #: request before its handler runs, the answer after it, the client), measured as the
    #: client's time less the daemon's `X-Duration-Seconds`. The engine adds it to each
    #: call's latency; the policies do not see it, as the daemon's do not. Absent: 0.
    client_ms: Mapping[str, float] = field(default_factory=dict)
    #: What batches really take per configuration, where a driver knows it apart from
    #: `profiles` (the daemon benchmark: a configuration the profiler timed alone runs slower
    #: beside the load). Absent: `profiles`, made wrong by the engine's `ExecutionModel`.
    true_profiles: Mapping[str, Profile] | None = None
    #: The points behind `profiles` (executions and spread of each), which the engine refines
    #: with `EngineSettings.refine_profiles`. Absent: each counts as settled.
    profile_points: Mapping[str, Mapping[Config, Point]] | None = None


def _applications(apps: tuple[App, ...]) -> tuple[Application, ...]:
    return tuple(
        Application(
            Workflow.from_edges(app.name, [f.name for f in app.functions], app.edges, 1.0),
            app.share,
            {f.name: f.output_kb * 1024 for f in app.functions},
        )
        for app in apps
    )


def capacity_rps(
    apps: tuple[App, ...], profiles: Mapping[str, Profile], cluster: ClusterSpec
) -> float:
    """Requests/s the cluster sustains with every function at its reference configuration
    without batching: the unit of the load levels."""
    cpu_s = gpu_s = 0.0
    for app in apps:
        for spec in app.functions:
            ref = reference_config(spec, batch=1)
            seconds = profiles[spec.name].latency_ms[ref] / 1000
            cpu_s += app.share * seconds * ref.vcpu
            gpu_s += app.share * seconds * ref.vgpu
    limits = [cluster.total_vcpu / cpu_s]
    if gpu_s and cluster.total_units:
        limits.append(cluster.total_units / gpu_s)
    return min(limits)


def make_scenario(
    load: str,
    slo: str,
    *,
    cluster: ClusterSpec,
    seed: int,
    duration_s: float = 20.0,
    warmup_s: float = 5.0,
    grid: ConfigGrid | None = None,
    apps: tuple[App, ...] | None = None,
    arrival_model: ArrivalModel | None = None,
    pricing: Pricing = DEFAULT_PRICING,
) -> Scenario:
    """One cell of the grid: `load` in GRID_LOAD_LEVELS, `slo` in GRID_SLO_FACTORS.

    Requests arrive during `warmup_s + duration_s`; only those after `warmup_s` are measured
    (the warm-up lets every policy pay its own cold starts first).
    """
    apps = apps or default_apps()
    models = load_models()
    specs = {f.name: f for app in apps for f in app.functions}
    profiles = {name: build_profile(spec, models, grid) for name, spec in specs.items()}
    rate = GRID_LOAD_LEVELS[load] * capacity_rps(apps, profiles, cluster)
    unit = slo_unit(_applications(apps), profiles, cluster, rate, pricing)
    workflows = {
        app.name: Workflow.from_edges(
            app.name,
            [f.name for f in app.functions],
            app.edges,
            GRID_SLO_FACTORS[slo] * unit.l_s[app.name],
        )
        for app in apps
    }
    # Every policy sees the same limits, including the cluster's cold-start times as the
    # per-function estimates a planner may use (the daemon's profiler would measure them).
    limits = {
        name: FunctionLimits(
            max_batch=4,
            max_queue_delay_s=0.005,
            vcpu=2,
            vgpu=1 if spec.gpu_capable else 0,
            cold_start_ms=cluster.cold_start_cpu_s * 1000.0,
            cold_start_gpu_ms=cluster.cold_start_gpu_extra_s * 1000.0,
        )
        for name, spec in specs.items()
    }
    model = arrival_model or ArrivalModel()
    arrivals: list[tuple[float, str]] = []
    for app in apps:
        rng = random.Random(f"{seed}:{app.name}")
        # Warm-up: the diurnal peak rate with bursts, so that each policy's sandbox pool is
        # sized as after hours of serving (the engine makes warm-up cold starts instant).
        peak = app.share * rate * (1 + model.diurnal_amplitude)
        arrivals += [(t, app.name) for t in model.times(peak, warmup_s, rng, diurnal=False)]
        arrivals += [
            (warmup_s + t, app.name) for t in model.times(app.share * rate, duration_s, rng)
        ]
    arrivals.sort()
    return Scenario(
        name=f"{load}/{slo}",
        workflows=workflows,
        profiles=profiles,
        limits=limits,
        output_bytes={name: spec.output_kb * 1024 for name, spec in specs.items()},
        arrivals=tuple(arrivals),
        measure_from_s=warmup_s,
        reference_s=dict(unit.l_s),
    )


def custom_scenario(
    workflow: Workflow,
    tables: Mapping[str, Mapping[Config, float]],
    arrivals: list[float],
    *,
    output_bytes: Mapping[str, float] | None = None,
    limits: Mapping[str, FunctionLimits] | None = None,
    name: str = "light/moderate",
) -> Scenario:
    """A hand-made scenario: one workflow, latency tables (ms), arrival times (s)."""
    return Scenario(
        name=name,
        workflows={workflow.name: workflow},
        profiles={f: Profile(f, dict(t)) for f, t in tables.items()},
        limits=dict(limits or {}),
        output_bytes=dict(output_bytes or dict.fromkeys(workflow.functions, 0.0)),
        arrivals=tuple((t, workflow.name) for t in arrivals),
    )
