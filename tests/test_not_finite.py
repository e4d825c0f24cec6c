"""Non-finite numbers: an fp16/bf16 VAE overflow is retried in fp32; what cannot be saved ends in one
clear error, never in a black patch returned as the result."""

import logging

import numpy as np
import pytest
import torch

from conftest import make_scene
from dragon_server.cli import main
from dragon_server.engine import EditRequest, Engine, Mode
from dragon_server.engine.request import NumericError


def request():
    image, mask = make_scene()
    return EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 70, 60)], steps=2)


def overflow_in_half(module, always: bool = False):
    """Make `module` overflow (give inf) when it runs in half precision, or always."""
    module.register_forward_hook(
        lambda _m, _i, out: out * float("inf") if always or out.dtype != torch.float32 else out)


def test_a_vae_that_overflows_in_half_precision_is_retried_in_fp32(caplog):
    overflowing = Engine.load("tiny", "cpu", "bf16", cache_bytes=0)
    overflow_in_half(overflowing.components.vae.decoder)
    with caplog.at_level(logging.WARNING):
        result = overflowing.edit(request())
    assert "the VAE's decode overflowed in bfloat16: it runs in fp32 from now on" in caplog.text
    assert overflowing.components.vae.dtype == torch.float32
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    reference = Engine.load("tiny", "cpu", "bf16", cache_bytes=0)
    reference.components.vae.to(torch.float32)
    assert overflowing.runner.decode(latent).tobytes() == reference.runner.decode(latent).tobytes()
    x, y, w, h = result.box
    assert np.asarray(result.image.crop((x, y, x + w, y + h))).mean() > 20  # not a black patch


def test_an_encoder_overflow_is_retried_and_the_latent_keeps_the_models_dtype():
    engine = Engine.load("tiny", "cpu", "bf16", cache_bytes=0)
    overflow_in_half(engine.components.vae.encoder)
    image, _ = make_scene()
    latent = engine.runner.encode(image)
    assert torch.isfinite(latent).all() and latent.dtype == torch.bfloat16
    assert engine.components.vae.dtype == torch.float32


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_vae_that_overflows_even_in_fp32_ends_the_edit_with_one_clear_error(dtype):
    engine = Engine.load("tiny", "cpu", dtype, cache_bytes=0)
    overflow_in_half(engine.components.vae.decoder, always=True)
    with pytest.raises(NumericError, match="^the VAE's decode gave infinite or NaN numbers even in fp32") as caught:
        engine.edit(request())
    assert caught.value.code == "not_finite"


def test_a_latent_that_became_nan_ends_the_edit_from_the_command_in_one_line(tmp_path, monkeypatch, capsys):
    load = Engine.load

    def broken(*args, **kwargs):
        engine = load("tiny", "cpu", cache_bytes=0)
        engine.components.unet.conv_out.register_forward_hook(lambda _m, _i, out: out * float("nan"))
        return engine

    monkeypatch.setattr(Engine, "load", broken)
    image, mask = make_scene()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    code = main(["edit", "in.png", "--mode", "move", "--mask", "mask.png", "--arrow", "45,55,60,55", "--out",
                 "out.png", "--model", "tiny", "--steps", "2"])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "dragon edit: error: the edit's numbers became infinite or NaN while sampling: try a lower strength, "
        "another seed, or --dtype fp32")
    assert not (tmp_path / "out.png").exists()
