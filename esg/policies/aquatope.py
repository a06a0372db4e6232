"""Aquatope's resource manager (Zhou et al., ASPLOS'23): constrained Bayesian optimisation,
run offline, with the chosen configurations frozen at run time (as ESG compares against it).

From the code (reference/esg.md §6.4): a vector in [0, 1]^d encodes every function's resources;
the objective is the workflow's cost and the constraint e2e latency − QoS ≤ 0, each modelled by
a Gaussian process; candidates are chosen by (noisy) expected improvement under the constraint;
10 random initial points, then 20 iterations of 3 candidates; the best feasible point is
applied per function and not changed while serving.

Fitted here [inferred]: d = 3 per function (batch, vCPU and slice levels of the profile, each
normalised and rounded to the nearest level; a host-only function ignores its slice level);
each point is evaluated on the profile model instead of a real invocation: cost = Σ per-request
cost (`esg.pricing`), latency = critical path of (mean × `p95_factor` + the expected wait for
the batch to fill, (b − 1) / `nominal_rps`); GPs with a fixed RBF kernel (length scale 0.25,
no hyper-parameter fitting, no outlier removal) written with numpy instead of BoTorch; the
acquisition is EI × P(feasible), maximised over 256 random points and 64 perturbations of the
incumbent. The search runs once per application when its first request arrives (the snapshot
is the policy's first look at the workflow), at the nominal rate, not the observed one: the
configurations "don't adapt". At run time a queue waits for a full batch at most
(b − 1) / nominal_rps; a frozen configuration that fits no node is a configuration miss and
falls back like Orion's. The pre-warming pool (LSTM) is not modelled.
"""

from __future__ import annotations

import math
import random
from typing import ClassVar

import numpy as np

from esg.model import Config, Workflow
from esg.policies.toolkit import closest_fitting, place
from esg.policy import Action, Dispatch, Event, Snapshot, WakeUp
from esg.pricing import DEFAULT_PRICING, Pricing


