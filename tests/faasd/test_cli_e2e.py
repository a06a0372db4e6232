"""The `faasd` CLI against a live daemon started with `faasd up` (a real subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.faasd.builders import TEXT_HANDLER, expected_y, make_function
from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("cli")
    functions = tmp / "functions"
    make_function(functions, "linear", "batching: {max_batch_size: 4, max_queue_delay_ms: 1}\n")
    daemon = start_daemon(tmp, functions)
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def faasd(*args: str, url: str | None = None, stdin: bytes | None = None,
          ) -> subprocess.CompletedProcess[bytes]:
    gateway = ["--gateway", url] if url else []
    command, rest = args[0], list(args[1:])
    return subprocess.run(
        [sys.executable, "-m", "faasd.cli", command, *gateway, *rest],
        input=stdin, capture_output=True, timeout=120,
    )


def test_list_describe_invoke(live: DaemonProcess) -> None:
    listed = faasd("list", url=live.url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.decode().splitlines()
    assert header.split()[:3] == ["NAME", "VERSION", "INPUTS"]
    assert rows[0].startswith("linear")

    as_json = json.loads(faasd("list", "-o", "json", url=live.url).stdout)
    assert as_json[0]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]

    described = faasd("describe", "linear", url=live.url).stdout.decode()
    assert "Inputs:" in described and "x FP32[N,4]" in described
    assert f"{live.url}/function/linear" in described

    invoked = faasd("invoke", "linear", "--data", '{"x": [[1, 2, 3, 4]]}', url=live.url)
    assert invoked.returncode == 0, invoked.stderr
    np.testing.assert_allclose(json.loads(invoked.stdout)["y"][0], expected_y([1, 2, 3, 4]),
                               rtol=1e-5)
    piped = faasd("invoke", "linear", "-v", url=live.url, stdin=b'{"x": [0, 0, 0, 1]}')
    assert piped.returncode == 0
    assert b"X-Call-Id:" in piped.stderr


def test_invoke_from_a_file(live: DaemonProcess, tmp_path: Path) -> None:
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                            "data": [1, 1, 1, 1]}]}))
    out = faasd("invoke", "linear", "--data", f"@{body}", url=live.url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"][0]["shape"] == [1, 3]


def test_deploy_redeploy_remove(live: DaemonProcess, tmp_path: Path) -> None:
    source = make_function(tmp_path, "words", "timeout_s: 5\n", TEXT_HANDLER)
    first = faasd("deploy", str(source), "--name", "wordy", url=live.url)
    assert first.returncode == 0, first.stderr
    assert re.fullmatch(r"deployed wordy v\d+ in (\d+ ms|\d+\.\d s): POST http://\S+/function/"
                        r"wordy\n", first.stdout.decode()), first.stdout
    again = faasd("deploy", str(source), "--name", "wordy", "-o", "json", url=live.url)
    assert json.loads(again.stdout)["replaced_version"] is not None
    called = faasd("invoke", "wordy", "--data", "1,2,3,4", "--content-type", "text/plain",
                   url=live.url)
    assert json.loads(called.stdout)["sum"] == pytest.approx(sum(expected_y([1, 2, 3, 4])))
    removed = faasd("remove", "wordy", url=live.url)
    assert removed.returncode == 0 and b"removed wordy" in removed.stdout


def test_deploy_by_upload(live: DaemonProcess, tmp_path: Path) -> None:
    source = make_function(tmp_path, "shipped", "timeout_s: 5\n", TEXT_HANDLER)
    out = faasd("deploy", str(source), "--upload", "-o", "json", url=live.url)
    assert out.returncode == 0, out.stderr
    deployed = json.loads(out.stdout)
    assert deployed["name"] == "shipped" and deployed["handler"]["preprocess"]
    assert deployed["directory"] == "functions/shipped/1"  # no host path in an answer
    scratch = live.log_path.parent / "state" / "uploads"
    assert list(scratch.glob("upload-*")) == []  # the unpacked copy was cleaned up
    called = faasd("invoke", "shipped", "--data", "0,0,0,1", "--content-type", "text/plain",
                   url=live.url)
    assert json.loads(called.stdout)["sum"] == pytest.approx(sum(expected_y([0, 0, 0, 1])))
    assert faasd("remove", "shipped", url=live.url).returncode == 0


def test_errors_are_one_line_with_non_zero_exit(live: DaemonProcess, tmp_path: Path) -> None:
    missing = faasd("describe", "ghost", url=live.url)
    assert missing.returncode == 1
    assert missing.stderr.decode().strip().startswith("faasd: no function named 'ghost'")
    assert len(missing.stderr.decode().strip().splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    failed = faasd("deploy", str(bad), url=live.url)
    assert failed.returncode == 1
    assert b"HTTP 400" in failed.stderr


def test_daemon_down_is_a_clear_error(tmp_path: Path) -> None:
    down = "http://127.0.0.1:9"  # discard port: nothing listens there
    for args in (("list",), ("invoke", "x", "--data", "{}"), ("deploy", str(tmp_path))):
        out = faasd(*args, url=down)
        assert out.returncode == 2
        assert b"cannot reach the faasd daemon at http://127.0.0.1:9" in out.stderr
    version = faasd("version", url=down)
    assert version.returncode == 0 and b"not reachable" in version.stdout


def test_gateway_without_scheme_means_http(live: DaemonProcess) -> None:
    bare = live.url.removeprefix("http://")  # host:port, as tritonclient takes it
    out = faasd("list", "-o", "json", url=bare)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["name"] == "linear"


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "ftp://127.0.0.1", "http://:8080",
                                 "http://127.0.0.1:port"])
def test_a_malformed_gateway_is_one_line_not_a_traceback(url: str) -> None:
    for command in ("list", "version"):
        out = faasd(command, url=url)
        assert out.returncode == 1
        lines = out.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "is not a daemon URL" in lines[0], lines
        assert "http://HOST:PORT" in lines[0]


def test_invoke_with_an_unreadable_file_says_which(live: DaemonProcess, tmp_path: Path) -> None:
    for target, reason in ((tmp_path / "nope.json", "No such file"), (tmp_path, "Is a directory")):
        out = faasd("invoke", "linear", "--data", f"@{target}", url=live.url)
        assert out.returncode == 1
        message = out.stderr.decode().strip()
        assert message == f"faasd: cannot read the body from {target}: {reason}" + (
            " or directory" if reason == "No such file" else "")


def test_version_reports_both_sides(live: DaemonProcess) -> None:
    out = json.loads(faasd("version", "-o", "json", url=live.url).stdout)
    assert out["client"] == out["server"]


def test_faasd_url_environment_variable(live: DaemonProcess) -> None:
    import os

    env = {**os.environ, "FAASD_URL": live.url}
    out = subprocess.run([sys.executable, "-m", "faasd.cli", "list", "-o", "json"],
                         capture_output=True, env=env, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)[0]["name"] == "linear"
