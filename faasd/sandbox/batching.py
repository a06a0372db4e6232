"""One batch inside a worker: preprocess per item, one stacked run, split, postprocess per item.

Runs in the worker process, but takes the model and handler as arguments so it can be tested
in-process. Items are stacked along axis 0 into one `run` and split back by each item's leading
dimension. When stacking is impossible (different shapes, a model with a fixed batch dimension)
or the stacked run fails, each item runs alone, so one bad input fails only its own call, with
onnxruntime's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from faasd.functions.spec import TensorSpec
from faasd.runtime.onnx import RunError
from faasd.sandbox.items import (
    BodyItem,
    BodyResult,
    Item,
    ItemFailure,
    ItemResult,
    TensorItem,
    TensorResult,
)
from faasd.v2 import name_non_finite

logger = logging.getLogger("faasd.sandbox")

Tensors = dict[str, np.ndarray]


class Model(Protocol):
    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def batched(self) -> bool: ...

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Handler:
    """The optional hooks of a function's handler.py."""

    preprocess: Callable[[bytes, str], Mapping[str, Any]] | None = None
    postprocess: Callable[[dict[str, np.ndarray]], Any] | None = None


def handler_failure(exc: Exception, hook: str) -> ItemFailure:
    """ValueError means the caller's input was bad (400); anything else is a handler bug (502)."""
    if isinstance(exc, ValueError):
        return ItemFailure(400, str(exc) or f"{hook} rejected the input")
    logger.warning("%s raised", hook, exc_info=exc)
    return ItemFailure(502, f"handler raised {type(exc).__name__}: {exc}")


def conform(model: Model, produced: Mapping[str, Any]) -> Tensors:
    """preprocess's output as the model takes it: each input's dtype, batch axis if missing."""
    feeds: Tensors = {}
    for spec in model.inputs:
        if spec.name not in produced:
            raise TypeError(f"preprocess returned no {spec.name!r} (returned {sorted(produced)})")
        array = np.asarray(produced[spec.name])
        if spec.datatype != "BYTES":
            array = array.astype(spec.numpy_dtype, copy=False)
        if array.ndim == len(spec.shape) - 1:
            array = array[np.newaxis, ...]
        feeds[spec.name] = array
    return feeds


def _run_alone(model: Model, feeds: Tensors) -> Tensors | ItemFailure:
    try:
        return model.run(feeds)
    except RunError as exc:
        return ItemFailure(400, str(exc))


def _stack(model: Model, batch: Sequence[Tensors]) -> tuple[Tensors, list[int]] | None:
    """The items stacked along axis 0 and each item's row count, or None if they don't stack."""
    names = sorted(batch[0])
    rows: list[int] = []
    for feeds in batch:
        if sorted(feeds) != names:
            return None
        leading = {a.shape[0] if a.ndim else -1 for a in feeds.values()}
        if len(leading) != 1 or -1 in leading:
            return None
        rows.append(leading.pop())
    try:
        stacked = {name: np.concatenate([feeds[name] for feeds in batch]) for name in names}
    except ValueError:  # trailing dimensions or dtypes differ between items
        return None
    return stacked, rows


def run_batch(model: Model, batch: Sequence[Tensors]) -> list[Tensors | ItemFailure]:
    """Outputs for each item's feeds, with one session run when the items can be stacked."""
    if len(batch) == 1:
        return [_run_alone(model, batch[0])]
    stacked = _stack(model, batch) if model.batched else None
    if stacked is not None:
        feeds, rows = stacked
        total = sum(rows)
        try:
            outputs = model.run(feeds)
        except RunError:
            outputs = None  # find out which item is bad by running each alone
        if outputs is not None and all(o.ndim and o.shape[0] == total for o in outputs.values()):
            split: list[Tensors | ItemFailure] = []
            start = 0
            for count in rows:  # plain slices: views, and far cheaper than np.split
                split.append({name: out[start : start + count] for name, out in outputs.items()})
                start += count
            return split
    return [_run_alone(model, feeds) for feeds in batch]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def serialise(value: Any) -> BodyResult | ItemFailure:
    """postprocess's return value as a response body: dict/list JSON, str text, bytes as is."""
    if isinstance(value, dict | list):
        try:
            try:
                body = json.dumps(value, default=_json_default, allow_nan=False).encode()
            except ValueError:  # a NaN or infinity: valid JSON names them (faasd.v2)
                body = json.dumps(name_non_finite(value), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            return ItemFailure(502, f"postprocess returned a value JSON cannot encode: {exc}")
        return BodyResult(body, "application/json")
    if isinstance(value, str):
        return BodyResult(value.encode(), "text/plain; charset=utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return BodyResult(bytes(value), "application/octet-stream")
    return ItemFailure(
        502, f"postprocess returned {type(value).__name__}; return a dict, list, str or bytes"
    )


def _prepare(model: Model, handler: Handler, item: Item) -> Tensors | ItemFailure:
    if isinstance(item, TensorItem):
        return item.tensors
    assert isinstance(item, BodyItem)
    if handler.preprocess is None:
        return ItemFailure(
            400, "this function's handler.py has no preprocess(); send tensors (V2 JSON) instead"
        )
    try:
        return conform(model, handler.preprocess(item.body, item.content_type))
    except MemoryError:
        raise
    except Exception as exc:
        return handler_failure(exc, "preprocess")


def _finish(handler: Handler, outputs: Tensors) -> ItemResult:
    if handler.postprocess is None:
        return TensorResult(outputs)
    try:
        return serialise(handler.postprocess(outputs))
    except MemoryError:
        raise
    except Exception as exc:
        return handler_failure(exc, "postprocess")


def execute(
    model: Model, handler: Handler, items: Sequence[Item], postprocess: bool = True
) -> list[ItemResult]:
    """Results of `items`, in order; a failure of one item never fails the others.

    With `postprocess` False the model's output tensors are returned as they are, even when the
    handler has a `postprocess` (the Open Inference Protocol path: tensors in, tensors out).
    """
    finisher = handler if postprocess else Handler(preprocess=handler.preprocess)
    prepared = [_prepare(model, handler, item) for item in items]
    runnable = [i for i, p in enumerate(prepared) if not isinstance(p, ItemFailure)]
    results: list[ItemResult | None] = [p if isinstance(p, ItemFailure) else None for p in prepared]
    if runnable:
        batch = [prepared[i] for i in runnable]
        outputs = run_batch(model, [p for p in batch if not isinstance(p, ItemFailure)])
        for index, output in zip(runnable, outputs, strict=True):
            results[index] = (
                output if isinstance(output, ItemFailure) else _finish(finisher, output)
            )
    return [r for r in results if r is not None]
