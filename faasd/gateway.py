"""The entry point of a call: parse the body, validate it, create the invocation, await it.

A body reaches a function in one of three forms, decided here and nowhere else:

* `v2`: an Open Inference Protocol request (JSON, binary extension, or raw binary);
* `plain`: a JSON object of input name → nested lists (a missing batch dimension is added);
* `body`: anything else, for a function whose handler has `preprocess` (e.g. `image/png`).

Tensors are checked against the version's inputs before anything is queued, so a wrong
shape or dtype is a 400 that says what the model expects. Every size a request declares is
checked before it is decoded (`check_declared`, the codec's checks against the body's length,
`check_image`), so the work a request causes is bounded by its length and the function's
limits. A call may hold at most `max_batch_size` rows (a batched model; Triton's rule): more
is a 400 that names the limit, not a batch split behind the caller's back.

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
import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol

import numpy as np

from esg.model import Config
from esg.pricing import Pricing
from faasd.clock import Clock
from faasd.errors import BadRequest, FaasdError, UnsupportedMediaType
from faasd.functions.spec import FunctionVersion, ModelInfo, TensorSpec
from faasd.imagesize import image_size
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
class Held:
    """Output `output` of call `call_id` of a workflow stage, kept on cluster node `node`
    until its successors have read it (`faasd.cluster.outputs`)."""

    node: str
    call_id: str
    output: str


#: No inputs held elsewhere (every call outside a cluster's workflow): one shared, read-only
#: mapping, not a new dict per call.
NOTHING_HELD: Mapping[str, Held] = MappingProxyType({})


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
    #: When it joined its queue: `start_s` for a call alone, later for a workflow's later
    #: stages (which share the workflow call's start and deadline). Queue times count from here.
    submitted_s: float | None = None
    #: The cluster node the call entered at, when that is not this node: the leader queues
    #: such a call by its metadata alone (`item` is `NO_ITEM`), its payload stays there.
    entry: str = ""
    #: In a cluster, a workflow stage's inputs still on the nodes that produced them (by input
    #: name; `item` holds the others), and how many successor stages will read this stage's
    #: outputs (0: answer with them; more: the node that runs it keeps them for those reads).
    held: Mapping[str, Held] = field(default_factory=lambda: NOTHING_HELD)
    keep_for: int = 0
    #: The node holding its held inputs (a join's first), where the scheduler prefers to run it
    input_node: str = ""
    #: Called, synchronously, when the call is handed to a sandbox (or, at a cluster entry
    #: that does not lead, to the leader that places it), before the sandbox gets it: an async
    #: call to a function that must not run twice records it there (`faasd.durable.runner`).
    #: It runs inside the scheduler's dispatch, so it must not raise.
    on_dispatch: Callable[[], None] | None = field(default=None, compare=False)

    def queued_for_s(self, dispatched_s: float) -> float:
        """How long it waited in its queue if it was dispatched at `dispatched_s`."""
        since = self.start_s if self.submitted_s is None else self.submitted_s
        return max(0.0, dispatched_s - since)

    @property
    def application(self) -> str:
        return self.app or self.function


#: The item of a call queued at the leader by its metadata: its payload is at its entry node.
NO_ITEM: Item = BodyItem(b"", "")


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
    #: the configuration the batch ran at (None where no batch ran, e.g. a merged answer)
    config: Config | None = None
    #: the cluster node that ran it, where that is not the node the call entered at
    node: str = ""
    #: the cluster node keeping this call's outputs for the next stages (`result` then has
    #: no tensors: see `Invocation.keep_for`)
    held_at: str = ""

    def cost(self, pricing: Pricing) -> float:
        """This call's share of its batch's resource-time cost (dollars)."""
        if self.config is None:
            return 0.0
        rate = pricing.cpu_per_s * self.config.vcpu + pricing.gpu_per_s * self.config.vgpu
        return rate * self.exec_s / max(1, self.batch_size)


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
    _check_json_length(version, info, len(body), header_length, v2_only)
    if header_length == 0:
        if len(version.inputs) != 1:
            raise BadRequest("a raw binary request needs a model with exactly one input")
        request = InferRequest(id=None, inputs={}, binary_output=True)
        arrays = {version.inputs[0].name: decode_raw(body, version.inputs[0])}
        return Payload(TensorItem(check_tensors(version, arrays)), "v2", request, post)
    if header_length is not None:
        request = decode_request(body, header_length, functools.partial(check_declared, version))
        return Payload(TensorItem(check_tensors(version, request.inputs)), "v2", request, post)
    mime = _media_type(content_type)
    declared_json = mime in JSON_TYPES or mime.endswith("+json")
    if declared_json or body.lstrip()[:1] == b"{":
        try:
            obj = parse_json(body)
        except BadRequest:
            if declared_json or v2_only or not info.has_preprocess:
                raise
            return Payload(BodyItem(body, mime), "body")  # e.g. an image that starts with "{"
        if isinstance(obj, dict) and isinstance(obj.get("inputs"), list):
            request = decode_parsed(obj, len(body), functools.partial(check_declared, version))
            item = TensorItem(check_tensors(version, request.inputs))
            return Payload(item, "v2", request, post)
        if v2_only:
            raise BadRequest('a V2 inference request needs an "inputs" list')
        if info.has_preprocess and not _names_inputs(obj, version.inputs):
            return Payload(BodyItem(body, mime or "application/json"), "body")
        arrays = decode_plain(obj, version.inputs, max_rows(version))
        return Payload(TensorItem(check_tensors(version, arrays, add_batch=True)), "plain")
    if v2_only:
        raise BadRequest("a V2 inference request must be JSON (or use the binary extension)")
    if not info.has_preprocess:
        raise UnsupportedMediaType(
            f"function {version.name!r} has no handler to read {mime or 'this body'}; send JSON: "
            'a V2 inference request or {"<input name>": nested lists}'
        )
    check_image(version, body)
    return Payload(BodyItem(body, mime), "body")


#: Bytes one tensor value may take as JSON: "-1.2345678901234567e-308, " and some spacing.
JSON_BYTES_PER_VALUE = 32
#: Room for everything in a JSON request besides the values (names, shapes, parameters).
JSON_OVERHEAD_BYTES = 64 * 1024


def max_json_bytes(version: FunctionVersion) -> int | None:
    """The most JSON a tensor request to `version` can need: its values (max_rows rows of
    each input, at most JSON_BYTES_PER_VALUE each) plus JSON_OVERHEAD_BYTES. None when the
    inputs do not bound it (a dynamic dimension past the first, BYTES elements of any length).
    Checked before the JSON is parsed, so that parsing is bounded by the function's limits.
    """
    values = 0
    for spec in version.inputs:
        dims = spec.shape[1:] if version.batched else spec.shape
        if spec.datatype == "BYTES" or any(d < 0 for d in dims):
            return None
        values += (max_rows(version) or 1) * math.prod(dims)
    return values * JSON_BYTES_PER_VALUE + JSON_OVERHEAD_BYTES


def _check_json_length(version: FunctionVersion, info: ModelInfo, body_length: int,
                       header_length: int | None, v2_only: bool) -> None:
    """BadRequest before parsing if a tensor request's JSON is longer than `version` can
    need (`max_json_bytes`); a body a handler's preprocess may take is not bounded here."""
    if header_length == 0 or (info.has_preprocess and not v2_only):
        return
    json_length = body_length if header_length is None else header_length
    limit = max_json_bytes(version)
    if limit is not None and json_length > limit:
        raise BadRequest(
            f"the request's JSON is {json_length} bytes, more than the {limit} that "
            f"{version.name!r} can need ({_capacity_text(version)}); send fewer rows, or "
            "the tensors in binary (the binary tensor extension)"
        )