class AquatopePolicy:
    name: ClassVar[str] = "aquatope"

    def __init__(
        self,
        *,
        pricing: Pricing = DEFAULT_PRICING,
        seed: int = 0,
        n_init: int = 10,
        n_iter: int = 20,
        q: int = 3,
        nominal_rps: float = 50.0,
        p95_factor: float = 1.08,
        length_scale: float = 0.25,
    ) -> None:
        self.pricing = pricing
        self.seed = seed
        self.n_init = n_init
        self.n_iter = n_iter
        self.q = q
        self.nominal_rps = nominal_rps
        self.p95_factor = p95_factor
        self.length_scale = length_scale
        self._frozen: dict[str, dict[str, Config]] = {}

    # ------------------------------------------------------------ offline BO

    def decode(self, workflow: Workflow, x: np.ndarray, snapshot: Snapshot) -> dict[str, Config]:
        plan = {}
        for i, f in enumerate(workflow.functions):
            table = snapshot.profiles[f].latency_ms
            levels = [sorted({getattr(c, dim) for c in table}) for dim in ("batch", "vcpu", "vgpu")]
            pick = [lv[min(len(lv) - 1, round(x[3 * i + k] * (len(lv) - 1)))]
                    for k, lv in enumerate(levels)]
            config = Config(*pick)
            if config not in table:  # an unprofiled corner: the nearest profiled config
                config = min(table, key=lambda c: (abs(c.batch - config.batch),
                                                   abs(c.vcpu - config.vcpu),
                                                   abs(c.vgpu - config.vgpu), c))
            plan[f] = config
        return plan

    def evaluate(self, workflow: Workflow, plan: dict[str, Config],
                 snapshot: Snapshot) -> tuple[float, float]:
        """(cost per request, e2e latency − SLO) of a plan on the profile model."""
        cost, finish = 0.0, dict[str, float]()
        for f in workflow.topological_order():
            config = plan[f]
            ms = snapshot.profiles[f].latency_ms[config]
            cost += self.pricing.cost_per_request(config, ms)
            start = max((finish[p] for p in workflow.predecessors(f)), default=0.0)
            wait = (config.batch - 1) / self.nominal_rps
            finish[f] = start + wait + ms * self.p95_factor / 1000
        return cost, max(finish.values()) - workflow.slo_s

    def optimise(self, workflow: Workflow, snapshot: Snapshot) -> dict[str, Config]:
        rng = random.Random(f"{self.seed}:{workflow.name}")
        dims = 3 * len(workflow.functions)
        xs: list[list[float]] = []
        ys: list[tuple[float, float]] = []

        def sample(x: list[float]) -> None:
            xs.append(x)
            ys.append(self.evaluate(workflow, self.decode(workflow, np.array(x), snapshot),
                                    snapshot))

        for _ in range(self.n_init):
            sample([rng.random() for _ in range(dims)])
        for _ in range(self.n_iter):
            for x in self._propose(xs, ys, dims, rng):
                sample(x)
        feasible = [i for i, (_, slack) in enumerate(ys) if slack <= 0]
        if feasible:
            best = min(feasible, key=lambda i: ys[i][0])
        else:
            best = min(range(len(ys)), key=lambda i: ys[i][1])
        return self.decode(workflow, np.array(xs[best]), snapshot)

    def _propose(self, xs: list[list[float]], ys: list[tuple[float, float]], dims: int,
                 rng: random.Random) -> list[list[float]]:
        x = np.array(xs)
        costs = np.array([c for c, _ in ys])
        slacks = np.array([s for _, s in ys])
        feasible = slacks <= 0
        incumbent = float(costs[feasible].min()) if feasible.any() else float(costs.max())
        anchor = xs[int(np.argmin(np.where(feasible, costs, np.inf)))] if feasible.any() else (
            xs[int(np.argmin(slacks))]
        )
        pool = [[rng.random() for _ in range(dims)] for _ in range(256)]
        pool += [[min(1.0, max(0.0, v + rng.gauss(0, 0.1))) for v in anchor] for _ in range(64)]
        cand = np.array(pool)
        mu_c, sd_c = _gp(x, costs, cand, self.length_scale)
        mu_s, sd_s = _gp(x, slacks, cand, self.length_scale)
        z = (incumbent - mu_c) / sd_c
        ei = sd_c * (z * _cdf(z) + _pdf(z))
        p_feasible = _cdf(-mu_s / sd_s)
        order = np.argsort(-(ei * p_feasible), kind="stable")
        return [pool[int(i)] for i in order[: self.q]]

    # ------------------------------------------------------------ run time

    def on_event(self, event: Event, snapshot: Snapshot) -> list[Action]:
        actions: list[Action] = []
        wake: float | None = None
        for (app, function), jobs in sorted(snapshot.queues.items()):
            if app not in self._frozen:
                self._frozen[app] = self.optimise(snapshot.workflows[app], snapshot)
            planned = self._frozen[app][function]
            max_wait_s = (planned.batch - 1) / self.nominal_rps
            while jobs := snapshot.queues.get((app, function), ()):
                due = jobs[0].enqueued_s + max_wait_s
                if len(jobs) < planned.batch and snapshot.now_s < due:
                    wake = due if wake is None else min(wake, due)
                    break
                where = place(snapshot, function, planned)
                if where is not None:
                    config, node, gpu = planned, where[0], where[1]
                else:
                    fallback = closest_fitting(snapshot, function, planned,
                                               self.pricing.cost_per_request)
                    if fallback is None:
                        break
                    config, node, gpu = fallback
                ids = tuple(j.id for j in jobs[: planned.batch])
                dispatch = Dispatch(app, function, ids, config, node, gpu=gpu,
                                    plan={function: planned})
                actions.append(dispatch)
                snapshot = snapshot.reserve(dispatch)
        if wake is not None:
            actions.append(WakeUp(wake))
        return actions


def _gp(x: np.ndarray, y: np.ndarray, cand: np.ndarray,
        length_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and standard deviation of a zero-mean GP on standardised y."""
    mean, scale = float(y.mean()), float(y.std()) or 1.0
    yn = (y - mean) / scale

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        result: np.ndarray = np.exp(-d2 / (2 * length_scale**2 * a.shape[1]))
        return result

    k = kernel(x, x) + 1e-6 * np.eye(len(x))
    chol = np.linalg.cholesky(k)
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, yn))
    ks = kernel(cand, x)
    mu = ks @ alpha
    v = np.linalg.solve(chol, ks.T)
    var = np.clip(1.0 - (v**2).sum(0), 1e-12, None)
    return mu * scale + mean, np.sqrt(var) * scale


def _cdf(z: np.ndarray) -> np.ndarray:
    result: np.ndarray = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    return result


def _pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
