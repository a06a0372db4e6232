"""The example functions' tests: the build script and the handlers, imported by path.

Tests use the models under functions/ when they are there (`make test` builds them first);
otherwise the session builds them once into a temporary directory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
EXAMPLES = ("digits", "squeezenet", "resnet50")


def import_path(path: Path, name: str) -> ModuleType:
    """Import a file by path without leaving __pycache__ in functions/."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


@pytest.fixture(scope="session")
def build_models() -> ModuleType:
    return import_path(FUNCTIONS / "build_models.py", "build_models")


@pytest.fixture(scope="session")
def models(build_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding <function>/model.onnx for every example."""
    if all((FUNCTIONS / name / "model.onnx").is_file() for name in EXAMPLES):
        return FUNCTIONS
    out = tmp_path_factory.mktemp("models")
    assert build_models.main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def digits_handler() -> ModuleType:
    return import_path(FUNCTIONS / "digits" / "handler.py", "digits_handler")


@pytest.fixture(scope="session")
def imagenet_handler() -> ModuleType:
    return import_path(FUNCTIONS / "squeezenet" / "handler.py", "squeezenet_handler")
