"""workflow.yaml on its own, and the wiring of tensors across edges: every refusal names the
file, the key and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from faasd.functions.spec import TensorSpec
from faasd.workflows.spec import Edge, WorkflowSpecError, load_spec, parse_spec
from faasd.workflows.wiring import Feed, Signature, wire

CHAIN = {
    "slo_ms": 150,
    "functions": ["pre", "net", "post"],
    "edges": [{"from": "pre", "to": "net"}, {"from": "net", "to": "post", "map": {"prob": "x"}}],
}


def t(name: str, shape: tuple[int, ...] = (-1, 4), datatype: str = "FP32") -> TensorSpec:
    return TensorSpec(name, datatype, shape)


SIGS = {
    "pre": Signature((t("image", (-1, 8)),), (t("h"),)),
    "net": Signature((t("data"),), (t("prob"), t("logits"))),
    "post": Signature((t("x"),), (t("label", (-1, 1), "INT64"),)),
}


def refused(doc: object, *, key: str | None, words: list[str]) -> WorkflowSpecError:
    with pytest.raises(WorkflowSpecError) as caught:
        parse_spec(doc, "wf", file="wf/workflow.yaml")
    error = caught.value
    assert error.key == key, error.message
    assert error.file == "wf/workflow.yaml"
    for word in ["wf/workflow.yaml", *words]:
        assert word in error.message, error.message
    return error


def test_the_chain_of_the_contract_parses() -> None:
    spec = parse_spec(CHAIN, "chain")
    assert spec.slo_ms == 150.0 and spec.functions == ("pre", "net", "post")
    assert spec.edges == (Edge("pre", "net"), Edge("net", "post", (("prob", "x"),)))
    assert spec.source == "pre" and spec.sinks() == ("post",)
    workflow = spec.to_esg()
    assert workflow.slo_s == 0.15 and workflow.edges == (("pre", "net"), ("net", "post"))


def test_a_missing_slo_is_refused_with_an_example() -> None:
    refused({k: v for k, v in CHAIN.items() if k != "slo_ms"}, key="slo_ms",
            words=["no slo_ms", "slo_ms: 150"])


@pytest.mark.parametrize("slo", [0, -5, "fast", True, float("nan"), float("inf"), 10**400])
def test_an_slo_that_is_no_positive_number_is_refused(slo: object) -> None:
    refused({**CHAIN, "slo_ms": slo}, key="slo_ms", words=["positive number"])


def test_a_cycle_is_refused_with_its_path() -> None:
    doc = {**CHAIN, "edges": [*CHAIN["edges"], {"from": "post", "to": "net"}]}  # type: ignore[list-item]
    refused(doc, key="edges", words=["cycle", "net -> post -> net", "remove one"])


def test_an_edge_to_an_unknown_function_is_refused() -> None:
    doc = {**CHAIN, "edges": [{"from": "pre", "to": "nett"}]}
    refused(doc, key="edges[0].to", words=["'nett'", "not in functions", "add it there"])


def test_two_sources_are_refused() -> None:
    doc = {**CHAIN, "edges": [{"from": "pre", "to": "post"}]}
    refused(doc, key="edges", words=["['pre', 'net']", "exactly one function"])


def test_unknown_keys_and_malformed_edges_are_refused() -> None:
    refused({**CHAIN, "slo": 3}, key="slo", words=["unknown key"])
    refused({**CHAIN, "edges": [{"from": "pre"}]}, key="edges[0]", words=["'from' and 'to'"])
    refused({**CHAIN, "edges": [{"from": "pre", "to": "net", "map": ["x"]}]},
            key="edges[0].map", words=["map output names to input names"])
    refused({**CHAIN, "functions": ["pre", "pre"]}, key="functions", words=["twice"])
    refused("slo_ms: 3", key=None, words=["must be a mapping"])


def test_load_spec_names_the_directory_and_finds_subdirectories(tmp_path: Path) -> None:
    directory = tmp_path / "classify"
    (directory / "post").mkdir(parents=True)
    (directory / "workflow.yaml").write_text(yaml.safe_dump(CHAIN))
    spec = load_spec(directory)
    assert spec.name == "classify" and spec.local == {"post": directory / "post"}
    assert load_spec(directory, "other").name == "other"


def test_load_spec_reports_yaml_errors_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "workflow.yaml").write_text("slo_ms: [1,\n")
    with pytest.raises(WorkflowSpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkflowSpecError, match=r"has no workflow\.yaml"):
        load_spec(tmp_path / "empty")
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "workflow.yaml")  # never opened: it would block the deploy
    with pytest.raises(WorkflowSpecError, match=r"has no workflow\.yaml"):
        load_spec(tmp_path / "fifo")
    (tmp_path / "huge").mkdir()
    (tmp_path / "huge" / "workflow.yaml").write_text("#" * (300 * 1024))
    with pytest.raises(WorkflowSpecError, match="larger than 256 KiB"):
        load_spec(tmp_path / "huge")


# ---------------------------------------------------------------- wiring


def test_single_output_feeds_single_input_and_maps_rename() -> None:
    spec = parse_spec(
        {**CHAIN, "edges": [{"from": "pre", "to": "net"},
                            {"from": "net", "to": "post", "map": {"prob": "x"}}]}, "wf")
    wiring = wire(spec, SIGS)
    assert wiring["pre"] == ()
    assert wiring["net"] == (Feed("data", "pre", "h"),)
    assert wiring["post"] == (Feed("x", "net", "prob"),)


PRE_NET = {"from": "pre", "to": "net"}


def wire_refused(edges: list[dict[str, object]], sigs: dict[str, Signature] = SIGS,
                 *, words: list[str]) -> None:
    spec = parse_spec({**CHAIN, "edges": edges}, "wf")
    with pytest.raises(WorkflowSpecError) as caught:
        wire(spec, sigs, file="wf/workflow.yaml")
    for word in ["wf/workflow.yaml", *words]:
        assert word in caught.value.message, caught.value.message
    assert caught.value.key and caught.value.key.startswith("edges")


def test_a_map_naming_a_tensor_that_does_not_exist_is_refused() -> None:
    wire_refused([PRE_NET, {"from": "net", "to": "post", "map": {"pro": "x"}}],
                 words=["output 'pro'", "['logits', 'prob']"])
    wire_refused([PRE_NET, {"from": "net", "to": "post", "map": {"prob": "y"}}],
                 words=["input 'y'", "takes ['x']"])


def test_an_edge_with_several_outputs_and_no_common_name_needs_a_map() -> None:
    wire_refused([PRE_NET, {"from": "net", "to": "post"}],
                 words=["does not say which output", "add 'map:"])


def test_dtype_and_shape_mismatches_are_refused() -> None:
    sigs = {**SIGS, "net": Signature((t("data", (-1, 4), "INT32"),), SIGS["net"].outputs)}
    wire_refused([PRE_NET, {"from": "net", "to": "post", "map": {"prob": "x"}}],
                 sigs, words=["datatype FP32 does not fit INT32"])
    sigs = {**SIGS, "net": Signature((t("data", (-1, 3, 224, 224)),), SIGS["net"].outputs)}
    wire_refused([PRE_NET, {"from": "net", "to": "post", "map": {"prob": "x"}}],
                 sigs, words=["shape [N, 4] does not fit [N, 3, 224, 224]"])


def test_a_join_input_fed_twice_or_never_is_refused() -> None:
    sigs = {
        "a": Signature((t("x"),), (t("y"),)),
        "b": Signature((t("x"),), (t("y"),)),
        "j": Signature((t("left"), t("right")), (t("z"),)),
    }
    doc = {"slo_ms": 10, "functions": ["a", "b", "j"], "edges": [
        {"from": "a", "to": "b"}, {"from": "a", "to": "j", "map": {"y": "left"}},
        {"from": "b", "to": "j", "map": {"y": "left"}}]}
    with pytest.raises(WorkflowSpecError, match="'left' of j is fed twice"):
        wire(parse_spec(doc, "wf"), sigs)
    doc["edges"] = doc["edges"][:2]  # type: ignore[index]
    with pytest.raises(WorkflowSpecError, match=r"\['right'\] of j are fed by no edge"):
        wire(parse_spec(doc, "wf"), sigs)
