"""Function directories sent over HTTP as tar archives (plain or gzip), unpacked safely.

`tarfile`'s `data` filter refuses absolute paths, `..`, links that leave the archive and
device files, so an upload can only ever write inside its own scratch directory. The archive
holds the function's files at its top level, or inside one top-level directory.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from faasd.errors import DeployError

TAR_TYPES = ("application/x-tar", "application/tar", "application/gzip", "application/x-gzip",
             "application/x-gtar", "application/x-compressed-tar")


def pack(directory: Path) -> bytes:
    """`directory`'s files as a gzip tar archive (caches and hidden files left out)."""
    buffer = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name).name
        return None if name.startswith(".") or name == "__pycache__" else info

    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    return buffer.getvalue()


def unpack(data: bytes, destination: Path) -> Path:
    """Unpack `data` into `destination`; returns the function directory inside it."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DeployError(f"the upload is not a readable tar archive: {exc}",
                          file="(upload)") from None
    entries = [p for p in destination.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return destination
