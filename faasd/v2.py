"""Open Inference Protocol (KServe V2) tensors: JSON and the binary tensor extension.

Pure functions from bytes to numpy arrays and back; no per-element Python loops except for
BYTES tensors, whose elements are variable-length by nature. Shapes and rules follow the V2
REST spec and Triton's `binary_tensor_data` extension:

* a request is a JSON header, optionally followed by raw tensors in the order listed; the
  header's length is `Inference-Header-Content-Length` (absent = the whole body is JSON);
* an input with `parameters.binary_data_size` takes that many bytes (little-endian,
  row-major, BOOL = 1 byte, BYTES = 4-byte little-endian length + bytes per element);
* outputs are returned binary when the request asks (`binary_data_output`, or per output
  `parameters.binary_data`), else as JSON `data`.

Also the plain form `/function/{name}` accepts: `{"<input name>": nested lists, ...}`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from faasd.errors import BadRequest
from faasd.functions.spec import NUMPY_TO_V2, V2_TO_NUMPY, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"
#: Checks one input's declared (name, shape, datatype) before its data is touched; raises
#: BadRequest when the function cannot take it (see gateway.check_declared).
DeclaredCheck = Callable[[str, tuple[int, ...], str], None]
#: numpy dtype -> V2 datatype, keyed by dtype objects (`dtype.name` is slow Python code).
_DTYPE_TO_V2: Mapping[np.dtype[Any], str] = {np.dtype(k): v for k, v in NUMPY_TO_V2.items()}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: follow the request-level default


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 inference request. `outputs` None means every output."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[RequestedOutput, ...] | None = None
    binary_output: bool = False


# ---------------------------------------------------------------- requests


def parse_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # also raised for bytes that are not UTF-8
        if not bytes(body).strip():
            raise BadRequest(
                "the request body is empty; send a V2 inference request, "
                '{"<input name>": nested lists}, or what the function\'s handler takes'
            ) from None
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                "request body is not valid JSON: it is binary data, not UTF-8 text; send a "
                "picture or other bytes with its own Content-Type (e.g. image/png), and "
                "tensors as JSON or with the binary tensor extension"
            ) from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def is_v2_request(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("inputs"), list)


def decode_request(
    body: bytes, header_length: int | None = None, check: DeclaredCheck | None = None
) -> InferRequest:
    """Decode a V2 request: all-JSON when `header_length` is None, else JSON + binary tail.

    The binary tensors are views of `body` (a tensor of 600 KB is not copied on its way).
    Every size an input declares is checked against the body, and by `check` against the
    function, before anything is allocated for it: the work is bounded by the body's length.
    """
    if header_length is None:
        header, tail = memoryview(body), memoryview(b"")
    else:
        if not 0 < header_length <= len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} is {header_length} but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        header, tail = view[:header_length], view[header_length:]
    obj = parse_json(header)
    if not is_v2_request(obj):
        raise BadRequest('a V2 inference request needs an "inputs" list')
    return _decode_header(obj, tail, len(header), check)


def decode_parsed(
    obj: dict[str, Any], json_length: int, check: DeclaredCheck | None = None
) -> InferRequest:
    """A V2 request already parsed from `json_length` bytes of JSON (no binary tail)."""
    return _decode_header(obj, b"", json_length, check)


def _decode_header(
    obj: dict[str, Any], tail: bytes | memoryview, json_length: int, check: DeclaredCheck | None
) -> InferRequest:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for entry in obj["inputs"]:
        if not isinstance(entry, dict):
            raise BadRequest("each entry of inputs must be an object with name, shape, datatype")
        name, shape, datatype = _tensor_header(entry)
        if check is not None:
            check(name, shape, datatype)
        if "data" in entry and math.prod(shape) > json_length:  # a value takes >= 1 byte
            raise BadRequest(f"input {name!r}: shape {list(shape)} declares "
                             f"{math.prod(shape)} values, more than the {json_length} bytes "
                             "of JSON could hold")
        size = _parameters(entry, f"input {name!r}").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(
                    f"input {name!r}: binary_data_size must be a whole number of bytes >= 0, "
                    f"got {size!r}"
                )
            if offset + size > len(tail):
                raise BadRequest(f"input {name!r}: binary_data_size {size} exceeds the body")
            inputs[name] = _from_bytes(name, tail[offset : offset + size], shape, datatype)
            offset += size
        elif "data" in entry:
            inputs[name] = from_json_data(name, entry["data"], shape, datatype)
        else:
            raise BadRequest(f"input {name!r} has neither data nor parameters.binary_data_size")
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes of binary data follow no input")
    request_id = obj.get("id")
    params = _parameters(obj, "the request")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=_requested_outputs(obj.get("outputs")),
        binary_output=_flag(params, "binary_data_output", "the request") or False,
    )


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """`obj["parameters"]`: absent or null is no parameters; anything but an object is a 400."""
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(
            f"{where}: parameters must be a JSON object, got {type(params).__name__}"
        )
    return params


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise BadRequest(f"{where}: parameters.{key} must be true or false, got {value!r}")


def _requested_outputs(raw: Any) -> tuple[RequestedOutput, ...] | None:
    """The request's `outputs`: absent or null means every output; else a list of objects,
    each with a string name (a malformed entry is a 400, never silently skipped)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest(
            'outputs must be a list of {"name": ...} objects, got ' + type(raw).__name__
        )
    wanted = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest('each entry of outputs must be an object with a string "name"')
        where = f"output {entry['name']!r}"
        wanted.append(
            RequestedOutput(entry["name"], _flag(_parameters(entry, where), "binary_data", where))
        )
    return tuple(wanted)


