"""The README's "Profiles" commands, run as printed against the example functions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faasd.daemon_process import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
SECTION = "## Profiles"


def block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    start = readme.index(SECTION)
    body = readme[readme.index("```sh\n", start) + 6:]
    return [line for line in body[: body.index("```")].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    if not (REPO / "functions" / "squeezenet" / "model.onnx").exists():
        pytest.skip("example models not built; run `make models`")
    daemon = start_daemon(tmp_path_factory.mktemp("profiles-readme"), REPO / "functions")
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def test_profile_commands_work_as_printed(examples: DaemonProcess) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    lines = block()
    assert any(line.startswith("faasd profile squeezenet --show") for line in lines)
    env = {**os.environ, "FAASD_URL": examples.url,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for line in lines:
        command = line.replace("127.0.0.1:8080", f"127.0.0.1:{examples.port}")
        out = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (line, out.stdout[-500:], out.stderr)
        if "--show" in line:
            assert out.stdout.splitlines()[1].split()[:4] == ["BATCH", "VCPU", "VGPU",
                                                                "LATENCY_MS"]
            assert " measured" in out.stdout and " fitted" in out.stdout
        if "--png" in line:
            path = Path(line.split("--png")[1].split()[0])
            assert path.read_bytes()[:4] == b"\x89PNG"
        if line.startswith("curl -s http"):
            doc = json.loads(out.stdout)
            assert doc["function"] == "squeezenet" and doc["configurations"]
        if "-X POST" in line:
            events = [json.loads(e) for e in out.stdout.splitlines()]
            assert events[0]["kind"] == "small" and events[-1]["event"] == "done"
