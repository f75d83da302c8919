"""A progress line on stderr for long imports: rows, rate, share of the file read, and time left.

On a terminal the line is redrawn in place (at most every ``interval`` seconds); otherwise (a log file,
CI) a full line is written every ``every`` rows, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    def __init__(
        self,
        *,
        total_bytes: int,
        stream: TextIO | None = None,
        every: int = 1000,
        interval: float = 0.2,
        tty: bool | None = None,
        unit: str = "rows",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit = unit
        self.total = max(1, total_bytes)
        self.stream = stream if stream is not None else sys.stderr
        self.every = max(1, every)
        self.interval = interval
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.started = clock()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, rows: int, position: int, detail: str = "") -> None:
        """Called after each row; draws when it is time to."""
        if self.tty:
            now = self.clock()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self.stream.write("\r" + self.line(rows, position, detail) + "\x1b[K")
                self.stream.flush()
                self._drawn = True
        elif rows % self.every == 0:
            self.stream.write(self.line(rows, position, detail) + "\n")
            self.stream.flush()

    def line(self, rows: int, position: int, detail: str = "") -> str:
        elapsed = max(1e-6, self.clock() - self.started)
        rate = rows / elapsed
        share = min(1.0, position / self.total)
        if 0 < share < 1:
            eta = _duration(elapsed * (1 - share) / share)
        elif share >= 1:
            eta = "0:00"
        else:
            eta = "?"
        text = f"{rows:,} {self.unit}  {rate:,.0f} {self.unit}/s  {share:4.0%}  ETA {eta}"
        return f"{text}  {detail}" if detail else text

    def message(self, text: str) -> None:
        """Print a line (an error report) without tearing the progress line."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_draw = 0.0

    def finish(self, rows: int, position: int, detail: str = "") -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + self.line(rows, position, detail) + "\x1b[K\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
