"""The loader: good directories become a FunctionSource; each bad one a DeployError that names
the file and says the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from faasd.errors import DeployError
from faasd.functions.loader import check_name, load_function, suggest_name
from faasd.functions.spec import FunctionSettings, TensorSpec

from .conftest import DEFAULTS, make_function, write_model

FULL_YAML = """\
timeout_s: 5
batching:
  max_batch_size: 16
  max_queue_delay_ms: 3
resources: {vcpu: 2, vgpu: 1, memory_mb: 512, max_pids: 32}
scale:
  min_instances: 1
  max_instances: 3
  keep_alive_s: 60
slo_ms: 150
env:
  OMP_NUM_THREADS: 1
  MODE: fast
"""

HANDLER = """\
import numpy as np

def preprocess(body, content_type):
    return {"x": np.zeros((1, 4), dtype=np.float32)}

def postprocess(outputs):
    return {"y": outputs["y"].tolist()}
"""


def test_minimal_directory_takes_the_defaults(source_root: Path) -> None:
    directory = make_function(source_root, "tiny")
    loaded = load_function(directory, DEFAULTS)
    assert loaded.name == "tiny"
    assert loaded.model_path == directory / "model.onnx"
    assert loaded.settings == DEFAULTS
    assert loaded.handler_path is None and loaded.labels_path is None
    assert loaded.sample_paths == ()


def test_everything_is_found_and_yaml_is_merged_over_defaults(source_root: Path) -> None:
    defaults = FunctionSettings(timeout_s=9.0, memory_mb=2048, env={"A": "1"})
    directory = make_function(source_root, "full", {
        "faasd.yaml": FULL_YAML, "handler.py": HANDLER, "labels.txt": "a\nb\n",
        "sample.json": '{"inputs": []}', "sample.png": "not read",
    })
    loaded = load_function(directory, defaults)
    assert loaded.settings == FunctionSettings(
        timeout_s=5.0, max_batch_size=16, max_queue_delay_ms=3.0, vcpu=2, vgpu=1,
        memory_mb=512, max_pids=32, min_instances=1, max_instances=3, keep_alive_s=60.0,
        slo_ms=150.0,
        env={"OMP_NUM_THREADS": "1", "MODE": "fast"},
    )
    assert loaded.handler_path == directory / "handler.py"
    assert loaded.labels_path == directory / "labels.txt"
    assert loaded.sample_paths == (directory / "sample.json", directory / "sample.png")


def test_flat_keys_work_like_sections(source_root: Path) -> None:
    directory = make_function(source_root, "flat", {
        "faasd.yaml": "max_batch_size: 4\nvcpu: 2\nkeep_alive_s: 10\n",
    })
    settings = load_function(directory, DEFAULTS).settings
    assert (settings.max_batch_size, settings.vcpu, settings.keep_alive_s) == (4, 2, 10.0)


def test_triton_layout_serves_the_highest_version(source_root: Path) -> None:
    directory = make_function(source_root, "triton", model="1/model.onnx")
    write_model(directory / "3" / "model.onnx")
    write_model(directory / "07" / "model.onnx")  # Triton ignores names starting with 0
    (directory / "12").mkdir()  # a version directory without a model is skipped
    assert load_function(directory, DEFAULTS).model_path == directory / "3" / "model.onnx"


def test_config_pbtxt_sets_name_settings_and_declared_tensors(source_root: Path) -> None:
    directory = make_function(source_root, "dir-name", {
        "config.pbtxt": (
            'name: "from-pbtxt"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
            'input [{ name: "x", data_type: TYPE_FP32, dims: [4] }]\n'
            "dynamic_batching { max_queue_delay_microseconds: 2500 }\n"
            "instance_group [{ count: 2, kind: KIND_CPU }]\n"
            "model_warmup []\n"
        ),
        "faasd.yaml": "batching: {max_batch_size: 8}\ntimeout_s: 2\n",  # agrees: fine
    }, model="1/model.onnx")
    loaded = load_function(directory, DEFAULTS)
    assert loaded.name == "from-pbtxt"
    assert loaded.settings.max_batch_size == 8
    assert loaded.settings.max_queue_delay_ms == 2.5
    assert loaded.settings.max_instances == 2
    assert loaded.settings.timeout_s == 2.0
    assert loaded.declared_inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert any("'model_warmup' is not used" in note for note in loaded.notes)
    assert any("deployed as 'from-pbtxt'" in note for note in loaded.notes)


def test_default_model_filename_is_honoured(source_root: Path) -> None:
    directory = make_function(source_root, "named", {
        "config.pbtxt": 'default_model_filename: "net.onnx"',
    }, model="2/net.onnx")
    assert load_function(directory, DEFAULTS).model_path == directory / "2" / "net.onnx"


def test_explicit_name_wins(source_root: Path) -> None:
    directory = make_function(source_root, "Bad_Dir_Name")
    assert load_function(directory, DEFAULTS, name="good-name").name == "good-name"


def test_names() -> None:
    assert suggest_name("My_Model.v2") == "my-model-v2"
    assert suggest_name("___") == ""
    for good in ("a", "resnet50", "my-model", "x" * 63):
        check_name(good, None, "test")
    for bad in ("", "-a", "a-", "A", "a_b", "a.b", "x" * 64):
        with pytest.raises(DeployError):
            check_name(bad, None, "test")


def _write(directory: Path, relative: str, content: str | bytes) -> None:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


#: (what is wrong, files to write over a valid directory, file named, words of the message).
BAD_DIRECTORIES = [
    ("no model", {}, "model.onnx", ["no model in", "looked for", "1/model.onnx",
                                    "put the ONNX model at"]),
    ("empty model", {"model.onnx": b""}, "model.onnx", ["is empty (0 bytes)", "export"]),
    ("text as model", {"model.onnx": "hello world"}, "model.onnx", ["is not an ONNX model"]),
    ("png as model", {"model.onnx": b"\x89PNG\r\n\x1a\n"}, "model.onnx",
     ["not an ONNX model (its first bytes, b'\\x89PNG\\r\\n\\x1a\\n', cannot start"]),
    ("LFS pointer", {"model.onnx": "version https://git-lfs.github.com/spec/v1\noid x\n"},
     "model.onnx", ["Git LFS pointer", "git lfs pull"]),
    ("model is a directory", {"model.onnx/model.onnx": "x"}, "model.onnx", ["is not a file"]),
    ("two layouts", {"1/model.onnx": b"\x08\x08"}, "model.onnx", ["both model.onnx and "
                                                                  "1/model.onnx", "keep one"]),
    ("typo key", {"faasd.yaml": "timeout: 3\n"}, "faasd.yaml",
     ["line 1", "unknown key 'timeout'", "did you mean 'timeout_s'"]),
    ("typo in section", {"faasd.yaml": "scale:\n  max_instance: 3\n"}, "faasd.yaml",
     ["line 2", "scale.max_instance", "did you mean 'max_instances'"]),
    ("key in wrong section", {"faasd.yaml": "batching:\n  vcpu: 2\n"}, "faasd.yaml",
     ["vcpu belongs under resources"]),
    ("negative timeout", {"faasd.yaml": "timeout_s: -1\n"}, "faasd.yaml",
     ["timeout_s must be a positive number of seconds, got -1", "e.g. timeout_s: 30"]),
    ("batch 0", {"faasd.yaml": "batching:\n  max_batch_size: 0\n"}, "faasd.yaml",
     ["line 2", "max_batch_size must be a whole number >= 1", "got 0"]),
    ("string timeout", {"faasd.yaml": "timeout_s: 30s\n"}, "faasd.yaml",
     ["got '30s'"]),
    ("fractional vcpu", {"faasd.yaml": "resources: {vcpu: 1.5}\n"}, "faasd.yaml",
     ["vcpu must be a whole number"]),
    ("too many gpu units", {"faasd.yaml": "resources: {vgpu: 8}\n"}, "faasd.yaml",
     ["from 0 (CPU only) to 7"]),
    ("tiny memory", {"faasd.yaml": "resources: {memory_mb: 8}\n"}, "faasd.yaml",
     ["memory_mb must be a whole number of MiB >= 64"]),
    ("too few pids", {"faasd.yaml": "resources: {max_pids: 2}\n"}, "faasd.yaml",
     ["max_pids must be a whole number of processes and threads from 8 to 4194304",
      "e.g. max_pids: 64"]),
    ("more pids than a cgroup takes", {"faasd.yaml": "resources: {max_pids: 4194305}\n"},
     "faasd.yaml", ["max_pids must be a whole number of processes and threads from 8"]),
    ("min above max", {"faasd.yaml": "scale: {min_instances: 5, max_instances: 2}\n"},
     "faasd.yaml", ["min_instances (5) is larger than max_instances (2)"]),
    ("bool as number", {"faasd.yaml": "batching: {max_batch_size: true}\n"}, "faasd.yaml",
     ["got True"]),
    # YAML's .nan and .inf deployed, and GET /system/functions then answered NaN/Infinity
    ("nan slo", {"faasd.yaml": "slo_ms: .nan\n"}, "faasd.yaml",
     ["line 1", "slo_ms must be a finite number", "e.g. slo_ms: 200"]),
    ("inf slo", {"faasd.yaml": "slo_ms: .inf\n"}, "faasd.yaml",
     ["slo_ms must be a finite number", "or null for none"]),
    ("inf keep-alive", {"faasd.yaml": "scale: {keep_alive_s: .inf}\n"}, "faasd.yaml",
     ["keep_alive_s must be a finite number", "e.g. keep_alive_s: 300"]),
    ("nan queue delay", {"faasd.yaml": "batching:\n  max_queue_delay_ms: .nan\n"},
     "faasd.yaml", ["line 2", "max_queue_delay_ms must be a finite number"]),
    ("huge keep-alive", {"faasd.yaml": "keep_alive_s: 1" + "0" * 400 + "\n"}, "faasd.yaml",
     ["keep_alive_s must be a number of seconds >= 0, got 1000", "more than any setting"]),
    ("section not a mapping", {"faasd.yaml": "scale: 3\n"}, "faasd.yaml",
     ["scale must be a mapping"]),
    ("duplicate key", {"faasd.yaml": "timeout_s: 1\ntimeout_s: 2\n"}, "faasd.yaml",
     ["line 2", "given twice"]),
    ("flat and section", {"faasd.yaml": "vcpu: 1\nresources: {vcpu: 2}\n"}, "faasd.yaml",
     ["vcpu is given twice"]),
    ("bad env name", {"faasd.yaml": "env: {1BAD: x}\n"}, "faasd.yaml",
     ["not a valid variable name"]),
    ("env not a mapping", {"faasd.yaml": "env: [A]\n"}, "faasd.yaml", ["env must be a mapping"]),
    ("yaml syntax", {"faasd.yaml": "timeout_s: 3\nbatching:\n  max_batch_size: [1\n"},
     "faasd.yaml", ["not valid YAML", "line"]),
    ("yaml not a mapping", {"faasd.yaml": "- timeout_s\n"}, "faasd.yaml",
     ["top level must be a mapping"]),
    ("yaml not utf-8", {"faasd.yaml": b"timeout_s: \xff\n"}, "faasd.yaml", ["not UTF-8"]),
    ("pbtxt syntax", {"config.pbtxt": 'name: "tiny"\nmax_batch_size 4\n'}, "config.pbtxt",
     ["line 2", "expected ':'"]),
    ("pbtxt platform", {"config.pbtxt": 'platform: "pytorch_libtorch"\n'}, "config.pbtxt",
     ["ONNX models only"]),
    ("pbtxt bad name", {"config.pbtxt": 'name: "Tiny_Model"\n'}, "config.pbtxt",
     ["bad function name 'Tiny_Model'", "pattern", "e.g. 'tiny-model'"]),
    ("pbtxt and yaml disagree", {"config.pbtxt": "max_batch_size: 4\n",
                                 "faasd.yaml": "batching: {max_batch_size: 8}\n"},
     "faasd.yaml", ["max_batch_size is 8 here but 4 in", "config.pbtxt"]),
    ("handler syntax", {"handler.py": "def preprocess(body, content_type)\n    pass\n"},
     "handler.py", ["line 1", "syntax error"]),
    ("handler without hooks", {"handler.py": "def prepare(body):\n    return body\n"},
     "handler.py", ["defines neither preprocess", "delete handler.py"]),
    ("preprocess arity", {"handler.py": "def preprocess(body):\n    return {}\n"},
     "handler.py", ["line 1", "preprocess must take (body, content_type)"]),
    ("async postprocess", {"handler.py": "async def postprocess(outputs):\n    return 1\n"},
     "handler.py", ["must be a plain function"]),
    ("labels not text", {"labels.txt": b"\xff\xfe\x00a"}, "labels.txt", ["not UTF-8"]),
    ("misnamed settings", {"faasd.yml": "timeout_s: 3\n"}, "faasd.yml",
     ["reads settings from faasd.yaml", "rename"]),
    ("broken sample", {"sample.json": '{"inputs": [\n'}, "sample.json",
     ["line 2", "not valid JSON"]),
]


@pytest.mark.parametrize(("files", "culprit", "words"),
                         [case[1:] for case in BAD_DIRECTORIES],
                         ids=[case[0] for case in BAD_DIRECTORIES])
def test_bad_directory_names_the_file_and_the_fix(
    source_root: Path, files: dict[str, str | bytes], culprit: str, words: list[str]
) -> None:
    needs_model = "model.onnx" not in files and culprit != "model.onnx"
    directory = make_function(source_root, "tiny", model="model.onnx" if needs_model else None)
    if any(k.startswith("1/") for k in files):  # a second model beside the Triton one
        write_model(directory / "model.onnx")
    for relative, content in files.items():
        _write(directory, relative, content)
    with pytest.raises(DeployError) as caught:
        load_function(directory, DEFAULTS)
    error = caught.value
    assert error.file is not None and Path(error.file).name == culprit, error.message
    assert error.status == 400
    for word in words:
        assert word in error.message, error.message
    assert str(directory) in error.message or culprit in error.message


def test_bad_directory_name(source_root: Path) -> None:
    directory = make_function(source_root, "My_Model")
    with pytest.raises(DeployError) as caught:
        load_function(directory, DEFAULTS)
    assert caught.value.file == str(directory)
    assert "bad function name 'My_Model'" in caught.value.message
    assert "--name" in caught.value.message and "'my-model'" in caught.value.message


def test_bad_explicit_name(source_root: Path) -> None:
    directory = make_function(source_root, "fine")
    with pytest.raises(DeployError, match="from --name") as caught:
        load_function(directory, DEFAULTS, name="Bad Name!")
    # the fix for a bad --name is another --name, not "deploy with --name"
    assert caught.value.message.endswith("; choose another --name, e.g. 'bad-name'")


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="is not a directory") as caught:
        load_function(tmp_path / "missing", DEFAULTS)
    assert caught.value.file == str(tmp_path / "missing")


def test_handler_hooks_by_import_or_assignment_are_accepted(source_root: Path) -> None:
    directory = make_function(source_root, "indirect", {
        "helpers.py": "def pre(body, content_type):\n    return {}\n",
        "handler.py": "from helpers import pre as preprocess\npostprocess = print\n",
    })
    assert load_function(directory, DEFAULTS).handler_path == directory / "handler.py"


def test_nothing_is_imported(source_root: Path, tmp_path: Path) -> None:
    """Loading must not run the handler: that happens in a sandbox, never in the daemon."""
    marker = tmp_path / "ran"
    directory = make_function(source_root, "sneaky", {
        "handler.py": f"open({str(marker)!r}, 'w').close()\n\ndef postprocess(o):\n    return 1\n",
    })
    load_function(directory, DEFAULTS)
    assert not marker.exists()
