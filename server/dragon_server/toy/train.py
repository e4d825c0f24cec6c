"""Training the `toy` model on procedural scenes, on a CPU, in about an hour.

Three stages, each resumable from the checkpoint file in the work folder:
1. `vae`: an AutoencoderKL in the SD layout (8x, 4 latent channels): hand-set (`toy.vae`, the
   default) or trained on random crops.
2. `data`: a fixed set of scenes encoded once to latents (posterior mean and standard deviation).
3. `unet`: an SD 1.x-layout UNet (epsilon prediction, SD 1.5's noise schedule) trained on those
   latents with their captions (half of them dropped to the empty prompt), with an EMA of its weights.

Every random draw of step k comes from the seed and k, so a run of a fixed step count gives the same
weights whether or not it was interrupted and resumed. The result is a diffusers folder (fp16
safetensors) that `load_components` reads.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from dragon_server.engine.models import SD15_SCHEDULER, byte_level_tokenizer
from dragon_server.toy.config import TrainConfig
from dragon_server.toy.scenes import batch
from dragon_server.toy.vae import analytic_latents, analytic_vae, toy_vae

log = logging.getLogger(__name__)

TOY_SETTINGS = "dragon.json"
"""The file in a model folder with the model's own defaults for the engine (see `ModelDefaults`)."""


def build_parts(config: TrainConfig) -> Tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The toy model's architecture with initial weights from the config's seed: an SD 1.x UNet
    (768-wide cross-attention, 5.7 M parameters), an 8x VAE (hand-set, or random to be trained) and a
    one-layer CLIP text encoder (768 wide, random and frozen)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        unet = UNet2DConditionModel(
            sample_size=config.size // 8, block_out_channels=(32, 64, 96, 128), layers_per_block=1,
            cross_attention_dim=768, attention_head_dim=1, norm_num_groups=16,
        )
        vae = analytic_vae(config.size) if config.vae_steps == 0 else toy_vae(config.size)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=514, hidden_size=768, intermediate_size=1536, num_hidden_layers=1, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768, bos_token_id=512, eos_token_id=513, pad_token_id=513,
        ))
    return unet, vae, text


