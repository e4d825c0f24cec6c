"""The energy functions of DragonDiffusion (paper section 3.3): feature correspondence turned into
scalars whose gradients with respect to the latent steer the edit.

Features are (1, C, H, W) fp32 maps on the guidance grid; masks are (H, W) weights in [0, 1]. Every
mode gives two energies of one feature layer, grouped as the authors' release groups them: the edit
energy and the content energy; a guide sums them over the `layers` feature layers. Reference features
never carry gradients.

The two guidances (`MethodSettings.guidance`) write the energies slightly differently:
- "paper": every similarity is S of eq. 4 (the mean cosine mapped to [0, 1]) and every term is averaged
  over the layers;
- "release" (the authors' code, exactly): move's edit and content similarities are the raw mean cosine
  (in [-1, 1]); move's inpaint term (eq. 8) compares with the mean feature of the area outside both the
  object and its target and is summed over the layers, while move's other terms are averaged (the
  release's layer weights 0.5, 0.5); appearance and paste terms are summed over the layers. Drag averages
  over layers and points in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F

from dragon_server.engine.settings import MethodSettings

EPS = 1e-8


def cosine(gen: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weighted mean cosine similarity of features at matching positions, in [-1, 1] (the release's
    similarity for move's edit and content terms)."""
    cos = F.cosine_similarity(gen, ref, dim=1, eps=EPS)[0]
    return (cos * weight).sum() / weight.sum().clamp_min(EPS)


def similarity(gen: torch.Tensor, ref: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """S (paper eq. 4): the weighted mean cosine similarity mapped from [-1, 1] to [0, 1]."""
    return (cosine(gen, ref, weight) + 1) / 2


def mean_similarity(gen: torch.Tensor, gen_weight: torch.Tensor, ref: torch.Tensor,
                    ref_weight: torch.Tensor) -> torch.Tensor:
    """S of the mean features inside two masks (paper eqs. 8 and 10): compares appearance, not layout."""
    a = (gen * gen_weight).sum((2, 3)) / gen_weight.sum().clamp_min(EPS)
    b = (ref * ref_weight).sum((2, 3)) / ref_weight.sum().clamp_min(EPS)
    return (F.cosine_similarity(a, b, dim=1, eps=EPS)[0] + 1) / 2


def attraction(s: torch.Tensor, weight: float, settings: MethodSettings) -> torch.Tensor:
    """w / (alpha + beta * S): falls as the similarity rises, so minimising it pulls features together."""
    return weight / (settings.alpha + settings.beta * s)


@dataclass
class MoveRegions:
    """Grid masks of a move, resize or paste: where the object goes (`target`), what must stay (`share`:
    outside object and target), what it leaves behind (`vacated`) and the paper's inpaint background
    (`background`: outside the object)."""

    target: torch.Tensor
    share: torch.Tensor
    vacated: torch.Tensor
    background: torch.Tensor
    has_vacated: bool


def move_energy(gen: torch.Tensor, guide: torch.Tensor, placed: torch.Tensor, r: MoveRegions,
                s: MethodSettings, layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move / resize, one of `layers` feature layers: the placed object's features at the target (edit);
    the rest unchanged, the vacated area unlike the object (contrast, eq. 7) and like the background on
    average (inpaint, eq. 8), all outside the target (content). `placed` is the source features moved
    and scaled to the target."""
    mean = 1 / layers
    same = cosine if s.release else similarity
    edit = mean * attraction(same(gen, placed, r.target), s.w_edit, s)
    content = mean * attraction(same(gen, guide, r.share), s.w_content, s)
    if r.has_vacated:
        content = content + mean * s.w_contrast * similarity(gen, guide, r.vacated)
        background = r.share if s.release else r.background
        inpaint = attraction(mean_similarity(gen, r.vacated, guide, background), s.w_inpaint, s)
        content = content + (inpaint if s.release else mean * inpaint)
    return edit, content


def paste_energy(gen: torch.Tensor, guide: torch.Tensor, placed: torch.Tensor, r: MoveRegions,
                 s: MethodSettings, layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Paste, one of `layers` feature layers: the reference object's features, placed, at the target;
    everything else unchanged."""
    k = 1.0 if s.release else 1 / layers
    edit = k * attraction(similarity(gen, placed, r.target), s.w_edit, s)
    content = k * attraction(similarity(gen, guide, r.share), s.w_content, s)
    return edit, content


@dataclass
class AppearanceRegions:
    obj: torch.Tensor
    ref_obj: torch.Tensor
    share: torch.Tensor


def appearance_energy(gen: torch.Tensor, guide: torch.Tensor, ref: torch.Tensor, r: AppearanceRegions,
                      s: MethodSettings, layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Appearance replacement, one of `layers` feature layers: the object's mean feature like the
    reference object's (eq. 10), the rest unchanged position by position."""
    k = 1.0 if s.release else 1 / layers
    edit = k * attraction(mean_similarity(gen, r.obj, ref, r.ref_obj), s.w_edit, s)
    content = k * attraction(similarity(gen, guide, r.share), s.w_content, s)
    return edit, content


Window = Tuple[slice, slice]


@dataclass
class DragRegions:
    """Per point pair: the patch at the target, the patch at the handle, and the handle patch's part
    outside the target patch; plus the area that must not change."""

    targets: List[Window]
    handles: List[Window]
    left: List[torch.Tensor]
    share: torch.Tensor


def drag_energy(gen: torch.Tensor, guide: torch.Tensor, r: DragRegions,
                s: MethodSettings, layers: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Point drag, one of `layers` feature layers: the patch at each target like the source patch at its
    handle, the uncovered handle patch unlike it (inpaint weight), averaged over points and layers;
    outside the editable area unchanged."""
    edit = gen.new_zeros(())
    for (ty, tx), (hy, hx), left in zip(r.targets, r.handles, r.left):
        patch = gen[:, :, ty, tx]
        source = guide[:, :, hy, hx]
        edit = edit + attraction(similarity(patch, source, torch.ones_like(patch[0, 0])), s.w_edit, s)
        edit = edit + s.w_inpaint * similarity(gen, guide, left)
    edit = edit / max(1, len(r.targets)) / layers
    content = attraction(similarity(gen, guide, r.share), s.w_content, s) / layers
    return edit, content
