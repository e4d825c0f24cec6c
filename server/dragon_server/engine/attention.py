"""Cross-branch self-attention (paper section 3.4): the decoder's self-attention keys and values of the
source image, recorded during inversion (the memory bank), replace or join those of the edit.

Only the decoder (`up_blocks`) self-attention layers are touched; encoder correspondence is weak.
The processors use PyTorch's scaled_dot_product_attention and stay installed: with no action set they
compute plain self-attention.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

KV = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class MemoryBank:
    """Keys and values of every decoder self-attention layer, per denoising step index. They stay on
    the device; `on_host` keeps them in host memory and moves them at each use (the release's way,
    kept only to reproduce its cost)."""

    entries: Dict[int, Dict[str, KV]] = field(default_factory=dict)
    on_host: bool = False

    def put(self, step: int, layer: str, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.on_host:
            k, v = k.to("cpu"), v.to("cpu")
        self.entries[step][layer] = (k.detach(), v.detach())

    def get(self, step: int, layer: str, device: torch.device) -> KV:
        k, v = self.entries[step][layer]
        return (k.to(device), v.to(device)) if self.on_host else (k, v)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layers in self.entries.values()
                   for kv in layers.values() for t in kv)


def _token_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """A latent-grid mask (h, w) resized to a layer with `tokens` positions, as booleans (tokens,);
    all True when nothing would be kept (computed on the device, without a host round trip)."""
    h, w = mask.shape
    factor = int(round((h * w / tokens) ** 0.5))
    small = F.interpolate(mask[None, None].float(), size=(h // factor, w // factor), mode="area")
    keep = small.reshape(-1) > 0.5
    return keep | ~keep.any()


class TokenMasks:
    """Which memory-bank tokens the edit attends to in appearance and paste: the image's where `keep`,
    the reference's where `keep_ref` (latent-grid masks); made once per edit, per layer size."""

    def __init__(self, keep: torch.Tensor, keep_ref: torch.Tensor):
        self.keep, self.keep_ref = keep, keep_ref
        self._by_tokens: Dict[int, torch.Tensor] = {}

    def __call__(self, tokens: int) -> torch.Tensor:
        if tokens not in self._by_tokens:
            both = torch.cat([_token_mask(self.keep, tokens), _token_mask(self.keep_ref, tokens)])
            self._by_tokens[tokens] = both[None, None, None, :]
        return self._by_tokens[tokens]


@dataclass
class _Action:
    kind: str  # record | replace | concat | masked
    step: int
    bank: MemoryBank
    ref_bank: Optional[MemoryBank] = None
    masks: Optional[TokenMasks] = None


class CrossBranchAttention:
    """Says what the decoder self-attention layers do during the next UNet passes. One per UNet: use
    `CrossBranchAttention.of(unet)`."""

    @classmethod
    def of(cls, unet: UNet2DConditionModel) -> CrossBranchAttention:
        """The controller installed on `unet`, installing it on first use."""
        if not isinstance(getattr(unet, "_dragon_attention", None), cls):
            unet._dragon_attention = cls(unet)
        return unet._dragon_attention

    def __init__(self, unet: UNet2DConditionModel):
        self.action: Optional[_Action] = None
        for b, block in enumerate(unet.up_blocks):
            for a, attention in enumerate(getattr(block, "attentions", None) or []):
                for t, transformer in enumerate(attention.transformer_blocks):
                    transformer.attn1.set_processor(_BranchProcessor(self, f"up{b}.{a}.{t}"))

    @contextlib.contextmanager
    def _acting(self, action: Optional[_Action]) -> Iterator[None]:
        outer, self.action = self.action, action
        try:
            yield
        finally:
            self.action = outer

    def plain(self):
        """Plain self-attention, whatever an enclosing context set (the guidance branch's own passes)."""
        return self._acting(None)

    def recording(self, bank: MemoryBank, step: int):
        """Store this pass's keys and values into `bank` under `step`."""
        bank.entries.setdefault(step, {})
        return self._acting(_Action("record", step, bank))

    def replacing(self, bank: MemoryBank, step: int):
        """Attend to the source's keys and values instead of the edit's own (move)."""
        return self._acting(_Action("replace", step, bank))

    def joining(self, bank: MemoryBank, step: int):
        """Attend to the edit's own keys and values and the source's together (drag)."""
        return self._acting(_Action("concat", step, bank))

    def masked(self, bank: MemoryBank, ref_bank: MemoryBank, masks: TokenMasks, step: int):
        """Attend to the image's and the reference's tokens chosen by `masks`: the background from the
        image, the object's look from the reference (appearance, paste)."""
        return self._acting(_Action("masked", step, bank, ref_bank, masks))

    def exchange(self, layer: str, hidden_states: torch.Tensor, own: Callable[[], KV]):
        """Keys, values and boolean key mask that the layer `layer` attends to, for a batch of
        `hidden_states`; `own()` computes the layer's own keys and values, only when the action uses
        them (replace and masked do not)."""
        act = self.action
        if act is None:
            return (*own(), None)
        if act.kind == "record":
            k, v = own()
            act.bank.put(act.step, layer, k, v)
            return k, v, None
        batch, device = hidden_states.shape[0], hidden_states.device
        bk, bv = act.bank.get(act.step, layer, device)
        if act.kind == "replace":
            return bk.expand(batch, -1, -1), bv.expand(batch, -1, -1), None
        if act.kind == "concat":
            k, v = own()
            return torch.cat([k, bk.expand(batch, -1, -1)], 1), torch.cat([v, bv.expand(batch, -1, -1)], 1), None
        rk, rv = act.ref_bank.get(act.step, layer, device)
        keys = torch.cat([bk, rk], 1).expand(batch, -1, -1)
        values = torch.cat([bv, rv], 1).expand(batch, -1, -1)
        return keys, values, act.masks(bk.shape[1])


class _BranchProcessor:
    """Self-attention of one decoder layer, with keys and values chosen by the controller."""

    def __init__(self, control: CrossBranchAttention, name: str):
        self.control, self.name = control, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        batch, tokens, _ = hidden_states.shape
        q = attn.to_q(hidden_states)
        k, v, mask = self.control.exchange(
            self.name, hidden_states, lambda: (attn.to_k(hidden_states), attn.to_v(hidden_states)))
        heads = attn.heads
        dim = q.shape[-1] // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, heads, dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * dim)
        return attn.to_out[1](attn.to_out[0](out))
