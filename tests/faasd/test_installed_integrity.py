"""Verified installed versions: a damaged copy is restored from its source, or not served."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import aiohttp
import pytest

from faasd.config import DaemonConfig
from faasd.daemon import Daemon
from faasd.functions.integrity import differences
from tests.faasd.builders import make_function


def test_differences_name_each_file() -> None:
    recorded = {"model.onnx": "a", "handler.py": "b", "labels.txt": "c"}
    actual = {"model.onnx": "x", "labels.txt": "c", "extra.bin": "d"}
    assert differences(recorded, actual) == [
        "handler.py is missing", "model.onnx has changed", "extra.bin was not installed"]
    assert differences(recorded, dict(recorded)) == []


def _damage(state: Path, name: str) -> None:
    model = next((state / "functions" / name).glob("[0-9]*/model.onnx"))
    model.chmod(0o644)
    model.write_bytes(b"")


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


async def test_a_damaged_copy_is_restored_from_an_unchanged_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "functions"
    make_function(root, "linear")
    config = DaemonConfig(port=0, state_dir=tmp_path / "state", functions_dir=root)
    async with Daemon(config):
        pass
    _damage(tmp_path / "state", "linear")
    caplog.set_level(logging.WARNING, "faasd.functions")
    async with Daemon(config) as daemon, aiohttp.ClientSession() as session:
        assert not daemon.load_errors, daemon.load_errors
        assert "model.onnx has changed" in caplog.text and "restored from" in caplog.text
        async with session.post(f"{daemon.url}/function/linear",
                                json={"x": [[1, 2, 3, 4]]}) as resp:
            assert resp.status == 200
        assert daemon.services.catalog.get("linear")[0].version == 1  # the same version


async def test_a_damaged_copy_whose_source_changed_is_not_ready(tmp_path: Path) -> None:
    source = make_function(tmp_path / "src", "linear")
    config = DaemonConfig(port=0, state_dir=tmp_path / "state")
    async with Daemon(config) as daemon:
        await daemon.services.catalog.deploy(source)
    _damage(tmp_path / "state", "linear")
    shutil.rmtree(source)  # nothing to restore from
    async with Daemon(config) as daemon, aiohttp.ClientSession() as session:
        url = daemon.url
        assert await _status(session, f"{url}/v2/models/linear/ready") == 503
        assert await _status(session, f"{url}/v2/health/ready") == 503
        async with session.post(f"{url}/function/linear", json={"x": [[1, 2, 3, 4]]}) as resp:
            assert resp.status == 503
            assert "model.onnx has changed" in (await resp.json())["error"]
        async with session.get(f"{url}/system/function/linear") as resp:
            doc = await resp.json()
        assert doc["ready"] is False and "deploy the function again" in doc["reason"]
        await daemon.services.catalog.deploy(make_function(tmp_path / "src2", "linear"))
        assert await _status(session, f"{url}/v2/models/linear/ready") == 200
        assert await _status(session, f"{url}/v2/health/ready") == 200


async def test_faasd_verify_reports_offline(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = make_function(tmp_path / "src", "linear")
    config = DaemonConfig(port=0, state_dir=tmp_path / "state")
    async with Daemon(config) as daemon:
        await daemon.services.catalog.deploy(source)
    command = [sys.executable, "-m", "faasd.cli", "verify", "--state-dir",
               str(tmp_path / "state")]
    intact = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert intact.returncode == 0 and "linear v1: ok" in intact.stdout, intact
    _damage(tmp_path / "state", "linear")
    restored = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert restored.returncode == 0 and "restored from its source" in restored.stdout, restored
    _damage(tmp_path / "state", "linear")
    shutil.rmtree(source)
    broken = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1 and "not ready" in broken.stdout, broken
