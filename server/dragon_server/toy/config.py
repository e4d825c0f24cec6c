"""The settings of one toy-model training run, apart from the trainer so that `dragon train-toy --help`
needs no PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TrainConfig:
    """Sizes and lengths of one training run; the defaults make the committed `toy` model."""

    seed: int = 0
    size: int = 256
    """Scene side in pixels (latents are an eighth of it)."""
    vae_steps: int = 0
    """0: the hand-set VAE of `toy.vae` (the default); otherwise train one for this many steps."""
    vae_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 1e-3
    scenes: int = 3000
    """Scenes encoded once for the UNet stage."""
    unet_steps: int = 1520
    """Chosen on `dragon bench quality`: at 4500 steps the loss is lower (0.048 against 0.069) but guided
    edits turn erratic at every strength tried (docs/QUALITY.md)."""
    unet_batch: int = 8
    unet_lr: float = 3e-4
    warmup: int = 200
    ema: float = 0.999
    drop_prompt: float = 0.5

    def problem(self) -> Optional[str]:
        """Why this configuration cannot train, in one line; None when it can."""
        if self.size < 64 or self.size % 64:
            return f"--size {self.size} must be a multiple of 64 (the UNet halves its latents three times)"
        if self.vae_steps and (self.vae_crop % 8 or not 8 <= self.vae_crop <= self.size):
            return f"--vae-crop {self.vae_crop} must be a multiple of 8 no larger than --size"
        if min(self.vae_batch, self.scenes, self.unet_batch, self.warmup) < 1 or self.unet_batch > self.scenes:
            return "--vae-batch, --scenes, --unet-batch and --warmup must be at least 1, --unet-batch at most --scenes"
        if min(self.vae_steps, self.unet_steps) < 0 or not 0 <= self.drop_prompt <= 1 or not 0 <= self.ema < 1:
            return "step counts must not be negative, --drop-prompt must be in 0..1 and --ema in 0..1 (below 1)"
        if min(self.vae_lr, self.unet_lr) <= 0:
            return "learning rates must be positive"
        return None
