"""One progress line at a steady interval, for a terminal and for a SLURM log file alike.

``Progress(label, total, unit)``: ``update(done)`` prints, at most once per ``every_s`` seconds
(and always on ``final=True``), a whole line (no carriage returns or bars, which a log file without
a TTY shows as garbage)::

    [aigp] infer: 12,800/200,000 prompts (6.4 %), 1.84 prompts/s, ETA 28h15m; projected 30h1m of the 7h0m window: OVER

``done`` is an absolute count, so a caller that sees every rank's work (rank 0 counting all ranks'
finished shards on the shared file system) reports the sum; work already done when the run started
(a resume) counts toward done but not toward the rate. ``window_s`` adds the projected wall time
against a deadline (the nightly inference's 7-hour window, App. B.3).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
    """``3h05m``, ``12m30s``, ``42s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    def __init__(self, label: str, total: int, unit: str, *, every_s: float = 30.0, window_s: float | None = None,
                 start_done: int = 0, log: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.unit, self.every_s, self.window_s = label, total, unit, every_s, window_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock = clock
        self.start, self.start_done = clock(), start_done
        self._last: float | None = None
        self._last_done: int | None = None  # the count the last printed line showed

    def line(self, done: int) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (done - self.start_done) / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        text = f"[aigp] {self.label}: {done:,}/{self.total:,} {self.unit} ({pct:.1f} %), {rate:.2f} {self.unit}/s"
        if done >= self.total:
            return text + f", done in {duration(elapsed)}"
        if rate <= 0:
            return text + ", ETA unknown"
        eta = (self.total - done) / rate
        text += f", ETA {duration(eta)}"
        if self.window_s is not None:
            projected = elapsed + eta
            verdict = "within" if projected <= self.window_s else "OVER"
            text += f"; projected {duration(projected)} of the {duration(self.window_s)} window: {verdict}"
        return text

    def eta(self, done: int) -> str:
        """``ETA 12m30s`` from this run's rate (``done in ...`` at the end): for lines a caller writes itself."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = (done - self.start_done) / elapsed
        if done >= self.total:
            return f"done in {duration(elapsed)}"
        return f"ETA {duration((self.total - done) / rate)}" if rate > 0 else "ETA unknown"

    def update(self, done: int, final: bool = False) -> str | None:
        """Print the line if ``every_s`` passed since the last one (or ``final``, unless the last line already
        said this count: the last shard's own update may have printed it); returns what was printed."""
        now = self.clock()
        if not final and self._last is not None and now - self._last < self.every_s:
            return None
        if final and self._last_done == done:
            return None
        self._last, self._last_done = now, done
        text = self.line(done)
        self.log(text)
        return text
