"""A log filter that lets a burst of each kind of line through, then counts the rest and says how many.

A client that sends 20000 bad messages, or 20000 tiny edits it cancels at once, must not write 40000
lines: lines with the same format string (the same kind of event), at any level, pass `burst` times per
`window` seconds; the others are counted and reported by one summary line when the window ends, at the
highest level among them.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable, Dict, List, Tuple

SERVING_LOGGERS = ("dragon.server", "dragon.worker", "dragon.cluster", "dragon_server.engine.runner",
                   "dragon_server.engine.cache", "zmq.auth")
"""Every logger that writes while the server serves, so every line a client can cause is limited."""


class RepeatLimiter(logging.Filter):
    """Attach to loggers: at most `burst` records per format string and `window` seconds pass."""

    def __init__(self, burst: int = 10, window: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.burst = burst
        self.window = window
        self.clock = clock
        self._seen: Dict[str, Tuple[float, int, int]] = {}
        """Format string -> (start of its window, records in it so far, highest level held back)."""
        self._loggers: List[logging.Logger] = []

    def attach(self, *names: str) -> RepeatLimiter:
        """Filter the records of the loggers `names` from now on (the summary goes to the first); returns
        self."""
        self._loggers = [logging.getLogger(name) for name in names]
        for logger in self._loggers:
            logger.addFilter(self)
        return self

    def detach(self) -> None:
        """Report what is held back and stop filtering."""
        self.flush(everything=True)
        for logger in self._loggers:
            logger.removeFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _SUMMARY:
            return True
        template = str(record.msg)
        now = self.clock()
        start, count, level = self._seen.get(template, (now, 0, logging.NOTSET))
        if now - start >= self.window:
            self._summarise(template, start, count, level)
            start, count, level = now, 0, logging.NOTSET
        passes = count < self.burst
        self._seen[template] = (start, count + 1, level if passes else max(level, record.levelno))
        return passes

    def flush(self, everything: bool = False) -> None:
        """Report the lines held back in windows that have ended (all of them with `everything`); call now
        and then."""
        now = self.clock()
        for template, (start, count, level) in list(self._seen.items()):
            if everything or now - start >= self.window:
                del self._seen[template]
                self._summarise(template, start, count, level)

    def _summarise(self, template: str, start: float, count: int, level: int) -> None:
        if count > self.burst and self._loggers:
            shape = re.sub(r"%[-#0 +\d.]*[a-zA-Z]", "*", template)[:100]
            self._loggers[0].log(level, _SUMMARY, count - self.burst, shape, self.clock() - start)


_SUMMARY = "%d more lines like '%s' were not logged in the last %.0f s"