class Trainer:
    """One training run in `work` (checkpoint and encoded scenes), writing the model to `out`."""

    def __init__(self, config: TrainConfig, work: str, checkpoint_minutes: float = 5.0):
        self.config = config
        self.work = work
        self.checkpoint_seconds = checkpoint_minutes * 60
        os.makedirs(work, exist_ok=True)
        self.unet, self.vae, self.text = build_parts(config)
        self.text.requires_grad_(False).eval()
        self.tokenizer = byte_level_tokenizer()
        self.scheduler = DDIMScheduler(**SD15_SCHEDULER)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        self.unet_opt = torch.optim.AdamW(self.unet.parameters(), lr=config.unet_lr, weight_decay=0.0)
        self.vae_step = 0
        self.unet_step = 0
        self.scaling = 1.0
        self.losses: Dict[str, float] = {}
        self._saved = time.monotonic()

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.work, "checkpoint.pt")

    @property
    def data_path(self) -> str:
        return os.path.join(self.work, f"latents-{self.config.scenes}.pt")

    def save(self) -> None:
        """Write the checkpoint atomically (a crash while saving keeps the previous one)."""
        state = {
            "config": asdict(self.config), "vae": self.vae.state_dict(), "unet": self.unet.state_dict(),
            "ema": self.ema.state_dict(), "vae_opt": self.vae_opt.state_dict(),
            "unet_opt": self.unet_opt.state_dict(), "vae_step": self.vae_step, "unet_step": self.unet_step,
            "scaling": self.scaling, "losses": self.losses,
        }
        tmp = self.checkpoint_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)
        self._saved = time.monotonic()

    def resume(self) -> bool:
        """Load the checkpoint if there is one from the same configuration; True when loaded."""
        if not os.path.isfile(self.checkpoint_path):
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        lengths = ("vae_steps", "unet_steps")
        if {k: v for k, v in state["config"].items() if k not in lengths} != {
                k: v for k, v in asdict(self.config).items() if k not in lengths}:
            raise SystemExit(f"{self.checkpoint_path} is from another configuration: use another --work folder")
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.unet_opt.load_state_dict(state["unet_opt"])
        self.vae_step, self.unet_step = state["vae_step"], state["unet_step"]
        self.scaling, self.losses = state["scaling"], state["losses"]
        return True

    def _maybe_save(self) -> None:
        if time.monotonic() - self._saved >= self.checkpoint_seconds:
            self.save()

    def _generator(self, stage: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.config.seed * 1_000_003 + stage) * 10_000_019 + step)

    def train_vae(self) -> None:
        """Reconstruction (L1 + MSE) with a small KL term, on random crops of fresh scenes."""
        c = self.config
        self.vae.train()
        bar = tqdm(total=c.vae_steps, initial=self.vae_step, desc="vae", unit="step")
        while self.vae_step < c.vae_steps:
            pics, _ = batch(c.seed + 1, self.vae_step, c.vae_batch, c.size)
            rng = np.random.default_rng([c.seed + 2, self.vae_step])
            y, x = rng.integers(0, c.size - c.vae_crop + 1, 2)
            crops = torch.from_numpy(pics[:, :, y:y + c.vae_crop, x:x + c.vae_crop].copy())
            posterior = self.vae.encode(crops).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape,
                                                             generator=self._generator(1, self.vae_step))
            out = self.vae.decode(z).sample
            loss = F.l1_loss(out, crops) + F.mse_loss(out, crops) + 1e-6 * posterior.kl().mean()
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
            self.vae_opt.step()
            self.vae_step += 1
            self.losses["vae"] = 0.98 * self.losses.get("vae", loss.item()) + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses['vae']:.4f}")
            self._maybe_save()
        bar.close()
        self.vae.eval()

    @torch.no_grad()
    def encode_scenes(self) -> Tuple[torch.Tensor, torch.Tensor, list]:
        """Latent mean and std (N, 4, size/8, size/8) and captions of the fixed training scenes, cached."""
        if os.path.isfile(self.data_path):
            data = torch.load(self.data_path, map_location="cpu", weights_only=True)
            return data["mean"], data["std"], data["captions"]
        c = self.config
        means, stds, captions = [], [], []
        per = 8
        for i in tqdm(range(0, c.scenes, per), desc="encoding scenes", unit="batch"):
            pics, caps = batch(c.seed + 3, i // per, min(per, c.scenes - i), c.size)
            if c.vae_steps == 0:
                means.append(analytic_latents(torch.from_numpy(pics)))
                stds.append(torch.zeros_like(means[-1]))
            else:
                posterior = self.vae.encode(torch.from_numpy(pics)).latent_dist
                means.append(posterior.mean)
                stds.append(posterior.std)
            captions.extend(caps)
        mean, std = torch.cat(means), torch.cat(stds)
        torch.save({"mean": mean, "std": std, "captions": captions}, self.data_path)
        return mean, std, captions

    def train_unet(self, mean: torch.Tensor, std: torch.Tensor, captions: list) -> None:
        """Epsilon prediction on SD 1.5's schedule; the EMA copy is what gets exported."""
        c = self.config
        embeddings = self.embed_captions(captions)
        if self.unet_step == 0:
            self.scaling = float(1.0 / mean.std())
        alphas = self.scheduler.alphas_cumprod
        self.unet.train()
        empty = self._embed([""])[0]
        bar = tqdm(total=c.unet_steps, initial=self.unet_step, desc="unet", unit="step")
        while self.unet_step < c.unet_steps:
            rng = np.random.default_rng([c.seed + 4, self.unet_step])
            pick = rng.choice(len(mean), c.unet_batch, replace=False)
            g = self._generator(2, self.unet_step)
            z0 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=g)) * self.scaling
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, len(alphas), (c.unet_batch,), generator=g)
            a = alphas[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            drop = rng.random(c.unet_batch) < c.drop_prompt
            texts = embeddings[pick].float()
            texts[torch.from_numpy(drop)] = empty
            loss = F.mse_loss(self.unet(zt, t, texts).sample, noise)
            for group in self.unet_opt.param_groups:
                group["lr"] = c.unet_lr * min(1.0, (self.unet_step + 1) / c.warmup)
            self.unet_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.unet_opt.step()
            decay = min(c.ema, (1 + self.unet_step) / (10 + self.unet_step))
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.unet.parameters()):
                    e.lerp_(p, 1 - decay)
            self.unet_step += 1
            self.losses["unet"] = 0.99 * self.losses.get("unet", loss.item()) + 0.01 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{self.losses['unet']:.4f}")
            self._maybe_save()
        bar.close()

    @torch.no_grad()
    def embed_captions(self, captions: list) -> torch.Tensor:
        """Text-encoder outputs (N, 77, 768) of the training captions, fp16, computed once and cached
        (the frozen encoder would otherwise cost a fifth of every step)."""
        path = os.path.join(self.work, f"texts-{self.config.scenes}.pt")
        if os.path.isfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        chunks = [self._embed(captions[i:i + 32]).half()
                  for i in tqdm(range(0, len(captions), 32), desc="encoding captions", unit="batch")]
        texts = torch.cat(chunks)
        torch.save(texts, path)
        return texts

    @torch.no_grad()
    def _embed(self, prompts: list) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        return self.text(ids)[0]

    def run(self, out: str, export_only: bool = False) -> None:
        """All stages from wherever the checkpoint left off, then the model folder `out`; with
        `export_only`, the model as the checkpoint has it, without training further."""
        if export_only:
            if not self.resume():
                raise SystemExit(f"no checkpoint in {self.work} to export")
            self.export(out)
            return
        if self.resume():
            log.info("resumed at vae step %d, unet step %d", self.vae_step, self.unet_step)
        self.train_vae()
        self.save()
        mean, std, captions = self.encode_scenes()
        self.train_unet(mean, std, captions)
        self.save()
        self.export(out)

    def export(self, out: str) -> None:
        """Write the diffusers folder: fp16 safetensors, scheduler, tokenizer and the model's defaults (a
        `dragon.json` already there keeps its strengths; training facts are updated)."""
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        vae = copy.deepcopy(self.vae)
        vae.register_to_config(scaling_factor=self.scaling)
        for name, module in (("unet", self.ema), ("vae", vae), ("text_encoder", self.text)):
            copy.deepcopy(module).to(torch.float16).save_pretrained(os.path.join(out, name))
        self.scheduler.save_pretrained(os.path.join(out, "scheduler"))
        self.tokenizer.save_pretrained(os.path.join(out, "tokenizer"))
        index = {
            "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        }
        with open(os.path.join(out, "model_index.json"), "w") as f:
            json.dump(index, f, indent=2)
        settings_path = os.path.join(out, TOY_SETTINGS)
        settings = {}
        if os.path.isfile(settings_path):
            with open(settings_path) as f:
                settings = json.load(f)
        settings.update({"working_area": self.config.size ** 2, "training": asdict(self.config),
                         "final_losses": {k: round(v, 5) for k, v in self.losses.items()}})
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=2)
