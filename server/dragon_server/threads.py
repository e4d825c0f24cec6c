"""How many CPU threads PyTorch's math uses.

PyTorch's default (one thread per core) is fastest on an idle machine, but its threads spin while they
wait for each other: on a busy machine they fight the other programs for the cores and one edit ran 44x
slower than with one thread. The commands therefore use, in this order: `--threads N`, the
DRAGON_THREADS environment variable, OMP_NUM_THREADS, or half the CPUs this process may use (1 on a
2-core machine, at most 8).
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional

THREADS_ENV = "DRAGON_THREADS"
MAX_DEFAULT_THREADS = 8


class ThreadsError(ValueError):
    """A thread count that is not a positive whole number; the message names where it came from."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call (macOS, Windows)
        return os.cpu_count() or 1


def default_threads(cpus: Optional[int] = None) -> int:
    """Half of `cpus` (default: the usable CPUs), at least 1 and at most MAX_DEFAULT_THREADS."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(MAX_DEFAULT_THREADS, cpus // 2))


def _positive(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ThreadsError(f"{where} must be a whole number of threads of at least 1, got {text!r}")
    return value


def thread_count(flag: Optional[int] = None, environ: Mapping[str, str] = os.environ) -> int:
    """The thread count to use: `flag`, else DRAGON_THREADS, else OMP_NUM_THREADS, else the default.
    Raises ThreadsError for a value below 1 or not a whole number."""
    if flag is not None:
        return _positive(str(flag), "--threads")
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        if environ.get(name, "").strip():
            return _positive(environ[name], name)
    return default_threads()


def use_threads(flag: Optional[int] = None) -> int:
    """Set PyTorch's intra-op thread count to `thread_count(flag)` and return it; raises ThreadsError."""
    count = thread_count(flag)
    import torch

    torch.set_num_threads(count)
    return count


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """The `--threads N` option of the commands that run the model."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help=f"CPU threads for the model's math (default: ${THREADS_ENV}, else $OMP_NUM_THREADS, "
                             f"else half the CPUs, at most {MAX_DEFAULT_THREADS})")