def _tensor_header(entry: Mapping[str, Any]) -> tuple[str, tuple[int, ...], str]:
    name = entry.get("name")
    if not isinstance(name, str):
        raise BadRequest("every input needs a string name")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        known = ", ".join(V2_TO_NUMPY)
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}; use one of {known}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    return name, tuple(shape), datatype


def from_json_data(name: str, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) as an array of `shape` and `datatype`."""
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            array = np.array([_to_bytes(v) for v in flat], dtype=object)
        else:
            array = as_array(name, data, V2_TO_NUMPY[datatype], datatype)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {name!r}: data is not {datatype}: {exc}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {expected} values, got {array.size}"
        )
    return array.reshape(shape)


def as_array(name: str, data: Any, dtype: Any, datatype: str) -> np.ndarray:
    """JSON values as an array of `dtype`, or BadRequest: a value out of the datatype's range
    (INT32 4294967296, UINT8 -1, FP32 1e40) is refused, never wrapped or made infinite, and so
    is a number with a fraction for an integer datatype (INT32 1.5), never truncated (Triton
    refuses it too)."""
    try:
        with np.errstate(over="raise", invalid="raise"):
            if np.dtype(dtype).kind in "iu":
                _whole(name, data, datatype)
            return np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
        raise BadRequest(f"input {name!r}: data is not {datatype}: {exc}") from None


def _whole(name: str, data: Any, datatype: str) -> None:
    """BadRequest if `data` (JSON numbers, nested) holds one with a fraction. Integer inputs
    are rare and small (token ids, indices), so looking at them twice costs little."""
    probe = np.asarray(data)
    if probe.dtype.kind != "f":
        return  # whole numbers (or not numbers at all: the conversion says so)
    fractional = probe[np.mod(probe, 1) != 0]
    if fractional.size:
        raise BadRequest(f"input {name!r}: {datatype} takes whole numbers, got "
                         f"{float(fractional.flat[0])!r}; send integers")


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise ValueError(f"BYTES elements must be strings, got {type(value).__name__}")


def _from_bytes(
    name: str, raw: bytes | memoryview, shape: tuple[int, ...], datatype: str
) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_elements(name, raw, count).reshape(shape)
    dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes, got {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    if count * 4 > len(raw):  # before allocating: each element has a 4-byte length
        raise BadRequest(
            f"input {name!r}: {count} BYTES elements need at least {count * 4} bytes "
            f"(a 4-byte length each), but binary_data_size is {len(raw)}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: BYTES data ends early at element {i}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out[i] = bytes(raw[offset : offset + length])
        offset += length
    if offset != len(raw):
        raise BadRequest(f"input {name!r}: BYTES data has {len(raw) - offset} extra bytes")
    return out


def decode_raw(body: bytes, spec: TensorSpec) -> np.ndarray:
    """Triton's raw binary request: the body is the single input's bytes, batch 1."""
    dims = [1 if d < 0 else d for d in spec.shape]
    if spec.datatype != "BYTES":
        itemsize = np.dtype(spec.numpy_dtype).itemsize
        fixed = math.prod(dims)
        dynamic = [i for i, d in enumerate(spec.shape) if d < 0][1:]
        if dynamic and fixed and len(body) % (fixed * itemsize) == 0:
            dims[dynamic[0]] = len(body) // (fixed * itemsize)
    return _from_bytes(spec.name, body, tuple(dims), spec.datatype)


def decode_plain(
    obj: Any, specs: Sequence[TensorSpec], max_rows: int | None = None
) -> dict[str, np.ndarray]:
    """`{"input name": nested lists}` as arrays of each input's declared dtype.

    With `max_rows`, an input nested as deep as its shape (batch dimension included) with
    more rows than that is refused before it is converted."""
    if not isinstance(obj, dict) or not obj:
        raise BadRequest(
            'expected a JSON object of input name -> nested lists, e.g. {"input": [[1, 2]]}, '
            "or a V2 inference request"
        )
    by_name = {s.name: s for s in specs}
    if len(obj) == 1 and len(specs) == 1 and next(iter(obj)) not in by_name:
        obj = {specs[0].name: next(iter(obj.values()))}  # lone input: any key will do
    arrays = {}
    for name, data in obj.items():
        spec = by_name.get(name)
        if spec is None:
            raise BadRequest(f"unknown input {name!r}; the model takes {sorted(by_name)}")
        if max_rows is not None and _depth(data) >= len(spec.shape) and len(data) > max_rows:
            raise BadRequest(
                f"input {name!r} holds {len(data)} rows; the function takes at most {max_rows} "
                f"per call (max_batch_size {max_rows}); split the call, or raise "
                "batching.max_batch_size"
            )
        arrays[name] = as_array(name, data, spec.numpy_dtype, spec.datatype)
    return arrays


def _depth(data: Any) -> int:
    """How deep `data`'s first elements nest lists (0 for a scalar)."""
    depth = 0
    while isinstance(data, list) and data:
        depth += 1
        data = data[0]
    return depth + (1 if isinstance(data, list) else 0)


