"""Turns a checked request into pixel-space facts: where the object is and goes, which crop the model
sees, and which pixels may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageChops, ImageDraw

from dragon_server.engine.geometry import (
    Affine,
    Frame,
    aspect_frame,
    blend_mask,
    clip,
    mask_box,
    region_of_interest,
    union,
    warp_mask,
)
from dragon_server.engine.request import EditRequest, InputError, Mode


@dataclass
class PixelPlan:
    """An edit in image pixels. `placement` maps the source object (in the image, or in the reference
    for paste) to where it goes in the image; `region` is what may change; `blend` the final mask."""

    frame: Frame
    ref_frame: Optional[Frame]
    source_mask: Optional[Image.Image]
    target_mask: Optional[Image.Image]
    placement: Optional[Affine]
    region: Image.Image
    blend: Image.Image


def _box_center(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def default_drag_region(request: EditRequest) -> Image.Image:
    """Without a mask, a drag may change a box around its arrows, padded by half the longest arrow."""
    xs = [v for a in request.arrows for v in (a[0], a[2])]
    ys = [v for a in request.arrows for v in (a[1], a[3])]
    longest = max(((a[2] - a[0]) ** 2 + (a[3] - a[1]) ** 2) ** 0.5 for a in request.arrows)
    pad = max(16.0, longest / 2)
    region = Image.new("L", request.image.size, 0)
    ImageDraw.Draw(region).rectangle((min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad), fill=255)
    return region


def plan_pixels(request: EditRequest, area: int) -> PixelPlan:
    """The pixel plan of a checked request, with the region of interest scaled to about `area` pixels."""
    image = request.image
    width, height = image.size
    ref_frame = source = target = placement = None
    if request.mode == Mode.MOVE:
        source = request.mask
        box = mask_box(source)
        x0, y0, x1, y1 = request.arrows[0] if request.arrows else (0, 0, 0, 0)
        placement = Affine.about(_box_center(box), request.scale, (x1 - x0, y1 - y0))
        target = warp_mask(source, placement, image.size)
        if mask_box(target, 127) is None:
            raise InputError("the arrow moves the object entirely off the image: shorten it")
        region = ImageChops.lighter(source, target)
        edit = union([box, mask_box(target)])
    elif request.mode == Mode.PASTE:
        x0, y0, x1, y1 = request.arrows[0]
        placement = Affine.about((x0, y0), request.scale, (x1 - x0, y1 - y0))
        target = warp_mask(request.reference_mask, placement, image.size)
        if mask_box(target, 127) is None:
            raise InputError("the pasted object falls entirely outside the image: move the arrow's end inwards")
        region = target
        unscaled = Affine(1, 1, x1 - x0, y1 - y0).box(mask_box(request.reference_mask))
        edit = union([mask_box(target), clip(unscaled, width, height)])
    elif request.mode == Mode.DRAG:
        region = request.mask if request.mask is not None else default_drag_region(request)
        points = [(a[i], a[i + 1]) for a in request.arrows for i in (0, 2)]
        pts = (min(p[0] for p in points) - 8, min(p[1] for p in points) - 8,
               max(p[0] for p in points) + 8, max(p[1] for p in points) + 8)
        edit = union([mask_box(region), clip(pts, width, height)])
    else:
        source = request.mask
        region = source
        edit = mask_box(source)

    frame = region_of_interest(edit, width, height, area, request.context)
    if request.mode == Mode.PASTE:
        # The reference crop is what the placement puts onto the image's crop, scaled to the same working
        # size: the reference is resized by the paste's scale before it is inverted (as the release
        # does), and its features and z_T line up with the image's cell for cell.
        rx0, ry0, rx1, ry1 = placement.inverse().box(frame.box)
        ref_frame = Frame((int(round(rx0)), int(round(ry0)), int(round(rx1)), int(round(ry1))), frame.size)
    elif request.mode == Mode.APPEARANCE:
        aspect = frame.size[0] / frame.size[1]
        ref_frame = aspect_frame(mask_box(request.reference_mask), aspect, frame.size, request.context)

    side = max(frame.crop_size)
    blend = blend_mask(region, frame, grow=0.015 * side + 2, feather=0.02 * side + 2)
    return PixelPlan(frame, ref_frame, source, target, placement, region, blend)
