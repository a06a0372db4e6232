"""Bounded work before validation: what a request declares is checked before it is decoded.

A 113-byte request that declares a hundred million BYTES elements must cost microseconds,
not a gigabyte; a call with more rows than `max_batch_size` is a 400 that names the limit; an
image that declares more pixels than the function takes never reaches a sandbox.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
import zlib

import aiohttp
import numpy as np
import pytest
from PIL import Image

from faasd.daemon import Daemon
from faasd.errors import BadRequest
from faasd.functions.spec import TensorSpec
from faasd.imagesize import image_size
from faasd.v2 import decode_plain, decode_request

STALL = json.dumps({"inputs": [{"name": "x", "shape": [100_000_000], "datatype": "BYTES",
                                "parameters": {"binary_data_size": 0}}]}).encode()


def test_declared_bytes_elements_are_checked_against_the_body_before_allocating() -> None:
    for count in (100_000_000, 10**13):  # 10**13 objects would ask numpy for 72.8 TiB
        header = STALL.replace(b"100000000", str(count).encode())
        started = time.perf_counter()
        with pytest.raises(BadRequest, match="BYTES elements need at least"):
            decode_request(header, len(header))
        assert time.perf_counter() - started < 0.05


def test_json_data_cannot_declare_more_values_than_its_bytes_hold() -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [10**12], "datatype": "FP32",
                                   "data": []}]}).encode()
    with pytest.raises(BadRequest, match=r"more than the .* bytes of JSON"):
        decode_request(body)


def test_plain_rows_are_counted_before_conversion() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    rows = [[1.0, 2.0, 3.0, 4.0]] * 33
    with pytest.raises(BadRequest, match=r"33 rows.*at most 32.*max_batch_size"):
        decode_plain({"x": rows}, [spec], max_rows=32)
    assert decode_plain({"x": rows[:32]}, [spec], max_rows=32)["x"].shape == (32, 4)
    assert decode_plain({"x": rows[0]}, [spec], max_rows=1)["x"].shape == (4,)  # batch added later


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_image_size_reads_the_header(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (321, 123)).save(buffer, format=fmt)
    assert image_size(buffer.getvalue()) == (321, 123)
    assert image_size(b"a,b,c,d") is None


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


async def _healthz_ms(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(f"{url}/healthz") as resp:
        assert resp.status == 200
    return (time.perf_counter() - started) * 1e3


async def test_hostile_sizes_are_400_at_once_and_healthz_does_not_wait(daemon: Daemon) -> None:
    url = daemon.url
    declared = json.dumps({"inputs": [{"name": "x", "shape": [100_000_000, 4],
                                       "datatype": "FP32", "data": []}]}).encode()
    async with aiohttp.ClientSession() as session:
        async def hostile() -> tuple[int, str]:
            async with session.post(f"{url}/v2/models/linear/infer", data=declared) as resp:
                return resp.status, (await resp.json())["error"]

        results = await asyncio.gather(*(hostile() for _ in range(20)),
                                       _healthz_ms(session, url))
        for status, message in results[:-1]:
            assert status == 400
            assert "100000000 rows" in message and "max_batch_size 8" in message
        assert results[-1] < 1000

        too_many = {"x": [[0.0, 1.0, 2.0, 3.0]] * 9}  # linear takes 8 rows per call
        async with session.post(f"{url}/function/linear", json=too_many) as resp:
            assert resp.status == 400
            assert "at most 8" in (await resp.json())["error"]
        async with session.post(f"{url}/function/linear",
                                json={"x": too_many["x"][:8]}) as resp:
            assert resp.status == 200

        bomb = _png_header(13_000, 13_000)  # 169 Mpx
        async with session.post(f"{url}/function/texty", data=bomb,
                                headers={"Content-Type": "image/png"}) as resp:
            assert resp.status == 400
            doc = await resp.json()
        assert "169000000 pixels" in doc["error"] and "max_image_pixels" in doc["error"]
    assert daemon.services.pool_stats()["crashes"] == 0


def test_a_large_json_body_is_parsed_off_the_event_loop() -> None:
    from faasd.api.invoke import OFFLOAD_JSON_BYTES, _parse_is_slow

    small = json.dumps({"x": np.zeros((8, 4)).tolist()}).encode()
    large = b" " * OFFLOAD_JSON_BYTES + small
    assert not _parse_is_slow(small, None)
    assert _parse_is_slow(large, None)
    header = STALL
    assert _parse_is_slow(header + b"\0" * OFFLOAD_JSON_BYTES, len(header))  # BYTES tail
    fp32 = header.replace(b"BYTES", b"FP32")
    assert not _parse_is_slow(fp32 + b"\0" * OFFLOAD_JSON_BYTES, len(fp32))  # a view: fast


async def test_json_longer_than_the_function_can_need_is_refused_before_parsing(
    daemon: Daemon,
) -> None:
    from faasd.gateway import max_json_bytes

    version, _ = daemon.services.catalog.get("linear")
    assert max_json_bytes(version) == 8 * 4 * 32 + 64 * 1024  # 8 rows of 4 values
    rows = {"x": [[0.125, 1.0, 2.0, 3.0]] * 20_000}  # 20,000 rows against max_batch_size 8
    v2 = {"inputs": [{"name": "x", "shape": [20_000, 4], "datatype": "FP32",
                      "data": rows["x"]}]}
    async with aiohttp.ClientSession() as session:
        for path, doc in (("/function/linear", rows), ("/v2/models/linear/infer", v2)):
            async with session.post(f"{daemon.url}{path}", json=doc) as resp:
                assert resp.status == 400
                message = (await resp.json())["error"]
            assert "more than the 66560" in message and "at most 8 rows" in message, message