# ---------------------------------------------------------------- responses


def datatype_of(array: np.ndarray) -> str:
    dtype = array.dtype
    found = _DTYPE_TO_V2.get(dtype)
    if found is not None:
        return found
    if dtype.kind == "O":
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype.newbyteorder("=").name]  # a non-native byte order
    except KeyError:
        raise ValueError(f"no V2 datatype for numpy {dtype}") from None


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    wanted: Sequence[tuple[str, bool | None]] = (
        [(o.name, o.binary) for o in request.outputs]
        if request.outputs
        else [(name, None) for name in outputs]
    )
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        array = outputs.get(name)
        if array is None:
            raise BadRequest(f"unknown output {name!r}; the model has {sorted(outputs)}")
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary is None:
            binary = request.binary_output
        if binary:
            blob = to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(array)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = entries
    header = _dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in map(_to_bytes, array.flat))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json_data(array: np.ndarray) -> Any:
    """Flat row-major data, as V2 JSON carries it (a list, or an array `_dumps` writes)."""
    if array.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in array.flat]
    return _json_ready(array.reshape(-1))


def encode_plain(outputs: Mapping[str, np.ndarray]) -> bytes:
    """`{"output name": nested lists}`, the plain answer to a plain request."""
    return _dumps(
        {name: (to_json_data(a) if a.dtype == object else _json_ready(a))
         for name, a in outputs.items()}
    )


#: JSON has no NaN or infinity: they are written as these strings, as the protobuf JSON
#: mapping (which KServe's gRPC-JSON follows) writes float fields, never as invalid JSON or 0.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def name_non_finite(value: Any) -> Any:
    """`value` (nested lists, dicts, floats, numpy arrays) with every NaN or infinite float
    replaced by its name in `NON_FINITE`; other values unchanged. For the slow path only."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(value)]
    if isinstance(value, list | tuple):
        return [name_non_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: name_non_finite(v) for k, v in value.items()}
    return value


def _json_ready(array: np.ndarray) -> Any:
    """`array` as orjson serialises it natively: C-contiguous and native order; with a NaN or
    an infinity, nested lists with those values named (see `NON_FINITE`)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return name_non_finite(array)
    if array.flags.c_contiguous and array.dtype.isnative:
        return array
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def _dumps(doc: Any) -> bytes:
    """Compact JSON; numpy arrays become (nested) lists without a Python loop."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # a dtype orjson does not take natively (e.g. float16)
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY, default=_as_list)


def _as_list(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def tensor_meta(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
