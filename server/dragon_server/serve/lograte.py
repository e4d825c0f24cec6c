"""A log filter that lets a burst of each kind of line through, then counts the rest and says how many.

A client that sends 20000 bad messages must not write 20000 lines: lines with the same format string
(the same kind of event) pass `burst` times per `window` seconds; the others are counted and reported
by one summary line when the window ends.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Tuple


class RepeatLimiter(logging.Filter):
    """Attach to a logger: at most `burst` records per format string and `window` seconds pass."""

    def __init__(self, burst: int = 10, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._seen: Dict[str, Tuple[float, int]] = {}
        """Format string -> (start of its window, records in it so far)."""
        self._logger: logging.Logger = logging.getLogger()

    def attach(self, logger: logging.Logger) -> RepeatLimiter:
        """Filter `logger`'s records from now on; returns self."""
        self._logger = logger
        logger.addFilter(self)
        return self

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.msg == _SUMMARY:
            return True
        now = self.clock()
        start, count = self._seen.get(record.msg, (now, 0))
        if now - start >= self.window:
            self._summarise(record.msg, start, count)
            start, count = now, 0
        self._seen[record.msg] = (start, count + 1)
        return count < self.burst

    def flush(self) -> None:
        """Report the lines held back in windows that have ended (call now and then)."""
        now = self.clock()
        for template, (start, count) in list(self._seen.items()):
            if now - start >= self.window:
                del self._seen[template]
                self._summarise(template, start, count)

    def _summarise(self, template: str, start: float, count: int) -> None:
        if count > self.burst:
            self._logger.warning(_SUMMARY, count - self.burst, template.split(":")[0].split("%")[0].strip(),
                                 self.clock() - start)


_SUMMARY = "%d more lines like '%s ...' were not logged in the last %.0f s"
