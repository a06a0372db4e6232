"""Prices of resources and the per-request cost of a configuration.

Cost model (reference note §1.2, a resource-time product; the paper gives no formula):

    cost_per_request = (P_cpu · vcpu + P_gpu · vgpu) · latency_s / batch

Per-request cost (not per-batch) is what the search adds up along a plan, because functions of
one plan run different batch sizes. Only the ratio P_gpu / P_cpu changes which plan wins.

Defaults (also written down in `configs/pricing.yaml`): P_cpu = 1.3e-5 $/vCPU·s, the Alibaba
Function Compute price HarmonyBatch uses (K1), and P_gpu = 15 × P_cpu per GPU slice unit
(1/7 of a GPU), the middle of the note's "one vGPU ≈ 10–20 vCPUs". The parser is pure: it takes
YAML text or a mapping; the shell reads the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from esg.errors import InstanceError
from esg.model import Config

DEFAULT_CPU_PER_S = 1.3e-5
DEFAULT_GPU_TO_CPU_RATIO = 15.0


@dataclass(frozen=True)
class Pricing:
    """Dollars per vCPU-second and per GPU-slice-unit-second (one unit = 1/7 of a GPU)."""

    cpu_per_s: float = DEFAULT_CPU_PER_S
    gpu_per_s: float = DEFAULT_CPU_PER_S * DEFAULT_GPU_TO_CPU_RATIO

    def __post_init__(self) -> None:
        for name in ("cpu_per_s", "gpu_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"pricing {name} must be a finite number >= 0, got {value!r}")

    def cost_per_request(self, config: Config, latency_ms: float) -> float:
        """$ per request of one batch of `config` that runs `latency_ms`."""
        rate = self.cpu_per_s * config.vcpu + self.gpu_per_s * config.vgpu
        return rate * (latency_ms / 1000.0) / config.batch


DEFAULT_PRICING = Pricing()


def parse_pricing(source: str | Mapping[str, Any] | None) -> Pricing:
    """Pricing from YAML text or a mapping with `cpu_per_s` and `gpu_per_s` (or `gpu_to_cpu_ratio`).

    Missing keys take the defaults; unknown keys and bad values raise `InstanceError` naming
    the key.
    """
    if source is None:
        return DEFAULT_PRICING
    data: Any = yaml.safe_load(source) if isinstance(source, str) else source
    if data is None:
        return DEFAULT_PRICING
    if not isinstance(data, Mapping):
        raise InstanceError("pricing", "must be a mapping of cpu_per_s / gpu_per_s")
    known = {"cpu_per_s", "gpu_per_s", "gpu_to_cpu_ratio"}
    for key in data:
        if key not in known:
            raise InstanceError(f"pricing.{key}", f"unknown key; use one of {sorted(known)}")
    values: dict[str, float] = {}
    for key in known & set(data):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InstanceError(f"pricing.{key}", f"must be a number, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise InstanceError(f"pricing.{key}", f"must be finite and >= 0, got {value!r}")
        values[key] = float(value)
    if "gpu_per_s" in values and "gpu_to_cpu_ratio" in values:
        raise InstanceError("pricing.gpu_to_cpu_ratio", "give gpu_per_s or the ratio, not both")
    cpu = values.get("cpu_per_s", DEFAULT_CPU_PER_S)
    gpu = values.get("gpu_per_s", cpu * values.get("gpu_to_cpu_ratio", DEFAULT_GPU_TO_CPU_RATIO))
    return Pricing(cpu_per_s=cpu, gpu_per_s=gpu)
