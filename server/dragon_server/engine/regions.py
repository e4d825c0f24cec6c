"""From pixel plan to what steers the sampler: masks on the feature grid and the latent grid, the
per-mode energy, the z_T initialisation and the cross-branch attention of each step."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dragon_server.engine import energy as E
from dragon_server.engine.attention import TokenMasks
from dragon_server.engine.geometry import GRID_FACTOR, LATENT_FACTOR, Affine, Frame
from dragon_server.engine.inversion import SourceState
from dragon_server.engine.planning import PixelPlan
from dragon_server.engine.request import EditRequest, Mode
from dragon_server.engine.runner import Runner
from dragon_server.engine.settings import MethodSettings, Schedule
from dragon_server.engine.unet import FEATURE_BLOCKS
from dragon_server.engine.unet import on_grid as on_grid_features

Energies = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class Guide:
    """One edit's steering. `energy(features, step)` gives (edit, content) fp32 energies of the generation
    branch's features (a list of (1, C, h, w) maps, one per layer of FEATURE_BLOCKS); on the latent grid
    (1, 1, h, w) 0/1 fp32 masks: `edit_region` is where regional SDE acts and `gradient_region` where the
    edit energy's gradient acts when the two are kept apart (release guidance); `start` is z_T (fp32);
    `attend(step)` sets up cross-branch self-attention for that step."""

    energy: Callable[[List[torch.Tensor], int], Energies]
    edit_region: torch.Tensor
    gradient_region: torch.Tensor
    start: torch.Tensor
    attend: Callable[[int], ContextManager]


def grid_mask(mask: Image.Image, frame: Frame, factor: int, device: torch.device) -> torch.Tensor:
    """A full-size mask cut to `frame` and averaged onto the grid `factor` times coarser than the
    working size: (H/factor, W/factor) weights in [0, 1]."""
    cut = torch.from_numpy(np.asarray(frame.cut(mask), dtype=np.float32) / 255.0).to(device)
    W, H = frame.size
    return F.interpolate(cut[None, None], size=(H // factor, W // factor), mode="area")[0, 0]


def sampling_grid(affine: Affine, src_hw: Tuple[int, int], dst_hw: Tuple[int, int],
                  device: torch.device) -> torch.Tensor:
    """grid_sample coordinates that move a source map onto the destination grid by `affine`
    (source cells to destination cells)."""
    inv = affine.inverse()
    ys = torch.arange(dst_hw[0], device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(dst_hw[1], device=device, dtype=torch.float32) + 0.5
    gx = 2 * (inv.sx * xs + inv.tx) / src_hw[1] - 1
    gy = 2 * (inv.sy * ys + inv.ty) / src_hw[0] - 1
    return torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`x` (1, C, h, w) resampled (nearest) on `grid`; cells that come from outside are zero."""
    return F.grid_sample(x, grid.to(x.dtype), mode="nearest", padding_mode="zeros", align_corners=False)


def _placement_on(plan: PixelPlan, src: Frame, factor: int) -> Affine:
    """The plan's placement between two grids of the same coarseness."""
    return src.to(factor).inverse().then(plan.placement).then(plan.frame.to(factor))


