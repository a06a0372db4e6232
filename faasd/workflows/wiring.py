"""Which output of which predecessor feeds each input of each function of a workflow.

Rules for one edge `pred -> succ`:

* with `map: {out: in}`: output `out` of `pred` feeds input `in` of `succ`, exactly as written;
* without a map: when `pred` has a single output and `succ` a single input, that output feeds
  that input ("one output feeds the single input"); otherwise the outputs of `pred` feed the
  inputs of `succ` that have the same names (at least one must).

Then every input of every function but the source must be fed by exactly one edge, and what
feeds it must fit: the same datatype, and shapes that agree wherever both fix a size (-1 is
any size, as in a model's signature). The source takes the call's body and has no edge in.

Pure: the signatures come in as `Signature`s; `faasd.workflows.service` gets them from the
deployed functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from faasd.functions.spec import TensorSpec
from faasd.workflows.spec import FILE, Edge, WorkflowSpec, WorkflowSpecError


@dataclass(frozen=True)
class Signature:
    """A deployed function's tensors, as its model declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Feed:
    """Input `input` of a function is output `output` of `source`."""

    input: str
    source: str
    output: str


Wiring = Mapping[str, tuple[Feed, ...]]


def wire(spec: WorkflowSpec, signatures: Mapping[str, Signature], file: str = FILE) -> Wiring:
    """The feeds of every function of `spec` (the source has none); WorkflowSpecError if the
    tensors do not fit. `signatures` must hold every function of `spec`."""
    feeds: dict[str, list[Feed]] = {f: [] for f in spec.functions}
    for index, edge in enumerate(spec.edges):
        key = f"edges[{index}]"
        feeds[edge.target].extend(
            _edge_feeds(edge, signatures[edge.source], signatures[edge.target], key, file)
        )
    for function in spec.functions:
        if function == spec.source:
            continue
        _check_inputs(function, feeds[function], signatures, spec, file)
    return {f: tuple(v) for f, v in feeds.items()}


def _edge_feeds(edge: Edge, pred: Signature, succ: Signature, key: str, file: str) -> list[Feed]:
    outputs = {t.name: t for t in pred.outputs}
    inputs = {t.name: t for t in succ.inputs}
    if edge.map:
        pairs = list(edge.map)
        for out, into in pairs:
            if out not in outputs:
                raise WorkflowSpecError(
                    f"{file}: {key}.map names output {out!r}, but {edge.source} outputs "
                    f"{sorted(outputs)}; use one of those", file=file, key=f"{key}.map")
            if into not in inputs:
                raise WorkflowSpecError(
                    f"{file}: {key}.map names input {into!r}, but {edge.target} takes "
                    f"{sorted(inputs)}; use one of those", file=file, key=f"{key}.map")
    elif len(outputs) == 1 and len(inputs) == 1:
        pairs = [(next(iter(outputs)), next(iter(inputs)))]
    else:
        pairs = [(name, name) for name in outputs if name in inputs]
        if not pairs:
            raise WorkflowSpecError(
                f"{file}: {key} ({edge.source} -> {edge.target}) does not say which output feeds "
                f"which input: {edge.source} outputs {sorted(outputs)} and {edge.target} takes "
                f"{sorted(inputs)}; add 'map: {{<output>: <input>}}'", file=file, key=key)
    for out, into in pairs:
        _check_fit(outputs[out], inputs[into], edge, key, file)
    return [Feed(into, edge.source, out) for out, into in pairs]


def _check_fit(out: TensorSpec, into: TensorSpec, edge: Edge, key: str, file: str) -> None:
    where = f"output {out.name!r} of {edge.source} -> input {into.name!r} of {edge.target}"
    if out.datatype != into.datatype:
        raise WorkflowSpecError(
            f"{file}: {key}: {where}: datatype {out.datatype} does not fit {into.datatype}; "
            "feed that input from an output of its datatype (or add a function that converts)",
            file=file, key=key)
    fits = len(out.shape) == len(into.shape) and all(
        a < 0 or b < 0 or a == b for a, b in zip(out.shape, into.shape, strict=True)
    )
    if not fits:
        raise WorkflowSpecError(
            f"{file}: {key}: {where}: shape {_shape(out.shape)} does not fit "
            f"{_shape(into.shape)}; feed that input from an output of its shape",
            file=file, key=key)


def _check_inputs(
    function: str,
    feeds: list[Feed],
    signatures: Mapping[str, Signature],
    spec: WorkflowSpec,
    file: str,
) -> None:
    seen: dict[str, Feed] = {}
    for feed in feeds:
        if feed.input in seen:
            first = seen[feed.input]
            raise WorkflowSpecError(
                f"{file}: input {feed.input!r} of {function} is fed twice (by {first.source}."
                f"{first.output} and {feed.source}.{feed.output}); map one of them to another "
                "input", file=file, key="edges")
        seen[feed.input] = feed
    missing = [t.name for t in signatures[function].inputs if t.name not in seen]
    if missing:
        preds = spec.predecessors(function)
        raise WorkflowSpecError(
            f"{file}: input(s) {missing} of {function} are fed by no edge (its predecessors: "
            f"{list(preds)}); add an edge or a map that feeds them", file=file, key="edges")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"
