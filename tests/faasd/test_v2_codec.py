"""The V2 codec: JSON and binary tensors both ways, plain JSON, and its error messages."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from faasd.errors import BadRequest
from faasd.functions.spec import TensorSpec
from faasd.v2 import (
    InferRequest,
    RequestedOutput,
    decode_plain,
    decode_raw,
    decode_request,
    encode_plain,
    encode_response,
)


def test_json_request_nested_and_flat_data_decode_to_the_same_array() -> None:
    flat = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                          "data": [[1, 2], [3, 4]]}], "id": "7"}
    a = decode_request(json.dumps(flat).encode()).inputs["x"]
    b_req = decode_request(json.dumps(nested).encode())
    assert a.dtype == np.float32 and a.shape == (2, 2)
    np.testing.assert_array_equal(a, b_req.inputs["x"])
    assert b_req.id == "7"


def test_binary_request_with_two_inputs_and_bytes() -> None:
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    words = [b"ab", b"", b"xyz"]
    blob_w = b"".join(struct.pack("<I", len(w)) + w for w in words)
    header = json.dumps({
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "INT64",
             "parameters": {"binary_data_size": x.nbytes}},
            {"name": "w", "shape": [3], "datatype": "BYTES",
             "parameters": {"binary_data_size": len(blob_w)}},
        ],
        "parameters": {"binary_data_output": True},
    }).encode()
    req = decode_request(header + x.tobytes() + blob_w, len(header))
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert list(req.inputs["w"]) == words
    assert req.binary_output is True


_SHORT = (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",'
          b' "parameters": {"binary_data_size": 8}}]}')


@pytest.mark.parametrize(
    ("body", "header_length", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP99", "data": [1, 2]}]}',
         None, "unknown datatype"),
        (b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}',
         None, "needs 3 values, got 2"),
        (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": ["a", 2]}]}',
         None, "not FP32"),
        (_SHORT + b"\0" * 4, len(_SHORT), "exceeds the body"),
        (_SHORT.replace(b"8}", b"-4}"), len(_SHORT) + 1, "whole number of bytes >= 0, got -4"),
        (b'{"inputs": []}', 500, "body has"),
        (b"", None, "the request body is empty"),
        (b"  \n", None, "the request body is empty"),
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", None, "binary data, not UTF-8 text"),
    ],
)
def test_bad_requests_say_what_is_wrong(body: bytes, header_length: int | None,
                                        fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        decode_request(body, header_length)


def test_response_json_and_binary_round_trip() -> None:
    out = {"y": np.array([[1.5, -2.0]], dtype=np.float32), "k": np.array([3], dtype=np.int64)}
    body, length = encode_response("m", "2", InferRequest("9", {}), out)
    assert length is None
    doc = json.loads(body)
    assert doc["model_name"] == "m" and doc["model_version"] == "2" and doc["id"] == "9"
    assert doc["outputs"][0] == {"name": "y", "datatype": "FP32", "shape": [1, 2],
                                 "data": [1.5, -2.0]}

    req = InferRequest(None, {}, (RequestedOutput("y", True),))
    body, length = encode_response("m", "2", req, out)
    assert length is not None
    header = json.loads(body[:length])
    assert [o["name"] for o in header["outputs"]] == ["y"]
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    np.testing.assert_array_equal(
        np.frombuffer(body[length:length + size], dtype="<f4").reshape(1, 2), out["y"])


def test_unknown_requested_output_is_a_bad_request() -> None:
    req = InferRequest(None, {}, (RequestedOutput("nope"),))
    with pytest.raises(BadRequest, match="unknown output 'nope'"):
        encode_response("m", "1", req, {"y": np.zeros(1, np.float32)})


def test_plain_json_casts_to_the_declared_dtype_and_accepts_any_key_for_one_input() -> None:
    spec = TensorSpec("pixels", "FP32", (-1, 4))
    arrays = decode_plain({"input": [[1, 2, 3, 4]]}, [spec])
    assert arrays["pixels"].dtype == np.float32
    with pytest.raises(BadRequest, match="unknown input 'b'"):
        decode_plain({"a": [1], "b": [2]}, [spec, TensorSpec("a", "FP32", (-1,))])
    assert json.loads(encode_plain({"y": np.array([[1, 2]], np.int32)})) == {"y": [[1, 2]]}


def test_raw_binary_request_is_batch_one() -> None:
    spec = TensorSpec("x", "FP32", (-1, 3))
    raw = np.array([1, 2, 3], np.float32).tobytes()
    np.testing.assert_array_equal(decode_raw(raw, spec), [[1, 2, 3]])
    with pytest.raises(BadRequest, match="needs 12 bytes"):
        decode_raw(raw[:8], spec)


def test_non_finite_floats_are_named_in_valid_json_never_zero() -> None:
    y = np.array([[np.nan, np.inf], [-np.inf, 1.5]], np.float32)
    body = encode_plain({"y": y})
    assert json.loads(body)["y"] == [["NaN", "Infinity"], ["-Infinity", 1.5]]
    response, _ = encode_response("m", "1", InferRequest(None, {}), {"y": y})
    # json.loads accepts the bare NaN token: parse strictly, as a browser or jq does
    strict = json.loads(response, parse_constant=lambda c: pytest.fail(f"invalid JSON {c}"))
    assert strict["outputs"][0]["data"] == ["NaN", "Infinity", "-Infinity", 1.5]


def _v2(extra: str, data: str = "[1, 2]", datatype: str = "FP32",
        input_extra: str = "") -> bytes:
    return (f'{{"inputs": [{{"name": "x", "shape": [2], "datatype": "{datatype}", '
            f'"data": {data}{input_extra}}}]{extra}}}').encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_v2(', "parameters": [1]'), "the request: parameters must be a JSON object"),
        (_v2(', "parameters": "x"'), "parameters must be a JSON object, got str"),
        (_v2("", input_extra=', "parameters": 7'), "input 'x': parameters must be"),
        (_v2(', "outputs": [{"name": "y", "parameters": []}]'), "output 'y': parameters"),
        (_v2(', "outputs": "x"'), "outputs must be a list"),
        (_v2(', "outputs": [{"name": 3}]'), 'string "name"'),
        (_v2(', "outputs": ["y"]'), 'string "name"'),
        (_v2(', "parameters": {"binary_data_output": "yes"}'),
         "binary_data_output must be true or false, got 'yes'"),
        (_v2(', "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]'),
         "binary_data must be true or false"),
        (_v2("", "[4294967296, 1]", "INT32"), "out of bounds for int32"),
        (_v2("", "[-1, 1]", "UINT8"), "out of bounds for uint8"),
        (_v2("", "[18446744073709551616, 1]", "INT64"), "not INT64"),
        (_v2("", "[1e40, 1]", "FP32"), "overflow"),
        (_v2("", "[1.5, 1]", "INT32"), "INT32 takes whole numbers, got 1.5"),
        (_v2("", "[2, 2.9]", "UINT8"), "UINT8 takes whole numbers, got 2.9"),
    ],
)
def test_malformed_v2_fields_are_bad_requests_not_crashes(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        decode_request(body)


def test_plain_json_out_of_range_is_a_bad_request() -> None:
    spec = TensorSpec("x", "UINT8", (-1, 2))
    with pytest.raises(BadRequest, match="out of bounds for uint8"):
        decode_plain({"x": [[1, 256]]}, [spec])
    with pytest.raises(BadRequest, match="takes whole numbers"):
        decode_plain({"x": [[1, 0.5]]}, [spec])
    assert decode_plain({"x": [[1, 2.0]]}, [spec])["x"].tolist() == [[1, 2]]  # whole: taken


def test_null_parameters_and_outputs_mean_the_defaults() -> None:
    request = decode_request(_v2(', "parameters": null, "outputs": null'))
    assert request.outputs is None and request.binary_output is False


@pytest.mark.parametrize("dtype", ["bool", "uint8", "uint16", "uint32", "uint64", "int8",
                                   "int16", "int32", "int64", "float16", "float32", "float64",
                                   ">f4", ">i8"])
def test_every_datatype_round_trips_through_json(dtype: str) -> None:
    array = (np.arange(6).reshape(2, 3) % 2 == 0) if dtype == "bool" else \
        np.arange(6).reshape(2, 3).astype(dtype)
    body, _ = encode_response("m", "1", InferRequest(None, {}), {"y": array})
    out = json.loads(body)["outputs"][0]
    back = decode_request(json.dumps({"inputs": [
        {"name": "y", "shape": out["shape"], "datatype": out["datatype"], "data": out["data"]}
    ]}).encode()).inputs["y"]
    np.testing.assert_array_equal(back, array)
    assert json.loads(encode_plain({"y": array}))["y"] == array.tolist()
    fortran = np.asfortranarray(array)
    assert json.loads(encode_plain({"y": fortran}))["y"] == array.tolist()