def _window(cx: float, cy: float, side: int, hw: Tuple[int, int]) -> Tuple[slice, slice]:
    """A side x side window of cells around (cx, cy), moved inside a grid of size hw."""
    x0 = min(max(int(np.floor(cx)) - side // 2, 0), hw[1] - side)
    y0 = min(max(int(np.floor(cy)) - side // 2, 0), hw[0] - side)
    return slice(y0, y0 + side), slice(x0, x0 + side)


def _layer_sum(energy_fn: Callable[[int, torch.Tensor], Energies], features: List[torch.Tensor]) -> Energies:
    """Energies summed over the feature layers (each mode's energy weights its layers); `features` are
    already on the guidance grid."""
    edit = content = 0.0
    for layer, gen in enumerate(features):
        e, c = energy_fn(layer, gen)
        edit, content = edit + e, content + c
    return edit, content


def _cells(mask: torch.Tensor) -> torch.Tensor:
    """A grid mask as the release has it: cells more than half covered, as 0/1."""
    return (mask > 0.5).to(mask.dtype)


def _latent_cells(grid: torch.Tensor) -> torch.Tensor:
    """A 0/1 guidance-grid mask taken down to the latent grid by nearest sampling, as (1, 1, h, w)."""
    h, w = grid.shape
    return F.interpolate(grid[None, None], size=(h * GRID_FACTOR // LATENT_FACTOR, w * GRID_FACTOR // LATENT_FACTOR),
                         mode="nearest")


def build_guide(runner: Runner, request: EditRequest, plan: PixelPlan, settings: MethodSettings,
                schedule: Schedule, source: SourceState, reference: Optional[SourceState]) -> Guide:
    """The guide of one edit in `request.mode`."""
    dev = runner.c.device
    frame = plan.frame
    W, H = frame.size
    grid_hw = (H // GRID_FACTOR, W // GRID_FACTOR)
    lat_hw = (H // LATENT_FACTOR, W // LATENT_FACTOR)
    attention = runner.attention
    mode = request.mode
    z_t = source.noise
    release = settings.release
    layers = len(FEATURE_BLOCKS)

    planned = frame.local()
    """The frame for the plan's masks, which cover the frame only."""

    def on_grid(mask: Image.Image, f: Frame = planned, factor: int = GRID_FACTOR) -> torch.Tensor:
        return grid_mask(mask, f, factor, dev)

    def cells(mask: Image.Image, f: Frame = planned) -> torch.Tensor:
        """A mask on the guidance grid: soft coverage (paper) or whole cells (release)."""
        grid = on_grid(mask, f)
        return _cells(grid) if release else grid

    def latent_region(grid: torch.Tensor, mask: Image.Image) -> torch.Tensor:
        """Where a region acts on the latent grid: the release's cells sampled down, or (paper) every
        latent cell the mask touches."""
        return _latent_cells(grid) if release else binary(on_grid(mask, factor=LATENT_FACTOR))

    def features_of(state: SourceState, step: int) -> List[torch.Tensor]:
        return on_grid_features(state.features_at(runner, step), grid_hw)

    def binary(mask: torch.Tensor) -> torch.Tensor:
        return (mask > 0).float()[None, None]

    if mode in (Mode.MOVE, Mode.PASTE):
        src_state = source if mode == Mode.MOVE else reference
        src_frame = frame if mode == Mode.MOVE else plan.ref_frame
        target = cells(plan.target_mask)
        obj = cells(plan.source_mask) if mode == Mode.MOVE else torch.zeros_like(target)
        vacated = (obj - target).clamp(0, 1)
        regions = E.MoveRegions(target, (1 - torch.maximum(obj, target)).clamp(0, 1), vacated, 1 - obj,
                                has_vacated=bool(vacated.sum() > 1))
        feature_grid = sampling_grid(_placement_on(plan, src_frame, GRID_FACTOR), grid_hw, grid_hw, dev)
        energy_of = E.move_energy if mode == Mode.MOVE else E.paste_energy

        def energy(features: List[torch.Tensor], step: int) -> Energies:
            guide_f = features_of(source, step)
            src_f = guide_f if src_state is source else features_of(src_state, step)
            return _layer_sum(
                lambda k, gen: energy_of(gen, guide_f[k], warp(src_f[k], feature_grid), regions, settings, layers),
                features)

        target_lat = on_grid(plan.target_mask, factor=LATENT_FACTOR)
        gradient_region = latent_region(target, plan.target_mask)
        if mode == Mode.MOVE:
            edit_region = torch.maximum(gradient_region, latent_region(obj, plan.source_mask))
        else:
            edit_region = gradient_region
        lat_grid = sampling_grid(_placement_on(plan, src_frame, LATENT_FACTOR), lat_hw, lat_hw, dev)
        start = torch.where(target_lat[None, None] > 0.5, warp(src_state.noise, lat_grid), z_t)
    elif mode == Mode.APPEARANCE:
        obj = cells(plan.source_mask)
        regions_a = E.AppearanceRegions(obj, cells(request.reference_mask, plan.ref_frame), 1 - obj)

        def energy(features: List[torch.Tensor], step: int) -> Energies:
            guide_f = features_of(source, step)
            ref_f = features_of(reference, step)
            return _layer_sum(
                lambda k, gen: E.appearance_energy(gen, guide_f[k], ref_f[k], regions_a, settings, layers),
                features)

        edit_region = gradient_region = latent_region(obj, plan.source_mask)
        start = z_t
    else:
        to_grid = frame.to(GRID_FACTOR)
        to_lat = frame.to(LATENT_FACTOR)
        side = settings.drag_patch
        targets, handles, left = [], [], []
        start = z_t.clone()
        for x0, y0, x1, y1 in request.arrows:
            handle, tgt = _window(*to_grid(x0, y0), side, grid_hw), _window(*to_grid(x1, y1), side, grid_hw)
            handles.append(handle)
            targets.append(tgt)
            rest = torch.zeros(grid_hw, device=dev)
            rest[handle] = 1
            rest[tgt] = 0
            left.append(rest)
            # z_T: the latent patch at each handle is copied to its target.
            lh, lt = _window(*to_lat(x0, y0), 3, lat_hw), _window(*to_lat(x1, y1), 3, lat_hw)
            start[:, :, lt[0], lt[1]] = z_t[:, :, lh[0], lh[1]]
        editable = cells(plan.region)
        regions_d = E.DragRegions(targets, handles, left, 1 - editable)

        def energy(features: List[torch.Tensor], step: int) -> Energies:
            guide_f = features_of(source, step)
            return _layer_sum(lambda k, gen: E.drag_energy(gen, guide_f[k], regions_d, settings, layers), features)

        edit_region = gradient_region = latent_region(editable, plan.region)

    if mode == Mode.MOVE:
        def attend(step: int) -> ContextManager:
            return attention.replacing(source.bank, step) if step in schedule.bank else contextlib.nullcontext()
    elif mode == Mode.DRAG:
        def attend(step: int) -> ContextManager:
            return attention.joining(source.bank, step) if step in schedule.bank else contextlib.nullcontext()
    else:
        object_mask = plan.source_mask if mode == Mode.APPEARANCE else plan.target_mask
        masks = TokenMasks(1 - on_grid(object_mask, factor=LATENT_FACTOR),
                           on_grid(request.reference_mask, plan.ref_frame, LATENT_FACTOR))

        def attend(step: int) -> ContextManager:
            if step not in schedule.bank:
                return contextlib.nullcontext()
            return attention.masked(source.bank, reference.bank, masks, step)

    def energy_on_grid(features: List[torch.Tensor], step: int) -> Energies:
        return energy(on_grid_features(features, grid_hw), step)

    return Guide(energy_on_grid, edit_region, gradient_region, start, attend)
