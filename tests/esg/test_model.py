"""Config and Workflow: validated, hashed or sorted once, and the same however they were copied."""

from __future__ import annotations

import copy
import pickle

import pytest

from esg.model import Config, Workflow


def test_equal_configurations_are_one_key_however_they_were_made() -> None:
    config = Config(4, 2, 1)
    for other in (Config(4, 2, 1), copy.copy(config), pickle.loads(pickle.dumps(config))):
        assert other == config and hash(other) == hash(config)
        assert {config: "seen"}[other] == "seen"
    assert Config(4, 2, 1) != Config(4, 2) and Config(1, 1) < Config(1, 2) < Config(2, 1)


@pytest.mark.parametrize(("args", "message"), [
    ((0, 1, 0), "batch must be >= 1"),
    ((1, 0, 0), "vcpu must be >= 1"),
    ((1, 1, 8), "vgpu must be in 0..7"),
])
def test_configurations_outside_their_ranges_are_refused(
    args: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Config(*args)


def test_a_workflow_copied_or_unpickled_keeps_its_graph_and_order() -> None:
    workflow = Workflow.from_edges("w", ["c", "a", "b"], [("a", "b"), ("a", "c")], 0.1)
    assert workflow.topological_order() == ("a", "b", "c")
    for other in (copy.copy(workflow), pickle.loads(pickle.dumps(workflow))):
        assert other == workflow and other.topological_order() == ("a", "b", "c")
        assert other.successors("a") == ("b", "c")
