"""The SD 1.x UNet forward, written out so that it can stop early.

DragonDiffusion's guidance needs only the outputs of decoder blocks 1 and 2; stopping right after
block 2 skips the last (largest) decoder block, and it uses the same weights as the full forward, so
no second, truncated copy of the UNet is kept.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

FEATURE_BLOCKS = (1, 2)
"""Decoder blocks whose outputs are the guidance features (semantic and geometric scale)."""


def unet_forward(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    stop_after: Optional[int] = None,
):
    """Predicted noise for `sample` at `timestep`; with `stop_after=k`, the list of the outputs of
    decoder blocks 0..k instead (nothing after block k runs)."""
    t = timestep.reshape(-1).expand(sample.shape[0])
    emb = unet.time_embedding(unet.time_proj(t).to(sample.dtype))
    if text.shape[0] != sample.shape[0]:
        text = text.expand(sample.shape[0], -1, -1)
    h = unet.conv_in(sample)
    skips = (h,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb, encoder_hidden_states=text)
    outputs: List[torch.Tensor] = []
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        if getattr(block, "has_cross_attention", False):
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text)
        else:
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res)
        if stop_after is not None:
            outputs.append(h)
            if i == stop_after:
                return outputs
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def decoder_features(
    unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor
) -> List[torch.Tensor]:
    """Guidance features at their own resolutions: the outputs of decoder blocks 1 and 2 (H/16 and H/8
    of the image for SD 1.5). Differentiable with respect to `sample`."""
    outputs = unet_forward(unet, sample, timestep, text, stop_after=max(FEATURE_BLOCKS))
    return [outputs[i] for i in FEATURE_BLOCKS]


def on_grid(features: List[torch.Tensor], size: Tuple[int, int]) -> List[torch.Tensor]:
    """Features resized (nearest) to one grid of `size` (twice the latent size: a quarter of the
    image), in fp32 for the energy."""
    return [F.interpolate(f.float(), size=size, mode="nearest") for f in features]
