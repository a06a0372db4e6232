"""Configuration grids: the (batch, vcpu, vgpu) points a function is profiled and planned on.

`PAPER_GRID` is the benchmark's 256 configurations per function (4 batch sizes × 8 vCPU levels
× 8 GPU levels, the size the paper's overhead figure uses); `MIG_GRID` keeps only the GPU
slices MIG can give (no 5g or 6g instance), 4 × 8 × 6 = 192. A grid is validated when built.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from esg.model import GPU_UNITS, MIG_SIZES, Config
from esg.profiles import Capacity


@dataclass(frozen=True)
class ConfigGrid:
    """The product of batch sizes, vCPU counts and GPU slice units (0 = CPU only)."""

    batches: tuple[int, ...] = (1, 2, 4, 8)
    vcpus: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
    vgpus: tuple[int, ...] = tuple(range(GPU_UNITS + 1))

    def __post_init__(self) -> None:
        for name, values, low, high in (
            ("batches", self.batches, 1, None),
            ("vcpus", self.vcpus, 1, None),
            ("vgpus", self.vgpus, 0, GPU_UNITS),
        ):
            if not values:
                raise ValueError(f"grid {name} must not be empty")
            if list(values) != sorted(set(values)):
                raise ValueError(f"grid {name} must be strictly increasing, got {values}")
            if values[0] < low or (high is not None and values[-1] > high):
                raise ValueError(f"grid {name} must lie in {low}..{high or 'any'}, got {values}")

    def __len__(self) -> int:
        return len(self.batches) * len(self.vcpus) * len(self.vgpus)

    def configs(self) -> tuple[Config, ...]:
        """Every configuration of the grid, in config order."""
        return tuple(
            Config(b, v, g) for b, v, g in itertools.product(self.batches, self.vcpus, self.vgpus)
        )

    def fitting(self, capacity: Capacity, max_batch: int | None = None) -> ConfigGrid:
        """The part of the grid a cluster can run (and a model accepts). Raises ValueError when
        nothing is left in some dimension."""
        return ConfigGrid(
            batches=tuple(b for b in self.batches if max_batch is None or b <= max_batch),
            vcpus=tuple(v for v in self.vcpus if v <= capacity.max_vcpu),
            vgpus=tuple(g for g in self.vgpus if g in capacity.vgpu_sizes),
        )


PAPER_GRID = ConfigGrid()
MIG_GRID = ConfigGrid(vgpus=(0, *MIG_SIZES))
