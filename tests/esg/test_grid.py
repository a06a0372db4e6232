"""Configuration grids: sizes, validation, and cutting a grid down to what a cluster runs."""

from __future__ import annotations

import pytest

from esg.grid import MIG_GRID, PAPER_GRID, ConfigGrid
from esg.model import Config
from esg.profiles import Capacity


def test_the_paper_grid_has_256_configurations_and_the_mig_grid_192() -> None:
    assert len(PAPER_GRID) == len(PAPER_GRID.configs()) == 4 * 8 * 8 == 256
    assert len(MIG_GRID) == 4 * 8 * 6 == 192
    assert {c.vgpu for c in MIG_GRID.configs()} == {0, 1, 2, 3, 4, 7}
    assert PAPER_GRID.configs()[:2] == (Config(1, 1, 0), Config(1, 1, 1))  # config order


def test_fitting_a_cpu_only_node_with_a_batch_limit() -> None:
    small = PAPER_GRID.fitting(Capacity(4, frozenset({0})), max_batch=2)
    assert (small.batches, small.vcpus, small.vgpus) == ((1, 2), (1, 2, 3, 4), (0,))
    assert len(small) == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batches": ()}, "must not be empty"),
        ({"vcpus": (2, 1)}, "strictly increasing"),
        ({"vgpus": (0, 8)}, "must lie in 0..7"),
        ({"batches": (0, 1)}, "must lie in 1..any"),
    ],
)
def test_bad_grids_are_refused(kwargs: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConfigGrid(**kwargs)
    with pytest.raises(ValueError, match="must not be empty"):
        PAPER_GRID.fitting(Capacity(0, frozenset({0})))
