"""What a profile measures and fills, per node size and function."""

from __future__ import annotations

import pytest

from esg.model import Config
from faasd.profiles.plan import Kind, plan


def cfgs(*triples: tuple[int, int] | tuple[int, int, int]) -> tuple[Config, ...]:
    return tuple(sorted(Config(*t) for t in triples))


def test_two_cores_batch_8_full() -> None:
    # grid: batches 1, 2, 3, 4, 6, 8 x vCPUs 1, 2; measured: powers of two 1, 2, 4, 8
    p = plan(Kind.FULL, max_batch=8, node_vcpu=2)
    assert len(p.grid) == 12
    assert p.measure == cfgs(*[(b, v) for b in (1, 2, 4, 8) for v in (1, 2)])
    assert p.fill == cfgs(*[(b, v) for b in (3, 6) for v in (1, 2)])


def test_two_cores_batch_8_small() -> None:
    p = plan(Kind.SMALL, max_batch=8, node_vcpu=2)
    assert p.measure == cfgs((1, 1), (1, 2), (4, 1), (4, 2))
    assert len(p.fill) == 8


def test_sixteen_cores_small_measures_three_vcpu_levels() -> None:
    # vCPU levels 1, 2, 3, 4, 6, 8, 12, 16: the middle one (index 4) is 6
    p = plan(Kind.SMALL, max_batch=1, node_vcpu=16)
    assert p.measure == cfgs((1, 1), (1, 6), (1, 16))
    full = plan(Kind.FULL, max_batch=1, node_vcpu=16)
    assert full.measure == cfgs((1, 1), (1, 2), (1, 4), (1, 8), (1, 16))


def test_odd_sizes_are_kept_and_batches_capped() -> None:
    p = plan(Kind.FULL, max_batch=5, node_vcpu=5)
    assert {c.batch for c in p.grid} == {1, 2, 3, 4, 5}
    assert {c.vcpu for c in p.grid} == {1, 2, 3, 4, 5}
    assert {c.batch for c in p.measure} == {1, 2, 4, 5}
    assert max(c.batch for c in plan(Kind.FULL, 1000, 1).grid) == 32


def test_gpu_slices_are_measured_at_two_batches() -> None:
    p = plan(Kind.SMALL, max_batch=1, node_vcpu=2, vgpu_sizes=(0, 1, 7))
    assert Config(1, 1, 7) in p.measure and Config(2, 1, 7) not in p.grid
    gpu = [c for c in plan(Kind.SMALL, max_batch=4, node_vcpu=2, vgpu_sizes=(3, 7)).measure
           if c.vgpu]
    assert gpu == [Config(1, 1, 7), Config(4, 1, 7)]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        plan(Kind.FULL, max_batch=0, node_vcpu=2)
