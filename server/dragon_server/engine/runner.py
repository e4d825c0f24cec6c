"""The loaded model as the method uses it: one UNet (full or early-exit passes, counted), the prompt
encoder and the VAE."""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from dragon_server.engine.attention import CrossBranchAttention
from dragon_server.engine.meter import Meter
from dragon_server.engine.models import Components
from dragon_server.engine.request import EditCancelled, InputError
from dragon_server.engine.unet import Trunk, features_from, head, trunk, unet_forward


class Runner:
    """Runs the model's parts and counts UNet passes by kind (`forward`, `features`, `backward`), in
    samples: a classifier-free-guidance pass of batch 2 counts as two."""

    def __init__(self, components: Components):
        self.c = components
        self.attention = CrossBranchAttention.of(components.unet)
        self.counts: Counter = Counter()
        self.meter: Optional[Meter] = None
        self.cancel: Optional[Callable[[], bool]] = None
        """Asked before every UNet pass: True stops the edit there with EditCancelled, so a cancel waits
        for one pass at most, whatever the schedule does between progress steps."""
        self._texts: Dict[str, torch.Tensor] = {}

    def _checkpoint(self) -> None:
        if self.cancel is not None and self.cancel():
            raise EditCancelled()

    def stage(self, name: str) -> ContextManager:
        """Attributes what runs inside to stage `name` when a benchmark meter is attached."""
        return self.meter.stage(name) if self.meter is not None else contextlib.nullcontext()

    def count(self, kind: str, n: int) -> None:
        self.counts[kind] += n
        if self.meter is not None:
            self.meter.count(kind, n)

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """CLIP embedding (1, 77, width) of `prompt`; the last few are kept."""
        if prompt not in self._texts:
            tok = self.c.tokenizer
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.c.device)
            if len(self._texts) >= 8:
                self._texts.pop(next(iter(self._texts)))
            self._texts[prompt] = self.c.text_encoder(ids)[0]
        return self._texts[prompt]

    @torch.no_grad()
    def noise(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Predicted noise (no gradient)."""
        self._checkpoint()
        self.count("forward", z.shape[0])
        return unet_forward(self.c.unet, z, t, text)

    def features(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> List[torch.Tensor]:
        """Guidance features by an early-exit pass; differentiable when grad is enabled."""
        return self.features_from(self.trunk(z, t, text))

    def trunk(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> Trunk:
        """The start of a forward (no decoder self-attention yet), to share between passes."""
        self._checkpoint()
        return trunk(self.c.unet, z, t, text)

    def features_from(self, state: Trunk) -> List[torch.Tensor]:
        """Guidance features, continuing an early-exit pass from `state`."""
        self.count("features", state.h.shape[0])
        return features_from(self.c.unet, state)[0]

    def features_midway(self, state: Trunk) -> Tuple[List[torch.Tensor], Trunk]:
        """Guidance features continuing a forward from `state`, and the state after them, from which
        `noise_from` finishes the same pass (counted there, as one forward)."""
        return features_from(self.c.unet, state)

    @torch.no_grad()
    def noise_from(self, state: Trunk) -> torch.Tensor:
        """Predicted noise, continuing a forward from `state` (no gradient)."""
        self.count("forward", state.h.shape[0])
        return head(self.c.unet, state.detach())

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        """The VAE latent (scaled) of an RGB image whose sides are multiples of 8."""
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        vae = self.c.vae
        latent = vae.encode(arr.to(self.c.device, vae.dtype)).latent_dist.mean
        return latent * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> Image.Image:
        """The RGB image of a latent; InputError when the latent is not finite (guidance that diverged would
        otherwise give a silent black picture)."""
        if not bool(torch.isfinite(latent).all()):
            raise InputError("the edit diverged (values not finite): lower the strength or the guidance settings")
        vae = self.c.vae
        x = vae.decode(latent.to(vae.dtype) / vae.config.scaling_factor).sample
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        return Image.fromarray(x.cpu().numpy(), "RGB")
