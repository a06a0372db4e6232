"""An image's width and height from its header, without decoding it.

A 164 KB PNG may decode to 169 million pixels (half a gigabyte of RGB): the size an image
claims must be checked before a handler decodes it, on the daemon's side, where a refusal
costs a few microseconds and no sandbox. Pure: bytes in, `(width, height)` or None out. Reads
the header fields of PNG (IHDR), GIF (logical screen), BMP (BITMAPINFOHEADER), WebP (VP8,
VP8L, VP8X) and JPEG (the first SOFn marker); anything else is None ("not an image this knows").
"""

from __future__ import annotations

import struct

#: JPEG start-of-frame markers (SOF0..SOF15 less DHT C4, JPG C8 and DAC CC), which hold the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: How far into a JPEG the frame header is looked for (EXIF and ICC segments come first).
_JPEG_SCAN_BYTES = 1 << 20


def image_size(data: bytes) -> tuple[int, int] | None:
    """`(width, height)` as the header of `data` declares it, or None if no known header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(int(width)), abs(int(height))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    offset = 2
    end = min(len(data), _JPEG_SCAN_BYTES)
    while offset + 4 <= end:
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length follows
            offset += 2
            continue
        (length,) = struct.unpack(">H", data[offset + 2 : offset + 4])
        if marker in _JPEG_SOF:
            if offset + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            return int(width), int(height)
        if length < 2:
            return None
        offset += 2 + length
    return None
