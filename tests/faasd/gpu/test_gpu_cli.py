"""What a new user tries: `FAASD_GPU_FAKE=... faasd up`, `faasd nodes`, `faasd invoke -v`, and
MPS mode with its control daemon started and stopped by `faasd up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faasd.gpu.mps import PID_FILE, _alive
from tests.faasd.builders import make_function
from tests.faasd.daemon_process import start_daemon
from tests.faasd.gpu.test_mps import STAND_IN

pytestmark = pytest.mark.slow


def faasd(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    command, rest = args[0], list(args[1:])
    return subprocess.run([sys.executable, "-m", "faasd.cli", command, "--gateway", url, *rest],
                          capture_output=True, text=True, timeout=120)


def test_faasd_nodes_and_the_device_of_a_call_on_a_fake_h100(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    make_function(functions, "small", "resources: {vgpu: 1}\n")
    daemon = start_daemon(tmp_path, functions, env={"FAASD_GPU_FAKE": "h100-80gb-mig-mixed"})
    try:
        listed = faasd("nodes", url=daemon.url)
        assert listed.returncode == 0, listed.stderr
        # the cluster's table (this node alone, its own leader), then this node's resources
        members, resources = listed.stdout.split("\n\n")
        assert members.splitlines()[0].split()[:2] == ["NAME", "ADDRESS"]
        header, row = resources.splitlines()
        assert header.split()[:3] == ["NODE", "VCPU", "FREE/ALL"]
        assert "NVIDIA H100 80GB HBM3" in row and " mig " in row
        assert "7/7" in row and "3g.40gb 2g.20gb 1g.10gb 1g.10gb" in row

        invoked = faasd("invoke", "small", "-v", "--data", '{"x": [[1, 2, 3, 4]]}',
                        url=daemon.url)
        assert invoked.returncode == 0, invoked.stderr
        assert "X-Faasd-Device: cpu (fake MIG-" in invoked.stderr

        doc = json.loads(faasd("nodes", "-o", "json", url=daemon.url).stdout)
        (node,) = doc["nodes"]
        (gpu,) = node["gpus"]
        assert gpu["free_units"] == 6
        assert [i["profile"] for i in gpu["instances"] if i["in_use"]] == ["1g.10gb"]
        assert "1g.10gb*" in faasd("nodes", url=daemon.url).stdout
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "GPU 0 NVIDIA H100 80GB HBM3 mig [3g.40gb + 2g.20gb + 1g.10gb + 1g.10gb]: " \
           "7 GPU units (fake NVML machine h100-80gb-mig-mixed)" in daemon.log()


def test_mps_mode_starts_the_control_daemon_and_stops_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-cuda-mps-control").write_text(STAND_IN)
    (bin_dir / "nvidia-cuda-mps-control").chmod(0o755)
    functions = tmp_path / "functions"
    make_function(functions, "shared", "resources: {vgpu: 2}\n")
    env = {"FAASD_GPU_FAKE": "a100-40gb", "FAASD_GPU_MODE": "mps",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    daemon = start_daemon(tmp_path, functions, env=env)
    pid_file = tmp_path / "state" / "mps" / "pipe" / PID_FILE
    try:
        mps_pid = int(pid_file.read_text())
        assert _alive(mps_pid)
        invoked = faasd("invoke", "shared", "-v", "--data", '{"x": [[1, 2, 3, 4]]}',
                        url=daemon.url)
        assert invoked.returncode == 0, invoked.stderr
        assert "X-Faasd-Device: cpu (fake cuda:0 (mps 29%))" in invoked.stderr
    finally:
        code = daemon.stop()
        if pid_file.exists() and _alive(int(pid_file.read_text())):  # pragma: no cover
            os.kill(int(pid_file.read_text()), 9)
    assert code == 0, daemon.log()
    assert not _alive(mps_pid)
    assert "quit" in (tmp_path / "state" / "mps" / "log" / "control.log").read_text()
