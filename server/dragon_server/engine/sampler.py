"""The denoising loop of the generation branch: DDIM from the edit's z_T, with classifier-free
guidance when there is a prompt, cross-branch self-attention, energy guidance added to the predicted
noise, regional SDE and time travel, on the schedule of the method's settings."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from dragon_server.engine import ddim
from dragon_server.engine.ddim import Timeline
from dragon_server.engine.regions import Guide
from dragon_server.engine.runner import Runner
from dragon_server.engine.settings import MethodSettings, Schedule

StepDone = Callable[[int, int, torch.Tensor], None]
"""Called after each step with (done, total, current clean-latent estimate)."""


def predict_noise(runner: Runner, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                  uncond: Optional[torch.Tensor], cfg_scale: float) -> torch.Tensor:
    """Predicted noise, with classifier-free guidance when an unconditional embedding is given."""
    if uncond is None:
        return runner.noise(z, t, text)
    eps_uncond, eps_text = runner.noise(torch.cat([z, z]), t, torch.cat([uncond, text])).chunk(2)
    return eps_uncond + cfg_scale * (eps_text - eps_uncond)


def guided_noise(runner: Runner, guide: Guide, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                 uncond: Optional[torch.Tensor], settings: MethodSettings, step: int,
                 share_trunk: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Predicted noise and d(energy)/d(z) of a guided step, as the paper computes them: one pass of the
    generation branch, with its cross-branch attention, gives both the features and the noise, and
    one backward pass the gradient of the total energy. With `settings.release_guidance`, as the
    authors' release does instead (see `release_guided_noise`)."""
    if settings.release_guidance:
        return release_guided_noise(runner, guide, z, t, text, uncond, settings.cfg_scale, step, share_trunk)
    with guide.attend(step):
        with runner.stage("guidance"), torch.enable_grad():
            x = z.detach().requires_grad_(True)
            features, rest = runner.features_midway(runner.trunk(x, t, text))
            edit, content = guide.energy(features, step)
            (edit + content).backward()
            runner.count("backward", 1)
        eps = with_cfg(runner, runner.noise_from(rest), z, t, uncond, settings.cfg_scale)
    return eps, x.grad


def release_guided_noise(runner: Runner, guide: Guide, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                         uncond: Optional[torch.Tensor], cfg_scale: float, step: int,
                         share_trunk: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The release's guided step: features from a pass without cross-branch attention, the edit
    energy's gradient kept inside the gradient region and the content energy's outside (two backward
    passes). The feature pass and the noise pass share their trunk, which has no decoder
    self-attention (`share_trunk=False` runs them apart, as the release does, for benchmarks)."""
    with runner.stage("guidance"), torch.enable_grad():
        x = z.detach().requires_grad_(True)
        state = runner.trunk(x, t, text)
        edit, content = guide.energy(runner.features_from(state), step)
        edit.backward(retain_graph=True)
        grad_edit, x.grad = x.grad, None
        content.backward()
        grad_content = x.grad
        runner.count("backward", 2)
    region = guide.gradient_region
    with guide.attend(step):
        if share_trunk:
            eps = with_cfg(runner, runner.noise_from(state), z, t, uncond, cfg_scale)
        else:
            eps = predict_noise(runner, z, t, text, uncond, cfg_scale)
    return eps, grad_edit * region + grad_content * (1 - region)


def with_cfg(runner: Runner, eps_text: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
             uncond: Optional[torch.Tensor], cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance around an already predicted text-conditioned noise (none without
    an unconditional embedding)."""
    if uncond is None:
        return eps_text
    eps_uncond = runner.noise(z, t, uncond)
    return eps_uncond + cfg_scale * (eps_text - eps_uncond)


def sample(runner: Runner, guide: Guide, timeline: Timeline, schedule: Schedule, settings: MethodSettings,
           text: torch.Tensor, uncond: Optional[torch.Tensor], strength: float,
           generator: torch.Generator, step_done: StepDone, share_trunk: bool = True) -> torch.Tensor:
    """The edited clean latent. `uncond` is None when the prompt is empty (both branches would match)."""
    z = guide.start
    gain = settings.step_size * settings.energy_scale * strength
    eta_map = settings.sde_eta * guide.edit_region
    for i in range(len(timeline)):
        t = timeline.timesteps[i]
        a, a_next = timeline.alphas[i], timeline.alphas_next[i]
        repeats = settings.time_travel_repeats if i in schedule.time_travel else 1
        for r in range(repeats):
            if r:
                # Time travel: back up to step i's noise level by one inversion step, then denoise again.
                z = ddim.invert_step(z, runner.noise(z, t, text), a_next, a)
            if i in schedule.guided and gain:
                eps, gradient = guided_noise(runner, guide, z, t, text, uncond, settings, i, share_trunk)
                eps_x0 = eps + gain * gradient
            else:
                with guide.attend(i):
                    eps = eps_x0 = predict_noise(runner, z, t, text, uncond, settings.cfg_scale)
            if i in schedule.sde:
                noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
                z_next = ddim.step(z, eps_x0, eps, a, a_next, eta_map, noise)
            else:
                z_next = ddim.step(z, eps_x0, eps, a, a_next)
            if r + 1 < repeats:
                z = z_next
        step_done(i + 1, len(timeline), ddim.predict_x0(z, eps_x0, a))
        z = z_next
    return z
