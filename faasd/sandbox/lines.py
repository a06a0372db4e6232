"""A sandbox's stderr cut into log lines of bounded size. Pure: bytes in, lines out.

A handler may write anything to stderr, newlines or not: the daemon holds at most
`MAX_LINE_BYTES` of a line, logs a longer one cut there with how much of it was dropped, and
looks at each byte once, so megabytes without a newline cost it neither memory nor more than
linear time.
"""

from __future__ import annotations

#: What one log line of a sandbox's stderr may hold; the rest of a longer line is dropped.
MAX_LINE_BYTES = 64 * 2**10


class LineBuffer:
    """Bytes in, finished lines out (decoded, trailing whitespace stripped). A line longer
    than `max_bytes` comes out when its newline (or `finish`) comes: its first `max_bytes`,
    then how many bytes of it were dropped."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._held = bytearray()
        self._dropped = 0

    def feed(self, data: bytes) -> list[str]:
        """The lines `data` finishes."""
        lines = []
        view = memoryview(data)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._hold(view[start:end])
            lines.append(self._take())
            start = end + 1
        self._hold(view[start:])
        return lines

    def finish(self) -> list[str]:
        """The last line, which had no newline, if there is one."""
        return [self._take()] if self._held or self._dropped else []

    def _hold(self, part: memoryview) -> None:
        room = self.max_bytes - len(self._held)
        self._held += part[:room]
        self._dropped += max(0, len(part) - room)

    def _take(self) -> str:
        line = self._held.decode(errors="replace").rstrip()
        if self._dropped:
            line += (f" [line cut at {self.max_bytes} bytes: the other {self._dropped} bytes "
                     "of it were dropped]")
        self._held = bytearray()
        self._dropped = 0
        return line
