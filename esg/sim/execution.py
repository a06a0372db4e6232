"""How long a batch really runs: the profile the policies plan with, made wrong as real ones are.

Policies only ever see the profile table (`Snapshot.profiles`). The engine executes

    exec_s = profile_ms(f, config) / 1000 × factor(f) × noise × interference

* **factor(f)**, systematic: one draw per function and seed, uniform in
  [`factor_low`, `factor_high`] (the report: 0.8–1.3). A profile measured on another machine,
  another library version or synthetic inputs is off by a constant for every configuration;
  skewed towards slower because production runs add what a profiler's clean runs leave out.
* **noise**, per batch: lognormal with median 1 and `noise_sigma` (the report: 0.15; the
  engine's historical default 0.05; the CLI accepts up to 1).
* **interference**, per batch: co-located sandboxes slow each other down. *Reconstructed*: no
  source at hand gives a model or coefficients, so we take the simplest monotone one, linear in
  what the other batches on the node hold when this one is dispatched,

      interference = 1 + cpu × (vCPUs held by other batches on the node / the node's vCPUs)
                       + gpu × (units held by other batches on the same GPU / the GPU's units)

  where the GPU term applies only to a batch on a slice. Every batch shares the node's caches,
  memory bandwidth and host threads (the CPU term); MIG isolates SMs and memory slices, so a
  slice only suffers from the shared PCIe link and host (a smaller GPU term). The report's
  coefficients (cpu 0.3, gpu 0.1: a full node slows a batch by up to ~1.3×, a full GPU adds
  ~1.1×) are our choice, not measurements; the interference is fixed at dispatch (what runs
  beside the batch later does not change it).

Pure: randomness comes from the engine's seeded RNG; the factors from the seed and the name.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from esg.model import Config


@dataclass(frozen=True)
class ExecutionModel:
    """The distance between the profile and what runs (see the module docstring).

    The defaults are the engine's historical behaviour: the profile is exact up to 5 %
    lognormal noise, without interference. `realistic()` is what the report runs.
    """

    factor_low: float = 1.0
    factor_high: float = 1.0
    noise_sigma: float = 0.05
    cpu_interference: float = 0.0
    gpu_interference: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.factor_low <= self.factor_high and math.isfinite(self.factor_high)):
            raise ValueError(
                f"profile error needs 0 < low <= high, got {self.factor_low}, {self.factor_high}"
            )
        if not 0 <= self.noise_sigma <= 1:
            raise ValueError(f"noise sigma must be in [0, 1], got {self.noise_sigma}")
        for name in ("cpu_interference", "gpu_interference"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @classmethod
    def realistic(cls) -> ExecutionModel:
        return cls(factor_low=0.8, factor_high=1.3, noise_sigma=0.15,
                   cpu_interference=0.3, gpu_interference=0.1)

    @property
    def profile_error(self) -> str:
        """The systematic error as results.csv names it: "0.8-1.3", or "0" for exact."""
        if self.factor_low == self.factor_high == 1.0:
            return "0"
        return f"{self.factor_low:g}-{self.factor_high:g}"

    def factors(self, functions: Iterable[str], seed: int) -> dict[str, float]:
        """Each function's systematic factor; the same function and seed draw the same one
        whatever else is in the scenario."""
        out = {}
        for function in functions:
            rng = random.Random(f"{seed}:profile-error:{function}")
            out[function] = rng.uniform(self.factor_low, self.factor_high)
        return out

    def noise(self, rng: random.Random) -> float:
        return math.exp(rng.gauss(0.0, self.noise_sigma))

    def interference(
        self, config: Config, others_vcpu: int, node_vcpu: int,
        others_units: int, gpu_units: int,
    ) -> float:
        """Slowdown of a batch of `config` beside other batches holding `others_vcpu` of the
        node's `node_vcpu` vCPUs and `others_units` of its GPU's `gpu_units` units."""
        slowdown = 1.0 + self.cpu_interference * others_vcpu / node_vcpu
        if config.vgpu and gpu_units:
            slowdown += self.gpu_interference * others_units / gpu_units
        return slowdown

