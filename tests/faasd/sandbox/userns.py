"""Run a command as root of a new user namespace that maps every uid to itself, optionally one
that allows no further user namespace: a host without user namespaces, made for real.

    python userns.py [--no-user-namespaces] -- COMMAND...

The child unshares its user namespace, this process (root of the parent one) writes the full
uid and gid maps, and the child sets its namespace's `user.max_user_namespaces` to 0 (with
the flag) and executes COMMAND. The exit code is COMMAND's; SIGTERM is passed on to it, and
so it is when this process is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
EVERY_ID = "0 0 4294967295"


def main(argv: list[str]) -> int:
    split = argv.index("--")
    no_user_namespaces = "--no-user-namespaces" in argv[:split]
    command = argv[split + 1:]
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(unshared_r)
            os.close(mapped_w)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # killed, we take it along
            if libc.unshare(CLONE_NEWUSER) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
            os.write(unshared_w, b"u")
            if os.read(mapped_r, 1) != b"m":
                raise RuntimeError("the parent did not map the ids")
            if no_user_namespaces:
                with open("/proc/sys/user/max_user_namespaces", "w") as limit:
                    limit.write("0")
            os.execvp(command[0], command)
        except BaseException as exc:
            print(f"userns.py: {exc}", file=sys.stderr)
        os._exit(127)
    os.close(unshared_w)
    os.close(mapped_r)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(pid, signum))
    if os.read(unshared_r, 1) == b"u":
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as ids:
                ids.write(EVERY_ID)
        os.write(mapped_w, b"m")
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
