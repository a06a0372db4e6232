"""Function directories sent over HTTP as tar archives (plain or gzip), unpacked safely.

`tarfile`'s `data` filter refuses absolute paths, `..`, links that leave the archive and
device files, so an upload can only ever write inside its own scratch directory. The archive
holds the function's files at its top level, or inside one top-level directory.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import itertools
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from faasd.errors import DeployError, clip

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
#: Bytes of metadata (pax records, GNU long names) one entry may carry before its data: a
#: path is at most 4 KiB on Linux, so this is generous, and it keeps a header that claims
#: gigabytes from being read into memory whatever the expansion limit is.
MAX_HEADER_BYTES = 2**20

#: The compressions `unpack` reads, by their magic bytes (as tarfile's `r|*` knows them); the
#: file objects they open are closed by `unpack`.
_DECOMPRESSORS: tuple[tuple[re.Pattern[bytes], Callable[[BinaryIO], io.BufferedIOBase]], ...] = (
    (re.compile(rb"\A\x1f\x8b"), lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    # "BZh", the block size, then the first block's magic: not a plain tar whose first
    # member's name starts with "BZh"
    (re.compile(rb"\ABZh[1-9]1AY&SY"), lambda raw: bz2.BZ2File(raw)),
    (re.compile(rb"\A\xfd7zXZ\x00"), lambda raw: lzma.LZMAFile(raw)),  # noqa: SIM115
)


class _TooLarge(Exception):
    """The decompressed stream passed a limit (raised inside tarfile's reads)."""


class _Bounded(io.RawIOBase):
    """The decompressed tar stream, counted: reading past `limit` bytes in all, or past
    `window_left` bytes while a window is open (an entry's headers: open from the start, as
    `tarfile.open` reads the first entry's), raises `_TooLarge`. tarfile reads it in 10 KiB
    records, so no more than that is read past a limit."""

    def __init__(self, stream: io.BufferedIOBase, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.read_bytes = 0
        self.window_left: int | None = MAX_HEADER_BYTES

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size if size >= 0 else io.DEFAULT_BUFFER_SIZE)
        self.read_bytes += len(data)
        if self.limit is not None and self.read_bytes > self.limit:
            raise _TooLarge("total")
        if self.window_left is not None:
            self.window_left -= len(data)
            if self.window_left < 0:
                raise _TooLarge("header")
        return data


def _decompressed(data: bytes) -> io.BufferedIOBase:
    raw = io.BytesIO(data)
    for magic, opener in _DECOMPRESSORS:
        if magic.match(data):
            return opener(raw)
    return raw


def unpack(data: bytes, destination: Path, max_bytes: int | None = None) -> Path:
    """Unpack `data` into `destination`; returns the function directory inside it. Blocking:
    callers on the event loop run it in a thread.

    With `max_bytes`, an archive whose decompressed tar stream (its files, and the headers,
    pax records and long names that describe them) is longer is refused (DeployError) as
    soon as that many bytes have been read, and a member that would cross the limit is
    refused before it is written: a small gzip body cannot unpack into gigabytes, on disk or
    in memory. An entry whose headers exceed `MAX_HEADER_BYTES` is refused whatever the
    limit. The archive is read as a stream, member by member."""
    try:
        with _decompressed(data) as raw:
            stream = _Bounded(raw, max_bytes)
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                _extract_all(tar, stream, destination, max_bytes)
    except _TooLarge as exc:
        raise _too_large(str(exc), max_bytes) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise DeployError(f"the upload is not a readable tar archive: {clip(str(exc))}",
                          file="(upload)") from None
    entries = [p for p in destination.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return destination


def _extract_all(tar: tarfile.TarFile, stream: _Bounded, destination: Path,
                 max_bytes: int | None) -> None:
    files_bytes = 0
    for count in itertools.count(1):
        stream.window_left = MAX_HEADER_BYTES  # what tarfile reads to find the next entry
        member = tar.next()
        stream.window_left = None
        if member is None:
            return
        files_bytes += max(0, member.size) if member.isfile() else 0
        if max_bytes is not None and files_bytes > max_bytes:
            raise _TooLarge("total")
        if count > MAX_MEMBERS:
            raise DeployError(f"the archive holds more than {MAX_MEMBERS} entries; a "
                              "function needs a handful of files", file="(upload)")
        tar.extract(member, destination, filter="data")


def _too_large(which: str, max_bytes: int | None) -> DeployError:
    if which == "header":
        return DeployError(
            f"an entry of the archive has more than {MAX_HEADER_BYTES // 2**10} KiB of "
            "headers (pax records or GNU long names); give the function's files short names",
            file="(upload)")
    return DeployError(
        f"the archive unpacks to more than {(max_bytes or 0) // 2**20} MiB (the limit is "
        "max_unpacked_mb); send a smaller function", file="(upload)")
