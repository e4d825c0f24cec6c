"""Shared pieces of the reliability campaign (issue 6): soak scaling, figures, server memory.

`DRAGON_SOAK=N` (a whole number, default 0) multiplies the case and request counts of the campaign's
tests by 1 + N*9, for a long run by hand; CI runs the same tests at their base counts. Each test adds its
figures here, and the session's summary prints them (see conftest.py).
"""

from __future__ import annotations

import collections
import os
from typing import Counter

SOAK = max(0, int(os.environ.get("DRAGON_SOAK", "0") or 0))
FIGURES: Counter = collections.Counter()


def scaled(count: int) -> int:
    """`count` in CI, ten times more per soak level."""
    return count * (1 + 9 * SOAK)


def record(name: str, amount: int = 1) -> None:
    """Add `amount` to the figure `name` (printed at the end of the session)."""
    FIGURES[name] += amount


def rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (Linux /proc)."""
    return _status_field(pid, "VmRSS")


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def peak_rss_kib(pid: int) -> int:
    """Peak resident memory of process `pid` in KiB (Linux /proc)."""
    return _status_field(pid, "VmHWM")


def reset_peak_rss(pid: int) -> None:
    """Start measuring the peak resident memory of process `pid` afresh (Linux: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
