"""A function's profile as the API shows it: pure, from the store's points and the prices.

One row per configuration, in Config order: the published latency (what planners use), the
running mean and spread behind it, how many executions it rests on, whether it was measured or
fitted, and the cost per request priced by `esg.pricing` (reference note §1.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esg.model import Config
from esg.pricing import Pricing
from esg.refine import Point
from faasd.profiles.store import ColdStarts


def rows(points: Mapping[Config, Point], pricing: Pricing) -> list[dict[str, Any]]:
    return [
        {
            "batch": config.batch,
            "vcpu": config.vcpu,
            "vgpu": config.vgpu,
            "latency_ms": point.published_ms,
            "mean_ms": point.mean_ms,
            "std_ms": point.std_ms,
            "count": point.count,
            "source": "fitted" if point.fitted else "measured",
            "cost_per_request": pricing.cost_per_request(config, point.published_ms),
        }
        for config, point in sorted(points.items())
    ]


def document(
    name: str,
    version: int,
    profile_version: int,
    points: Mapping[Config, Point],
    cold: ColdStarts | None,
    pricing: Pricing,
    running: bool,
) -> dict[str, Any]:
    """The body of `GET /system/profile/{name}`."""
    doc: dict[str, Any] = {
        "function": name,
        "version": version,
        "profile_version": profile_version,
        "running": running,
        "pricing": {"cpu_per_s": pricing.cpu_per_s, "gpu_per_s": pricing.gpu_per_s},
        "cold_start_ms": None if cold is None else {
            "count": cold.count, "mean": round(cold.mean_ms, 2), "max": round(cold.max_ms, 2)
        },
        "configurations": rows(points, pricing),
    }
    if not points:
        doc["hint"] = (f"{name} v{version} has no profile yet: run `faasd profile {name}` "
                       f"(or POST /system/profile/{name}), or call it")
    return doc
