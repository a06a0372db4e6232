"""The registry: versions on disk, staged then committed atomically, surviving a restart."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from faasd.clock import ManualClock
from faasd.errors import DeployError, NotFound
from faasd.functions import registry as registry_module
from faasd.functions.registry import Registry
from faasd.functions.spec import FunctionSettings, ModelInfo, TensorSpec

from .conftest import DEFAULTS, make_function, write_model

INFO = ModelInfo(
    inputs=(TensorSpec("x", "FP32", (-1, 4)),),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
    batched=True,
    has_preprocess=True,
    has_postprocess=False,
)
FIXED_INFO = ModelInfo(
    inputs=(TensorSpec("x", "FP32", (1, 4)),), outputs=(TensorSpec("y", "FP32", (1, 4)),),
    batched=False,
)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def registry(state: Path) -> Registry:
    return Registry(state, DEFAULTS, clock=ManualClock(100.0))


def deploy(registry: Registry, directory: Path, info: ModelInfo = INFO) -> int:
    return registry.commit(registry.stage(directory), info).version


def test_stage_copies_but_does_not_serve(registry: Registry, source_root: Path) -> None:
    source = make_function(source_root, "tiny", {
        "faasd.yaml": "timeout_s: 3\n", "handler.py": "def postprocess(o):\n    return 1\n",
        "labels.txt": "a\n", "extra/vocab.txt": "words\n", "__pycache__/junk.pyc": "x",
    })
    staged = registry.stage(source)
    assert registry.get("tiny") is None and registry.list() == []
    assert staged.version == 1
    assert staged.directory == registry.root / "tiny" / "1"
    assert staged.model_path == staged.directory / "model.onnx"
    assert staged.handler_path == staged.directory / "handler.py"
    assert staged.labels_path == staged.directory / "labels.txt"
    assert staged.settings.timeout_s == 3.0
    assert (staged.directory / "extra" / "vocab.txt").read_text() == "words\n"
    assert not (staged.directory / "__pycache__").exists()
    assert staged.model_path.read_bytes() == (source / "model.onnx").read_bytes()
    # The copy is immutable: the files are read-only.
    assert not os.stat(staged.model_path).st_mode & 0o222


def test_commit_records_the_model_and_serves_it(registry: Registry, source_root: Path) -> None:
    staged = registry.stage(make_function(source_root, "tiny"))
    final = registry.commit(staged, INFO)
    assert final.inputs == INFO.inputs and final.outputs == INFO.outputs
    assert final.batched and final.has_preprocess and not final.has_postprocess
    assert final.deployed_at == ManualClock(100.0).wall()
    assert registry.get("tiny") == final
    assert registry.list() == [final]
    home = registry.root / "tiny"
    assert (home / "current").read_text().strip() == "1"
    metadata = json.loads((home / "1.json").read_text())
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["settings"]["timeout_s"] == DEFAULTS.timeout_s


def test_a_restart_serves_the_same_functions(state: Path, source_root: Path) -> None:
    first = Registry(state, DEFAULTS)
    settings_yaml = "batching: {max_batch_size: 4}\nenv: {A: b}\nslo_ms: 50\n"
    tiny = first.commit(first.stage(make_function(source_root, "tiny", {
        "faasd.yaml": settings_yaml, "handler.py": "def postprocess(o):\n    return 1\n",
    })), INFO)
    other = first.commit(first.stage(make_function(source_root, "other")), INFO)
    again = Registry(state, FunctionSettings(timeout_s=1.0))  # new defaults don't rewrite
    assert again.list() == [other, tiny]
    assert again.get("tiny") == tiny
    assert tiny.settings.env == {"A": "b"} and tiny.settings.slo_ms == 50.0


def test_redeploy_switches_current_and_keeps_the_old_files(
    registry: Registry, source_root: Path
) -> None:
    source = make_function(source_root, "tiny", {"faasd.yaml": "timeout_s: 1\n"})
    first = registry.commit(registry.stage(source), INFO)
    (source / "faasd.yaml").write_text("timeout_s: 2\n")
    staged = registry.stage(source)
    assert registry.get("tiny") == first  # the old version serves until the commit
    second = registry.commit(staged, INFO)
    assert (first.version, second.version) == (1, 2)
    assert registry.get("tiny") == second and second.settings.timeout_s == 2.0
    assert first.model_path.exists()  # calls in flight on v1 keep their files
    assert registry.versions("tiny") == [1, 2]


def test_old_versions_are_pruned(state: Path, source_root: Path) -> None:
    registry = Registry(state, DEFAULTS, keep_versions=2)
    source = make_function(source_root, "tiny")
    versions = [deploy(registry, source) for _ in range(4)]
    assert versions == [1, 2, 3, 4]
    assert registry.versions("tiny") == [3, 4]
    home = registry.root / "tiny"
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == [
        "3", "3.json", "4", "4.json", "counter", "current",
    ]


def test_discard_leaves_the_current_version(registry: Registry, source_root: Path) -> None:
    source = make_function(source_root, "tiny")
    first = registry.commit(registry.stage(source), INFO)
    staged = registry.stage(source)
    registry.discard(staged)
    assert not staged.directory.exists()
    assert registry.get("tiny") == first
    assert registry.versions("tiny") == [1]
    registry.discard(staged)  # twice is harmless
    with pytest.raises(ValueError, match="is current"):
        registry.discard(first)


def test_a_rejected_first_deploy_leaves_nothing(registry: Registry, state: Path,
                                               source_root: Path) -> None:
    source = make_function(source_root, "tiny")
    registry.discard(registry.stage(source))
    assert not (state / "functions" / "tiny").exists()
    assert deploy(registry, source) == 1  # the first deploy that works is v1


def test_version_numbers_are_never_reused(state: Path, source_root: Path) -> None:
    """A sandbox of a removed or discarded version must never pass for a new one."""
    registry = Registry(state, DEFAULTS)
    source = make_function(source_root, "tiny")
    assert deploy(registry, source) == 1
    registry.discard(registry.stage(source))  # 2, discarded
    removed = registry.remove("tiny")
    assert removed.version == 1 and registry.get("tiny") is None
    assert Registry(state, DEFAULTS).get("tiny") is None
    assert deploy(Registry(state, DEFAULTS), source) == 3


def test_remove(registry: Registry, source_root: Path) -> None:
    deploy(registry, make_function(source_root, "tiny"))
    removed = registry.remove("tiny")
    assert not removed.directory.exists()
    assert registry.list() == [] and registry.versions("tiny") == []
    with pytest.raises(NotFound):
        registry.remove("tiny")
    with pytest.raises(NotFound):
        registry.remove("never-deployed")


def test_commit_refuses_batching_a_fixed_batch(registry: Registry, source_root: Path) -> None:
    source = make_function(source_root, "tiny", {"faasd.yaml": "batching:\n  max_batch_size: 8\n"})
    staged = registry.stage(source)
    with pytest.raises(DeployError) as caught:
        registry.commit(staged, FIXED_INFO)
    assert Path(caught.value.file or "").name == "faasd.yaml"
    assert "batch dimension is fixed" in caught.value.message
    assert "x [1, 4]" in caught.value.message
    assert registry.get("tiny") is None
    registry.discard(staged)
    assert registry.versions("tiny") == []


def test_commit_checks_pbtxt_tensors_against_the_model(
    registry: Registry, source_root: Path
) -> None:
    source = make_function(source_root, "tiny", {
        "config.pbtxt": 'max_batch_size: 4\ninput [{ name: "x", data_type: TYPE_INT64, '
                        "dims: [4] }]\n",
    })
    with pytest.raises(DeployError, match="input 'x' is FP32 in the model, not INT64") as caught:
        registry.commit(registry.stage(source), INFO)
    assert Path(caught.value.file or "").name == "config.pbtxt"
    (source / "config.pbtxt").write_text('input [{ name: "z", data_type: TYPE_FP32, dims: [4] }]')
    with pytest.raises(DeployError, match="'z' is not in the model \\(the model has x\\)"):
        registry.commit(registry.stage(source), INFO)
    (source / "config.pbtxt").write_text(
        'max_batch_size: 4\noutput [{ name: "y", data_type: TYPE_FP32, dims: [5] }]')
    with pytest.raises(DeployError, match="has shape \\[-1, 4\\] in the model, not \\[-1, 5\\]"):
        registry.commit(registry.stage(source), INFO)
    (source / "config.pbtxt").write_text(
        'max_batch_size: 4\noutput [{ name: "y", data_type: TYPE_FP32, dims: [4] }]')
    assert registry.commit(registry.stage(source), INFO).name == "tiny"


def test_commit_of_something_not_staged_is_a_bug(registry: Registry, source_root: Path) -> None:
    final = registry.commit(registry.stage(make_function(source_root, "tiny")), INFO)
    with pytest.raises(ValueError, match="not staged"):
        registry.commit(final, INFO)


def test_stage_refuses_a_bad_directory_and_leaves_nothing(
    registry: Registry, source_root: Path
) -> None:
    source = make_function(source_root, "tiny", {"faasd.yaml": "timeout: 3\n"})
    with pytest.raises(DeployError, match="did you mean 'timeout_s'"):
        registry.stage(source)
    assert not (registry.root / "tiny").exists()


def test_triton_layout_copies_only_the_served_version(
    registry: Registry, source_root: Path
) -> None:
    source = make_function(source_root, "tiny", model="1/model.onnx")
    write_model(source / "2" / "model.onnx")
    staged = registry.stage(source)
    assert staged.model_path == staged.directory / "2" / "model.onnx"
    assert not (staged.directory / "1").exists()


def test_crash_leftovers_are_cleaned_at_start(state: Path, source_root: Path) -> None:
    registry = Registry(state, DEFAULTS)
    source = make_function(source_root, "tiny")
    served = registry.commit(registry.stage(source), INFO)
    orphan = registry.stage(source)  # the daemon "crashes" before commit
    half_copied = registry.root / "tiny" / ".staging-9"
    half_copied.mkdir()
    (registry.root / "tiny" / ".current.tmp").write_text("9")
    again = Registry(state, DEFAULTS)
    assert again.get("tiny") == served
    assert not orphan.directory.exists() and not half_copied.exists()
    assert not (registry.root / "tiny" / ".current.tmp").exists()


def test_unreadable_current_falls_back_to_an_older_version(
    state: Path, source_root: Path
) -> None:
    registry = Registry(state, DEFAULTS)
    source = make_function(source_root, "tiny")
    first = registry.commit(registry.stage(source), INFO)
    second = registry.commit(registry.stage(source), INFO)
    (registry.root / "tiny" / f"{second.version}.json").write_text("{ torn")
    assert Registry(state, DEFAULTS).get("tiny") == first
    assert (registry.root / "tiny" / "current").read_text().strip() == "1"


def test_stage_in_a_thread_while_the_loop_reads(registry: Registry, source_root: Path) -> None:
    source = make_function(source_root, "tiny")
    deploy(registry, source)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(registry.stage(source).version))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        current = registry.get("tiny")
        assert current is not None and current.version == 1
    for thread in threads:
        thread.join()
    assert sorted(results) == [2, 3, 4, 5]


def test_look_ups_do_not_wait_for_a_copy(
    registry: Registry, source_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_function(source_root, "tiny")
    first = registry.commit(registry.stage(source), INFO)
    copying, release = threading.Event(), threading.Event()
    real_copy = registry_module._copy_function

    def slow_copy(*args: object) -> None:
        copying.set()
        release.wait(10)
        real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module, "_copy_function", slow_copy)
    stager = threading.Thread(target=registry.stage, args=(source,))
    stager.start()
    try:
        assert copying.wait(10)
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(registry.get("tiny")))
        reader.start()
        reader.join(5)
        assert seen == [first]  # answered while the copy is still under way
    finally:
        release.set()
        stager.join(10)
    assert registry.versions("tiny") == [1]  # the second version is staged, not committed


def test_unchanged_source_is_recognised_across_restarts(state: Path, source_root: Path) -> None:
    source = make_function(source_root, "tiny", {
        "faasd.yaml": "timeout_s: 3\n", "handler.py": "def postprocess(o):\n    return 1\n",
        "extra/vocab.txt": "words\n",
    })
    first = Registry(state, DEFAULTS)
    assert first.unchanged(source) is None  # nothing deployed yet
    assert deploy(first, source) == 1
    assert first.unchanged(source) == first.get("tiny")
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"cache")  # not copied
    again = Registry(state, DEFAULTS)  # a restart reads the digest back from the metadata
    kept = again.unchanged(source)
    assert kept is not None and kept.version == 1


@pytest.mark.parametrize("change", ["edit", "add", "rename", "defaults", "name"])
def test_any_change_to_what_a_deploy_installs_needs_a_new_version(
    state: Path, source_root: Path, change: str
) -> None:
    source = make_function(source_root, "tiny", {"labels.txt": "a\nb\n",
                                                 "extra/vocab.txt": "words\n"})
    registry = Registry(state, DEFAULTS)
    deploy(registry, source)
    defaults, name = DEFAULTS, None
    if change == "edit":
        (source / "extra" / "vocab.txt").write_text("other words\n")
    elif change == "add":
        (source / "faasd.yaml").write_text("timeout_s: 3\n")
    elif change == "rename":
        (source / "extra" / "vocab.txt").rename(source / "extra" / "words.txt")
    elif change == "defaults":
        defaults = FunctionSettings(memory_mb=DEFAULTS.memory_mb * 2)
    else:
        name = "other"
    restarted = Registry(state, defaults)
    assert restarted.unchanged(source, name) is None
    if change != "name":
        assert deploy(restarted, source) == 2


def test_metadata_without_a_digest_is_never_taken_as_unchanged(
    state: Path, source_root: Path
) -> None:
    source = make_function(source_root, "tiny")
    registry = Registry(state, DEFAULTS)
    deploy(registry, source)
    metadata = state / "functions" / "tiny" / "1.json"
    doc = json.loads(metadata.read_text())
    del doc["source_digest"]  # as written before digests existed
    metadata.chmod(0o644)
    metadata.write_text(json.dumps(doc))
    older = Registry(state, DEFAULTS)
    assert older.get("tiny") is not None and older.unchanged(source) is None
