"""A guided step, both ways: the paper's (one pass gives the generation branch's features and its noise,
one backward of the total energy) and the release's (a separate feature pass without cross-branch
attention, the two energies differentiated apart and kept in their regions)."""

import contextlib

import numpy as np
import pytest
import torch

from conftest import make_scene
from dragon_server.engine import EditRequest, Engine, InputError, Mode
from dragon_server.engine.attention import MemoryBank
from dragon_server.engine.ddim import Timeline
from dragon_server.engine.regions import Guide
from dragon_server.engine.sampler import guided_noise
from dragon_server.engine.settings import MethodSettings, Schedule
from dragon_server.engine.unet import FEATURE_BLOCKS, advance, trunk


@pytest.fixture(scope="module")
def step(tiny_engine):
    """A latent, its timestep, a memory bank recorded from another latent, and a guide whose energies
    read different parts of the features, with an edit region on the left half."""
    runner = tiny_engine.runner
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(1, 4, 16, 16, generator=gen)
    t = torch.tensor(601)
    text = runner.text("")
    bank = MemoryBank()
    with runner.attention.recording(bank, 0):
        runner.noise(torch.randn(1, 4, 16, 16, generator=gen), t, text)
    region = torch.zeros(1, 1, 16, 16)
    region[..., :8] = 1

    def energy(features, _step):
        return features[0][..., :4].square().mean(), features[1][..., 8:].cos().mean()

    guide = Guide(energy, region, region, z, lambda s: runner.attention.replacing(bank, s))
    return runner, guide, z, t, text


def energies_grad(unet, guide, z, t, text, attention):
    """d(edit)/dz and d(content)/dz of the features of a plain early-exit pass under `attention`."""
    x = z.clone().requires_grad_(True)
    with attention:
        outputs, _ = advance(unet, trunk(unet, x, t, text), max(FEATURE_BLOCKS))
    features = [outputs[i - 1] for i in FEATURE_BLOCKS]
    edit, content = guide.energy(features, 0)
    return torch.autograd.grad(edit, x, retain_graph=True)[0], torch.autograd.grad(content, x)[0]


def test_paper_step_gives_the_generation_branch_noise_and_the_total_energy_gradient(step):
    runner, guide, z, t, text = step
    runner.counts.clear()
    eps, gradient = guided_noise(runner, guide, z, t, text, None, MethodSettings(guidance="paper"), 0)
    assert dict(runner.counts) == {"forward": 1, "backward": 1}  # one pass, no separate feature pass
    with guide.attend(0):
        plain = runner.noise(z, t, text)
    assert torch.allclose(eps, plain, atol=1e-5)
    grad_edit, grad_content = energies_grad(runner.c.unet, guide, z, t, text, guide.attend(0))
    assert torch.allclose(gradient, grad_edit + grad_content, atol=1e-6, rtol=1e-5)


def test_release_step_keeps_each_gradient_in_its_region_and_features_free_of_the_bank(step):
    runner, guide, z, t, text = step
    runner.counts.clear()
    eps, gradient = guided_noise(runner, guide, z, t, text, None, MethodSettings(), 0)
    assert dict(runner.counts) == {"features": 1, "forward": 1, "backward": 2}
    with guide.attend(0):
        assert torch.allclose(eps, runner.noise(z, t, text), atol=1e-5)
    grad_edit, grad_content = energies_grad(runner.c.unet, guide, z, t, text, contextlib.nullcontext())
    assert torch.allclose(gradient[..., :8], grad_edit[..., :8], atol=1e-6, rtol=1e-5)
    assert torch.allclose(gradient[..., 8:], grad_content[..., 8:], atol=1e-6, rtol=1e-5)
    with_bank, _ = energies_grad(runner.c.unet, guide, z, t, text, guide.attend(0))
    assert not torch.allclose(grad_edit, with_bank, atol=1e-4)  # the bank would have changed it


def test_paper_step_with_a_prompt_adds_one_unconditional_pass(step):
    runner, guide, z, t, text = step
    uncond = runner.text("")
    runner.counts.clear()
    settings = MethodSettings(cfg_scale=3.0, guidance="paper")
    eps, _ = guided_noise(runner, guide, z, t, runner.text("a cat"), uncond, settings, 0)
    assert dict(runner.counts) == {"forward": 2, "backward": 1}
    with guide.attend(0):
        cond, plain = runner.noise(z, t, runner.text("a cat")), runner.noise(z, t, uncond)
    assert torch.allclose(eps, plain + 3.0 * (cond - plain), atol=1e-4)


def test_both_guidances_edit_deterministically_and_differently(tiny_engine):
    image, mask = make_scene()
    engine = Engine(tiny_engine.components, cache_bytes=0)  # every edit inverts: counts compare

    def edit(guidance="release"):
        return engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 80, 60)], steps=8,
                                       seed=2, guidance=guidance))

    paper, release = edit("paper"), edit()
    assert np.array_equal(np.asarray(paper.image), np.asarray(edit("paper").image))
    assert np.array_equal(np.asarray(release.image), np.asarray(edit().image))
    assert not np.array_equal(np.asarray(paper.image), np.asarray(release.image))
    s = MethodSettings.for_mode(Mode.MOVE)
    schedule = Schedule.build(s, 8)
    evaluations = len(schedule.guided) + (s.time_travel_repeats - 1) * len(schedule.time_travel)
    assert paper.unet_evaluations["backward"] == evaluations
    assert release.unet_evaluations["backward"] == 2 * evaluations
    # the release's feature passes of the generation branch; both compute the guidance branch's
    assert release.unet_evaluations["features"] - paper.unet_evaluations["features"] == evaluations


def test_guidance_is_a_named_choice_and_release_by_default():
    assert MethodSettings.for_mode(Mode.DRAG).guidance == "release"
    assert MethodSettings.for_mode(Mode.DRAG, guidance="paper").release is False
    with pytest.raises(InputError, match="unknown guidance 'fast': choose release or paper"):
        MethodSettings.for_mode(Mode.DRAG, guidance="fast")
    with pytest.raises(InputError, match="chosen by name"):
        MethodSettings.for_mode(Mode.DRAG, {"guidance": 1})
    with pytest.raises(InputError, match="unknown setting 'release_guidance'"):
        MethodSettings.for_mode(Mode.DRAG, {"release_guidance": 1})


def test_time_travel_renoises_with_the_unet_at_the_level_it_starts_from(tiny_engine):
    """As the release does: going back from step i's output to its input, the UNet is evaluated at the
    timestep of the output (the next step's), not at step i's."""
    image, mask = make_scene()
    engine = Engine(tiny_engine.components, cache_bytes=0)
    calls = []
    noise = engine.runner.noise
    engine.runner.noise = lambda z, t, text: calls.append(int(t)) or noise(z, t, text)
    try:
        engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 80, 60)], steps=10, seed=1))
    finally:
        engine.runner.noise = noise
    timesteps = Timeline.build(engine.components.scheduler, 10, torch.device("cpu")).timesteps.tolist()
    schedule = Schedule.build(MethodSettings.for_mode(Mode.MOVE), 10)
    assert schedule.time_travel == {4} and schedule.guided == {0, 1, 2, 4}
    # after the 10 inversion passes: unguided step 3, two re-noises back from step 4's output, steps 5..9
    assert calls[10:] == [timesteps[3], timesteps[5], timesteps[5], *timesteps[5:]]
