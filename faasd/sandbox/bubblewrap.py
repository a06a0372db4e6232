"""bubblewrap around each function's fork server: the namespaces and the root a sandbox sees.

The fork server design stays: a worker is forked from a process that has onnxruntime imported.
bubblewrap (Debian's `bwrap`) confines a program it executes, so it cannot confine a forked
worker itself; it confines the fork server instead. A confined function gets a fork server of
its own, started as

    bwrap --unshare-pid --unshare-ipc --unshare-uts --unshare-net --die-with-parent
          --new-session --cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID
          --tmpfs /tmp (1 MiB) --ro-bind /usr ... --ro-bind FUNCTION_DIR ... --proc /proc
          --dev /dev -- python -m faasd.sandbox.forkserver FD

and its workers are forked inside that box. Inside it:

1. PID, IPC, UTS and network namespaces (no network at all, not even the daemon's port or
   another local service, unless the function sets `network: true`), and a mount namespace
   whose root is a tmpfs with read-only binds of the system (`/usr`, `/lib*`, `/bin`, `/sbin`,
   a few files of `/etc`, no `shadow`), Python's standard library and site-packages, the
   faasd package, the CPU topology in `/sys`, bubblewrap's minimal `/dev`, the function's own
   version directory at its usual path, a `/proc` of the box's own processes and a `/tmp` of
   `BOX_TMP_MB` (each worker mounts its own over it). The daemon's state directory, other
   functions and the host's `/tmp` are not in it.
2. The fork server keeps only CAP_SETUID and CAP_SETGID, and only to hand each worker a user
   id of its own (`faasd.sandbox.identity`): a worker gives up root, its capabilities and
   the right to gain privileges before it loads anything of the function, and the fork server
   kills whatever that uid left when the worker ends.

What is shared, and why: the sandboxes of one function (one version, one `network` setting)
share a box, the read-only root above and its fork server; they run the same code for the same
owner. Each worker then makes user, PID, mount, IPC, UTS and (without `network: true`) network
namespaces of its own inside the box, with a `/tmp` of its own, and keeps no capability in
them (`faasd.sandbox.identity`), so between sandboxes stand their uids, those namespaces and
their cgroups; between functions, and between a function and the host, stands bubblewrap. The
box's own `/tmp` holds only what is bound below it. The box itself has no user namespace: the
daemon is root, so bubblewrap needs none, and a root of a box's user namespace would map onto
the host's root; each worker's own user namespace maps only its unprivileged uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
             "/etc/ssl", "/etc/ca-certificates", "/etc/nsswitch.conf", "/etc/hosts",
             "/etc/mime.types", "/etc/alternatives")
CPU_TOPOLOGY = "/sys/devices/system/cpu"
#: The capabilities the fork server keeps inside the box, to give each worker its own uid.
KEPT_CAPABILITIES = ("CAP_SETUID", "CAP_SETGID")
INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap)"
#: The box's own /tmp: only the fork server's, and the mount points of what is bound below
#: it; each worker mounts a /tmp of its own over it (`faasd.sandbox.identity`).
BOX_TMP_MB = 1


@dataclass(frozen=True)
class Box:
    """What one confined fork server is made for; sandboxes with equal boxes share one."""

    function_dir: str
    network: bool = False
    #: bind the NVIDIA device nodes (sandboxes with a GPU slice)
    gpu: bool = False
    #: the directory's inode: a box binds the directory it found, so a version directory
    #: removed and made again (a failed deploy, then a fixed one) needs a new box
    inode: int = 0


def python_dirs() -> tuple[str, ...]:
    """The directories a handler's `import` may read: the interpreter's prefix (its binary,
    standard library and extension modules), every site-packages on `sys.path`, the virtual
    environment, and the faasd package's own directory (handlers use `faasd.handlers`).
    Never the current directory or a whole source checkout, which may hold the daemon's
    state."""
    found: set[str] = {sys.base_prefix, sys.prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            found.add(sysconfig.get_paths()[key])
    found.update(p for p in sys.path if p.endswith(("site-packages", "dist-packages",
                                                    "lib-dynload")))
    found.add(str(Path(__file__).resolve().parents[1]))  # faasd itself (faasd.handlers)
    return tuple(sorted(p for p in found if os.path.isdir(p)))


def _covered(path: str, done: set[str]) -> bool:
    """True if `path` or a directory above it is already bound or linked."""
    parts = path.rstrip("/").split("/")
    return any("/".join(parts[:i]) in done for i in range(2, len(parts) + 1))


def mount_args(box: Box) -> list[str]:
    """bwrap's file-system arguments for `box`, in the order bwrap applies them: `/tmp`
    first (a function directory under /tmp, as in tests, is bound on top of it, not hidden),
    then every source by depth, each parent directory made world-readable (bubblewrap would
    make it 0700, closed to the worker's uid), a bind already covered by one above skipped."""
    gpu_nodes = sorted(str(p) for p in Path("/dev").glob("nvidia*")) if box.gpu else []
    wanted = [*SYSTEM_DIRS, *ETC_FILES, CPU_TOPOLOGY, *python_dirs(), box.function_dir]
    sources = sorted({p for p in wanted if os.path.lexists(p)},
                     key=lambda p: (p.count("/"), p))
    args = ["--size", str(BOX_TMP_MB * 2**20), "--perms", "1777", "--tmpfs", "/tmp",
            "--dev", "/dev", "--proc", "/proc"]
    done = {"/proc"}  # bound: nothing is bound below it
    # directories that exist, below which binds may go (a state directory in /dev/shm)
    made = {"/tmp", "/dev"}
    for path in sources:
        if _covered(path, done):
            continue
        parent = os.path.dirname(path)
        ancestors = []
        while parent not in ("/", "") and parent not in made and not _covered(parent, done):
            ancestors.append(parent)
            parent = os.path.dirname(parent)
        for directory in reversed(ancestors):
            args += ["--perms", "0755", "--dir", directory]
            made.add(directory)
        if os.path.islink(path) and path in SYSTEM_DIRS:  # /bin -> usr/bin on merged-/usr
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
        done.add(path)
    for node in gpu_nodes:
        args += ["--dev-bind", node, node]
    return args


def command(box: Box) -> list[str]:
    """The bwrap command line that runs a program inside `box` (append the program)."""
    namespaces = ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if not box.network:
        namespaces.append("--unshare-net")
    capabilities = ["--cap-drop", "ALL"]
    for capability in KEPT_CAPABILITIES:
        capabilities += ["--cap-add", capability]
    return ["bwrap", *namespaces, "--die-with-parent", "--new-session", *capabilities,
            *mount_args(box), "--chdir", box.function_dir, "--"]


#: What the probe runs in its box: a worker's own confinement (`identity.probe`). `-P`: the
#: box's working directory (this package's) is not put on `sys.path`.
_PROBE = ("-P", "-c", "import sys; from faasd.sandbox import identity; sys.exit(identity.probe())")


def probe() -> str | None:
    """None when bubblewrap can confine sandboxes on this host, else why not (one line).

    It makes a box as a function's is made and, inside it, does what each worker does to
    confine itself (a uid, then user, PID, mount, IPC, UTS and network namespaces of its
    own): the box alone needs no user namespace (bubblewrap runs as root), so a host without
    them would pass, and every sandbox would then fail to start."""
    if shutil.which("bwrap") is None:
        return f"bubblewrap is not installed: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "faasd is not running as root (bubblewrap needs it to give each worker a uid)"
    box = Box(function_dir=str(Path(__file__).resolve().parent))
    try:
        result = subprocess.run([*command(box), sys.executable, *_PROBE],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap did not run: {exc}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        return f"bubblewrap cannot make a sandbox here: {lines[-1]}"
    return None
