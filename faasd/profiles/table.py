"""A function's profile as the API shows it: pure, from the store's points and the prices.

One row per configuration, in Config order: the latency planners use
(`esg.refine.planning_table`: the published one, times the function's slowdown under load
where no execution has refined it yet), the published latency with the running mean and
spread behind it, how many samples it rests on and how many of them were real executions, the
profiler's own figure, whether it was measured or fitted, and the cost per request priced by
`esg.pricing` (reference note §1.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esg.model import Config
from esg.pricing import Pricing
from esg.refine import Point, planning_table, slowdown
from faasd.profiles.store import ColdStarts


def rows(points: Mapping[Config, Point], pricing: Pricing) -> list[dict[str, Any]]:
    planned = planning_table(points)
    return [
        {
            "batch": config.batch,
            "vcpu": config.vcpu,
            "vgpu": config.vgpu,
            "latency_ms": planned[config],
            "published_ms": point.published_ms,
            "mean_ms": point.mean_ms,
            "std_ms": point.std_ms,
            "count": point.count,
            "executions": point.executions,
            "profiled_ms": point.profiled_ms or None,
            "source": "fitted" if point.fitted else "measured",
            "cost_per_request": pricing.cost_per_request(config, planned[config]),
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
        "slowdown_under_load": {"cpu": round(slowdown(points), 3),
                                "gpu": round(slowdown(points, on_gpu=True), 3)},
        "cold_start_ms": None if cold is None else {
            "count": cold.count, "mean": round(cold.mean_ms, 2), "max": round(cold.max_ms, 2)
        },
        "configurations": rows(points, pricing),
    }
    if not points:
        doc["hint"] = (f"{name} v{version} has no profile yet: run `faasd profile {name}` "
                       f"(or POST /system/profile/{name}), or call it")
    return doc
