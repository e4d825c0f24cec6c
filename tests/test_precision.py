"""Half-precision guidance: the latent gradient of a guided step in fp16 matches fp32 on the SD 1.5
architecture (random weights), also when the energy is 100 times smaller, thanks to loss scaling."""

import copy
import dataclasses

import pytest
import torch

from dragon_server.engine import energy as E
from dragon_server.engine.models import load_components
from dragon_server.engine.runner import Runner
from dragon_server.engine.sampler import latent_gradients
from dragon_server.engine.settings import MethodSettings
from dragon_server.engine.unet import on_grid


@pytest.fixture(scope="module")
def runners():
    """sd15-random in fp32, and the same weights in fp16 (UNet only: the text embedding is given)."""
    fp32 = load_components("sd15-random", "cpu", "fp32")
    fp16 = dataclasses.replace(fp32, unet=copy.deepcopy(fp32.unet).to(torch.float16), dtype=torch.float16)
    return Runner(fp32), Runner(fp16)


def guided_gradient(runner: Runner, text: torch.Tensor, factor: float) -> torch.Tensor:
    """d(energy)/dz of a move-like edit energy (raw cosine to shifted features inside a box) at 128 px."""
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    x = z.requires_grad_(True)
    features = runner.features(x, torch.tensor(601), text.to(runner.c.dtype))
    placed = on_grid([f.detach().roll(3, -1) for f in features], (32, 32))
    target = torch.zeros(32, 32)
    target[4:20, 6:26] = 1

    def energies(fs):
        return [factor * sum(E.attraction(E.cosine(gen, ref, target), 4.0, MethodSettings()) / 2
                             for gen, ref in zip(on_grid(fs, (32, 32)), placed))]

    return latent_gradients(features, x, energies)[0] / factor


@pytest.mark.parametrize("factor", [1.0, 0.01])
def test_fp16_latent_gradient_matches_fp32(runners, factor):
    full, half = runners
    text = full.text("")
    reference = guided_gradient(full, text, factor)
    gradient = guided_gradient(half, text, factor)
    assert gradient.dtype == torch.float32 and reference.abs().max() > 0
    assert ((gradient - reference).norm() / reference.norm()).item() < 0.02
