"""Turns a checked request into pixel-space facts: where the object is and goes, which crop the model
sees, and which pixels may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from PIL import Image, ImageChops, ImageDraw

from dragon_server.engine.geometry import (
    Affine,
    Frame,
    aspect_frame,
    blend_mask,
    clip,
    hull,
    mask_box,
    region_of_interest,
    shift,
    union,
    warp_mask,
    warped_box,
)
from dragon_server.engine.request import EditRequest, InputError, Mode


@dataclass
class PixelPlan:
    """An edit in image pixels. `placement` maps the source object (in the image, or in the reference
    for paste) to where it goes in the image; `region` is what may change; `blend` the final mask.

    The masks (L) cover the frame only: they are of the frame's crop size, in its pixels (cut them with
    `frame.local()`), so a huge picture costs no full-size mask; nothing outside the frame may change.
    """

    frame: Frame
    ref_frame: Optional[Frame]
    source_mask: Optional[Image.Image]
    target_mask: Optional[Image.Image]
    placement: Optional[Affine]
    region: Image.Image
    blend: Image.Image


def _box_center(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _drag_box(request: EditRequest):
    """Without a mask, a drag may change a box around its arrows, padded by half the longest arrow."""
    xs = [v for a in request.arrows for v in (a[0], a[2])]
    ys = [v for a in request.arrows for v in (a[1], a[3])]
    longest = max(((a[2] - a[0]) ** 2 + (a[3] - a[1]) ** 2) ** 0.5 for a in request.arrows)
    pad = max(16.0, longest / 2)
    return min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad


def default_drag_region(request: EditRequest, window: Tuple[int, int, int, int]) -> Image.Image:
    """The region a drag without a mask may change (`_drag_box`), the part of it in `window` (integer
    x0, y0, x1, y1 of the image) as an image of the window's size."""
    region = Image.new("L", (window[2] - window[0], window[3] - window[1]), 0)
    ImageDraw.Draw(region).rectangle(shift(_drag_box(request), -window[0], -window[1]), fill=255)
    return region


def plan_pixels(request: EditRequest, area: int) -> PixelPlan:
    """The pixel plan of a checked request, with the region of interest scaled to about `area` pixels.

    The edit's box is found from the masks' boxes (warping only around the moved object); the masks are
    then made for the frame alone, so the memory is bounded by the frame, not the picture."""
    image = request.image
    width, height = image.size
    ref_frame = placement = None
    if request.mode == Mode.MOVE:
        box = mask_box(request.mask)
        x0, y0, x1, y1 = request.arrows[0] if request.arrows else (0, 0, 0, 0)
        placement = Affine.about(_box_center(box), request.scale, (x1 - x0, y1 - y0))
        if warped_box(request.mask, placement, box, width, height, 127) is None:
            raise InputError("the arrow moves the object entirely off the image: shorten it")
        edit = union([box, warped_box(request.mask, placement, box, width, height)])
    elif request.mode == Mode.PASTE:
        x0, y0, x1, y1 = request.arrows[0]
        placement = Affine.about((x0, y0), request.scale, (x1 - x0, y1 - y0))
        box = mask_box(request.reference_mask)
        if warped_box(request.reference_mask, placement, box, width, height, 127) is None:
            raise InputError("the pasted object falls entirely outside the image: move the arrow's end inwards")
        unscaled = Affine(1, 1, x1 - x0, y1 - y0).box(box)
        edit = union([warped_box(request.reference_mask, placement, box, width, height),
                      clip(unscaled, width, height)])
    elif request.mode == Mode.DRAG:
        if request.mask is not None:
            region_box = mask_box(request.mask)
        else:
            around = hull(_drag_box(request), width, height, grow=1)
            region_box = shift(mask_box(default_drag_region(request, around)), around[0], around[1])
        points = [(a[i], a[i + 1]) for a in request.arrows for i in (0, 2)]
        pts = (min(p[0] for p in points) - 8, min(p[1] for p in points) - 8,
               max(p[0] for p in points) + 8, max(p[1] for p in points) + 8)
        edit = union([region_box, clip(pts, width, height)])
    else:
        edit = mask_box(request.mask)

    frame = region_of_interest(edit, width, height, area, request.context)
    window = frame.box
    source = target = None
    if request.mode == Mode.MOVE:
        source = request.mask.crop(window)
        target = warp_mask(request.mask, placement, window)
        region = ImageChops.lighter(source, target)
    elif request.mode == Mode.PASTE:
        target = region = warp_mask(request.reference_mask, placement, window)
    elif request.mode == Mode.DRAG:
        region = request.mask.crop(window) if request.mask is not None else default_drag_region(request, window)
    else:
        source = region = request.mask.crop(window)

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
    blend = blend_mask(region, frame, (width, height), grow=0.015 * side + 2, feather=0.02 * side + 2)
    return PixelPlan(frame, ref_frame, source, target, placement, region, blend)
