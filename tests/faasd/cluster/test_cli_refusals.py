"""`faasd up` refuses a cluster it cannot run safely, in one line, before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def up(tmp_path: Path, *flags: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAASD_")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-m", "faasd.cli", "up", "--host", "127.0.0.1", "--port", "0",
         "--state-dir", str(tmp_path / "state"), *flags],
        capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("flags", [("--cluster-addr", "10.0.0.1"),
                                   ("--cluster-addr", "127.0.0.2", "--join", "192.0.2.7")])
def test_gossip_off_loopback_without_a_key_is_refused(tmp_path: Path,
                                                      flags: tuple[str, ...]) -> None:
    done = up(tmp_path, *flags)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "refusing to gossip unencrypted" in done.stderr
    assert "--gossip-key-file" in done.stderr


@pytest.mark.parametrize(("flags", "package"), [((), "serf"), (("--voter",), "etcd-server")])
def test_a_missing_engine_is_one_line_naming_its_package(
        tmp_path: Path, flags: tuple[str, ...], package: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if package == "etcd-server":  # serf present, etcd not: a voter needs both
        (bin_dir / "serf").symlink_to("/bin/true")
    done = up(tmp_path, "--cluster-addr", "127.0.0.2", *flags, path=str(bin_dir))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.endswith(f"apt-get install {package}\n")
