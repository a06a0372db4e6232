"""Which configurations a profile measures and which it fills in: a pure function of the
function's largest batch and the node's vCPUs (and GPU slice sizes, where the node has GPUs).

The *grid* is what planners choose from: batch sizes 1, 2, 3, 4, 6, 8, 12, 16, 24, 32 up to the
function's largest batch (and that batch itself), times vCPU counts 1, 2, 3, 4, 6, 8, 12, 16, …
up to the node's (and the node's count itself), times GPU slice sizes (0 = CPU only). Batches
above `MAX_BATCH` are not profiled.

* A **full** profile (`faasd profile NAME`) measures the powers of two among those batch sizes
  (and the largest) at the powers of two among those vCPU counts (and the node's), so at least
  three vCPU levels are measured wherever the node has them (what `esg.profiles.fit_profile`
  needs for its exp-decay form).
* A **small** profile (the one that runs after a deploy) measures batch 1 and the largest batch
  up to 4, at the fewest vCPU levels that still determine a fit: 1 and the node's count, and one
  level between them when the node has three or more.

On a GPU node every measured batch is also measured at each slice size (full) or at the largest
one (small), with 1 vCPU. The daemon has no GPU support yet, so that part is exercised only by
tests with made-up numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from esg.model import Config

BATCH_LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
VCPU_LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
MAX_BATCH = 32
SMALL_MAX_BATCH = 4


class Kind(StrEnum):
    FULL = "full"
    SMALL = "small"


@dataclass(frozen=True)
class Plan:
    """`measure` ⊆ `grid`, both in `Config` order."""

    kind: Kind
    measure: tuple[Config, ...]
    grid: tuple[Config, ...]

    @property
    def fill(self) -> tuple[Config, ...]:
        measured = set(self.measure)
        return tuple(c for c in self.grid if c not in measured)


def _levels(levels: tuple[int, ...], top: int) -> tuple[int, ...]:
    return tuple(sorted({v for v in levels if v <= top} | {top}))


def _powers_of_two(values: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted({v for v in values if v & (v - 1) == 0} | {values[-1]}))


def plan(
    kind: Kind, max_batch: int, node_vcpu: int, vgpu_sizes: tuple[int, ...] = ()
) -> Plan:
    """The plan of a `kind` profile of a function whose batches go up to `max_batch` (1 for a
    model without a dynamic batch dimension), on a node of `node_vcpu` cores whose GPUs can give
    slices of `vgpu_sizes` units (empty: no GPU)."""
    if max_batch < 1 or node_vcpu < 1:
        raise ValueError(f"max_batch and node_vcpu must be >= 1, got {max_batch}, {node_vcpu}")
    batches = _levels(BATCH_LEVELS, min(max_batch, MAX_BATCH))
    vcpus = _levels(VCPU_LEVELS, node_vcpu)
    gpus = tuple(sorted(set(vgpu_sizes) - {0}))
    grid = [Config(b, v) for b in batches for v in vcpus]
    grid += [Config(b, 1, g) for b in batches for g in gpus]
    if kind is Kind.FULL:
        m_batches, m_vcpus, m_gpus = _powers_of_two(batches), _powers_of_two(vcpus), gpus
    else:
        m_batches = tuple(sorted({1, max(b for b in batches if b <= SMALL_MAX_BATCH)}))
        middle = (vcpus[len(vcpus) // 2],) if len(vcpus) >= 3 else ()
        m_vcpus = tuple(sorted({vcpus[0], *middle, vcpus[-1]}))
        m_gpus = gpus[-1:]
    measure = [Config(b, v) for b in m_batches for v in m_vcpus]
    if m_gpus:  # the GPU line needs two batch sizes
        gpu_batches = m_batches if len(m_batches) >= 2 else batches[:2]
        measure += [Config(b, 1, g) for b in gpu_batches for g in m_gpus]
    grid_set = set(grid)
    return Plan(kind, tuple(sorted(set(measure) & grid_set)), tuple(sorted(grid_set)))
