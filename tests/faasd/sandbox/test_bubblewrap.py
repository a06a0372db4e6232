"""The bwrap command line a function's box is started with (what it binds, in what order),
and the start-up probe, on a host without user namespaces made for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from faasd.sandbox import bubblewrap
from faasd.sandbox.bubblewrap import Box


def _pairs(args: list[str], option: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == option]


def test_a_function_under_tmp_is_bound_after_the_private_tmp(tmp_path: Path) -> None:
    function_dir = tmp_path / "functions" / "f" / "1"
    function_dir.mkdir(parents=True)
    args = bubblewrap.mount_args(Box(str(function_dir)))
    tmpfs = args.index("--tmpfs")
    assert args[tmpfs - 4:tmpfs + 2] == ["--size", str(bubblewrap.BOX_TMP_MB * 2**20), "--perms",
                                         "1777", "--tmpfs", "/tmp"]
    bound = args.index(str(function_dir))
    assert bound > tmpfs and (str(function_dir), str(function_dir)) in _pairs(args, "--ro-bind")
    # its parents exist in the box and are open to the worker's uid (bwrap would make 0700)
    made = [args[i + 3] for i, a in enumerate(args) if a == "--perms" and args[i + 2] == "--dir"]
    assert str(function_dir.parent) in made and str(tmp_path) in made
    assert all(args[i + 1] == "0755" for i, a in enumerate(args)
               if a == "--perms" and args[i + 2] == "--dir")


def test_the_box_holds_the_system_read_only_and_nothing_of_the_host_tmp_or_etc_shadow(
    tmp_path: Path,
) -> None:
    args = bubblewrap.mount_args(Box(str(tmp_path)))
    sources = {source for source, _ in _pairs(args, "--ro-bind")}
    assert "/usr" in sources and "/etc/shadow" not in sources and "/etc" not in sources
    allowed = {*bubblewrap.SYSTEM_DIRS, *bubblewrap.ETC_FILES, bubblewrap.CPU_TOPOLOGY,
               *bubblewrap.python_dirs(), str(tmp_path)}
    assert sources <= allowed and "/tmp" not in sources
    assert "--bind" not in args  # nothing of the host is writable
    # a directory inside one already bound is not bound again
    assert not any(s != "/usr" and s.startswith("/usr/") for s in sources)


def test_network_and_gpu_settings_change_the_namespaces_and_devices(tmp_path: Path) -> None:
    closed = bubblewrap.command(Box(str(tmp_path)))
    opened = bubblewrap.command(Box(str(tmp_path), network=True))
    assert "--unshare-net" in closed and "--unshare-net" not in opened
    for args in (closed, opened):
        assert {"--unshare-pid", "--unshare-ipc", "--die-with-parent"} <= set(args)
        assert args[-1] == "--" and args[args.index("--chdir") + 1] == str(tmp_path)
        added = [args[i + 1] for i, a in enumerate(args) if a == "--cap-add"]
        assert added == list(bubblewrap.KEPT_CAPABILITIES)
    nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*"))
    gpu = bubblewrap.command(Box(str(tmp_path), gpu=True))
    assert [source for source, _ in _pairs(gpu, "--dev-bind")] == nodes


def test_a_function_in_dev_shm_is_bound_below_the_box_s_own_dev() -> None:
    with tempfile.TemporaryDirectory(dir="/dev/shm") as state:  # a state directory in memory
        directory = f"{state}/functions/f/1"
        Path(directory).mkdir(parents=True)
        args = bubblewrap.mount_args(Box(directory))
    assert (directory, directory) in _pairs(args, "--ro-bind")
    assert args.index(directory) > args.index("--dev")


USERNS = Path(__file__).with_name("userns.py")
needs_namespaces = pytest.mark.skipif(
    bubblewrap.probe() is not None, reason="this host cannot make namespaces")


def _in_user_namespace(*command: str, user_namespaces: bool) -> list[str]:
    """`command`, run as root of a user namespace of its own that allows (or not) further
    user namespaces; the command line for Popen."""
    flags = [] if user_namespaces else ["--no-user-namespaces"]
    return [sys.executable, str(USERNS), *flags, "--", *command]


@needs_namespaces
@pytest.mark.parametrize("user_namespaces", [True, False])
def test_the_probe_finds_a_host_without_user_namespaces(user_namespaces: bool) -> None:
    """bubblewrap itself needs none (it runs as root), but every sandbox makes one: the probe
    tries, as a worker does."""
    code = "from faasd.sandbox import bubblewrap; print(bubblewrap.probe())"
    done = subprocess.run(_in_user_namespace(sys.executable, "-c", code,
                                             user_namespaces=user_namespaces),
                          capture_output=True, text=True, timeout=60, check=True)
    if user_namespaces:
        assert done.stdout.strip() == "None", done.stderr
    else:
        assert "(unshare): No space left on device" in done.stdout
        assert "max_user_namespaces" in done.stdout


@needs_namespaces
@pytest.mark.slow
def test_without_user_namespaces_the_daemon_refuses_to_start_unless_allowed(
        tmp_path: Path) -> None:
    up = [sys.executable, "-m", "faasd.cli", "up", "--host", "127.0.0.1", "--port", "0",
          "--state-dir", str(tmp_path / "state"), "--port-file", str(tmp_path / "port")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAASD_", "NOTIFY_"))}
    refused = subprocess.run(_in_user_namespace(*up, user_namespaces=False), env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0
    assert "cannot be confined in namespaces here" in refused.stderr
    assert "No space left on device" in refused.stderr and "allow_unconfined" in refused.stderr
    assert not (tmp_path / "port").exists()

    log = tmp_path / "allowed.log"
    with log.open("wb") as out:
        allowed = subprocess.Popen(_in_user_namespace(*up, user_namespaces=False),
                                   env={**env, "FAASD_ALLOW_UNCONFINED": "true"},
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "port").exists():
            assert allowed.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        allowed.send_signal(signal.SIGTERM)
        assert allowed.wait(30) == 0, log.read_text()
    assert "sandboxes run WITHOUT namespaces" in log.read_text()
