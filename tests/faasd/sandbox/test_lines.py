"""A sandbox's stderr cut into bounded log lines."""

from __future__ import annotations

import time

import pytest

from faasd.sandbox.lines import LineBuffer


@pytest.mark.parametrize(
    ("chunks", "lines", "last"),
    [
        ([b"a\nb\n"], ["a", "b"], []),
        ([b"a", b"b\nc"], ["ab"], ["c"]),  # a line across reads; one without its newline
        ([b"ta \r\n", b"\n"], ["ta", ""], []),  # trailing whitespace goes, blank lines stay
        ([b"\xff\xfe\n"], ["\ufffd\ufffd"], []),  # not UTF-8: replaced, not fatal
        # cut at 4 bytes: "abcd" kept, the other 6 of that line dropped and counted
        ([b"abcdef", b"ghij\nok\n"], [
            "abcd [line cut at 4 bytes: the other 6 bytes of it were dropped]", "ok"], []),
        ([b"abcdefg"], [], ["abcd [line cut at 4 bytes: the other 3 bytes of it were dropped]"]),
    ],
)
def test_lines_come_out_whole_or_cut(chunks: list[bytes], lines: list[str],
                                     last: list[str]) -> None:
    buffer = LineBuffer(max_bytes=4)
    got = [line for chunk in chunks for line in buffer.feed(chunk)]
    assert got == lines
    assert buffer.finish() == last
    assert buffer.finish() == []


def test_megabytes_without_a_newline_cost_linear_time_and_bounded_memory() -> None:
    """64 MiB in 64 KiB reads: quadratic copying (the held line + each read) would take
    minutes; here it is one pass."""
    buffer = LineBuffer()
    chunk = b"x" * 65536
    started = time.perf_counter()
    for _ in range(1024):
        assert buffer.feed(chunk) == []
        assert len(buffer._held) <= 65536
    (line,) = buffer.feed(b"\n")
    assert time.perf_counter() - started < 5
    assert line.endswith(f"the other {64 * 2**20 - 65536} bytes of it were dropped]")
    assert len(line) < 65536 + 100
