"""`tritonclient.http`, unchanged, against a daemon that requires tokens: it sends the header
(`headers=` on each call), and without it gets a 401 whose JSON error it reports."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from faasd.auth.store import TokenStore
from faasd.auth.tokens import Scope
from tests.faasd.builders import WEIGHTS, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str]]:
    tmp = tmp_path_factory.mktemp("triton-auth")
    make_function(tmp / "functions", "linear")
    _, token = TokenStore(tmp / "state").create(Scope.INVOKE, "triton", None, time.time())
    daemon = start_daemon(tmp, tmp / "functions")
    yield daemon, token
    daemon.stop()


def test_tritonclient_with_and_without_the_header(live: tuple[DaemonProcess, str]) -> None:
    daemon, token = live
    client = httpclient.InferenceServerClient(f"127.0.0.1:{daemon.port}")
    try:
        auth = {"Authorization": f"Bearer {token}"}
        assert client.is_server_live()  # health stays open
        assert client.get_model_metadata("linear", headers=auth)["name"] == "linear"
        x = np.arange(4, dtype=np.float32).reshape(1, 4)  # linear takes one row a call
        tensor = httpclient.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("linear", [tensor], headers=auth)
        np.testing.assert_allclose(result.as_numpy("y"), x @ WEIGHTS, rtol=1e-5)
        with pytest.raises(InferenceServerException, match="needs an API token"):
            client.infer("linear", [tensor])
    finally:
        client.close()
