"""Test-only fault injection for `dragon serve`, off unless DRAGON_TEST_FAULTS is set when it starts.

The reliability tests use it to prove that an out-of-memory error fails one edit and the server goes on,
and that a server whose running edit does not stop still exits when told to. It is read once, from the
server's own environment at start-up: nothing a client sends can turn it on. The value is a
comma-separated list of `oom@N` and `hang@N`: the N-th edit the worker runs (counting from 1) raises an
out-of-memory error at its first sampling step, as a GPU that runs out of memory mid-edit would (oom),
or stops there for an hour without looking at its cancel flag, as a hung driver call would (hang).
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

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        """Parse DRAGON_TEST_FAULTS (raise FaultSpecError when it is malformed)."""
        spec = environ.get(ENVIRONMENT_VARIABLE, "").strip()
        runs = {"oom": set(), "hang": set()}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            kind, _, number = item.partition("@")
            if kind not in runs or not number.isdigit() or int(number) < 1:
                raise FaultSpecError(
                    f"{ENVIRONMENT_VARIABLE}: cannot read {item!r} (expected oom@N or hang@N, N >= 1)"
                )
            runs[kind].add(int(number))
        return cls(frozenset(runs["oom"]), frozenset(runs["hang"]))

    def __bool__(self) -> bool:
        return bool(self.oom_runs or self.hang_runs)

    def at_step(self, run: int, stage: str) -> None:
        """Called at every progress step of the `run`-th edit: raise the fault planned for it, if any."""
        if stage == "sampling" and run in self.oom_runs:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by {ENVIRONMENT_VARIABLE} into edit number {run})"
            )
        if stage == "sampling" and run in self.hang_runs:
            time.sleep(HANG_SECONDS)
