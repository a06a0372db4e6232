"""config.pbtxt: the text format parser and the subset faasd honours."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faasd.errors import DeployError
from faasd.functions.pbtxt import TRITON_TO_V2, Message, parse_model_config, parse_text
from faasd.functions.spec import TensorSpec

# Triton's own example from docs/user_guide/model_configuration.md and batcher.md, with
# fields faasd does not use (gpus, version_policy, optimization) mixed in.
TRITON_EXAMPLE = """
# A comment on its own line
name: "resnet"                      # must match directory
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input0"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }
]
output [ { name: "output0", data_type: TYPE_FP32, dims: [ 1000 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 100
}
instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0 ] },
                 { count: 3, kind: KIND_CPU } ]
version_policy: { latest: { num_versions: 1 } }
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
"""


def test_triton_example_is_read() -> None:
    config = parse_model_config(TRITON_EXAMPLE)
    assert config.name == "resnet"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    # max_batch_size > 0: Triton's full shape is [-1] + dims.
    assert config.inputs == (TensorSpec("input0", "FP32", (-1, 3, 224, 224)),)
    assert config.outputs == (TensorSpec("output0", "FP32", (-1, 1000)),)
    assert config.dynamic_batching
    assert config.max_queue_delay_us == 100
    assert config.preferred_batch_sizes == (4, 8)
    assert config.instance_count == 5  # 2 + 3
    assert config.instance_kinds == ("KIND_GPU", "KIND_CPU")


def test_settings_from_the_example() -> None:
    overrides = parse_model_config(TRITON_EXAMPLE).settings_overrides()
    # 100 µs = 0.1 ms; instance counts add up to max_instances.
    assert overrides == {"max_batch_size": 8, "max_queue_delay_ms": 0.1, "max_instances": 5}


def test_unknown_fields_are_noted_with_their_line() -> None:
    notes = parse_model_config(TRITON_EXAMPLE).notes
    joined = "\n".join(notes)
    assert "line 20: 'version_policy' is not used by faasd" in joined
    assert "line 21: 'optimization'" in joined
    assert "instance_group: 'gpus'" in joined
    assert "preferred_batch_size is not used" in joined
    assert "KIND_GPU" in joined


def test_batch_zero_means_no_batch_dimension_and_no_batching() -> None:
    config = parse_model_config(
        'max_batch_size: 0\ninput { name: "x" data_type: TYPE_INT64 dims: [ 4, -1 ] }'
    )
    assert config.inputs == (TensorSpec("x", "INT64", (4, -1)),)
    assert config.settings_overrides() == {"max_batch_size": 1}


def test_absent_fields_set_nothing() -> None:
    config = parse_model_config('name: "m"')
    assert config.settings_overrides() == {}
    assert config.max_batch_size is None and not config.dynamic_batching
    assert config.notes == ()


def test_text_format_shapes() -> None:
    # Repeated fields by repetition, `name: {`, `< >` blocks, ';' separators, escapes.
    root = parse_text(
        'a: 1; a: 2\nb: { c: "x\\"y" }\nd < e: -1.5e3 f: true >\ng: []\nh: [1, 2.5, -3]'
    )
    assert [v for v, _ in root.fields["a"]] == [1, 2]
    b = root.fields["b"][0][0]
    assert isinstance(b, Message) and b.fields["c"][0][0] == 'x"y'
    d = root.fields["d"][0][0]
    assert isinstance(d, Message)
    assert d.fields["e"][0][0] == -1500.0 and d.fields["f"][0][0] is True
    assert root.fields["g"] == []
    assert [v for v, _ in root.fields["h"]] == [1, 2.5, -3]
    assert [line for _, line in root.fields["h"]] == [5, 5, 5]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('name: "m"\nmax_batch_size 8', 2, "expected ':' or '{' after 'max_batch_size'"),
        ('name: "m"\ninput [ { name: "x" }', 2, "expected ',' or ']'"),
        ("dynamic_batching {\n  max_queue_delay_microseconds: 5\n", 3, "the end of the file"),
        ('name: "unterminated\n', 1, "unexpected character"),
        ("max_batch_size: -2", 1, "max_batch_size must be >= 0"),
        ("max_batch_size: 2.5", 1, "must be a whole number"),
        ('max_batch_size: 4\nmax_batch_size: 8', 2, "given more than once"),
        ('platform: "tensorflow_savedmodel"', 1, "faasd runs ONNX models only"),
        ('backend: "python"', 1, 'use backend: "onnxruntime"'),
        ('input { name: "x" data_type: TYPE_BF16 dims: [1] }', 1, "TYPE_BF16 is not supported"),
        ('input { name: "x" dims: [1] }', 1, "needs a data_type"),
        ('input { data_type: TYPE_FP32 dims: [1] }', 1, "needs a name"),
        ('input { name: "x" data_type: TYPE_FP32 dims: [0] }', 1, "dims must be positive"),
        ("dynamic_batching: 3", 1, "must be a { ... } block"),
        ("instance_group [ { count: 0 } ]", 1, "count must be >= 1"),
        ("= 3", 1, "unexpected character '='"),
    ],
)
def test_malformed_text_names_file_and_line(text: str, line: int, words: str) -> None:
    with pytest.raises(DeployError) as caught:
        parse_model_config(text, "/models/m/config.pbtxt")
    assert caught.value.file == "/models/m/config.pbtxt"
    assert f"config.pbtxt line {line}:" in caught.value.message
    assert words in caught.value.message


# --- property: whatever layout a config is written in, the same settings come out ----------

_names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
_tensors = st.lists(
    st.tuples(_names, st.sampled_from(sorted(TRITON_TO_V2)),
              st.lists(st.integers(1, 512) | st.just(-1), min_size=1, max_size=4)),
    max_size=3, unique_by=lambda t: t[0],
)


@dataclass(frozen=True)
class _Written:
    """What a generated config.pbtxt says, to compare the parse against."""

    name: str
    max_batch_size: int
    delay_us: int | None
    counts: list[int]
    inputs: list[tuple[str, str, list[int]]]


@st.composite
def _configs(draw: st.DrawFn) -> tuple[str, _Written]:
    """A config.pbtxt written in a random but valid layout, and what it says."""
    sep = draw(st.sampled_from(["\n", " ", ", ", "; ", "  # note\n"]))
    colon_block = draw(st.booleans())  # `name: {` or `name {`
    said = _Written(
        name=draw(_names.map(lambda n: n.replace("_", "-"))),
        max_batch_size=draw(st.integers(0, 64)),
        delay_us=draw(st.none() | st.integers(0, 10**6)),
        counts=draw(st.lists(st.integers(1, 8), max_size=3)),
        inputs=draw(_tensors),
    )
    lines = [f'name: "{said.name}"', f"max_batch_size: {said.max_batch_size}"]
    for name, dtype, dims in said.inputs:
        dims_text = ", ".join(map(str, dims))
        lines.append(f'input {{ name: "{name}"{sep}data_type: {dtype}{sep}dims: [ {dims_text} ] }}')
    if said.delay_us is not None:
        opener = "dynamic_batching: {" if colon_block else "dynamic_batching {"
        lines.append(f"{opener} max_queue_delay_microseconds: {said.delay_us}{sep}}}")
    if said.counts:
        groups = ", ".join(f"{{ count: {c} kind: KIND_CPU }}" for c in said.counts)
        lines.append(f"instance_group [ {groups} ]")
    return sep.join(lines) + "\n", said


@given(_configs())
@settings(max_examples=60, deadline=None)
def test_any_valid_layout_gives_the_same_config(case: tuple[str, _Written]) -> None:
    text, said = case
    config = parse_model_config(text)
    assert config.name == said.name
    assert config.max_batch_size == said.max_batch_size
    lead = (-1,) if said.max_batch_size else ()
    assert config.inputs == tuple(
        TensorSpec(name, TRITON_TO_V2[dtype], lead + tuple(dims))
        for name, dtype, dims in said.inputs
    )
    overrides = config.settings_overrides()
    assert overrides["max_batch_size"] == max(1, said.max_batch_size)
    if said.delay_us is None:
        assert "max_queue_delay_ms" not in overrides
    else:
        assert overrides["max_queue_delay_ms"] == said.delay_us / 1000.0
    assert overrides.get("max_instances") == (sum(said.counts) if said.counts else None)
    assert config.notes == ()
