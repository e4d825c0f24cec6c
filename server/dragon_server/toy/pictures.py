"""Pictures that show what a model has learnt: scenes sampled from noise, and DDIM inversion round
trips (picture -> z_T -> picture, no edit), as used in docs/QUALITY.md."""

from __future__ import annotations

from typing import List, Sequence

import torch
from PIL import Image

from dragon_server.engine.ddim import Timeline, invert_step, step
from dragon_server.engine.models import Components
from dragon_server.engine.runner import Runner


def _strip(pictures: Sequence[Image.Image], tile: int) -> Image.Image:
    sheet = Image.new("RGB", (tile * len(pictures), tile))
    for i, p in enumerate(pictures):
        sheet.paste(p.resize((tile, tile), Image.Resampling.LANCZOS), (i * tile, 0))
    return sheet


@torch.no_grad()
def samples(components: Components, prompts: Sequence[str], steps: int = 50, seed: int = 0,
            cfg: float = 4.0, tile: int = 128) -> Image.Image:
    """One picture per prompt sampled from noise (DDIM, classifier-free guidance `cfg` when the prompt
    is not empty), side by side at `tile` pixels each."""
    runner = Runner(components)
    side = int(components.default_area ** 0.5) // 8
    timeline = Timeline.build(components.scheduler, steps, components.device)
    generator = torch.Generator().manual_seed(seed)
    uncond = runner.text("")
    pictures: List[Image.Image] = []
    for prompt in prompts:
        z = torch.randn((1, 4, side, side), generator=generator).to(components.device, components.dtype)
        text = runner.text(prompt)
        for i, t in enumerate(timeline.timesteps):
            eps = runner.noise(z, t, uncond)
            if prompt:
                eps = eps + cfg * (runner.noise(z, t, text) - eps)
            z = step(z, eps, eps, timeline.alphas[i], timeline.alphas_next[i])
        pictures.append(runner.decode(z))
    return _strip(pictures, tile)


@torch.no_grad()
def round_trip(components: Components, image: Image.Image, steps: int = 50) -> Image.Image:
    """`image` (RGB, sides multiples of 64) through the VAE and DDIM inversion to z_T and back with
    the empty prompt; returns (input, VAE only, inverted and regenerated) side by side."""
    runner = Runner(components)
    timeline = Timeline.build(components.scheduler, steps, components.device)
    text = runner.text("")
    latent = runner.encode(image)
    z = latent
    for i in reversed(range(len(timeline))):
        z = invert_step(z, runner.noise(z, timeline.timesteps[i], text), timeline.alphas_next[i], timeline.alphas[i])
    for i, t in enumerate(timeline.timesteps):
        eps = runner.noise(z, t, text)
        z = step(z, eps, eps, timeline.alphas[i], timeline.alphas_next[i])
    return _strip([image, runner.decode(latent), runner.decode(z)], image.width)

