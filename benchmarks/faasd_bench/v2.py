"""Open Inference Protocol (V2) request bodies and responses, as a benchmark client sends them.

Pure: numpy arrays in, bytes out and back. Two encodings of the same tensors:
- JSON (`data` as a flat list), what any V2 server accepts;
- Triton's binary tensor extension: a JSON header followed by the raw little-endian tensor
  bytes, its length in the `Inference-Header-Content-Length` header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

#: numpy dtype name -> V2 datatype, for the dtypes the benchmarks send.
_V2_DATATYPE = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}
_NUMPY_DTYPE = {v: k for k, v in _V2_DATATYPE.items()}

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Request:
    """A ready-to-send body and the headers it needs."""

    body: bytes
    headers: Mapping[str, str]


def _tensor_header(name: str, array: np.ndarray) -> dict[str, object]:
    return {"name": name, "shape": list(array.shape), "datatype": _V2_DATATYPE[array.dtype.name]}


def _json_data(array: np.ndarray) -> list[object]:
    flat = array.ravel()
    if flat.dtype == np.float32:
        # tolist() prints float32 values with float64 digits (0.1 -> 0.10000000149011612); the
        # shortest float32 text parses back to the same value and is what a careful client sends.
        return [float(str(value)) for value in flat]
    values: list[object] = flat.tolist()
    return values


def json_request(inputs: Mapping[str, np.ndarray]) -> Request:
    """A V2 JSON inference request with every output returned as JSON."""
    tensors = [
        {**_tensor_header(name, array), "data": _json_data(array)}
        for name, array in inputs.items()
    ]
    body = json.dumps({"inputs": tensors}, separators=(",", ":")).encode()
    return Request(body, {"Content-Type": "application/json"})


def binary_request(inputs: Mapping[str, np.ndarray]) -> Request:
    """A V2 request with binary inputs, asking for every output in binary too."""
    tensors = []
    blobs = []
    for name, array in inputs.items():
        blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        parameters = {"binary_data_size": len(blob)}
        tensors.append({**_tensor_header(name, array), "parameters": parameters})
        blobs.append(blob)
    header = json.dumps(
        {"inputs": tensors, "parameters": {"binary_data_output": True}}, separators=(",", ":")
    ).encode()
    return Request(
        header + b"".join(blobs),
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )


def decode_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """The output tensors of a V2 response, JSON or binary (`header_length` from the header).

    Raises ValueError when the body is not a V2 inference response.
    """
    split = len(body) if header_length is None else header_length
    try:
        document = json.loads(body[:split])
        outputs = document["outputs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a V2 inference response: {body[:200]!r}") from exc
    offset = split
    tensors: dict[str, np.ndarray] = {}
    for output in outputs:
        dtype = np.dtype(_NUMPY_DTYPE[output["datatype"]]).newbyteorder("<")
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            flat = np.asarray(output["data"], dtype=dtype)
        else:
            flat = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset)
            offset += size
        tensors[output["name"]] = flat.reshape(output["shape"])
    return tensors
