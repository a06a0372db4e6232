"""What a deploy may read in a function directory: regular files and directories inside it.

A path deploy reads a directory on the daemon's host with the daemon's rights, so the
directory is checked before any file in it is opened:

* a symbolic link is followed only to a regular file or directory inside the function
  directory; a link out of it (`/etc/shadow`), a dangling link, a link loop, or a link to a
  directory that contains it is a DeployError (400) naming the link;
* a device, FIFO or socket is a DeployError naming it: reading `/dev/zero` never ends, and
  opening a FIFO blocks until a writer comes;
* `open_regular` opens without blocking and checks, on the open file, that it is a regular
  file: a file swapped for a FIFO after the check still cannot hang a deploy.

Names that a deploy skips anyway (`IGNORED_NAMES`: VCS data, caches) are not looked into.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from faasd.errors import DeployError, InsufficientStorage

IGNORED_NAMES = frozenset({"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints"})
#: A function directory holds a model and a few files; a deploy of `/` must not walk the disk.
MAX_ENTRIES = 10_000

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _special(path: Path, mode: int, via: str = "") -> DeployError:
    return DeployError(
        f"{path}{via} is {_kind(mode)}; a function directory may hold only regular files "
        "and directories: remove it from the directory",
        file=str(path),
    )


def check_tree(root: Path) -> None:
    """DeployError (400) for the first entry under `root` (resolved) a deploy must not read,
    or when it holds more than MAX_ENTRIES entries."""
    seen = 0
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        subdirectories[:] = [d for d in subdirectories if d not in IGNORED_NAMES]
        seen += len(subdirectories) + len(files)
        if seen > MAX_ENTRIES:
            raise DeployError(f"{root} holds more than {MAX_ENTRIES} files and directories; "
                              "deploy the function's own directory", file=str(root))
        for name in [*subdirectories, *files]:
            if name in IGNORED_NAMES:
                continue
            path = Path(directory) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                _check_link(root, path)
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _special(path, mode)


def _check_link(root: Path, link: Path) -> None:
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        raise DeployError(f"{link} is a link to {os.readlink(link)!r}, which does not exist; "
                          "remove the link or restore its target", file=str(link)) from None
    except (RuntimeError, OSError):  # ELOOP; Python < 3.13 raises RuntimeError for a loop
        raise DeployError(f"{link} is a link loop; remove the link", file=str(link)) from None
    if not target.is_relative_to(root):
        raise DeployError(
            f"{link} links to {target}, outside the function directory {root}; a deploy "
            "never follows a link out of it: copy the file into the directory instead",
            file=str(link),
        )
    mode = os.stat(target).st_mode
    if stat.S_ISDIR(mode):
        if link.parent.is_relative_to(target):
            raise DeployError(f"{link} links to {target}, a directory that contains it (a "
                              "loop); remove the link", file=str(link))
    elif not stat.S_ISREG(mode):
        raise _special(link, mode, via=f" (a link to {target})")


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (checked on the open file, which
    was opened without blocking); DeployError naming it otherwise."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise _special(path, mode)
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def copy_regular(source: str, destination: str) -> str:
    """A `shutil.copytree` copy function that copies regular files only (see `open_regular`).

    A full disk is InsufficientStorage, not an OSError: copytree would fold an OSError into
    its own error's text and lose the errno."""
    try:
        with open_regular(Path(source)) as reader, open(destination, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
        shutil.copymode(source, destination)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientStorage(f"no space left to copy {source}") from exc
        raise
    return destination
