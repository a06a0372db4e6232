"""A workflow's record: its spec travels in it and comes back the same, digest and all; a
record that was tampered with is refused; the records say which workflows use a function
(no engines needed)."""

from __future__ import annotations

import pytest

from faasd.cluster.deployments import Deployment
from faasd.cluster.replicated_workflows import WorkflowKind, content_of, spec_digest, users_in
from faasd.errors import DeployError
from faasd.workflows.spec import WorkflowSpecError, parse_spec

DOC = {
    "slo_ms": 150,
    "functions": ["pre", "net", "post"],
    "edges": [{"from": "pre", "to": "net"}, {"from": "net", "to": "post", "map": {"prob": "x"}}],
    "description": "three stages",
}


def record_of(doc: dict[str, object], name: str = "flow") -> Deployment:
    spec = parse_spec(doc, name)
    return Deployment(name, spec_digest(spec), "node-a", "127.0.0.2:8080", content_of(spec))


def test_a_spec_comes_back_from_its_record_as_it_was_deployed() -> None:
    record = record_of(DOC)
    travelled = Deployment.from_json(record.to_json())
    assert travelled == record
    assert travelled is not None
    spec = WorkflowKind._spec(travelled)
    assert spec == parse_spec(DOC, "flow")
    assert spec_digest(spec) == record.digest and len(record.digest) == 64


def test_the_digest_changes_with_the_dag_the_slo_and_the_name() -> None:
    digests = {
        spec_digest(parse_spec(DOC, "flow")),
        spec_digest(parse_spec({**DOC, "slo_ms": 151}, "flow")),
        spec_digest(parse_spec({**DOC, "edges": [{"from": "pre", "to": "net"},
                                                  {"from": "pre", "to": "post"}]}, "flow")),
        spec_digest(parse_spec(DOC, "flow2")),
    }
    assert len(digests) == 4


def test_a_tampered_or_unreadable_record_is_refused_with_its_origin() -> None:
    record = record_of(DOC)
    tampered = Deployment(record.name, record.digest, record.origin, record.http,
                          {**DOC, "slo_ms": 9999})
    with pytest.raises(DeployError, match=r"workflow flow \(from node-a\): its spec has "
                                          r"digest [0-9a-f]{12}, the record says"):
        WorkflowKind._spec(tampered)
    unknown = Deployment("flow", record.digest, "node-a", "a:1", {**DOC, "retries": 3})
    with pytest.raises(WorkflowSpecError, match=r"unknown key\(s\) \['retries'\]"):
        WorkflowKind._spec(unknown)
    assert Deployment.from_json('{"name": "flow", "digest": "d", "origin": "a", "http": "a:1",'
                                ' "content": [1, 2]}') is None


def test_the_records_name_the_workflows_that_use_a_function() -> None:
    records = {
        "flow": record_of(DOC),
        "other": record_of({**DOC, "functions": ["pre", "alt", "post"],
                            "edges": [{"from": "pre", "to": "alt"},
                                      {"from": "alt", "to": "post"}]}, "other"),
        "gone": Deployment("gone", "", "node-a", "a:1"),  # a removal
    }
    assert users_in(records, "pre") == ["flow", "other"]
    assert users_in(records, "net") == ["flow"]
    assert users_in(records, "nobody") == []
