"""The SD 1.x UNet forward, written out so that it can stop between decoder blocks and go on later.

DragonDiffusion's guidance needs only the outputs of decoder blocks 1 and 2. A feature pass stops
right after block 2, skipping the last (largest) decoder block with the same weights as the full
forward, so no second, truncated copy of the UNet is kept. The paper's guided step takes the features
midway through the pass that predicts the noise and finishes that pass from there. The release's
guided step runs its feature pass without cross-branch attention; everything before the first
decoder self-attention (the trunk: encoder, middle block, decoder block 0) does not depend on that
attention, so the trunk is computed once for its feature pass and its noise pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

FEATURE_BLOCKS = (1, 2)
"""Decoder blocks whose outputs are the guidance features (semantic and geometric scale)."""


@dataclass
class Trunk:
    """A forward stopped between decoder blocks: by `trunk`, after the blocks that have no decoder
    self-attention; by `advance`, after any later block. `sample` and `timestep` are the forward's
    inputs (a v-prediction model's output is turned into noise with them)."""

    h: torch.Tensor
    skips: Tuple[torch.Tensor, ...]
    emb: torch.Tensor
    text: torch.Tensor
    next_block: int
    sample: torch.Tensor
    timestep: torch.Tensor

    def detach(self) -> Trunk:
        return Trunk(self.h.detach(), tuple(s.detach() for s in self.skips), self.emb.detach(), self.text,
                     self.next_block, self.sample.detach(), self.timestep)


def _up(block, h, skips, emb, text):
    res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=text), skips
    return block(hidden_states=h, temb=emb, res_hidden_states_tuple=res), skips


def trunk(unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> Trunk:
    """Time embedding, encoder, middle block and the leading decoder blocks without attention."""
    t = timestep.reshape(-1).expand(sample.shape[0])
    emb = unet.time_embedding(unet.time_proj(t).to(sample.dtype))
    if text.shape[0] != sample.shape[0]:
        text = text.expand(sample.shape[0], -1, -1)
    h = unet.conv_in(sample)
    skips: Tuple[torch.Tensor, ...] = (h,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb, encoder_hidden_states=text)
    first = 0
    while not getattr(unet.up_blocks[first], "has_cross_attention", False):
        h, skips = _up(unet.up_blocks[first], h, skips, emb, text)
        first += 1
    return Trunk(h, skips, emb, text, first, sample, timestep)


def advance(unet: UNet2DConditionModel, state: Trunk, through: int) -> Tuple[List[torch.Tensor], Trunk]:
    """Run decoder blocks from the state's next one through block `through`: their outputs, and the
    state after them, from which `head` finishes the same forward."""
    h, skips = state.h, state.skips
    outputs: List[torch.Tensor] = []
    for i in range(state.next_block, through + 1):
        h, skips = _up(unet.up_blocks[i], h, skips, state.emb, state.text)
        outputs.append(h)
    return outputs, Trunk(h, skips, state.emb, state.text, through + 1, state.sample, state.timestep)


def head(unet: UNet2DConditionModel, state: Trunk) -> torch.Tensor:
    """The rest of the forward from `state`: the model's prediction (noise, or v for a v-prediction
    model)."""
    _, end = advance(unet, state, len(unet.up_blocks) - 1)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(end.h)))


def unet_forward(unet: UNet2DConditionModel, sample: torch.Tensor, timestep: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
    """The model's prediction (see `head`) for `sample` at `timestep`."""
    return head(unet, trunk(unet, sample, timestep, text))


def features_from(unet: UNet2DConditionModel, state: Trunk) -> Tuple[List[torch.Tensor], Trunk]:
    """Guidance features at their own resolutions: the outputs of decoder blocks 1 and 2 (H/16 and H/8
    of the image for SD 1.5), differentiable with respect to the sample the trunk came from; and the
    state after block 2 (nothing after it has run: a feature pass may stop there)."""
    outputs, end = advance(unet, state, max(FEATURE_BLOCKS))
    return [outputs[i - state.next_block] for i in FEATURE_BLOCKS], end


def on_grid(features: List[torch.Tensor], size: Tuple[int, int]) -> List[torch.Tensor]:
    """Features resized (nearest) to one grid of `size` (twice the latent size: a quarter of the
    image), in fp32 for the energy."""
    return [F.interpolate(f.float(), size=size, mode="nearest") for f in features]