def _capacity_text(version: FunctionVersion) -> str:
    rows = max_rows(version)
    per = ", ".join(f"{s.name} {_shape_text(s.shape)}" for s in version.inputs)
    return f"at most {rows} rows of {per} per call" if rows else f"inputs {per}"


def max_rows(version: FunctionVersion) -> int | None:
    """The most rows one call may hold: `max_batch_size` for a batched model, else None
    (a fixed first dimension says it all)."""
    return max(1, version.settings.max_batch_size) if version.batched else None


def _too_many_rows(version: FunctionVersion, name: str, rows: int) -> BadRequest:
    limit = max_rows(version)
    return BadRequest(
        f"input {name!r} holds {rows} rows; {version.name!r} takes at most {limit} per call "
        f"(max_batch_size {limit}); split the call, or raise batching.max_batch_size"
    )


def check_declared(version: FunctionVersion, name: str, shape: tuple[int, ...],
                   datatype: str) -> None:
    """BadRequest unless `version` can take an input `name` of `shape` and `datatype`, as a
    V2 request declares it: checked before its data is decoded."""
    spec = next((s for s in version.inputs if s.name == name), None)
    if spec is None:
        raise BadRequest(f"unknown input {name!r}; {version.name!r} takes "
                         f"{sorted(s.name for s in version.inputs)}")
    if datatype != spec.datatype:
        raise BadRequest(f"input {name!r} has datatype {datatype}; the model expects "
                         f"{spec.datatype} with shape {_shape_text(spec.shape)}")
    if not _fits(shape, spec.shape):
        raise BadRequest(f"input {name!r} has shape {list(shape)}; the model expects "
                         f"{_shape_text(spec.shape)} ({spec.datatype})")
    limit = max_rows(version)
    if limit is not None and shape and shape[0] > limit:
        raise _too_many_rows(version, name, shape[0])


