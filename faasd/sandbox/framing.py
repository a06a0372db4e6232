"""Length-prefixed msgpack frames, numpy tensors carried out of band. Pure: bytes in, values out.

A frame is an 8-byte prefix (`<II`: body length, header length), then the body: a msgpack
header, padding to 8 bytes, then the raw bytes of every tensor back to back (each padded to 8).
In the header a tensor is a msgpack extension holding `(dtype, shape, offset, nbytes)` into the
data section (packed with `struct`: `<B` dtype length, the dtype string, `<B` rank, `<q` per
dimension, `<QQ` offset and size), so tensors never pass through per-element Python code:

- encoding returns a list of buffers (prefix + header, then a memoryview of each tensor) for a
  scatter-gather send: the tensor bytes are not copied in user space;
- decoding wraps the received body with `np.frombuffer`: the tensors are views of the one
  buffer the bytes were received into.

Object tensors (V2 BYTES) are the exception: they are small strings and travel as a msgpack list.

With a `SharedPair` (see `faasd.sandbox.sharedmem`), tensors above its threshold are copied into
the sender's shared area instead and the header holds a third extension, the same
`(dtype, shape, offset, nbytes)` but into that area; the receiver views (or copies) them there.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

if TYPE_CHECKING:
    from faasd.sandbox.sharedmem import SharedPair

PREFIX = struct.Struct("<II")
PREFIX_SIZE = PREFIX.size
_PLACE = struct.Struct("<QQ")
#: Larger frames are refused: the daemon caps request bodies far below this.
MAX_BODY_BYTES = 2**31
TENSOR_EXT = 1
OBJECT_TENSOR_EXT = 2
SHARED_TENSOR_EXT = 3
_ALIGN = 8
_PADDING = bytes(_ALIGN)
#: A header's first buffer (it grows if need be); `msgpack.packb` starts every call with 256 KiB.
_PACK_BUFFER_BYTES = 4096

Buffer = bytes | bytearray | memoryview


class FrameError(ValueError):
    """The bytes are not a frame this module wrote (corrupt, truncated or too large)."""


class FrameTooLarge(FrameError):
    """A frame's prefix declares a body over what its reader accepts."""

    def __init__(self, body_bytes: int, limit_bytes: int) -> None:
        super().__init__(f"a frame declares a body of {body_bytes} bytes, over the limit of "
                         f"{limit_bytes}")
        self.body_bytes = body_bytes
        self.limit_bytes = limit_bytes


def _pad(size: int) -> int:
    return -size % _ALIGN


def encode(message: Any, shared: SharedPair | None = None) -> list[Buffer]:
    """Serialise `message` (msgpack types plus numpy arrays and scalars) into send buffers.

    With `shared`, large tensors go into `shared.out` (the caller has called `begin_frame`)."""
    tensors: list[memoryview] = []
    data_bytes = 0

    def default(obj: Any) -> Any:
        nonlocal data_bytes
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                items = [x.encode() if isinstance(x, str) else x for x in obj.ravel().tolist()]
                return msgpack.ExtType(OBJECT_TENSOR_EXT, msgpack.packb((obj.shape, items)))
            # ascontiguousarray would turn a 0-d array into 1-d: keep the shape
            array = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj).reshape(obj.shape)
            if shared is not None:
                place = shared.out.place(array)
                if place is not None:
                    meta = _tensor_meta(array.dtype.str, array.shape, place, array.nbytes)
                    return msgpack.ExtType(SHARED_TENSOR_EXT, meta)
            meta = _tensor_meta(array.dtype.str, array.shape, data_bytes, array.nbytes)
            if array.nbytes:
                tensors.append(array.reshape(-1).view(np.uint8).data)
                data_bytes += array.nbytes + _pad(array.nbytes)
            return msgpack.ExtType(TENSOR_EXT, meta)
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot frame a value of type {type(obj).__name__}")

    packer = msgpack.Packer(default=default, use_bin_type=True, buf_size=_PACK_BUFFER_BYTES)
    header = packer.pack(message)
    header_padded = len(header) + _pad(len(header))
    body_bytes = header_padded + data_bytes
    if body_bytes >= MAX_BODY_BYTES:
        raise FrameError(f"frame of {body_bytes} bytes exceeds the limit of {MAX_BODY_BYTES}")
    buffers: list[Buffer] = [
        PREFIX.pack(body_bytes, len(header)) + header + _PADDING[: _pad(len(header))]
    ]
    for view in tensors:
        buffers.append(view)
        if _pad(len(view)):
            buffers.append(_PADDING[: _pad(len(view))])
    return buffers


