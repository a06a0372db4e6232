"""Pricing: the per-request cost formula and the pure parser of configs/pricing.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from esg.errors import InstanceError
from esg.model import Config
from esg.pricing import DEFAULT_PRICING, Pricing, parse_pricing

REPO = Path(__file__).resolve().parents[2]


def test_cost_per_request_is_price_times_time_over_batch() -> None:
    # (2 vCPU * 1.3e-5 + 1 unit * 1.95e-4) $/s = 2.21e-4 $/s; * 0.1 s = 2.21e-5 $; / 4 requests.
    cost = DEFAULT_PRICING.cost_per_request(Config(batch=4, vcpu=2, vgpu=1), latency_ms=100.0)
    assert cost == pytest.approx(5.525e-6, rel=1e-12)
    # CPU only, batch 1: 1.3e-5 * 1 * 0.05.
    assert DEFAULT_PRICING.cost_per_request(Config(1, 1), 50.0) == pytest.approx(6.5e-7)


def test_the_shipped_pricing_file_is_the_documented_default() -> None:
    text = (REPO / "configs" / "pricing.yaml").read_text()
    assert parse_pricing(text) == DEFAULT_PRICING
    assert DEFAULT_PRICING.gpu_per_s == pytest.approx(15 * DEFAULT_PRICING.cpu_per_s)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, DEFAULT_PRICING),
        ("", DEFAULT_PRICING),
        ("cpu_per_s: 2\ngpu_per_s: 30\n", Pricing(2.0, 30.0)),
        ({"cpu_per_s": 1, "gpu_to_cpu_ratio": 10}, Pricing(1.0, 10.0)),
        ({"gpu_per_s": 5}, Pricing(DEFAULT_PRICING.cpu_per_s, 5.0)),
    ],
)
def test_parse_pricing(source: object, expected: Pricing) -> None:
    assert parse_pricing(source) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("- 1\n- 2\n", "pricing"),
        ({"cpu_per_s": -1}, "pricing.cpu_per_s"),
        ({"cpu_per_s": "cheap"}, "pricing.cpu_per_s"),
        ({"cpu_per_s": True}, "pricing.cpu_per_s"),
        ({"gpu_per_s": 1, "gpu_to_cpu_ratio": 2}, "pricing.gpu_to_cpu_ratio"),
        ({"memory_per_s": 1}, "pricing.memory_per_s"),
    ],
)
def test_bad_pricing_names_the_key(source: object, field: str) -> None:
    with pytest.raises(InstanceError) as caught:
        parse_pricing(source)  # type: ignore[arg-type]
    assert caught.value.field == field
