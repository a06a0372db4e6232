"""The daemon end to end: real sandboxes, real HTTP, every error as JSON, daemon stays up."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from tests.faasd.builders import TEXT_HANDLER, WEIGHTS, expected_y, make_function

pytestmark = pytest.mark.slow

X = [1.0, 2.0, 3.0, 4.0]


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def healthy(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(f"{url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def error_of(resp: aiohttp.ClientResponse, status: int) -> str:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert isinstance(doc["error"], str) and doc["error"]
    return str(doc["error"])


async def test_plain_v2_and_handler_calls(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/function/linear", json={"x": [X]}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Call-Id"]
            assert float(resp.headers["X-Duration-Seconds"]) > 0
            assert resp.headers["X-Faasd-Cold-Start"] in ("true", "false")
            y = (await resp.json())["y"]
        np.testing.assert_allclose(y, [expected_y(X)], rtol=1e-6)

        v2 = {"id": "a1", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                      "data": X + X}]}
        async with s.post(f"{url}/v2/models/linear/infer", json=v2) as resp:
            doc = await resp.json()
        assert doc["id"] == "a1" and doc["model_name"] == "linear"
        out = doc["outputs"][0]
        assert out["shape"] == [2, 3] and out["datatype"] == "FP32"
        np.testing.assert_allclose(out["data"], expected_y(X) * 2, rtol=1e-6)

        # The second call of the same function finds a warm sandbox.
        async with s.post(f"{url}/function/linear", json={"x": X}) as resp:
            assert resp.headers["X-Faasd-Cold-Start"] == "false"

        async with s.post(f"{url}/function/texty", data=b"1,2,3,4",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        assert doc["sum"] == pytest.approx(sum(expected_y(X)), rel=1e-5)


async def test_v2_path_answers_model_tensors_and_function_path_the_handler(
    daemon: Daemon,
) -> None:
    """texty has preprocess and postprocess: /v2 skips both, /function applies postprocess."""
    url = daemon.url
    v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v2/models/texty/infer", json=v2) as resp:
            assert resp.status == 200, await resp.text()
            doc = await resp.json()
        assert doc["model_name"] == "texty"
        [out] = doc["outputs"]
        assert out["name"] == "y" and out["shape"] == [1, 3] and out["datatype"] == "FP32"
        np.testing.assert_allclose(out["data"], expected_y(X), rtol=1e-6)

        # the same request on the OpenFaaS path gets the handler's answer
        async with s.post(f"{url}/function/texty", json=v2) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        assert answer["sum"] == pytest.approx(sum(expected_y(X)), rel=1e-5)

        # binary tensor extension on the V2 path: raw little-endian FP32 back
        header = json.dumps({
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                        "parameters": {"binary_data_size": 16}}],
            "parameters": {"binary_data_output": True},
        }).encode()
        body = header + np.asarray([X], dtype="<f4").tobytes()
        headers = {"Inference-Header-Content-Length": str(len(header)),
                   "Content-Type": "application/octet-stream"}
        async with s.post(f"{url}/v2/models/texty/infer", data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            raw = await resp.read()
            length = int(resp.headers["Inference-Header-Content-Length"])
        meta = json.loads(raw[:length])
        assert meta["outputs"][0]["parameters"]["binary_data_size"] == 12
        np.testing.assert_allclose(np.frombuffer(raw[length:], dtype="<f4"), expected_y(X),
                                   rtol=1e-6)

        # a raw body has no place on the tensor path, whatever the handler reads
        async with s.post(f"{url}/v2/models/texty/infer", data=b"1,2,3,4",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert "V2 inference request" in await error_of(resp, 400)


async def test_bad_inputs_get_the_right_json_error(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/function/linear", json={"x": [[1, 2, 3]]}) as resp:
            assert "expects [N, 4]" in await error_of(resp, 400)
        wrong_dtype = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64",
                                   "data": [1, 2, 3, 4]}]}
        async with s.post(f"{url}/function/linear", json=wrong_dtype) as resp:
            assert "expects FP32" in await error_of(resp, 400)
        async with s.post(f"{url}/function/linear", data=b"{broken",
                          headers={"Content-Type": "application/json"}) as resp:
            assert "not valid JSON" in await error_of(resp, 400)
        async with s.post(f"{url}/function/nope", json={"x": [X]}) as resp:
            assert "no function named 'nope'" in await error_of(resp, 404)
        huge = io.BytesIO(b"\0" * (2 * 1024 * 1024))
        async with s.post(f"{url}/function/linear", data=huge) as resp:
            assert "exceeds the limit of 1 MiB" in await error_of(resp, 413)
        async with s.post(f"{url}/function/linear", data=b"\x89PNG...",
                          headers={"Content-Type": "image/png"}) as resp:
            await error_of(resp, 415)
        async with s.post(f"{url}/function/texty", data=b"not,numbers",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert "four" in await error_of(resp, 400)
        async with s.post(f"{url}/function/texty", data=b"bug",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert "KeyError" in await error_of(resp, 502)
        async with s.get(f"{url}/function/linear") as resp:
            assert "use POST" in await error_of(resp, 405)
        async with s.get(f"{url}/no/such/path") as resp:
            await error_of(resp, 404)
        await healthy(s, url)
        async with s.post(f"{url}/function/linear", json={"x": [X]}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"die", 502, "SIGKILL"),
    (b"hang", 504, "timeout"),
    (b"oom", 502, "memory"),
])
async def test_misbehaving_sandboxes_fail_one_call_only(
    daemon: Daemon, body: bytes, status: int, fragment: str
) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/function/texty", data=body,
                          headers={"Content-Type": "text/plain"}) as resp:
            message = await error_of(resp, status)
            assert fragment.lower() in message.lower(), message
            assert resp.headers["X-Call-Id"]
        await healthy(s, url)
        async with s.post(f"{url}/function/texty", data=b"1,2,3,4",
                          headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Faasd-Cold-Start"] == "true"  # the sandbox was replaced


async def test_deploy_errors_and_lifecycle_over_http(daemon: Daemon, tmp_path: Path) -> None:
    url = daemon.url
    broken = tmp_path / "src" / "broken"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx model")
    good = make_function(tmp_path / "src", "fresh", "timeout_s: 5\n", TEXT_HANDLER)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/system/functions", json={"path": str(broken)}) as resp:
            message = await error_of(resp, 400)
            doc = await resp.json()
        assert "model.onnx" in (doc.get("file") or "") + message
        async with s.post(f"{url}/system/functions", json={"path": "relative/dir"}) as resp:
            await error_of(resp, 400)
        async with s.get(f"{url}/system/function/broken") as resp:
            await error_of(resp, 404)

        async with s.post(f"{url}/system/functions", json={"path": str(good)}) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        assert created["name"] == "fresh"
        assert created["handler"] == {"preprocess": True, "postprocess": True}
        async with s.put(f"{url}/system/functions", json={"path": str(good)}) as resp:
            assert resp.status == 200
            assert (await resp.json())["version"] == created["version"] + 1
        async with s.get(f"{url}/system/functions") as resp:
            names = [f["name"] for f in await resp.json()]
        assert names == ["fresh", "linear", "texty"]
        async with s.delete(f"{url}/system/functions", json={"functionName": "fresh"}) as resp:
            assert resp.status == 200
        async with s.post(f"{url}/function/fresh", data=b"1,2,3,4") as resp:
            await error_of(resp, 404)
        await healthy(s, url)


async def test_a_rejected_deploy_changes_nothing_and_is_logged(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = daemon.url
    functions_state = tmp_path / "state" / "functions"
    raising = make_function(tmp_path / "src", "raising", "",
                            "raise RuntimeError('boom at import')\n"
                            "def postprocess(outputs):\n    return 1\n")
    async with aiohttp.ClientSession() as s:
        # an update of a name that does not exist is refused before anything is copied
        doc = {"path": str(raising), "name": "nope"}
        async with s.put(f"{url}/system/functions", json=doc) as resp:
            await error_of(resp, 404)
        assert not (functions_state / "nope").exists()
        # a first deploy that fails in the sandbox leaves no trace, so the fixed one is v1
        async with s.post(f"{url}/system/functions", json={"path": str(raising)}) as resp:
            # named by its path in the deployed directory, not in faasd's copy of it
            assert (await error_of(resp, 400)).startswith(
                f"{raising / 'handler.py'} failed to import in the sandbox: RuntimeError")
            assert (await resp.json())["file"] == str(raising / "handler.py")
        assert not (functions_state / "raising").exists()
        (raising / "handler.py").write_text(TEXT_HANDLER)
        async with s.post(f"{url}/system/functions", json={"path": str(raising)}) as resp:
            assert resp.status == 201, await resp.text()
            assert (await resp.json())["version"] == 1
        await healthy(s, url)
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 2 and "boom at import" in rejected[1], rejected
    assert rejected[0].startswith(f"deploy of {raising} rejected: no function named 'nope'")


async def test_v2_metadata_health_and_metrics(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/linear/ready"):
            async with s.get(url + path) as resp:
                assert resp.status == 200, path
        async with s.get(f"{url}/v2") as resp:
            assert "binary_tensor_data" in (await resp.json())["extensions"]
        async with s.get(f"{url}/v2/models/linear") as resp:
            meta = await resp.json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["platform"] == "onnxruntime_onnx"
        async with s.get(f"{url}/v2/models/linear/config") as resp:
            config = await resp.json()
        assert config["max_batch_size"] == 8
        assert config["input"][0]["dims"] == [4]
        async with s.get(f"{url}/v2/models/nope/ready") as resp:
            await error_of(resp, 404)
        async with s.post(f"{url}/function/linear", json={"x": [X]}) as resp:
            assert resp.status == 200
        async with s.get(f"{url}/metrics") as resp:
            text = await resp.text()
        assert 'faasd_function_invocations_total{code="200",function_name="linear"}' in text
        assert "faasd_function_duration_seconds_bucket" in text
        assert 'faasd_function_cold_starts_total{function_name="linear"}' in text
        assert "faasd_function_queue_length" in text
        assert 'faasd_function_warm_sandboxes{function_name="linear"} 1.0' in text


async def test_concurrent_calls_are_batched_and_all_answered(daemon: Daemon) -> None:
    url = daemon.url
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> list[float]:
            async with s.post(f"{url}/function/linear", json={"x": [[i, i, i, i]]}) as resp:
                assert resp.status == 200
                return list((await resp.json())["y"][0])

        results = await asyncio.gather(*(one(i) for i in range(40)))
        for i, y in enumerate(results):
            np.testing.assert_allclose(y, expected_y([i] * 4), rtol=1e-5)
        async with s.get(f"{url}/metrics") as resp:
            text = await resp.text()
    batches = [line for line in text.splitlines()
               if line.startswith('faasd_function_batch_size_count{function_name="linear"}')]
    assert batches and float(batches[0].split()[-1]) < 40  # some calls shared a batch


async def test_raw_json_error_body_is_parseable_for_every_status(daemon: Daemon) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.delete(f"{daemon.url}/system/functions", data=b"[]") as resp,
    ):
        assert resp.status == 400
        assert json.loads(await resp.read())["error"]


async def test_full_queue_is_429_and_shutting_down_is_503_with_retry_after(
    tmp_path: Path, functions_dir: Path
) -> None:
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=functions_dir, max_queue_per_function=1, node_vcpu=1)
    async with Daemon(config) as d, aiohttp.ClientSession() as s:
        async def slow() -> aiohttp.ClientResponse:
            resp = await s.post(f"{d.url}/function/texty", data=b"sleep:0.5",
                                headers={"Content-Type": "text/plain"})
            await resp.read()
            return resp

        controller = d.services.controller
        first = asyncio.create_task(slow())  # runs (one vCPU)
        await until(lambda: controller.in_flight("texty") == 1)
        second = asyncio.create_task(slow())  # waits in the queue
        await until(lambda: controller.queue_lengths().get("texty") == 1)
        third = await slow()
        assert "already queued" in await error_of(third, 429)
        assert int(third.headers["Retry-After"]) >= 1
        assert (await first).status == 200 and (await second).status == 200

        d.services.controller.stop_accepting()
        async with s.post(f"{d.url}/function/linear", json={"x": [X]}) as resp:
            assert "shutting down" in await error_of(resp, 503)
            assert resp.headers["Retry-After"] == "5"
        async with s.get(f"{d.url}/v2/health/ready") as resp:
            await error_of(resp, 503)
        async with s.get(f"{d.url}/v2/health/live") as resp:
            assert resp.status == 200


async def test_binary_v2_on_the_function_path(daemon: Daemon) -> None:
    x = np.array([X, X], dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    async with aiohttp.ClientSession() as s, s.post(
        f"{daemon.url}/function/linear", data=header.encode() + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    ) as resp:
        assert resp.status == 200, await resp.text()
        length = int(resp.headers["Inference-Header-Content-Length"])
        body = await resp.read()
    meta = json.loads(body[:length])["outputs"][0]
    y = np.frombuffer(body[length:], dtype="<f4").reshape(meta["shape"])
    np.testing.assert_allclose(y, x @ WEIGHTS, rtol=1e-6)


async def test_tar_upload_deploy_and_hostile_archives(daemon: Daemon, tmp_path: Path) -> None:
    import tarfile

    from faasd.archive import pack

    source = make_function(tmp_path / "src", "packed")
    hostile = tmp_path / "evil.tar"
    with tarfile.open(hostile, "w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    gz = {"Content-Type": "application/gzip"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{daemon.url}/system/functions?name=packed", data=pack(source),
                          headers=gz) as resp:
            assert resp.status == 201, await resp.text()
        async with s.post(f"{daemon.url}/function/packed", json={"x": [X]}) as resp:
            assert resp.status == 200
        async with s.post(f"{daemon.url}/system/functions?name=evil",
                          data=hostile.read_bytes(),
                          headers={"Content-Type": "application/x-tar"}) as resp:
            await error_of(resp, 400)
        async with s.post(f"{daemon.url}/system/functions?name=junk", data=b"not a tar",
                          headers=gz) as resp:
            assert "tar archive" in await error_of(resp, 400)
    assert not (tmp_path / "escape.txt").exists()
    assert list((daemon.config.state_dir / "uploads").glob("upload-*")) == []


async def test_a_broken_function_at_start_is_reported_and_the_rest_served(
    tmp_path: Path,
) -> None:
    root = tmp_path / "functions"
    make_function(root, "good")
    (root / "bad").mkdir()
    (root / "bad" / "model.onnx").write_bytes(b"corrupt")
    (root / "_private").mkdir()  # skipped: not a function directory
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root)
    async with Daemon(config) as d, aiohttp.ClientSession() as s:
        assert set(d.load_errors) == {"bad"}
        assert "model.onnx" in d.load_errors["bad"]
        async with s.post(f"{d.url}/function/good", json={"x": [X]}) as resp:
            assert resp.status == 200
        async with s.get(f"{d.url}/system/functions") as resp:
            assert [f["name"] for f in await resp.json()] == ["good"]


async def test_a_restarted_daemon_serves_what_was_deployed(tmp_path: Path) -> None:
    source = make_function(tmp_path / "src", "kept", "", TEXT_HANDLER)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state")
    async with (
        Daemon(config) as d,
        aiohttp.ClientSession() as s,
        s.post(f"{d.url}/system/functions", json={"path": str(source)}) as resp,
    ):
        assert resp.status == 201
    async with (
        Daemon(config) as d,
        aiohttp.ClientSession() as s,
        s.post(f"{d.url}/function/kept", data=b"1,2,3,4",
               headers={"Content-Type": "text/plain"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["sum"] == pytest.approx(sum(expected_y(X)), rel=1e-5)


async def test_not_ready_until_the_startup_functions_are_loaded(tmp_path: Path) -> None:
    root = tmp_path / "functions"
    slow_import = "import time\n\ntime.sleep(1.5)\n\n\ndef postprocess(outputs):\n    return {}\n"
    make_function(root, "slow", "", slow_import)
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=root)
    daemon = Daemon(config)
    starting = asyncio.create_task(daemon.start())
    try:
        await until(lambda: daemon.port is not None)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{daemon.url}/v2/health/ready") as resp:
                assert "loading functions" in await error_of(resp, 503)
            async with s.get(f"{daemon.url}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["ready"] is False
            await starting
            async with s.get(f"{daemon.url}/v2/health/ready") as resp:
                assert resp.status == 200
    finally:
        if not starting.done():
            starting.cancel()
        await daemon.stop()


async def test_a_client_that_hangs_up_takes_its_queued_call_with_it(
    tmp_path: Path, functions_dir: Path
) -> None:
    config = DaemonConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state",
                          functions_dir=functions_dir, node_vcpu=1)
    async with Daemon(config) as d, aiohttp.ClientSession() as s:
        controller = d.services.controller
        running = asyncio.create_task(s.post(f"{d.url}/function/texty", data=b"sleep:1",
                                             headers={"Content-Type": "text/plain"}))
        await until(lambda: controller.in_flight("texty") == 1)
        async with aiohttp.ClientSession() as leaver:
            queued = asyncio.create_task(leaver.post(
                f"{d.url}/function/texty", data=b"sleep:1",
                headers={"Content-Type": "text/plain"}))
            await until(lambda: controller.queue_lengths().get("texty") == 1)
            queued.cancel()
        await until(lambda: controller.queue_lengths().get("texty") == 0)
        response = await running
        assert response.status == 200
        response.release()
        await until(lambda: controller.in_flight("texty") == 0)


async def _raw_exchange(daemon: Daemon, pieces: list[bytes], half_close: bool) -> bytes:
    """Send `pieces` over one raw connection with a pause between them; the whole answer."""
    assert daemon.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def _binary_request(rows: int) -> tuple[bytes, np.ndarray]:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / rows
    header = json.dumps({"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y"}]}).encode()
    return header + x.tobytes(), x


async def test_a_body_in_many_pieces_and_a_truncated_one(daemon: Daemon, tmp_path: Path) -> None:
    # one call may hold max_batch_size rows: a function that takes 20,000 at once
    await daemon.services.catalog.deploy(
        make_function(tmp_path / "src", "bulk", "batching: {max_batch_size: 20000}\n"))
    body, x = _binary_request(20_000)  # 320 KB: aiohttp hands it over in several chunks
    head = (f"POST /v2/models/bulk/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {len(body) - x.nbytes}\r\n\r\n").encode()
    fifth = len(body) // 5
    pieces = [head] + [body[i : i + fifth] for i in range(0, len(body), fifth)]
    answer = await _raw_exchange(daemon, pieces, half_close=False)
    status, _, rest = answer.partition(b"\r\n")
    assert b" 200 " in status, answer[:300]
    doc = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    y = np.array(doc["outputs"][0]["data"], dtype=np.float32).reshape(20_000, 3)
    assert np.allclose(y, expected_y(x), rtol=1e-5)

    # A client that stops halfway and half-closes has left: aiohttp cancels the call and
    # closes the connection; the daemon serves on.
    truncated = await _raw_exchange(daemon, [head, body[: len(body) // 2]], half_close=True)
    assert truncated == b"" or b" 400 " in truncated.partition(b"\r\n")[0], truncated[:300]
    async with aiohttp.ClientSession() as session:
        await healthy(session, daemon.url)
        async with session.post(f"{daemon.url}/v2/models/bulk/infer", data=body, headers={
            "Inference-Header-Content-Length": str(len(body) - x.nbytes)}) as resp:
            assert resp.status == 200, await resp.text()
