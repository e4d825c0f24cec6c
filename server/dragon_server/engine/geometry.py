"""Pixel geometry of an edit: placements, the region of interest, the working size and the final blend.

Any image size works: the engine edits only a region of interest around the edit (plus context),
scaled to the model's working size, and blends the result back through a feathered mask, so pixels
outside the edit are exactly the input's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageFilter

Box = Tuple[float, float, float, float]
"""(x0, y0, x1, y1): left, top, right, bottom edges in pixels."""

LATENT_FACTOR = 8
GRID_FACTOR = 4
"""The guidance features live on a grid a quarter of the working size (twice the latent size)."""


@dataclass(frozen=True)
class Affine:
    """Axis-aligned similarity map from source points q to target points p = (sx*qx + tx, sy*qy + ty)."""

    sx: float = 1.0
    sy: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @classmethod
    def about(cls, center: Tuple[float, float], scale: float, shift: Tuple[float, float]) -> Affine:
        """Scale by `scale` about `center`, then move by `shift`."""
        cx, cy = center
        return cls(scale, scale, cx * (1 - scale) + shift[0], cy * (1 - scale) + shift[1])

    def __call__(self, x: float, y: float) -> Tuple[float, float]:
        return self.sx * x + self.tx, self.sy * y + self.ty

    def then(self, after: Affine) -> Affine:
        """This map followed by `after`."""
        return Affine(after.sx * self.sx, after.sy * self.sy, after.sx * self.tx + after.tx,
                      after.sy * self.ty + after.ty)

    def inverse(self) -> Affine:
        return Affine(1 / self.sx, 1 / self.sy, -self.tx / self.sx, -self.ty / self.sy)

    def box(self, box: Box) -> Box:
        x0, y0 = self(box[0], box[1])
        x1, y1 = self(box[2], box[3])
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


@dataclass(frozen=True)
class Frame:
    """A crop of an image (integer box in its pixels, possibly reaching past its edges) scaled to the
    working size (multiples of 64)."""

    box: Tuple[int, int, int, int]
    size: Tuple[int, int]

    @property
    def crop_size(self) -> Tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def to_work(self) -> Affine:
        """Image pixels to working pixels."""
        (w, h), (W, H) = self.crop_size, self.size
        return Affine(W / w, H / h, -self.box[0] * W / w, -self.box[1] * H / h)

    def local(self) -> Frame:
        """This frame for a picture already cut to its box (as the plan's masks are): the box at the origin."""
        return Frame((0, 0, *self.crop_size), self.size)

    def to(self, factor: int) -> Affine:
        """Image pixels to cells of a grid `factor` times coarser than the working size."""
        return self.to_work().then(Affine(1 / factor, 1 / factor))

    def cut(self, image: Image.Image) -> Image.Image:
        """The crop, scaled to the working size (areas past the image's edges are black).

        Memory is bounded by the image and the working size, however far the box reaches past the
        image: only the part inside is cropped, scaled and placed on a black canvas.
        """
        resample = Image.Resampling.LANCZOS if image.mode == "RGB" else Image.Resampling.BILINEAR
        x0, y0, x1, y1 = self.box
        if x0 >= 0 and y0 >= 0 and x1 <= image.width and y1 <= image.height:
            return image.crop(self.box).resize(self.size, resample)
        canvas = Image.new(image.mode, self.size, 0)
        inside = clip(self.box, image.width, image.height)
        if inside is None:
            return canvas
        to_work = self.to_work()
        (ax, ay), (bx, by) = to_work(inside[0], inside[1]), to_work(inside[2], inside[3])
        ax, ay, bx, by = int(round(ax)), int(round(ay)), int(round(bx)), int(round(by))
        if bx > ax and by > ay:
            canvas.paste(image.crop(inside).resize((bx - ax, by - ay), resample), (ax, ay))
        return canvas


def union(boxes: Iterable[Optional[Box]]) -> Optional[Box]:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def clip(box: Box, width: int, height: int) -> Optional[Box]:
    """The part of `box` inside the image, or None if nothing is."""
    x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def mask_box(mask: Image.Image, threshold: int = 0) -> Optional[Box]:
    """Bounding box of the (L) mask's pixels above `threshold`, or None for an empty mask; only the box of
    its non-zero pixels is copied, so a huge mask with a small object costs little."""
    box = mask.getbbox()
    if box is None or threshold == 0:
        return box
    inner = mask.crop(box).point(lambda v: 255 if v > threshold else 0).getbbox()
    return None if inner is None else shift(inner, box[0], box[1])


def shift(box: Box, dx: float, dy: float) -> Box:
    """`box` moved by (dx, dy)."""
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


def hull(box: Box, width: int, height: int, grow: int = 0) -> Optional[Tuple[int, int, int, int]]:
    """The integer pixels that `box` touches, grown by `grow` on each side and clipped to the image, or
    None if nothing is inside."""
    grown = (math.floor(box[0]) - grow, math.floor(box[1]) - grow, math.ceil(box[2]) + grow, math.ceil(box[3]) + grow)
    inside = clip(grown, width, height)
    return None if inside is None else tuple(int(v) for v in inside)


def working_size(width: float, height: float, area: int) -> Tuple[int, int]:
    """The size near `area` pixels with the crop's aspect ratio and sides multiples of 64."""
    s = math.sqrt(area / (width * height))
    return max(64, int(round(width * s / 64)) * 64), max(64, int(round(height * s / 64)) * 64)


def _fit(lo: float, hi: float, length: float, limit: int) -> Tuple[int, int]:
    """An integer span of `length` (at most `limit`) around [lo, hi], kept inside [0, limit]."""
    length = min(limit, max(length, hi - lo))
    start = (lo + hi) / 2 - length / 2
    start = min(max(start, 0), limit - length)
    a = int(math.floor(start))
    return a, min(limit, max(a + 1, int(math.ceil(start + length))))


WHOLE_IMAGE_FACTOR = 2.25
"""An image of at most this many times the working area is edited whole: the model sees all of it
(as the authors' release does), and repeat edits of the same picture can reuse its inversion."""


def region_of_interest(edit: Box, width: int, height: int, area: int, context: float) -> Frame:
    """The crop the model sees: the whole image when it is small enough, otherwise the edit's box grown
    by `context` of its size (and to at least half the working side), inside the image."""
    if width * height <= WHOLE_IMAGE_FACTOR * area:
        return Frame((0, 0, width, height), working_size(width, height, area))
    bw, bh = edit[2] - edit[0], edit[3] - edit[1]
    margin = context * max(bw, bh) + 8
    least = math.sqrt(area) / 2
    x0, x1 = _fit(edit[0] - margin, edit[2] + margin, max(least, bw + 2 * margin), width)
    y0, y1 = _fit(edit[1] - margin, edit[3] + margin, max(least, bh + 2 * margin), height)
    return Frame((x0, y0, x1, y1), working_size(x1 - x0, y1 - y0, area))


def aspect_frame(around: Box, aspect: float, size: Tuple[int, int], context: float) -> Frame:
    """A crop around `around` (grown by `context`) with the width/height ratio `aspect`, scaled to
    `size`; it may reach past the image's edges."""
    bw, bh = around[2] - around[0], around[3] - around[1]
    margin = context * max(bw, bh) + 8
    w, h = bw + 2 * margin, bh + 2 * margin
    w, h = max(w, h * aspect), max(h, w / aspect)
    cx, cy = (around[0] + around[2]) / 2, (around[1] + around[3]) / 2
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    return Frame((x0, y0, x0 + max(1, int(round(w))), y0 + max(1, int(round(h)))), size)


def warp_mask(mask: Image.Image, affine: Affine, window: Tuple[int, int, int, int]) -> Image.Image:
    """`mask` moved by `affine` (source pixels to target pixels), the part that lands in `window` (integer
    x0, y0, x1, y1 of the target) as an image of the window's size; what falls outside is clipped."""
    inv = Affine(1, 1, window[0], window[1]).then(affine.inverse())
    coeffs = (inv.sx, 0.0, inv.tx, 0.0, inv.sy, inv.ty)
    size = (window[2] - window[0], window[3] - window[1])
    return mask.transform(size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0)


def warped_box(mask: Image.Image, affine: Affine, source: Box, width: int, height: int,
               threshold: int = 0) -> Optional[Box]:
    """The box of `mask`'s pixels above `threshold` once moved by `affine` onto a width x height image,
    given the box `source` of its pixels; only the part around the moved box is warped."""
    window = hull(affine.box(source), width, height, grow=2 + int(math.ceil(max(affine.sx, affine.sy))))
    if window is None:
        return None
    box = mask_box(warp_mask(mask, affine, window), threshold)
    return None if box is None else shift(box, window[0], window[1])


def blend_mask(region: Image.Image, frame: Frame, image_size: Tuple[int, int], grow: float,
               feather: float) -> Image.Image:
    """The blend mask in the frame (L, the frame's crop size): `region` (L, the frame's crop size) grown by
    `grow` px, feathered by `feather` px, and zero along the frame's edges that cut through the image of
    `image_size` (so that the crop's edges never show)."""
    x0, y0, x1, y1 = frame.box
    core = region.point(lambda v: 255 if v > 127 else 0)
    crop = core
    if grow > 0:
        crop = crop.filter(ImageFilter.GaussianBlur(grow / 2)).point(lambda v: 255 if v > 8 else 0)
    if feather > 0:
        crop = ImageChops.lighter(crop.filter(ImageFilter.GaussianBlur(feather / 2)), core)
    arr = np.asarray(crop)
    edge = max(1, int(math.ceil(feather / 2)))
    # Touching the image's own edge is fine; only the crop's inner edges must stay untouched.
    rows = _keep(arr.shape[0], edge, y0 > 0, y1 < image_size[1])
    columns = _keep(arr.shape[1], edge, x0 > 0, x1 < image_size[0])
    return Image.fromarray(arr * rows[:, None] * columns[None, :])


def _keep(length: int, edge: int, cut_before: bool, cut_after: bool) -> np.ndarray:
    """uint8 (length,): 1, except 0 within `edge` of each end that is a cut through the image (not its
    own edge); any length works, a thin crop included."""
    keep = np.ones(length, np.uint8)
    if cut_before:
        keep[:edge] = 0
    if cut_after:
        keep[max(0, length - edge):] = 0
    return keep


BLEND_ROWS = 256
"""Rows blended at a time: the float work of the final blend stays a few MiB for any picture."""


def paste_back(original: Image.Image, edited: Image.Image, frame: Frame,
               mask: Image.Image) -> Tuple[Image.Image, Image.Image, Tuple[int, int, int, int]]:
    """The edited working-size crop scaled back into its frame of `original` (RGB) and blended through
    `mask` (L, the frame's crop size, in its pixels): returns the blended pixels (RGB) and the mask over
    the mask's bounding box, and that box as (x, y, width, height) in `original`'s pixels ((0, 0, 0, 0)
    for an empty mask). Where the mask is 0 the pixels are exactly `original`'s.

    Only the box is blended, in strips of BLEND_ROWS rows, and nothing of `original` is copied outside
    it, so the memory is bounded by the frame, not the picture.
    """
    box = mask.getbbox()
    if box is None:
        return Image.new("RGB", (0, 0)), Image.new("L", (0, 0)), (0, 0, 0, 0)
    fx, fy = frame.box[:2]
    scaled = edited.resize(frame.crop_size, Image.Resampling.LANCZOS)
    x0, y0, x1, y1 = box
    patch = original.crop(shift(box, fx, fy))
    for top in range(y0, y1, BLEND_ROWS):
        strip = (x0, top, x1, min(y1, top + BLEND_ROWS))
        a = np.asarray(original.crop(shift(strip, fx, fy)))
        b = np.asarray(scaled.crop(strip), dtype=np.float32)
        m = np.asarray(mask.crop(strip), dtype=np.float32)[..., None] / 255.0
        blended = np.rint(a * (1 - m) + b * m).astype(np.uint8)
        patch.paste(Image.fromarray(np.where(m > 0, blended, a), "RGB"), (0, top - y0))
    return patch, mask.crop(box), (x0 + fx, y0 + fy, x1 - x0, y1 - y0)