def _tensor_meta(dtype: str, shape: tuple[int, ...], offset: int, nbytes: int) -> bytes:
    """A tensor's place in the data section (no msgpack.packb: each call allocates 1 MiB)."""
    code = dtype.encode()
    return (
        struct.pack(f"<B{len(code)}sB{len(shape)}q", len(code), code, len(shape), *shape)
        + _PLACE.pack(offset, nbytes)
    )


def _read_tensor_meta(data: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    try:
        size = data[0]
        dtype = np.dtype(data[1 : 1 + size].decode())
        rank = data[1 + size]
        shape = struct.unpack_from(f"<{rank}q", data, 2 + size)
        offset, nbytes = _PLACE.unpack_from(data, 2 + size + 8 * rank)
    except (IndexError, struct.error, TypeError, UnicodeDecodeError) as exc:
        raise FrameError(f"corrupt tensor header: {exc}") from exc
    return dtype, shape, offset, nbytes


def encode_bytes(message: Any) -> bytes:
    """`encode` joined into one bytes object (tests, small control messages)."""
    return b"".join(encode(message))


def parse_prefix(prefix: Buffer, max_body_bytes: int = MAX_BODY_BYTES - 1) -> tuple[int, int]:
    """(body length, header length) of the frame whose first 8 bytes are `prefix`;
    FrameTooLarge if the body would be over `max_body_bytes`."""
    if len(prefix) != PREFIX_SIZE:
        raise FrameError(f"a frame prefix is {PREFIX_SIZE} bytes, got {len(prefix)}")
    body_bytes, header_bytes = PREFIX.unpack(prefix)
    if header_bytes > body_bytes:
        raise FrameError(f"bad frame prefix: body {body_bytes} bytes, header {header_bytes}")
    if body_bytes > min(max_body_bytes, MAX_BODY_BYTES - 1):
        raise FrameTooLarge(body_bytes, min(max_body_bytes, MAX_BODY_BYTES - 1))
    return body_bytes, header_bytes


def decode(body: Buffer, header_bytes: int, shared: SharedPair | None = None) -> Any:
    """The message of one frame body; tensors are views of `body` (writable if it is), shared
    ones whatever `shared.read` makes of them (FrameError if there is no `shared`).

    The tensors `encode` writes lie side by side, in the frame's data and in the shared
    area, so their sizes add up to at most the data's size and the area's cap: a header that
    names one range many times (a forged one, a few bytes a name) is a FrameError, not as
    many copies of it in the daemon."""
    data_start = header_bytes + _pad(header_bytes)
    # bytes of tensor still possible: in the frame's data, in the shared area
    left = [len(body) - data_start, shared.into.cap_bytes if shared is not None else 0]

    def spend(where: int, nbytes: int) -> None:
        left[where] -= nbytes
        if left[where] < 0:
            place = ("frame", "shared area")[where]
            raise FrameError(f"the frame's tensors add up to more than its {place} holds")

    def ext_hook(code: int, data: bytes) -> Any:
        if code == TENSOR_EXT:
            dtype, shape, offset, nbytes = _read_tensor_meta(data)
            if nbytes == 0:
                return np.empty(shape, dtype=dtype)
            spend(0, nbytes)
            start = data_start + offset
            if start + nbytes > len(body):
                raise FrameError("tensor runs past the end of the frame")
            flat = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=start)
            return flat.reshape(shape)
        if code == SHARED_TENSOR_EXT:
            dtype, shape, offset, nbytes = _read_tensor_meta(data)
            if shared is None:
                raise FrameError("a shared tensor arrived on a channel without shared memory")
            spend(1, nbytes)
            return shared.read(dtype, offset, nbytes).reshape(shape)
        if code == OBJECT_TENSOR_EXT:
            shape, items = msgpack.unpackb(data)
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array.reshape(shape)
        return msgpack.ExtType(code, data)

    try:
        return msgpack.unpackb(
            memoryview(body)[:header_bytes], ext_hook=ext_hook, raw=False, strict_map_key=False
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise FrameError(f"corrupt frame header: {exc}") from exc


def decode_frame(frame: Buffer) -> Any:
    """Decode one whole frame (prefix included), e.g. the output of `encode_bytes`."""
    body_bytes, header_bytes = parse_prefix(frame[:PREFIX_SIZE])
    body = bytearray(frame[PREFIX_SIZE:])
    if len(body) != body_bytes:
        raise FrameError(f"frame body is {len(body)} bytes, prefix says {body_bytes}")
    return decode(body, header_bytes)


def total_size(buffers: Sequence[Buffer]) -> int:
    return sum(len(b) for b in buffers)
