"""The denoising loop of the generation branch: DDIM from the edit's z_T, with classifier-free
guidance when there is a prompt, cross-branch self-attention, energy guidance added to the predicted
noise, regional SDE and time travel, on the schedule of the method's settings."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

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


LOSS_TOP = 6
"""Loss scaling puts the largest feature gradient at 2**LOSS_TOP before the backward pass through the
UNet: far above fp16's smallest normal number (6e-5), so gradients a million times smaller than the
largest keep their precision instead of falling to subnormals or zero, and far below its largest
(65504): on the SD 1.5 architecture the backward pass grew the largest gradient 4-9x inside the UNet
and 9-14x at the latent (measured at 128 and 256 px)."""


def latent_gradients(features: List[torch.Tensor], x: torch.Tensor,
                     energies: Callable[[List[torch.Tensor]], Sequence[torch.Tensor]]) -> List[torch.Tensor]:
    """d(energy)/d(x), fp32, for each energy that `energies(fp32 features)` gives of the (model dtype)
    `features`, which come from the latent `x` (fp32). The energies and their gradients at the features
    are computed in fp32; each gradient is then scaled by a power of two (exact in binary floating point)
    before the backward pass through the UNet in the model's dtype and unscaled after, as
    mixed-precision training does, so fp16 gradients neither underflow nor overflow. No host round trip."""
    leaves = [f.detach().float().requires_grad_(True) for f in features]
    values = list(energies(leaves))
    grads = []
    for n, value in enumerate(values):
        more = n + 1 < len(values)
        for leaf in leaves:
            leaf.grad = None
        value.backward(retain_graph=more)
        at_features = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]
        top = torch.stack([g.abs().amax() for g in at_features]).amax()
        scale = torch.exp2((LOSS_TOP - torch.ceil(torch.log2(top.clamp_min(2.0 ** -120)))).clamp(-64, 64))
        x.grad = None
        torch.autograd.backward(features, [(g * scale).to(f.dtype) for g, f in zip(at_features, features)],
                                retain_graph=more)
        grads.append(torch.zeros_like(x, dtype=torch.float32) if x.grad is None else x.grad.float() / scale)
    x.grad = None
    return grads


def guided_noise(runner: Runner, guide: Guide, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                 uncond: Optional[torch.Tensor], settings: MethodSettings, step: int,
                 share_trunk: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Predicted noise and d(energy)/d(z) (both fp32) of a guided step. By default as the authors'
    release computes them (see `release_guided_noise`); with the paper's guidance (eqs. 5-6, fig. 2), one
    pass of the generation branch, with its cross-branch attention, gives both the features and the
    noise, and one backward pass the gradient of the total energy."""
    if settings.release:
        return release_guided_noise(runner, guide, z, t, text, uncond, settings.cfg_scale, step, share_trunk)
    with guide.attend(step):
        with runner.stage("guidance"), torch.enable_grad():
            x = z.detach().float().requires_grad_(True)
            features, rest = runner.features_midway(runner.trunk(x, t, text))
            (gradient,) = latent_gradients(features, x, lambda f: [sum(guide.energy(f, step))])
            runner.count("backward", 1)
        eps = with_cfg(runner, runner.noise_from(rest), z, t, uncond, settings.cfg_scale)
    return eps, gradient


def release_guided_noise(runner: Runner, guide: Guide, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                         uncond: Optional[torch.Tensor], cfg_scale: float, step: int,
                         share_trunk: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The release's guided step: features from a pass without cross-branch attention, the edit
    energy's gradient kept inside the gradient region and the content energy's outside (two backward
    passes). The feature pass and the noise pass share their trunk, which has no decoder
    self-attention (`share_trunk=False` runs them apart, as the release does, for benchmarks)."""
    with runner.stage("guidance"), torch.enable_grad():
        x = z.detach().float().requires_grad_(True)
        state = runner.trunk(x, t, text)
        grad_edit, grad_content = latent_gradients(runner.features_from(state), x,
                                                   lambda f: guide.energy(f, step))
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
    """The edited clean latent (1, 4, h, w), fp32. `uncond` is None when the prompt is empty (both
    branches would match)."""
    z = guide.start.float()
    gain = settings.step_size * settings.energy_scale * strength
    eta_map = settings.sde_eta * guide.edit_region
    for i in range(len(timeline)):
        t = timeline.timesteps[i]
        a, a_next = timeline.alphas[i], timeline.alphas_next[i]
        repeats = settings.time_travel_repeats if i in schedule.time_travel else 1
        for r in range(repeats):
            if r:
                # Time travel: back up to step i's noise level by one inversion step (the UNet at the
                # timestep of the level it starts from, as the release does), then denoise again.
                z = ddim.invert_step(z, runner.noise(z, timeline.timesteps_next[i], text), a_next, a)
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
