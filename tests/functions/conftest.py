"""The example functions' tests: the build script and the handlers, imported by path.

Tests use the models under functions/ when they are there (`make test` builds them first);
otherwise the session builds them once into a temporary directory.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"
WORKFLOWS = FUNCTIONS.parent / "workflows"
EXAMPLES = ("digits", "squeezenet", "resnet50")
#: The example workflows' shared functions (functions/) and own stages (workflows/<w>/<stage>/).
WORKFLOW_FUNCTIONS = ("imagepre", "label")
WORKFLOW_STAGES = {"classify": (), "ensemble": ("vote",), "cutout": ("segment", "composite")}


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
    assert build_models.main(["--out", str(out), "--workflows-out", str(out / "_workflows")]) == 0
    return out


def _all_built(functions: Path, workflows: Path) -> bool:
    names = (*EXAMPLES, *WORKFLOW_FUNCTIONS)
    return all((functions / n / "model.onnx").is_file() for n in names) and all(
        (workflows / w / stage / "model.onnx").is_file()
        for w, stages in WORKFLOW_STAGES.items() for stage in stages
    )


@pytest.fixture(scope="session")
def workflow_tree(build_models: ModuleType, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Path, Path]:
    """(functions dir, workflows dir) with every model built: functions/ and workflows/ when
    `make models` ran, else copies of both built in a temporary directory."""
    if _all_built(FUNCTIONS, WORKFLOWS):
        return FUNCTIONS, WORKFLOWS
    root = tmp_path_factory.mktemp("tree")
    functions, workflows = root / "functions", root / "workflows"
    assert build_models.main(["--out", str(functions), "--workflows-out", str(workflows)]) == 0
    skip = shutil.ignore_patterns("model.onnx", "__pycache__")
    shutil.copytree(FUNCTIONS, functions, ignore=skip, dirs_exist_ok=True)
    shutil.copytree(WORKFLOWS, workflows, ignore=skip, dirs_exist_ok=True)
    return functions, workflows


@pytest.fixture(scope="session")
def digits_handler() -> ModuleType:
    return import_path(FUNCTIONS / "digits" / "handler.py", "digits_handler")


@pytest.fixture(scope="session")
def imagenet_handler() -> ModuleType:
    return import_path(FUNCTIONS / "squeezenet" / "handler.py", "squeezenet_handler")
