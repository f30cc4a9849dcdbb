"""Plain progress lines for long loops: ``label: done/total (pct), rate, ETA`` every few seconds.

Metaflow's task logs are line-based: tqdm's carriage-return updates never reach them, so a
long step looked silent. :class:`Progress` writes whole lines instead, at most one every
``every_s`` seconds (and always one at the end), to stderr by default.

    progress = Progress(total=n_batches, label="embed", unit="docs")
    for batch in batches:
        ...
        progress.update(len(batch))
    progress.close()
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75`` -> ``'1m15s'``; ``3700`` -> ``'1h01m'``; ``4.2`` -> ``'4s'``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Progress:
    """Counts work done and prints a progress line every ``every_s`` seconds.

    Parameters
    ----------
    total : the amount of work (items, steps); ``done`` counts towards it.
    label : the line's prefix, e.g. the step name.
    unit : what is counted (``"docs"``, ``"steps"``).
    every_s : minimum seconds between two lines (0 prints on every update).
    stream : where lines go (stderr by default, which Metaflow records in the task log).
    initial : work already done (a resumed loop).
    """

    def __init__(self, total: int, label: str, *, unit: str = "items", every_s: float = 5.0,
                 stream: TextIO | None = None, initial: int = 0, clock=time.monotonic):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total, self.label, self.unit, self.every_s = int(total), label, unit, float(every_s)
        self.stream = stream if stream is not None else sys.stderr
        self.done = self._initial = int(initial)
        self._clock = clock
        self._start = self._last = clock()
        self._closed = False

    def line(self) -> str:
        """The current progress line (no newline)."""
        elapsed = self._clock() - self._start
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        left = self.total - self.done
        eta = f", ETA {format_duration(left / rate)}" if rate > 0 and left > 0 else ""
        return (f"[{self.label}] {self.done:,}/{self.total:,} {self.unit}{pct}, {rate:,.1f} {self.unit}/s, "
                f"elapsed {format_duration(elapsed)}{eta}")

    def update(self, n: int = 1, *, note: str = "") -> None:
        """Add ``n`` to the work done; print a line if ``every_s`` has passed since the last one."""
        self.done += int(n)
        now = self._clock()
        if now - self._last >= self.every_s:
            self._emit(note)
            self._last = now

    def close(self, note: str = "") -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._emit(note)

    def _emit(self, note: str) -> None:
        print(self.line() + (f" {note}" if note else ""), file=self.stream, flush=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
