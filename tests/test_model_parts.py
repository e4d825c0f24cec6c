"""The model-level pieces: early-exit UNet forward, memory-bank attention, DDIM steps, model loading."""

import json
import struct

import pytest
import torch

from dragon_server.engine import ddim
from dragon_server.engine.attention import MemoryBank, TokenMasks
from dragon_server.engine.models import check_sd1_checkpoint, load_components, pick_device
from dragon_server.engine.request import ModelError
from dragon_server.engine.unet import advance, features_from, head, trunk, unet_forward


@pytest.fixture(scope="module")
def parts(tiny_engine):
    runner = tiny_engine.runner
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    return runner, z, torch.tensor(501), runner.text("")


def test_explicit_forward_equals_diffusers_forward(parts):
    runner, z, t, text = parts
    unet = runner.c.unet
    with torch.no_grad():
        assert torch.allclose(unet_forward(unet, z, t, text), unet(z, t, text).sample, atol=1e-5)


def test_early_exit_skips_the_last_decoder_block(parts):
    runner, z, t, text = parts
    unet = runner.c.unet
    called = []
    hook = unet.up_blocks[3].register_forward_hook(lambda *a: called.append(1))
    try:
        feats, midway = features_from(unet, trunk(unet, z, t, text))
    finally:
        hook.remove()
    assert called == []
    assert [f.shape[-1] for f in feats] == [8, 16]  # H/16 and H/8 of a 128 px image
    with torch.no_grad():
        blocks, _ = advance(unet, trunk(unet, z, t, text), 3)
        assert torch.allclose(blocks[0], feats[0]) and torch.allclose(blocks[1], feats[1])
        # the same pass finishes from where the features stopped: the noise of a plain forward
        assert torch.allclose(head(unet, midway), unet_forward(unet, z, t, text), atol=1e-5)


def test_trunk_is_free_of_decoder_self_attention_and_shared_exactly(parts):
    runner, z, t, text = parts
    state = trunk(runner.c.unet, z, t, text)
    assert state.next_block == 1  # SD 1.x: decoder block 0 has no attention
    with torch.no_grad():
        assert torch.equal(head(runner.c.unet, state), unet_forward(runner.c.unet, z, t, text))


def test_replacing_with_own_bank_or_joining_it_changes_nothing(parts):
    runner, z, t, text = parts
    bank = MemoryBank()
    with runner.attention.recording(bank, 0):
        plain = runner.noise(z, t, text)
    assert len(bank.entries[0]) == sum(len(a.transformer_blocks) for b in runner.c.unet.up_blocks
                                       for a in (getattr(b, "attentions", None) or []))
    with runner.attention.replacing(bank, 0):
        replaced = runner.noise(z, t, text)
    with runner.attention.joining(bank, 0):
        joined = runner.noise(z, t, text)
    assert torch.allclose(plain, replaced, atol=1e-5)
    assert torch.allclose(plain, joined, atol=1e-5)


def test_bank_of_another_latent_changes_the_prediction(parts):
    runner, z, t, text = parts
    bank = MemoryBank()
    with runner.attention.recording(bank, 3):
        runner.noise(torch.randn_like(z), t, text)
    with runner.attention.replacing(bank, 3):
        replaced = runner.noise(z, t, text)
    assert not torch.allclose(runner.noise(z, t, text), replaced, atol=1e-4)
    keep_all = torch.ones(16, 16)
    with runner.attention.masked(bank, bank, TokenMasks(keep_all, keep_all), 3):
        masked = runner.noise(z, t, text)
    assert torch.allclose(masked, replaced, atol=1e-5)  # the same tokens twice: same attention


def test_ddim_inversion_step_undoes_a_denoising_step():
    z = torch.randn(1, 4, 8, 8)
    eps = torch.randn(1, 4, 8, 8)
    down = ddim.step(z, eps, eps, 0.3, 0.6)
    assert torch.allclose(ddim.invert_step(down, eps, 0.6, 0.3), z, atol=1e-5)


