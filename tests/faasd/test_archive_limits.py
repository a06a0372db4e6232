"""An uploaded archive may not unpack past max_unpacked_mb (default 4 x max_body_mb)."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from pathlib import Path

import aiohttp
import pytest

from faasd.archive import unpack
from faasd.daemon import Daemon
from faasd.errors import MAX_ECHO_CHARS, DeployError


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read as a stream (no 64 MiB buffer in the test)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def bomb(unpacked_mb: int, files: int = 1) -> bytes:
    """A gzip tar of `files` files of zeros, `unpacked_mb` MiB in all: about 1/1000 packed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i in range(files):
            info = tarfile.TarInfo(f"fn/blob{i}.bin")
            info.size = unpacked_mb * 2**20 // files
            tar.addfile(info, _Zeros(info.size))
    return out.getvalue()


def test_a_gzip_bomb_is_refused_before_it_is_written(tmp_path: Path) -> None:
    data = bomb(64)
    assert len(data) < 2**20  # a body well under the limit
    with pytest.raises(DeployError, match="unpacks to more than 4 MiB"):
        unpack(data, tmp_path, max_bytes=4 * 2**20)
    written = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert written == 0  # the one member that crosses the limit is never written


def test_under_the_limit_unpacks(tmp_path: Path) -> None:
    directory = unpack(bomb(2, files=4), tmp_path, max_bytes=4 * 2**20)
    assert directory.name == "fn" and len(list(directory.iterdir())) == 4


@pytest.mark.slow
async def test_over_http_the_bomb_is_a_400_and_leaves_nothing(daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as s, s.post(
        f"{daemon.url}/system/functions?name=bomb", data=bomb(64),
        headers={"Content-Type": "application/gzip"},
    ) as resp:
        assert resp.status == 400
        assert "unpacks to more than 4 MiB" in (await resp.json())["error"]  # 4 x 1 MiB body
    assert list((daemon.config.state_dir / "uploads").glob("upload-*")) == []


def _pax_record(keyword: str, value_bytes: int) -> bytes:
    """The head of one pax record `LEN keyword=aaa…\\n` whose value is `value_bytes` long
    (the caller streams the value): LEN counts the whole record, its own digits included."""
    rest = len(f" {keyword}=") + value_bytes + 1
    digits = len(str(rest))
    while len(str(rest + digits)) != digits:
        digits += 1
    return f"{rest + digits} {keyword}=".encode()


def metadata_bomb(kind: str, metadata_kb: int, entries: int = 1, keyword: str = "path") -> bytes:
    """A gzip tar of `entries` small files, each described by `metadata_kb` KiB of metadata
    (letters): a pax record `keyword` (`pax`) or a GNU long name (`longname`). About 1/1000
    of the metadata's size packed."""
    size = metadata_kb * 2**10
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as packed:
        for i in range(entries):
            if kind == "pax":
                head = _pax_record(keyword, size)
                header = tarfile.TarInfo("././@PaxHeader")
                header.type, header.size = tarfile.XHDTYPE, len(head) + size + 1
                fmt = tarfile.USTAR_FORMAT
            else:
                head = b""
                header = tarfile.TarInfo("././@LongLink")
                header.type, header.size = tarfile.GNUTYPE_LONGNAME, size + 1
                fmt = tarfile.GNU_FORMAT
            packed.write(header.tobuf(fmt) + head)
            for _ in range(metadata_kb):
                packed.write(b"a" * 2**10)
            packed.write(b"\n" if kind == "pax" else b"\0")
            packed.write(bytes(-header.size % tarfile.BLOCKSIZE))
            small = tarfile.TarInfo(f"fn/handler{i}.py")
            small.size = 2
            packed.write(small.tobuf(fmt) + b"x\n" + bytes(tarfile.BLOCKSIZE - 2))
        packed.write(bytes(2 * tarfile.BLOCKSIZE))
    return out.getvalue()


@pytest.mark.parametrize("kind", ["pax", "longname"])
def test_one_huge_header_is_refused_without_reading_it(tmp_path: Path, kind: str) -> None:
    """Before the fix tarfile read a whole pax header or long name into memory (a 408 KB
    upload took 1.7 and 4.1 GB) and the error repeated the name: megabytes of answer."""
    data = metadata_bomb(kind, 32 * 2**10)
    assert len(data) < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(DeployError) as refused:
            unpack(data, tmp_path, max_bytes=None)  # no expansion limit: the header bound
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # the 32 MiB of metadata was never held
    assert len(refused.value.message) < 2 * MAX_ECHO_CHARS, refused.value.message[:300]
    assert "more than 1024 KiB of headers" in refused.value.message
    assert list(tmp_path.iterdir()) == []


def test_headers_count_against_the_expansion_limit(tmp_path: Path) -> None:
    """Eight entries with 900 KiB of pax records each (under the per-entry bound) and
    2 bytes of data: 7 MiB of tar stream, over a 4 MiB limit. The files alone (16 bytes)
    passed before the fix."""
    data = metadata_bomb("pax", 900, entries=8, keyword="comment")
    with pytest.raises(DeployError, match="unpacks to more than 4 MiB"):
        unpack(data, tmp_path, max_bytes=4 * 2**20)
    assert len(list((tmp_path / "fn").iterdir())) < 8  # stopped part-way
    unpack(data, tmp_path / "roomy", max_bytes=8 * 2**20)  # the same archive, more room
    assert len(list((tmp_path / "roomy" / "fn").iterdir())) == 8


def test_a_long_name_under_the_header_bound_is_echoed_cut(tmp_path: Path) -> None:
    """A name the filesystem refuses (a component over 255 bytes) is named, cut to 200
    characters with an ellipsis: the client learns which entry, not megabytes of it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("fn/" + "b" * 100_000)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DeployError, match="not a readable tar archive") as refused:
        unpack(out.getvalue(), tmp_path)
    assert refused.value.message.endswith("\u2026")
    assert len(refused.value.message) <= len("the upload is not a readable tar archive: ") \
        + MAX_ECHO_CHARS


@pytest.mark.parametrize(("mode", "first"), [("w:", "fn"), ("w:gz", "fn"), ("w:bz2", "fn"),
                                             ("w:xz", "fn"), ("w:", "BZh91AY")])
def test_every_compression_tarfile_reads_still_unpacks(tmp_path: Path, mode: str,
                                                       first: str) -> None:
    """Plain, gzip, bzip2, xz; and a plain tar whose first name starts as bzip2's magic."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        info = tarfile.TarInfo(f"{first}/handler.py")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    directory = unpack(out.getvalue(), tmp_path, max_bytes=2**20)
    assert (directory / "handler.py").read_bytes() == b"x\n"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pax", "longname"])
async def test_over_http_metadata_bombs_get_a_short_400(daemon: Daemon, kind: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{daemon.url}/system/functions?name=bomb", data=metadata_bomb(kind, 64 * 2**10),
            headers={"Content-Type": "application/gzip"},
        ) as resp:
            body = await resp.read()
            assert resp.status == 400 and resp.content_type == "application/json", body[:300]
            assert len(body) < 1000, len(body)
            assert "KiB of headers" in (await resp.json())["error"]
        async with s.get(f"{daemon.url}/healthz") as resp:
            assert resp.status == 200
    assert list((daemon.config.state_dir / "uploads").glob("upload-*")) == []
