"""The packaged `toy` model loads offline like any diffusers folder, with its own defaults; training it
is deterministic and resumes exactly."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from dragon_server.cli import main
from dragon_server.engine.models import TOY_MODEL, ModelError, load_components, model_defaults
from dragon_server.toy.scenes import random_scene, render
from dragon_server.toy.train import TrainConfig, Trainer


def test_toy_loads_offline_as_sd1_with_its_defaults(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = load_components("toy", "cpu")
    assert c.unet.config.cross_attention_dim == 768 and c.unet.config.in_channels == 4
    assert c.default_area == 256 * 256 and c.strength == model_defaults(TOY_MODEL)["strength"]
    assert c.strength_for("move") > 1 and c.strength_for("drag") > 1
    assert c.scheduler.config.beta_schedule == "scaled_linear" and c.scheduler.config.prediction_type == "epsilon"
    sizes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(TOY_MODEL) for f in fs)
    assert sizes <= 40 * 2**20
    weights = load_file(os.path.join(TOY_MODEL, "unet", "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float16}


def test_the_training_defaults_are_those_of_the_committed_model():
    from dataclasses import asdict

    with open(os.path.join(TOY_MODEL, "dragon.json")) as f:
        assert json.load(f)["training"] == asdict(TrainConfig())


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ('{"strength": -1}', "'strength' must be a positive number"),
    ('{"working_area": "big"}', "'working_area' must be a positive number"),
    ('{"strength": {"spin": 2}}', "unknown mode 'spin'"),
    ('{"strength": {"move": 0}}', "'strength.move' must be a positive number"),
])
def test_a_bad_defaults_file_is_a_one_line_model_error(tmp_path, content, message):
    (tmp_path / "dragon.json").write_text(content)
    with pytest.raises(ModelError, match=message):
        model_defaults(str(tmp_path))


def test_scenes_are_fixed_by_their_seed_and_masks_match_the_picture():
    import numpy as np

    a, b = random_scene(np.random.default_rng(3), 128), random_scene(np.random.default_rng(3), 128)
    assert a == b and 1 <= len(a.shapes) <= 3 and a.caption().endswith("background")
    image, covers = render(a, 128)
    top = covers[-1] > 0.99
    shape = a.shapes[-1]
    if shape.fill == "flat":
        pixels = np.asarray(image, np.float32)[top]
        assert np.abs(pixels - np.asarray(shape.colour)).max() <= 1


SMALL = dict(size=64, vae_steps=2, vae_batch=2, vae_crop=32, scenes=4, unet_batch=2, warmup=2)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    Trainer(TrainConfig(unet_steps=3, **SMALL), str(tmp_path / "w1")).run(str(straight))
    Trainer(TrainConfig(unet_steps=1, **SMALL), str(tmp_path / "w2")).run(str(tmp_path / "early"))
    resumed = tmp_path / "resumed"
    assert main(["train-toy", "--work", str(tmp_path / "w2"), "--out", str(resumed), "--unet-steps", "3",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]]) == 0
    for part in ("unet", "vae"):
        a = load_file(str(straight / part / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(resumed / part / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    final = load_file(str(straight / "unet" / "diffusion_pytorch_model.safetensors"))
    early = load_file(str(tmp_path / "early" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(early[k], final[k]) for k in final)
    c = load_components(str(resumed), "cpu")
    assert c.default_area == 64 * 64
    assert json.loads((resumed / "dragon.json").read_text())["training"]["unet_steps"] == 3


def test_a_checkpoint_from_another_configuration_is_refused(tmp_path):
    Trainer(TrainConfig(unet_steps=1, **SMALL), str(tmp_path / "w")).run(str(tmp_path / "m"))
    other = dict(SMALL, vae_crop=16)
    with pytest.raises(SystemExit, match="another configuration"):
        Trainer(TrainConfig(unet_steps=1, **other), str(tmp_path / "w")).run(str(tmp_path / "m"))


def test_the_hand_set_vae_encodes_block_means_and_decodes_them_back():
    import numpy as np

    from dragon_server.toy.scenes import batch
    from dragon_server.toy.vae import analytic_latents, analytic_vae

    pictures = torch.from_numpy(batch(5, 0, 2, 128)[0])
    vae = analytic_vae(128).eval()
    with torch.no_grad():
        posterior = vae.encode(pictures).latent_dist
        decoded = vae.decode(posterior.mean).sample
    assert torch.allclose(posterior.mean, analytic_latents(pictures), atol=1e-3)
    assert float(posterior.std.max()) < 1e-5
    mse = float(((decoded.clamp(-1, 1) - pictures) ** 2).mean())
    assert 10 * np.log10(4 / mse) > 18  # flat colours kept, edges softened over about 8 pixels
    flat = torch.full((1, 3, 64, 64), 0.3)
    with torch.no_grad():
        back = vae.decode(vae.encode(flat).latent_dist.mean).sample
    assert torch.allclose(back[..., 8:-8, 8:-8], flat[..., 8:-8, 8:-8], atol=2e-3)


@pytest.mark.parametrize("option, message", [
    ("--size=100", "multiple of 64"),
    ("--unet-batch=0", "at least 1"),
    ("--drop-prompt=2", "--drop-prompt must be in 0..1"),
])
def test_bad_training_options_exit_2_with_one_line(tmp_path, capsys, option, message):
    assert main(["train-toy", "--work", str(tmp_path), "--out", str(tmp_path / "m"), option]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