def test_regional_eta_only_adds_noise_where_it_is_set():
    z, eps, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    eta = torch.zeros(1, 1, 8, 8)
    eta[..., :4] = 0.4
    out = ddim.step(z, eps, eps, 0.3, 0.6, eta, noise)
    plain = ddim.step(z, eps, eps, 0.3, 0.6)
    assert torch.allclose(out[..., 4:], plain[..., 4:])
    assert not torch.allclose(out[..., :4], plain[..., :4])


def test_tiny_model_is_the_same_every_load():
    a, b = load_components("tiny", "cpu"), load_components("tiny", "cpu")
    for (n, p), (_, q) in zip(a.unet.named_parameters(), b.unet.named_parameters()):
        assert torch.equal(p, q), n


PROBE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def _safetensors_with(path, names_shapes):
    header = {n: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for n, s in names_shapes.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_checkpoint_that_is_not_sd1_is_refused(tmp_path):
    sdxl = tmp_path / "xl.safetensors"
    _safetensors_with(sdxl, {"conditioner.embedders.0.transformer.x": [1], PROBE: [320, 2048]})
    with pytest.raises(ModelError, match="SDXL"):
        check_sd1_checkpoint(str(sdxl))
    sd1 = tmp_path / "sd1.safetensors"
    _safetensors_with(sd1, {PROBE: [320, 768]})
    check_sd1_checkpoint(str(sd1))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        check_sd1_checkpoint(str(junk))


@pytest.mark.parametrize("model,message", [
    ("/no/such/model.safetensors", "does not exist"),
    ("./no-such-folder", "does not exist"),
    ("nonsense", "unknown model"),
])
def test_bad_model_names_get_one_line_errors(model, message):
    with pytest.raises(ModelError, match=message) as err:
        load_components(model, "cpu")
    assert "\n" not in str(err.value)


def test_offline_default_model_names_the_ways_forward(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="offline.*--model PATH.*--model tiny"):
        load_components("sd15", "cpu")


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    with pytest.raises(ModelError, match="not a diffusers model folder"):
        load_components(str(tmp_path), "cpu")


def test_devices():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ModelError, match="unknown device"):
        pick_device("gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            pick_device("cuda")


def test_diffusers_folder_of_another_architecture_is_refused(tmp_path, tiny_engine):
    tiny_engine.components.unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ModelError, match="not a Stable Diffusion 1.x model"):
        load_components(str(tmp_path), "cpu")


def test_token_masks_follow_the_masks_and_never_shut_everything_out():
    keep = torch.zeros(16, 16)
    keep[:, :8] = 1  # the left half of the image's tokens
    masks = TokenMasks(keep, torch.zeros(16, 16))
    at_8x8 = masks(64)[0, 0, 0]
    assert at_8x8.shape == (128,)
    image, ref = at_8x8[:64].reshape(8, 8), at_8x8[64:]
    assert image[:, :4].all() and not image[:, 4:].any()
    assert ref.all()  # an empty reference mask would leave nothing to attend to: all tokens instead
    assert masks(64) is masks(64)  # made once per layer size


def test_own_keys_and_values_are_computed_only_when_attended_to(parts):
    runner, z, t, text = parts
    bank = MemoryBank()
    with runner.attention.recording(bank, 0):
        runner.noise(z, t, text)
    layer = runner.c.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn1
    calls = []
    hooks = [layer.to_k.register_forward_hook(lambda *a: calls.append("k")),
             layer.to_v.register_forward_hook(lambda *a: calls.append("v"))]
    keep_all = torch.ones(16, 16)
    try:
        for action, expected in ((runner.attention.replacing(bank, 0), []),
                                 (runner.attention.masked(bank, bank, TokenMasks(keep_all, keep_all), 0), []),
                                 (runner.attention.joining(bank, 0), ["k", "v"])):
            calls.clear()
            with action:
                runner.noise(z, t, text)
            assert calls == expected
    finally:
        for hook in hooks:
            hook.remove()
