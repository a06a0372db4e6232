"""A corrupted `current` pointer: the function is served from its newest version on disk,
with a log line, instead of vanishing at the restart without a word."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from faasd.functions.registry import Registry
from faasd.functions.spec import ModelInfo, TensorSpec

from .conftest import DEFAULTS, make_function

INFO = ModelInfo(inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                 outputs=(TensorSpec("y", "FP32", (-1, 4)),), batched=True)


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01", b"two\n", b"\xff\xfe2"])
def test_a_corrupt_pointer_serves_the_newest_version(tmp_path: Path, source_root: Path,
                                                     garbage: bytes,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    first = Registry(state, DEFAULTS)
    source = make_function(source_root, "tiny")
    for _ in range(2):
        first.commit(first.stage(source), INFO)
    pointer = state / "functions" / "tiny" / "current"
    pointer.write_bytes(garbage)
    with caplog.at_level(logging.ERROR):
        again = Registry(state, DEFAULTS)
    served = again.get("tiny")
    assert served is not None and served.version == 2
    assert "current pointer is unreadable; serving the newest version on disk, 2" in caplog.text
    assert pointer.read_text().strip() == "2"  # repaired


def test_a_removed_function_stays_removed(tmp_path: Path, source_root: Path) -> None:
    state = tmp_path / "state"
    first = Registry(state, DEFAULTS)
    first.commit(first.stage(make_function(source_root, "tiny")), INFO)
    (state / "functions" / "tiny" / "current").unlink()  # remove() goes this far, then a crash
    assert Registry(state, DEFAULTS).get("tiny") is None
