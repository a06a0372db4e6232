"""Plain client input that used to crash a handler (500) or pass silently, through real HTTP.

Each case answers a 4xx JSON error (or valid JSON), and the daemon serves on after it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from faasd.daemon import Daemon
from tests.faasd.builders import make_function

pytestmark = pytest.mark.slow

NAN_HANDLER = '''
import numpy as np


def postprocess(outputs):
    y = outputs["y"]
    return {"worst": float("nan"), "y": y * np.float32("inf"), "ok": 1.0}
'''


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    root = tmp_path / "functions"
    make_function(root, "linear")
    make_function(root, "nanny", handler=NAN_HANDLER)
    return root


async def _raw(daemon: Daemon, request: bytes) -> tuple[int, dict[str, str], bytes]:
    assert daemon.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _post(path: bytes, body: bytes, content_type: bytes) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: " + content_type + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _served(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s, \
            s.post(f"{daemon.url}/function/linear", json={"x": [[1, 2, 3, 4]]}) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("request_bytes", [
    _post(b"/function/linear", b'{"x": [[1, 2, 3, 4]]}', b"application/json\xff"),
    _post(b"/function/nanny", b"1,2,3,4", "text/plain; charset=\u00e9".encode()),
    b"GET /function/li\x00near HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"NOT-HTTP\r\n\r\n",
])
async def test_unparseable_requests_are_4xx_json(daemon: Daemon, request_bytes: bytes) -> None:
    status, headers, body = await _raw(daemon, request_bytes)
    assert 400 <= status < 500, body
    assert headers["content-type"].startswith("application/json"), headers
    assert json.loads(body)["error"]
    await _served(daemon)


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"parameters": [1]}, "parameters must be a JSON object"),
    ({"outputs": "x"}, "outputs must be a list"),
    ({"parameters": {"binary_data_output": "yes"}}, "must be true or false"),
])
async def test_malformed_v2_fields_are_400(daemon: Daemon, doc: dict[str, object],
                                           fragment: str) -> None:
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                           "data": [1, 2, 3, 4]}], **doc}
    async with aiohttp.ClientSession() as s:
        for path in ("/function/linear", "/v2/models/linear/infer"):
            async with s.post(daemon.url + path, json=request) as resp:
                assert resp.status == 400, await resp.text()
                assert fragment in (await resp.json())["error"]
    await _served(daemon)


async def test_out_of_range_integers_are_400(daemon: Daemon) -> None:
    """An INT32 value past its range is a 400, not a 500. The declared datatype is checked
    against the model's before any value is decoded (linear takes FP32), so the answer names
    that; the range check of the decoding itself is tested in test_v2_codec."""
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32",
                           "data": [4294967296, 1, 2, 3]}]}
    async with aiohttp.ClientSession() as s, \
            s.post(f"{daemon.url}/v2/models/linear/infer", json=request) as resp:
        assert resp.status == 400, await resp.text()
        assert "datatype INT32; the model expects FP32" in (await resp.json())["error"]


async def test_nan_outputs_are_valid_json_on_both_paths(daemon: Daemon) -> None:
    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON: {c}"))

    async with aiohttp.ClientSession() as s:
        async with s.post(f"{daemon.url}/function/nanny", json={"x": [[1, 2, 3, 4]]}) as resp:
            assert resp.status == 200, await resp.text()
            doc = strict(await resp.text())
        assert doc == {"worst": "NaN", "y": [["Infinity"] * 3], "ok": 1.0}
        v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                          "data": [float("nan"), 0, 0, 0]}]}
        async with s.post(f"{daemon.url}/v2/models/linear/infer",
                          data=json.dumps(v2)) as resp:  # NaN in: JSON's NaN token
            text = await resp.text()
    assert resp.status in (200, 400), text
    if resp.status == 200:
        assert strict(text)["outputs"][0]["data"] == ["NaN", "NaN", "NaN"]  # type: ignore[index]


@pytest.mark.parametrize(("method", "path", "doc"), [
    ("DELETE", "/system/functions", {"functionName": "n" * 500_000}),
    ("POST", "/system/functions", {"path": "/nonexistent", "name": "N" * 500_000}),
    ("DELETE", "/system/workflows", {"name": "w" * 500_000}),
])
async def test_a_huge_name_in_a_body_is_not_echoed_in_full(
        daemon: Daemon, method: str, path: str, doc: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as s, s.request(method, daemon.url + path,
                                                       json=doc) as resp:
        body = await resp.read()
        assert 400 <= resp.status < 500 and resp.content_type == "application/json", body[:200]
    assert len(body) < 10_000, len(body)
    assert json.loads(body)["error"]
    await _served(daemon)


@pytest.mark.parametrize(("url", "fragment"), [
    ("http://[::1", "not a valid URL"),
    ("http://127.0.0.1:99999/cb", "invalid port"),
    ("http://127.0.0.1:abc/cb", "invalid port"),
    ("http://127.0.0.1:-1/cb", "invalid port"),
    ("http://a b/cb", "spaces or control characters"),
    ("http:///cb", "names no host"),
    ("ftp://127.0.0.1/cb", "http or https"),
])
async def test_a_callback_url_that_cannot_be_called_is_400(daemon: Daemon, url: str,
                                                           fragment: str) -> None:
    """Before, the first answered 500 (urlsplit's ValueError) and the rest 202, failing only
    after the fifth delivery attempt."""
    async with aiohttp.ClientSession() as s, s.post(
            f"{daemon.url}/async-function/linear", json={"x": [[1, 2, 3, 4]]},
            headers={"X-Callback-Url": url}) as resp:
        assert resp.status == 400, await resp.text()
        assert resp.content_type == "application/json"
        assert fragment in (await resp.json())["error"]
    await _served(daemon)


@pytest.mark.parametrize("path", [b"/function/linear", b"/healthz", b"/no/such/path",
                                  b"/system/functions"])
async def test_an_unknown_expectation_is_a_417_in_json(daemon: Daemon, path: bytes) -> None:
    """aiohttp answers Expect before any middleware runs: it was `417 text/plain`."""
    request = _post(path, b'{"x": [[1, 2, 3, 4]]}', b"application/json").replace(
        b"Host: x\r\n", b"Host: x\r\nExpect: foo\r\n")
    status, headers, body = await _raw(daemon, request)
    assert status == 417, body
    assert headers["content-type"].startswith("application/json"), headers
    assert "Expect: 'foo' is not supported" in json.loads(body)["error"]
    await _served(daemon)


async def test_expect_100_continue_still_works(daemon: Daemon) -> None:
    request = _post(b"/function/linear", b'{"x": [[1, 2, 3, 4]]}', b"application/json").replace(
        b"Host: x\r\n", b"Host: 127.0.0.1\r\nExpect: 100-continue\r\n")
    status, _, body = await _raw(daemon, request)
    assert status == 100 and b"HTTP/1.1 200" in body, body[:200]


@pytest.mark.parametrize("setting", ["slo_ms: .nan", "slo_ms: .inf", "scale: {keep_alive_s: .inf}",
                                     "batching: {max_queue_delay_ms: .nan}"])
async def test_a_setting_that_is_no_finite_number_is_refused_at_deploy(
        daemon: Daemon, tmp_path: Path, setting: str) -> None:
    """These deployed with 200, and GET /system/functions then answered NaN or Infinity."""
    source = make_function(tmp_path / "src", "odd", setting + "\n")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{daemon.url}/system/functions", json={"path": str(source)}) as resp:
            assert resp.status == 400, await resp.text()
            doc = await resp.json()
        assert doc["file"] == str(source / "faasd.yaml")
        assert f"{source / 'faasd.yaml'} line 1" in doc["error"]
        assert "must be a finite number" in doc["error"]
        async with s.get(f"{daemon.url}/system/functions") as resp:
            listed = json.loads(await resp.text(), parse_constant=pytest.fail)
        assert "odd" not in {f["name"] for f in listed}
