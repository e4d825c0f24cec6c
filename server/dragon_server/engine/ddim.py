"""DDIM in both directions, on the timesteps and noise levels of the model's diffusers scheduler.

The scheduler supplies the schedule; the step itself is written out because DragonDiffusion needs
what `DDIMScheduler.step` cannot do: a guided noise for the clean-image estimate but the unguided
noise for the direction term, and a per-pixel eta (regional SDE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from diffusers import DDIMScheduler

Eta = Union[float, torch.Tensor]


@dataclass(frozen=True)
class Timeline:
    """The timesteps of an n-step sampling run (noisiest first) and their cumulative alphas.

    `alphas[i]` belongs to step i's input and `alphas_next[i]` to its output (the next, less noisy
    level; after the last step, the scheduler's final alpha); `timesteps_next[i]` is the timestep of
    that output level (0 after the last step)."""

    timesteps: torch.Tensor
    alphas: List[float]
    alphas_next: List[float]
    timesteps_next: torch.Tensor

    @classmethod
    def build(cls, scheduler: DDIMScheduler, steps: int, device: torch.device) -> Timeline:
        scheduler.set_timesteps(steps)
        ts = scheduler.timesteps.to(torch.long)
        cum = scheduler.alphas_cumprod
        final = float(scheduler.final_alpha_cumprod)
        alphas = [float(cum[t]) for t in ts]
        return cls(ts.to(device), alphas, alphas[1:] + [final], torch.cat([ts[1:], ts.new_zeros(1)]).to(device))

    def __len__(self) -> int:
        return len(self.alphas)


def predict_x0(z: torch.Tensor, eps: torch.Tensor, alpha: float) -> torch.Tensor:
    """The clean latent implied by noise `eps` at cumulative alpha `alpha`."""
    return (z - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5


def step(z: torch.Tensor, eps_x0: torch.Tensor, eps_dir: torch.Tensor, alpha: float, alpha_next: float,
         eta: Eta = 0.0, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One DDIM denoising step. `eps_x0` (guided) predicts the clean latent, `eps_dir` (unguided) points
    the way back to noise; `eta` may be a per-pixel map (stochastic where it is above 0)."""
    x0 = predict_x0(z, eps_x0, alpha)
    sigma = eta * ((1 - alpha_next) / (1 - alpha) * (1 - alpha / alpha_next)) ** 0.5
    direction = (1 - alpha_next - sigma ** 2) ** 0.5 if isinstance(sigma, float) else \
        (1 - alpha_next - sigma ** 2).clamp_min(0).sqrt()
    out = alpha_next ** 0.5 * x0 + direction * eps_dir
    if noise is not None:
        out = out + sigma * noise
    return out


def invert_step(z: torch.Tensor, eps: torch.Tensor, alpha: float, alpha_noisier: float) -> torch.Tensor:
    """One DDIM inversion step: from cumulative alpha `alpha` up to the noisier `alpha_noisier`."""
    return alpha_noisier ** 0.5 * predict_x0(z, eps, alpha) + (1 - alpha_noisier) ** 0.5 * eps
