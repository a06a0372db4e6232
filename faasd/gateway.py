"""The entry point of a call: parse the body, validate it, create the invocation, await it.

A body reaches a function in one of three forms, decided here and nowhere else:

* `v2`: an Open Inference Protocol request (JSON, binary extension, or raw binary);
* `plain`: a JSON object of input name → nested lists (a missing batch dimension is added);
* `body`: anything else, for a function whose handler has `preprocess` (e.g. `image/png`).

Tensors are checked against the version's inputs before anything is queued, so a wrong
shape or dtype is a 400 that says what the model expects.

Who shapes the answer depends on the path, not on the body's form:

* `/v2/models/{name}/infer` (`v2_only`) is the tensor path: tensors in, the model's output
  tensors out; the handler's `preprocess` and `postprocess` are both skipped, as a Triton
  client expects;
* `/function/{name}` is the OpenFaaS path: the handler's `postprocess`, when there is one,
  shapes every answer, whatever form the body had (a raw body through `preprocess`, or V2 /
  plain tensors straight to the model), as an OpenFaaS user expects.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from faasd.clock import Clock
from faasd.errors import BadRequest, FaasdError, UnsupportedMediaType
from faasd.functions.spec import FunctionVersion, ModelInfo, TensorSpec
from faasd.metrics import Metrics
from faasd.sandbox.items import BodyItem, Item, ItemResult, TensorItem
from faasd.v2 import (
    InferRequest,
    decode_parsed,
    decode_plain,
    decode_raw,
    decode_request,
    parse_json,
)

log = logging.getLogger("faasd.gateway")

Form = Literal["v2", "plain", "body"]
JSON_TYPES = ("application/json", "text/json", "")


@dataclass(frozen=True)
class Payload:
    """A parsed request body: what the sandbox gets, and how the answer must be shaped."""

    item: Item
    form: Form
    request: InferRequest | None = None
    #: False on the V2 inference path: the caller wants the model's tensors, not the handler's.
    postprocess: bool = True


@dataclass(frozen=True)
class Invocation:
    """One call of one function version, owned by the gateway until it is answered."""

    id: str
    function: str
    version: FunctionVersion
    item: Item
    start_s: float
    deadline_s: float
    #: Whether the handler's `postprocess` shapes the answer (False: the model's tensors).
    postprocess: bool = True
    #: The application (workflow) this call is a stage of, and that application call's id;
    #: empty for a function called alone (it is its own application).
    app: str = ""
    request_id: str = ""

    @property
    def application(self) -> str:
        return self.app or self.function


@dataclass(frozen=True)
class CallResult:
    """What the sandbox answered for one invocation, and what it cost."""

    result: ItemResult
    cold_start: bool
    exec_s: float
    queue_s: float
    batch_size: int
    #: where it ran, as the X-Faasd-Device header says: "cpu", "cuda:MIG-…", "cpu (fake …)"
    device: str = "cpu"


def parse_payload(
    version: FunctionVersion,
    info: ModelInfo,
    body: bytes,
    content_type: str,
    header_length: int | None,
    v2_only: bool = False,
) -> Payload:
    """Decide the body's form and decode it; BadRequest/UnsupportedMediaType when it fits none.

    `v2_only` (the V2 inference path) accepts V2 requests only and answers with the model's
    tensors (`Payload.postprocess` False); see the module docstring.
    """
    post = not v2_only
    if header_length == 0:
        if len(version.inputs) != 1:
            raise BadRequest("a raw binary request needs a model with exactly one input")
        request = InferRequest(id=None, inputs={}, binary_output=True)
        arrays = {version.inputs[0].name: decode_raw(body, version.inputs[0])}
        return Payload(TensorItem(check_tensors(version, arrays)), "v2", request, post)
    if header_length is not None:
        request = decode_request(body, header_length)
        return Payload(TensorItem(check_tensors(version, request.inputs)), "v2", request, post)
    mime = content_type.split(";")[0].strip().lower()
    declared_json = mime in JSON_TYPES or mime.endswith("+json")
    if declared_json or body.lstrip()[:1] == b"{":
        try:
            obj = parse_json(body)
        except BadRequest:
            if declared_json or v2_only or not info.has_preprocess:
                raise
            return Payload(BodyItem(body, mime), "body")  # e.g. an image that starts with "{"
        if isinstance(obj, dict) and isinstance(obj.get("inputs"), list):
            request = decode_parsed(obj)
            item = TensorItem(check_tensors(version, request.inputs))
            return Payload(item, "v2", request, post)
        if v2_only:
            raise BadRequest('a V2 inference request needs an "inputs" list')
        if info.has_preprocess and not _names_inputs(obj, version.inputs):
            return Payload(BodyItem(body, mime or "application/json"), "body")
        arrays = decode_plain(obj, version.inputs)
        return Payload(TensorItem(check_tensors(version, arrays, add_batch=True)), "plain")
    if v2_only:
        raise BadRequest("a V2 inference request must be JSON (or use the binary extension)")
    if not info.has_preprocess:
        raise UnsupportedMediaType(
            f"function {version.name!r} has no handler to read {mime or 'this body'}; send JSON: "
            'a V2 inference request or {"<input name>": nested lists}'
        )
    return Payload(BodyItem(body, mime), "body")


def _names_inputs(obj: object, specs: tuple[TensorSpec, ...]) -> bool:
    return isinstance(obj, dict) and bool(obj) and set(obj) <= {s.name for s in specs}


def check_tensors(
    version: FunctionVersion, arrays: Mapping[str, np.ndarray], add_batch: bool = False
) -> dict[str, np.ndarray]:
    """`arrays` if they match the version's inputs (names, dtypes, shapes), else BadRequest.

    With `add_batch`, an input one dimension short of the model's gets a batch dimension of 1.
    """
    specs = version.inputs
    if len(arrays) != len(specs) or any(spec.name not in arrays for spec in specs):
        expected = {spec.name for spec in specs}
        unknown = sorted(set(arrays) - expected)
        if unknown:
            raise BadRequest(
                f"unknown input(s) {unknown}; {version.name!r} takes {sorted(expected)}"
            )
        missing = sorted(expected - set(arrays))
        raise BadRequest(f"missing input(s) {missing}; {version.name!r} takes {sorted(expected)}")
    checked: dict[str, np.ndarray] = {}
    for spec in specs:  # the model's order
        name = spec.name
        array = arrays[name]
        if array.dtype != spec.numpy_dtype:
            raise BadRequest(
                f"input {name!r} has datatype {_v2_name(array)}; the model expects "
                f"{spec.datatype} with shape {_shape_text(spec.shape)}"
            )
        if add_batch and array.ndim == len(spec.shape) - 1:
            array = array[np.newaxis, ...]
        if not _fits(array.shape, spec.shape):
            raise BadRequest(
                f"input {name!r} has shape {list(array.shape)}; the model expects "
                f"{_shape_text(spec.shape)} ({spec.datatype})"
            )
        checked[name] = array
    if version.batched and len(checked) > 1:
        leading = {a.shape[0] for a in checked.values() if a.ndim}
        if len(leading) > 1:
            raise BadRequest(f"inputs disagree on the batch dimension: {sorted(leading)}")
    return checked


def _fits(shape: tuple[int, ...], spec: tuple[int, ...]) -> bool:
    if len(shape) != len(spec):
        return False
    for size, wanted in zip(shape, spec, strict=True):
        if wanted >= 0 and size != wanted:
            return False
    return True


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d < 0 else str(d) for d in shape) + "]"


def _v2_name(array: np.ndarray) -> str:
    from faasd.v2 import datatype_of

    try:
        return datatype_of(array)
    except ValueError:
        return str(array.dtype)


class Submitter(Protocol):
    """What the gateway needs from the controller (kept narrow for tests)."""

    def submit(self, invocation: Invocation) -> asyncio.Future[CallResult]: ...
    def cancel(self, invocation_id: str) -> None: ...


class Gateway:
    """Creates invocations and waits for their results; the caller renders them."""

    def __init__(self, controller: Submitter, clock: Clock, metrics: Metrics) -> None:
        self._controller = controller
        self._clock = clock
        self._metrics = metrics
        self.calls: dict[str, int] = {}

    def new_invocation(
        self, version: FunctionVersion, item: Item, postprocess: bool = True
    ) -> Invocation:
        now = self._clock.now()
        slo_ms = version.settings.slo_ms
        deadline = now + slo_ms / 1000 if slo_ms else float("inf")
        call_id = os.urandom(16).hex()  # a random 128-bit id, as uuid4().hex, at a third the cost
        return Invocation(call_id, version.name, version, item, now, deadline, postprocess)

    def stage_invocation(
        self,
        version: FunctionVersion,
        item: Item,
        *,
        app: str,
        request_id: str,
        start_s: float,
        deadline_s: float,
        postprocess: bool,
    ) -> Invocation:
        """One stage of the workflow call `request_id`: it shares that call's start and deadline
        (the SLO is end to end) and is queued in the AFW queue of (`app`, its function)."""
        return Invocation(
            f"{request_id}.{version.name}", version.name, version, item, start_s, deadline_s,
            postprocess, app, request_id,
        )

    async def call(self, invocation: Invocation) -> CallResult:
        """The result of `invocation`; FaasdError subclasses for every expected failure."""
        name = invocation.function
        self.calls[name] = self.calls.get(name, 0) + 1
        try:
            future = self._controller.submit(invocation)
        except FaasdError as exc:
            self.rejected(name, exc.status, invocation.start_s)
            raise
        self._metrics.call_started(name)
        code = 500
        try:
            # Not shielded: cancelling this task cancels the future, which the controller
            # treats as "nobody waits for this answer any more" (it never sets a done future).
            result = await future
            code = 200
            self._metrics.queued(name, result.queue_s)
            return result
        except asyncio.CancelledError:
            # The HTTP client went away: a queued call is dropped, a running one finishes
            # and its answer is discarded.
            self._controller.cancel(invocation.id)
            code = 499
            raise
        except FaasdError as exc:
            code = exc.status
            log.info("call %s to %s failed: %s", invocation.id, name, exc.message)
            raise
        finally:
            self._metrics.call_finished(name, code, self._clock.now() - invocation.start_s)

    def rejected(self, function: str, code: int, start_s: float) -> None:
        """Count a call turned away before it was queued (bad input, overload)."""
        self._metrics.call_rejected(function, code, self._clock.now() - start_s)

