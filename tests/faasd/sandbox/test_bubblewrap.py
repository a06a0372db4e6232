"""The bwrap command line a function's box is started with (what it binds, in what order)."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
