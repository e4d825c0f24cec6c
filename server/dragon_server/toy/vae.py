"""An AutoencoderKL in the SD layout whose weights are set by hand instead of trained: the encoder
averages each 8x8 block of pixels (latent channels 0-2 are that block's RGB, channel 3 is zero), the
decoder upsamples the 32x32 thumbnail smoothly back to full size.

Every residual branch (resnet `conv2`, attention `to_out`) is zero, so each block passes its input on;
down-samplers average 2x2, up-samplers blur the nearest-neighbour doubling. The group norms in front
of the output convolutions would normalise the picture away, so the signal travels as (x, -x) beside a
large constant pair (K, -K) in one group: the group's mean is exactly 0 and its spread K up to a
relative error below 1e-3, which the norm's own scale undoes; a shift of B keeps SiLU linear. The toy
model uses this VAE because a small VAE trained for a few minutes on a shared CPU reproduced colours
badly (about 15 dB after 600 steps), while this one keeps flat colours exact and only softens edges.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

K = 100.0
"""The constant that dominates the output group norms' spread."""
B = 12.0
"""Shift into SiLU's linear range (SiLU(z) = z within 2e-4 for z >= 11)."""
CHANNELS = (32, 32, 64, 64)
GROUPS = 4


def _eye(weight: torch.Tensor, n: int, scale: float = 1.0) -> None:
    """Centre tap (or 1x1) mapping channel i to channel i for i < n."""
    c = weight.shape[-1] // 2
    for i in range(n):
        weight[i, i, c, c] = scale


def toy_vae(size: int) -> AutoencoderKL:
    """The toy model's VAE layout (SD's four blocks, 8x, 4 latent channels, small widths), random weights."""
    return AutoencoderKL(
        block_out_channels=CHANNELS, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=GROUPS,
        sample_size=size,
    )


@torch.no_grad()
def analytic_vae(size: int = 256) -> AutoencoderKL:
    """The hand-set VAE for `size` x `size` pictures (any multiple of 8 works)."""
    vae = toy_vae(size)
    for p in vae.parameters():
        p.zero_()
    for name, module in vae.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.weight.fill_(1.0)
        if name.endswith("conv_shortcut") or name in ("quant_conv", "post_quant_conv"):
            _eye(module.weight, min(module.weight.shape[:2]))
    for block in vae.encoder.down_blocks:
        for down in block.downsamplers or ():
            for i in range(down.conv.weight.shape[0]):
                down.conv.weight[i, i, :2, :2] = 0.25
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur, blur) / 16
    for block in vae.decoder.up_blocks:
        for up in block.upsamplers or ():
            weight = up.conv.weight
            for i in range(weight.shape[0]):
                if i < 6:
                    weight[i, i] = blur
                else:
                    weight[i, i, 1, 1] = 1.0
    for conv_in in (vae.encoder.conv_in, vae.decoder.conv_in):
        for i in range(3):
            conv_in.weight[i, i, 1, 1] = 1.0
            conv_in.weight[3 + i, i, 1, 1] = -1.0
        conv_in.bias[6], conv_in.bias[7] = K, -K
    for norm, conv_out, rgb_out in ((vae.encoder.conv_norm_out, vae.encoder.conv_out, 3),
                                    (vae.decoder.conv_norm_out, vae.decoder.conv_out, 3)):
        per_group = norm.num_channels // norm.num_groups
        spread = K * (2.0 / per_group) ** 0.5
        norm.weight.zero_()
        norm.weight[:3] = spread
        norm.bias[:3] = B
        for i in range(rgb_out):
            conv_out.weight[i, i, 1, 1] = 1.0
            conv_out.bias[i] = -B
    vae.encoder.conv_out.bias[4:] = -30.0
    return vae


def analytic_latents(pictures: torch.Tensor) -> torch.Tensor:
    """What the hand-set encoder computes (unscaled latent mean), without running it: (N, 3, H, W) in
    -1..1 -> (N, 4, H/8, W/8), each 8x8 block's mean colour and a zero channel. Used to encode
    training scenes about 100 times faster."""
    rgb = torch.nn.functional.avg_pool2d(pictures, 8)
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], dim=1)
