"""`tritonclient.http`, unchanged, as a client of a live daemon: health, metadata, inference.

The sync client is gevent-based, so the daemon runs as a subprocess (`faasd up`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.faasd.builders import WEIGHTS, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon
from tests.functions.conftest import import_path

EXAMPLES = Path(__file__).resolve().parents[2] / "functions"

pytestmark = pytest.mark.slow

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("triton")
    make_function(tmp / "functions", "linear", "batching: {max_batch_size: 8}\n")
    daemon = start_daemon(tmp, tmp / "functions")
    yield daemon
    daemon.stop()


@pytest.fixture
def client(live: DaemonProcess) -> Iterator[object]:
    c = httpclient.InferenceServerClient(f"127.0.0.1:{live.port}")
    yield c
    c.close()


def test_health_and_metadata(client: object) -> None:
    c: httpclient.InferenceServerClient = client  # type: ignore[name-defined]
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("linear")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    meta = c.get_model_metadata("linear")
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert c.get_model_config("linear")["max_batch_size"] == 8


@pytest.mark.parametrize("binary", [True, False])
def test_infer_binary_and_json(client: object, binary: bool) -> None:
    c: httpclient.InferenceServerClient = client  # type: ignore[name-defined]
    x = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
    result = c.infer("linear", [inp], outputs=outputs, request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("y"), x @ WEIGHTS, rtol=1e-5)
    assert result.get_response()["id"] == "r-1"


def test_default_client_path_asks_for_binary_outputs(client: object) -> None:
    c: httpclient.InferenceServerClient = client  # type: ignore[name-defined]
    x = np.ones((1, 4), dtype=np.float32)
    inp = httpclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = c.infer("linear", [inp])
    np.testing.assert_allclose(result.as_numpy("y"), x @ WEIGHTS, rtol=1e-5)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(client: object, algorithm: str) -> None:
    c: httpclient.InferenceServerClient = client  # type: ignore[name-defined]
    x = np.full((2, 4), 0.5, dtype=np.float32)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = c.infer("linear", [inp], request_compression_algorithm=algorithm,
                     response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("y"), x @ WEIGHTS, rtol=1e-5)


def test_errors_reach_the_client_as_messages(client: object) -> None:
    c: httpclient.InferenceServerClient = client  # type: ignore[name-defined]
    inp = httpclient.InferInput("x", [1, 3], "FP32")
    inp.set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"expects \[N, 4\]"):
        c.infer("linear", [inp])
    with pytest.raises(InferenceServerException, match="no function named"):
        c.get_model_metadata("ghost")
    assert not c.is_model_ready("ghost")


def _example_digits(root: Path) -> Path:
    """A copy of functions/digits, its model built here if `make models` has not built it."""
    target = root / "digits"
    shutil.copytree(EXAMPLES / "digits", target)
    if not (target / "model.onnx").is_file():
        build = import_path(EXAMPLES / "build_models.py", "build_models")
        assert build.main(["--out", str(root), "digits"]) == 0
    return target


@pytest.fixture(scope="module")
def digits_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("triton-digits")
    _example_digits(tmp / "functions")
    daemon = start_daemon(tmp, tmp / "functions")
    yield daemon
    daemon.stop()


def test_digits_handler_is_skipped_on_the_v2_path(digits_live: DaemonProcess) -> None:
    """digits has preprocess and postprocess, yet tritonclient reads its model's output tensor."""
    sample = json.loads((EXAMPLES / "digits" / "sample.json").read_text())
    pixels = np.asarray(sample["inputs"][0]["data"], dtype=np.float32).reshape(1, 64)
    batch = np.concatenate([pixels, np.zeros_like(pixels), pixels])
    c = httpclient.InferenceServerClient(f"127.0.0.1:{digits_live.port}")
    try:
        meta = c.get_model_metadata("digits")
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                    "shape": [-1, 10]}]
        inp = httpclient.InferInput("input", list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch, binary_data=True)
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
        result = c.infer("digits", [inp], outputs=wanted)
    finally:
        c.close()
    output = result.get_output("probabilities")
    assert output["parameters"]["binary_data_size"] == 3 * 10 * 4  # raw FP32 bytes, not JSON
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    assert np.argmax(probabilities[0]) == np.argmax(probabilities[2]) == 3  # sample.json is a 3
    np.testing.assert_array_equal(probabilities[0], probabilities[2])
