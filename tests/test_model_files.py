"""Models as people have them: v-prediction, fp16-only folders, legacy .ckpt, cut-off downloads, long
prompts. Built from the random-weight `tiny` model, nothing downloaded."""

import os

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

from conftest import make_scene
from dragon_server.cli import main
from dragon_server.engine import EditRequest, Engine, Mode, ModelError
from dragon_server.engine import models as M

PROBE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def v_engine(prediction_type: str) -> Engine:
    """A `tiny` engine whose scheduler says `prediction_type`."""
    components = M.load_components("tiny", "cpu")
    components.scheduler = DDIMScheduler(**M.SD15_SCHEDULER, prediction_type=prediction_type)
    return Engine(components, cache_bytes=0)


def test_a_v_prediction_model_gives_the_picture_of_its_noise_twin(tiny_engine, monkeypatch):
    from dragon_server.engine import runner as R

    image, mask = make_scene()
    request = EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 70, 60)], steps=4, prompt="a cup")
    expected = np.asarray(tiny_engine.edit(request).image, dtype=np.int16)
    alphas = DDIMScheduler(**M.SD15_SCHEDULER).alphas_cumprod
    noise_head = R.head

    def v_head(unet, state):  # the same UNet, predicting v = noise / sqrt(a) - z sqrt((1 - a) / a) exactly
        a = alphas[state.timestep.long()].reshape(-1, 1, 1, 1)
        return noise_head(unet, state) / a.sqrt() - state.sample * ((1 - a) / a).sqrt()

    monkeypatch.setattr(R, "head", v_head)
    monkeypatch.setattr(R, "unet_forward", lambda unet, z, t, text: v_head(unet, R.trunk(unet, z, t, text)))
    honoured = np.asarray(v_engine("v_prediction").edit(request).image, dtype=np.int16)
    as_noise = np.asarray(v_engine("epsilon").edit(request).image, dtype=np.int16)
    assert np.abs(honoured - expected).max() <= 2
    assert np.abs(as_noise - expected).mean() > 10 * max(np.abs(honoured - expected).mean(), 0.01)


