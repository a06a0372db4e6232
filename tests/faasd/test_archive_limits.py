"""An uploaded archive may not unpack past max_unpacked_mb (default 4 x max_body_mb)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import aiohttp
import pytest

from faasd.archive import unpack
from faasd.daemon import Daemon
from faasd.errors import DeployError


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
