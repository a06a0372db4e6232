"""Frames round-trip every tensor type without per-element work, and reject what is not a frame."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from faasd.sandbox import framing

DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensors_round_trip_with_dtype_and_shape(dtype: str) -> None:
    x = (np.arange(24) % 7).astype(dtype).reshape(2, 3, 4)
    out = framing.decode_frame(framing.encode_bytes({"x": x}))["x"]
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, x)


def test_decoded_tensors_view_the_received_buffer_and_are_aligned() -> None:
    a = np.arange(5, dtype=np.int8)  # 5 bytes: the next tensor needs padding to stay aligned
    b = np.arange(6, dtype=np.float64)
    frame = framing.encode_bytes({"a": a, "b": b})
    body_bytes, header_bytes = framing.parse_prefix(frame[: framing.PREFIX_SIZE])
    body = bytearray(frame[framing.PREFIX_SIZE :])
    message = framing.decode(body, header_bytes)
    assert body_bytes == len(body)
    assert np.shares_memory(message["b"], np.frombuffer(body, dtype=np.uint8))
    assert message["b"].ctypes.data % 8 == np.frombuffer(body, np.uint8).ctypes.data % 8
    message["b"][0] = 42.0  # writable: onnxruntime and handlers may write in place
    np.testing.assert_array_equal(message["a"], a)


def test_large_tensor_is_sent_as_a_view_not_a_copy() -> None:
    x = np.ones((1, 3, 224, 224), dtype=np.float32)
    buffers = framing.encode({"op": "run", "x": x})
    views = [b for b in buffers if isinstance(b, memoryview)]
    assert len(views) == 1
    assert np.shares_memory(np.frombuffer(views[0], dtype=np.uint8), x)
    assert framing.total_size(buffers) >= x.nbytes


def test_non_contiguous_zero_size_objects_and_scalars() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T  # Fortran order
    empty = np.empty((0, 16), dtype=np.float32)
    words = np.array([b"cat", "dog"], dtype=object)
    message = {"x": x, "e": empty, "w": words, "n": np.int64(3), "f": np.float32(0.5), "s": "é"}
    out = framing.decode_frame(framing.encode_bytes(message))
    np.testing.assert_array_equal(out["x"], x)
    assert out["e"].shape == (0, 16) and out["e"].dtype == np.float32
    assert list(out["w"]) == [b"cat", b"dog"]
    assert (out["n"], out["f"], out["s"]) == (3, 0.5, "é")


def test_unframeable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="set"):
        framing.encode({"x": {1, 2}})


@pytest.mark.parametrize(
    "frame",
    [
        b"\x01\x02",  # short prefix
        framing.PREFIX.pack(10, 20) + bytes(10),  # header longer than body
        framing.PREFIX.pack(4, 4) + b"\xc1\xc1\xc1\xc1",  # 0xc1 is never valid msgpack
    ],
)
def test_corrupt_frames_raise_frame_error(frame: bytes) -> None:
    with pytest.raises(framing.FrameError):
        framing.decode_frame(frame)


def test_a_header_naming_one_tensor_many_times_is_a_frame_error() -> None:
    """The data holds one 4 KiB tensor; a header naming it 1000 times is not `encode`'s."""
    data = bytes(4096)
    name = msgpack.ExtType(framing.TENSOR_EXT, framing._tensor_meta("|u1", (4096,), 0, 4096))
    for count, fine in ((1, True), (1000, False)):
        header = msgpack.packb([name] * count)
        body = bytearray(header + bytes(-len(header) % 8) + data)
        if fine:
            assert len(framing.decode(body, len(header))[0]) == 4096
        else:
            with pytest.raises(framing.FrameError, match="more than its frame holds"):
                framing.decode(body, len(header))


def test_truncated_body_is_detected() -> None:
    frame = framing.encode_bytes({"x": np.ones(100, dtype=np.float32)})
    with pytest.raises(framing.FrameError):
        framing.decode_frame(frame[:-8])


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_any_array_round_trips(x: np.ndarray) -> None:
    out = framing.decode_frame(framing.encode_bytes([x, {"k": x}]))
    for got in (out[0], out[1]["k"]):
        assert got.dtype == x.dtype and got.shape == x.shape
        np.testing.assert_array_equal(got, x)