def test_noise_from_a_clean_latent_prediction_is_exact(tiny_engine):
    runner = tiny_engine.runner
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = torch.tensor(500)
    a = float(runner.c.scheduler.alphas_cumprod[500])
    x0 = (z - (1 - a) ** 0.5 * eps) / a ** 0.5
    v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0
    for kind, prediction in (("sample", x0), ("v_prediction", v), ("epsilon", eps)):
        runner.c.scheduler.register_to_config(prediction_type=kind)
        try:
            assert torch.allclose(runner.as_noise(prediction, z, t), eps, atol=1e-4), kind
        finally:
            runner.c.scheduler.register_to_config(prediction_type="epsilon")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A diffusers folder of `tiny` whose UNet exists only as fp16 weights and whose scheduler predicts v;
    the SD 1.x check is off (tiny is smaller than SD 1.5)."""
    unet, vae, text, tokenizer, _ = M.build_random("tiny")
    d = tmp_path / "tiny-model"
    unet.half().save_pretrained(d / "unet", variant="fp16")
    vae.save_pretrained(d / "vae")
    text.save_pretrained(d / "text_encoder")
    tokenizer.save_pretrained(d / "tokenizer")
    DDIMScheduler(**M.SD15_SCHEDULER, prediction_type="v_prediction").save_pretrained(d / "scheduler")
    monkeypatch.setattr(M, "check_sd1", lambda config, where: None)
    return d


def test_a_folder_with_fp16_only_weights_for_one_part_loads_in_fp32(folder):
    assert sorted(os.listdir(folder / "unet")) == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    c = M.load_components(str(folder), "cpu")
    reference = M.build_random("tiny")[0]
    assert c.dtype == torch.float32 and c.unet.dtype == torch.float32 and c.vae.dtype == torch.float32
    weight = reference.conv_in.weight.detach()
    assert torch.equal(c.unet.conv_in.weight, weight.half().float())
    assert c.scheduler.config.prediction_type == "v_prediction"


def test_a_cut_off_weights_file_in_a_folder_is_called_damaged(folder, capsys, tmp_path):
    path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with pytest.raises(ModelError, match=f"^{path} is damaged: it has {size // 2} bytes of the {size} its header "
                                         r"describes \(an interrupted download\?\): download it again$"):
        M.load_components(str(folder), "cpu")
    image, _ = make_scene()
    image.save(tmp_path / "in.png")
    code = main(["edit", str(tmp_path / "in.png"), "--mode", "drag", "--arrow", "45,55,60,55", "--out",
                 str(tmp_path / "out.png"), "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "is damaged" in err and not (tmp_path / "out.png").exists()


def test_an_unknown_prediction_type_is_refused_naming_the_choices(folder):
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"v_prediction"', '"flow_prediction"'))
    with pytest.raises(ModelError, match="predicts 'flow_prediction'.*epsilon, v_prediction, sample"):
        M.load_components(str(folder), "cpu")


def test_a_cut_off_single_file_checkpoint_is_called_damaged(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({PROBE: torch.zeros(320, 768)}, str(path))
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(ModelError, match=f"^{path} is damaged: .*download it again$"):
        M.load_components(str(path), "cpu")


class Callback:
    """Stands for the training objects old checkpoints carry beside their weights."""


@pytest.mark.parametrize("zip_format", [False, True])
def test_legacy_and_zip_ckpt_files_are_read_and_judged_by_their_tensors(tmp_path, zip_format):
    sd1, sdxl, pickled = (tmp_path / f"{n}.ckpt" for n in ("sd1", "sdxl", "pickled"))
    save = dict(_use_new_zipfile_serialization=zip_format)
    torch.save({"state_dict": {PROBE: torch.zeros(4, 768)}, "global_step": 10}, sd1, **save)
    torch.save({"state_dict": {PROBE: torch.zeros(4, 2048), "conditioner.x": torch.zeros(1)}}, sdxl, **save)
    torch.save({"state_dict": {PROBE: torch.zeros(4, 768)}, "callbacks": Callback()}, pickled, **save)
    M.check_sd1_checkpoint(str(sd1))
    with pytest.raises(ModelError, match="is SDXL"):
        M.check_sd1_checkpoint(str(sdxl))
    with pytest.raises(ModelError, match="holds Python objects besides its weights.*convert it to .safetensors"):
        M.check_sd1_checkpoint(str(pickled))


def test_a_prompt_over_77_tokens_warns_which_words_were_dropped(tiny_engine, tmp_path, monkeypatch, capsys, caplog):
    image, mask = make_scene()
    prompt = "a" * 75 + " dropped words"  # the tiny model's tokenizer reads one token per character
    result = tiny_engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 60, 55)], steps=2,
                                          prompt=prompt))
    assert result.warnings == ["the prompt is longer than the 75 tokens the text encoder reads; these words were "
                               "dropped: dropped words"]
    assert "these words were dropped: dropped words" in caplog.text
    assert tiny_engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 60, 55)], steps=2,
                                        prompt="a" * 75)).warnings == []
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "in.png", "--mode", "move", "--mask", "mask.png", "--arrow", "45,55,60,55", "--out",
                 "out.png", "--model", "tiny", "--steps", "2", "--prompt", prompt]) == 0
    assert "dragon edit: warning: the prompt is longer than the 75 tokens" in capsys.readouterr().err


def test_a_hub_model_without_fp16_files_for_some_parts_downloads_their_plain_weights(tmp_path, monkeypatch):
    import fnmatch
    import shutil

    import huggingface_hub

    hub = tmp_path / "hub"
    files = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
             "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
             "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
             "vae/diffusion_pytorch_model.safetensors",
             "text_encoder/config.json", "text_encoder/pytorch_model.bin"]
    for name in files:
        (hub / name).parent.mkdir(parents=True, exist_ok=True)
        (hub / name).write_text(name)
    cache = tmp_path / "cache"

    def snapshot_download(repo, allow_patterns):  # the hub's: fetch the files that match into the cache
        for name in files:
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                (cache / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(hub / name, cache / name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    folder = M._download("owner/model", "fp16")
    fetched = sorted(str(p.relative_to(folder)) for p in cache.rglob("*") if p.is_file())
    assert fetched == sorted(set(files) - {"vae/diffusion_pytorch_model.safetensors"})
