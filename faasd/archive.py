"""Function directories sent over HTTP as tar archives (plain or gzip), unpacked safely.

`tarfile`'s `data` filter refuses absolute paths, `..`, links that leave the archive and
device files, so an upload can only ever write inside its own scratch directory. The archive
holds the function's files at its top level, or inside one top-level directory.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from faasd.errors import DeployError

TAR_TYPES = ("application/x-tar", "application/tar", "application/gzip", "application/x-gzip",
             "application/x-gtar", "application/x-compressed-tar")


def _left_out(name: str) -> bool:
    """Names an archive never holds: hidden files and Python's caches."""
    return name.startswith(".") or name == "__pycache__"


def pack(directory: Path) -> bytes:
    """`directory`'s files as a gzip tar archive (caches and hidden files left out)."""
    buffer = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if _left_out(Path(info.name).name) else info

    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    return buffer.getvalue()


def tree_digest(directory: Path) -> str:
    """sha256 over the path and bytes of every file `pack(directory)` would hold, in path
    order. Unlike the archive's own bytes (gzip and tar record times and owners), it is the
    same on every node that holds the same files, so it names a deployment's content."""
    digest = hashlib.sha256()
    for parent, subdirectories, files in os.walk(directory):
        subdirectories[:] = sorted(d for d in subdirectories if not _left_out(d))
        for name in sorted(f for f in files if not _left_out(f)):
            path = Path(parent) / name
            digest.update(f"\0{path.relative_to(directory).as_posix()}\0".encode())
            with path.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


#: Entries one archive may hold (a function is a handful of files).
MAX_MEMBERS = 10_000


def unpack(data: bytes, destination: Path, max_bytes: int | None = None) -> Path:
    """Unpack `data` into `destination`; returns the function directory inside it.

    With `max_bytes`, an archive whose files add up to more is refused (DeployError) as soon
    as the member that crosses the limit is read, before it is written: a small gzip body
    cannot unpack into gigabytes. The archive is read as a stream, member by member."""
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
            for count, member in enumerate(tar, start=1):
                total += max(0, member.size) if member.isfile() else 0
                if max_bytes is not None and total > max_bytes:
                    raise DeployError(
                        f"the archive unpacks to more than {max_bytes // 2**20} MiB (the "
                        "limit is max_unpacked_mb); send a smaller function", file="(upload)")
                if count > MAX_MEMBERS:
                    raise DeployError(f"the archive holds more than {MAX_MEMBERS} entries; a "
                                      "function needs a handful of files", file="(upload)")
                tar.extract(member, destination, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DeployError(f"the upload is not a readable tar archive: {exc}",
                          file="(upload)") from None
    entries = [p for p in destination.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return destination
