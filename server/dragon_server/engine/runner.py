"""The loaded model as the method uses it: one UNet (full or early-exit passes, counted), the prompt
encoder and the VAE."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Callable, ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from dragon_server.engine.attention import CrossBranchAttention
from dragon_server.engine.meter import Meter
from dragon_server.engine.models import Components
from dragon_server.engine.request import EditCancelled, NumericError
from dragon_server.engine.unet import Trunk, features_from, head, trunk, unet_forward

log = logging.getLogger(__name__)


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

    def prompt_warnings(self, prompt: str) -> List[str]:
        """One warning, naming the dropped words, when `prompt` is longer than the text encoder reads
        (77 tokens for CLIP, two of them markers); also logged. None otherwise."""
        tok = self.c.tokenizer
        ids = tok(prompt, truncation=False).input_ids
        if len(ids) <= tok.model_max_length:
            return []
        dropped = tok.decode(ids[tok.model_max_length - 1:-1], skip_special_tokens=True).strip()
        if len(dropped) > 120:
            dropped = dropped[:117] + "..."
        warning = (f"the prompt is longer than the {tok.model_max_length - 2} tokens the text encoder reads; "
                   f"these words were dropped: {dropped}")
        log.warning("%s", warning)
        return [warning]

    @torch.no_grad()
    def noise(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Predicted noise (no gradient), fp32, for latents (B, 4, h, w) of any float dtype, whatever the
        model predicts (see `as_noise`)."""
        self._checkpoint()
        self.count("forward", z.shape[0])
        return self.as_noise(unet_forward(self.c.unet, z.to(self.c.dtype), t, text).float(), z.float(), t)

    def as_noise(self, prediction: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise implied by the UNet's `prediction` for latent `z` at timestep `t`, by the scheduler's
        `prediction_type`: epsilon as is; v (v = sqrt(a) eps - sqrt(1-a) x0, a the cumulative alpha of
        t) as sqrt(a) v + sqrt(1-a) z; a clean-latent prediction x0 as (z - sqrt(a) x0) / sqrt(1-a)."""
        kind = self.c.scheduler.config.prediction_type
        if kind == "epsilon":
            return prediction
        a = self.c.scheduler.alphas_cumprod.to(z.device)[t.long()].reshape(-1, 1, 1, 1).to(prediction.dtype)
        if kind == "v_prediction":
            return a.sqrt() * prediction + (1 - a).sqrt() * z
        return (z - a.sqrt() * prediction) / (1 - a).sqrt()

    def _checkpoint(self) -> None:
        if self.cancel is not None and self.cancel():
            raise EditCancelled()

    def features(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> List[torch.Tensor]:
        """Guidance features by an early-exit pass; differentiable when grad is enabled."""
        return self.features_from(self.trunk(z, t, text))

    def trunk(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> Trunk:
        """The start of a forward (no decoder self-attention yet), to share between passes; `z` of any
        float dtype (a gradient flows back to it in its own dtype)."""
        self._checkpoint()
        return trunk(self.c.unet, z.to(self.c.dtype), t, text)

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
        """Predicted noise (fp32), continuing a forward from `state` (no gradient)."""
        self.count("forward", state.h.shape[0])
        state = state.detach()
        return self.as_noise(head(self.c.unet, state).float(), state.sample.float(), state.timestep)

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        """The VAE latent (scaled, in the model's dtype) of an RGB image whose sides are multiples of 8.
        Raises NumericError when it is not finite (see `_vae`)."""
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        latent = self._vae(lambda vae: vae.encode(arr.to(self.c.device, vae.dtype)).latent_dist.mean, "encode")
        return (latent * self.c.vae.config.scaling_factor).to(self.c.dtype)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> Image.Image:
        """The RGB image of a latent. Raises NumericError for a latent that is not finite, or when the
        VAE's output is not finite even in fp32 (see `_vae`): a black patch is never a result."""
        if not torch.isfinite(latent).all():
            raise NumericError("the edit's numbers became infinite or NaN while sampling: try a lower strength, "
                               "another seed, or --dtype fp32")
        scale = self.c.vae.config.scaling_factor
        x = self._vae(lambda vae: vae.decode(latent.to(vae.dtype) / scale).sample, "decode")
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        return Image.fromarray(x.cpu().numpy(), "RGB")

    def _vae(self, run: Callable[[torch.nn.Module], torch.Tensor], what: str) -> torch.Tensor:
        """`run(vae)`; when its output is not finite in half precision (the SD VAE can overflow fp16),
        the VAE moves to fp32 for good and `run` is tried again. NumericError if that fails too."""
        vae = self.c.vae
        out = run(vae)
        if torch.isfinite(out).all():
            return out
        if vae.dtype != torch.float32:
            log.warning("the VAE's %s overflowed in %s: it runs in fp32 from now on", what,
                        str(vae.dtype).replace("torch.", ""))
            vae.to(torch.float32)
            out = run(vae)
            if torch.isfinite(out).all():
                return out
        raise NumericError(f"the VAE's {what} gave infinite or NaN numbers even in fp32: the model file may be "
                           "damaged; try another model")
