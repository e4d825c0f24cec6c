"""DDIM inversion of a source image: the latent trajectory, the memory bank, and the guidance
features per step. All of it depends only on the image, the model and the timeline, so it lives in one
object that a cache can keep between edits."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List

import torch

from dragon_server.engine.attention import MemoryBank
from dragon_server.engine.ddim import Timeline, invert_step
from dragon_server.engine.runner import Runner

Tick = Callable[[int, int], None]


@dataclass
class SourceState:
    """A source image inverted: `trajectory[i]` is its latent (1, 4, h, w), fp32, at step i's noise level
    (what the guidance branch would denoise from), `bank` its decoder self-attention keys and values.
    Nothing in it depends on the edit: the guidance features are the guidance branch's own, computed
    with plain self-attention whatever edit asks for them, so a cache may hand it to any later edit."""

    latent: torch.Tensor
    trajectory: List[torch.Tensor]
    bank: MemoryBank
    text: torch.Tensor
    timeline: Timeline
    memoize: bool = True
    """Keep the guidance features of each step (off only to reproduce the release's cost)."""
    features: Dict[int, List[torch.Tensor]] = field(default_factory=dict)

    @property
    def noise(self) -> torch.Tensor:
        """z_T: the fully inverted latent."""
        return self.trajectory[0]

    def features_at(self, runner: Runner, step: int) -> List[torch.Tensor]:
        """Guidance-branch features at `step` (model dtype, one per feature layer), computed once."""
        if step in self.features:
            return self.features[step]
        with runner.stage("source_features"), torch.no_grad(), runner.attention.plain():
            features = runner.features(self.trajectory[step], self.timeline.timesteps[step], self.text)
        if self.memoize:
            self.features[step] = features
        return features

    @property
    def nbytes(self) -> int:
        tensors = [self.latent, *self.trajectory, *(f for fs in self.features.values() for f in fs)]
        return self.bank.nbytes + sum(t.numel() * t.element_size() for t in tensors)


def invert(runner: Runner, latent: torch.Tensor, text: torch.Tensor, timeline: Timeline,
           bank_steps: FrozenSet[int], tick: Tick, bank: MemoryBank) -> SourceState:
    """Invert `latent` step by step from clean to z_T (DDIM, in fp32), recording the memory bank into
    `bank` (empty) at `bank_steps`. `tick(done, total)` runs after every step (progress, cancellation)."""
    latent = latent.float()
    trajectory: List[torch.Tensor] = [latent] * len(timeline)
    z = latent
    for done, i in enumerate(reversed(range(len(timeline))), 1):
        recording = runner.attention.recording(bank, i) if i in bank_steps else contextlib.nullcontext()
        with recording:
            eps = runner.noise(z, timeline.timesteps[i], text)
        z = invert_step(z, eps, timeline.alphas_next[i], timeline.alphas[i])
        trajectory[i] = z
        tick(done, len(timeline))
    return SourceState(latent, trajectory, bank, text, timeline)
