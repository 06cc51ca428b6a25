"""A progress bar for command-line jobs that run for minutes: count done, elapsed time, ETA.

One helper for every long command (``protect``, ``protect-dataset``), so that an operator
always sees the same line::

    [#########.....................] 48/156 instances (31%), 11m40s, ETA 26m16s

Work may advance by fractions (a method that protects a series as a whole reports its rounds
as parts of the series' instances); the count shown is the whole units done, the bar, the
percentage and the ETA use the exact amount. On a terminal the line is redrawn in place;
written to a file or a pipe (a log, a partner's script) each update is a line of its own.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ReportProgress", "duration"]

#: Advances a job by an amount of its units (e.g. instances); a method's way of reporting.
ReportProgress = Callable[[float], None]


def duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``2h03m``: short enough for one line, exact enough to plan by."""
    s = max(0, round(float(seconds)))  # float(): a NumPy 1.x float rounds to a float
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """A bar over ``total`` units named ``unit`` (plural), drawn on ``stream``.

    ``clock`` is injectable so that tests can check the ETA without waiting.
    """

    def __init__(self, total: float, unit: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int = 30) -> None:
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._started = clock()
        self._width = width
        self._drawn = False

    def advance(self, amount: float = 1.0, note: str = "") -> None:
        """``amount`` more units are done."""
        self.update(self.done + amount, note)

    def update(self, done: float, note: str = "") -> None:
        """``done`` units are done in all; redraw."""
        self.done = min(max(done, 0.0), self.total)
        text = self.line(note)
        if self._stream.isatty():
            self._stream.write(f"\r{text}")
        else:
            self._stream.write(f"{text}\n")
        self._stream.flush()
        self._drawn = True

    def line(self, note: str = "") -> str:
        """The line as it is drawn now."""
        share = self.done / self.total if self.total else 1.0
        filled = int(self._width * share)
        elapsed = self._clock() - self._started
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ETA {duration(elapsed * (self.total - self.done) / self.done)}"
        text = (f"[{'#' * filled}{'.' * (self._width - filled)}] {math.floor(self.done + 1e-9)}/"
                f"{self.total:g} {self.unit} ({share:.0%}), {duration(elapsed)}{eta}")
        return f"{text}, {note}" if note else text

    def close(self) -> None:
        """End a redrawn line, so the next output starts on a line of its own."""
        if self._drawn and self._stream.isatty():
            self._stream.write("\n")
            self._stream.flush()