def check_image(version: FunctionVersion, body: bytes) -> None:
    """BadRequest if `body` is an image whose header declares more pixels than the
    function's `max_image_pixels` (read from the header; nothing is decoded)."""
    size = image_size(body)
    limit = version.settings.max_image_pixels
    if size is not None and size[0] * size[1] > limit:
        width, height = size
        raise BadRequest(
            f"the image is {width} x {height} = {width * height} pixels; {version.name!r} "
            f"takes at most {limit} (max_image_pixels); send a smaller image"
        )


def _media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case; BadRequest unless it is ASCII
    (it reaches the handler, and the sandbox protocol carries it as text)."""
    if not content_type.isascii():
        raise BadRequest(
            f"Content-Type {content_type!r} is not ASCII; send a media type such as "
            "application/json or image/png"
        )
    return content_type.split(";")[0].strip().lower()


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
        limit = max_rows(version)
        if limit is not None and array.ndim and array.shape[0] > limit:
            raise _too_many_rows(version, name, array.shape[0])
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
        self, version: FunctionVersion, item: Item, postprocess: bool = True,
        on_dispatch: Callable[[], None] | None = None,
    ) -> Invocation:
        now = self._clock.now()
        slo_ms = version.settings.slo_ms
        deadline = now + slo_ms / 1000 if slo_ms else float("inf")
        call_id = os.urandom(16).hex()  # a random 128-bit id, as uuid4().hex, at a third the cost
        return Invocation(call_id, version.name, version, item, now, deadline, postprocess,
                          on_dispatch=on_dispatch)

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
        held: Mapping[str, Held] | None = None,
        keep_for: int = 0,
        on_dispatch: Callable[[], None] | None = None,
    ) -> Invocation:
        """One stage of the workflow call `request_id`: it shares that call's start and deadline
        (the SLO is end to end) and is queued in the AFW queue of (`app`, its function).
        `held` and `keep_for`: see `Invocation`."""
        return Invocation(
            f"{request_id}.{version.name}", version.name, version, item, start_s, deadline_s,
            postprocess, app, request_id, self._clock.now(), held=held or NOTHING_HELD,
            keep_for=keep_for, input_node=next((h.node for h in (held or {}).values()), ""),
            on_dispatch=on_dispatch,
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

