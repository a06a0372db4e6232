"""`Idempotency-Key` on the V2 inference path, for a function and for a workflow served as an
ensemble: the same key and body replay the first V2 answer (its type, its binary header
length, its bytes); another body is 422; a body the V2 path refuses is refused as without a
key. `half` (and `chain`, which ends with it) has a `postprocess` that the V2 path skips."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import numpy as np
import pytest

from faasd.daemon import Daemon

pytestmark = pytest.mark.slow

HEADER_LENGTH = "Inference-Header-Content-Length"


def v2_request(first: float, binary: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "r-1", "inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32",
         "data": [first, 2, 3, 4]}]}
    if binary:
        doc["outputs"] = [{"name": "out", "parameters": {"binary_data": True}}]
    return doc


async def post(s: aiohttp.ClientSession, url: str, doc: dict[str, Any],
               key: str | None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with s.post(url, data=json.dumps(doc), headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def as_request(model: str, first: float, binary: bool = False) -> dict[str, Any]:
    """A V2 request for `model`: `half` takes g, a workflow its source's x."""
    doc = v2_request(first, binary)
    if model == "half":
        doc["inputs"][0]["name"] = "g"
    return doc


@pytest.mark.parametrize(("model", "path"), [
    ("half", "/v2/models/half/infer"),
    ("half", "/v2/models/half/versions/1/infer"),
    ("chain", "/v2/models/chain/infer"),
    ("chain", "/v2/models/chain/versions/1/infer"),
])
async def test_the_same_key_and_body_replay_the_v2_answer(daemon: Daemon, model: str,
                                                          path: str) -> None:
    url = daemon.url + path
    async with aiohttp.ClientSession() as s:
        status, _, unkeyed = await post(s, url, as_request(model, 1.0), None)
        assert status == 200, unkeyed
        status, first_headers, first = await post(s, url, as_request(model, 1.0), "v2-1")
        assert status == 200, first
        assert "X-Idempotent-Replay" not in first_headers
        # the V2 answer (the model's tensors), not the handler's postprocess
        doc = json.loads(first)
        assert doc == json.loads(unkeyed) and doc["outputs"][0]["name"] == "out", doc
        assert first_headers["Content-Type"].startswith("application/json")
        status, headers, again = await post(s, url, as_request(model, 1.0), "v2-1")
        assert (status, again) == (200, first)
        assert headers["X-Idempotent-Replay"] == "true"
        assert headers["X-Call-Id"] == first_headers["X-Call-Id"]
        assert headers["Content-Type"] == first_headers["Content-Type"]
        status, headers, body = await post(s, url, as_request(model, 9.0), "v2-1")
        assert status == 422 and headers["Content-Type"].startswith("application/json"), body
        assert "was used for another request" in json.loads(body)["error"]
        # the body's form is checked as on the V2 path without a key: V2 requests only
        async with s.post(url, data=b"1,2,3,4", headers={"Content-Type": "text/csv",
                                                         "Idempotency-Key": "v2-2"}) as resp:
            assert resp.status == 400, await resp.text()
            assert "V2 inference request" in (await resp.json())["error"]


@pytest.mark.parametrize("model", ["half", "chain"])
async def test_a_binary_v2_answer_is_replayed_with_its_header_length(
        daemon: Daemon, model: str) -> None:
    url = f"{daemon.url}/v2/models/{model}/infer"
    async with aiohttp.ClientSession() as s:
        status, first_headers, first = await post(s, url, as_request(model, 1.0, True), "bin")
        assert status == 200, first
        status, headers, again = await post(s, url, as_request(model, 1.0, True), "bin")
        assert (status, again) == (200, first) and headers["X-Idempotent-Replay"] == "true"
    for answer, given in ((first, first_headers), (again, headers)):
        assert given["Content-Type"] == "application/octet-stream"
        length = int(given[HEADER_LENGTH])
        meta = json.loads(answer[:length])["outputs"][0]
        assert meta["parameters"]["binary_data_size"] == len(answer) - length
        out = np.frombuffer(answer[length:], dtype="<f4")
        assert out.shape == (4,) and np.isfinite(out).all()


async def test_a_key_on_the_v2_path_and_on_the_function_path_are_different_requests(
        daemon: Daemon) -> None:
    """The two paths answer the same body differently (the V2 path skips `postprocess`), so
    one key cannot stand for both: the second is 422, not the other path's answer."""
    async with aiohttp.ClientSession() as s:
        status, _, _ = await post(s, f"{daemon.url}/v2/models/half/infer",
                                  as_request("half", 1.0), "both")
        assert status == 200
        status, _, body = await post(s, f"{daemon.url}/function/half", as_request("half", 1.0),
                                     "both")
        assert status == 422, body
        status, _, body = await post(s, f"{daemon.url}/v2/models/half/versions/7/infer",
                                     as_request("half", 1.0), "other")
        assert status == 404 and b"serves version 1 only" in body


async def test_an_async_binary_v2_result_keeps_its_header_length(daemon: Daemon) -> None:
    """The record keeps the answer's header length, which comes back as the header on
    `.../result`. (`inc` has no postprocess, so its answer on the function path is the V2
    one.)"""
    from tests.faasd.builders import invocation_finished

    request = as_request("half", 1.0)
    request["inputs"][0]["name"] = "h"
    request["outputs"] = [{"name": "g", "parameters": {"binary_data": True}}]
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{daemon.url}/async-function/inc", data=json.dumps(request),
                          headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 202, await resp.text()
            call_id = resp.headers["X-Call-Id"]
        assert (await invocation_finished(s, daemon.url, call_id))["status"] == "succeeded"
        async with s.get(f"{daemon.url}/system/invocations/{call_id}/result") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/octet-stream"
            length = int(resp.headers[HEADER_LENGTH])
            answer = await resp.read()
    assert json.loads(answer[:length])["outputs"][0]["name"] == "g"
    assert len(answer) - length == 16  # four FP32
