"""Test-only fault injection for `dragon serve`, off unless DRAGON_TEST_FAULTS is set when it starts.

The reliability tests use it to prove that an out-of-memory error fails one edit and the server goes on,
and that a server whose running edit does not stop still exits when told to. It is read once, from the
server's own environment at start-up: nothing a client sends can turn it on. The value is a
comma-separated list of:
- `oom@N`: the N-th edit the worker runs (counting from 1; with replicas, the N-th each replica runs since
  it started) raises an out-of-memory error at its first sampling step, as a GPU out of memory would;
- `hang@N`: the N-th edit stops there for an hour without looking at its cancel flag, as a hung driver
  call would;
- `crash@ID` (with --replicas or --ray only): the replica running the edit whose request id is ID dies
  at that edit's first sampling step, as one killed by the kernel would; once: a resend of ID runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import FrozenSet, Mapping

import torch

ENVIRONMENT_VARIABLE = "DRAGON_TEST_FAULTS"
HANG_SECONDS = 3600.0


class FaultSpecError(ValueError):
    """DRAGON_TEST_FAULTS is set but says something this module does not understand."""


@dataclass(frozen=True)
class Faults:
    """The faults to inject; the default injects none."""

    oom_runs: FrozenSet[int] = frozenset()
    hang_runs: FrozenSet[int] = frozenset()
    crash_ids: FrozenSet[str] = frozenset()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        """Parse DRAGON_TEST_FAULTS (raise FaultSpecError when it is malformed)."""
        spec = environ.get(ENVIRONMENT_VARIABLE, "").strip()
        runs, hangs, ids = set(), set(), set()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            kind, _, value = item.partition("@")
            if kind in ("oom", "hang") and value.isdigit() and int(value) >= 1:
                (runs if kind == "oom" else hangs).add(int(value))
            elif kind == "crash" and value:
                ids.add(value)
            else:
                raise FaultSpecError(
                    f"{ENVIRONMENT_VARIABLE}: cannot read {item!r} (expected oom@N or hang@N, N >= 1, "
                    "or crash@REQUEST_ID)"
                )
        return cls(frozenset(runs), frozenset(hangs), frozenset(ids))

    def __bool__(self) -> bool:
        return bool(self.oom_runs or self.hang_runs or self.crash_ids)

    def at_step(self, run: int, stage: str) -> None:
        """Called at every progress step of the `run`-th edit: raise the fault planned for it, if any."""
        if stage == "sampling" and run in self.oom_runs:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by {ENVIRONMENT_VARIABLE} into edit number {run})"
            )
        if stage == "sampling" and run in self.hang_runs:
            time.sleep(HANG_SECONDS)
