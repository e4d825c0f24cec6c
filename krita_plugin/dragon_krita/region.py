"""Rectangles: which part of the canvas an edit sends to the server, and where results land.

Only the region around the edit plus some context travels to the server, so a small edit on a large
canvas stays fast. Coordinates are document pixels; arrows sent to the server are relative to the
region's top-left corner and results come back relative to it.
"""

from __future__ import annotations

import math
from typing import Iterable, List, NamedTuple, Optional, Sequence

from .arrows import Arrow

MIN_MARGIN = 32
"""Context, in pixels, kept around an edit however small it is."""


class Rect(NamedTuple):
    """An axis-aligned rectangle of whole pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        return self.x + self.width

    @property
    def bottom(self) -> int:
        return self.y + self.height

    def is_empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def union(self, other: Rect) -> Rect:
        """The smallest rectangle holding both (an empty one adds nothing)."""
        if other.is_empty():
            return self
        if self.is_empty():
            return other
        x, y = min(self.x, other.x), min(self.y, other.y)
        return Rect(x, y, max(self.right, other.right) - x, max(self.bottom, other.bottom) - y)

    def intersect(self, other: Rect) -> Rect:
        """The overlap of both, with zero size when they do not overlap."""
        x, y = max(self.x, other.x), max(self.y, other.y)
        return Rect(x, y, max(0, min(self.right, other.right) - x), max(0, min(self.bottom, other.bottom) - y))

    def pad(self, margin: int) -> Rect:
        return Rect(self.x - margin, self.y - margin, self.width + 2 * margin, self.height + 2 * margin)

    def translate(self, dx: int, dy: int) -> Rect:
        return Rect(self.x + dx, self.y + dy, self.width, self.height)


def bounding_rect(xs: Sequence[float], ys: Sequence[float]) -> Rect:
    """The whole-pixel rectangle covering all points (x, y); a point covers the pixel it lies in."""
    x0, y0 = math.floor(min(xs)), math.floor(min(ys))
    return Rect(x0, y0, math.floor(max(xs)) + 1 - x0, math.floor(max(ys)) + 1 - y0)


def arrows_rect(arrows: Iterable[Arrow]) -> Rect:
    """The rectangle covering the end points of `arrows` (empty when there are none)."""
    xs: List[float] = []
    ys: List[float] = []
    for x0, y0, x1, y1 in arrows:
        xs += [x0, x1]
        ys += [y0, y1]
    return bounding_rect(xs, ys) if xs else Rect(0, 0, 0, 0)


def moved_rect(box: Rect, dx: float, dy: float, scale: float = 1.0) -> Rect:
    """Where `box` lands when its centre moves by (dx, dy) and it is scaled about that centre."""
    cx, cy = box.x + box.width / 2 + dx, box.y + box.height / 2 + dy
    hw, hh = box.width * scale / 2, box.height * scale / 2
    return bounding_rect([cx - hw, cx + hw - 1e-9], [cy - hh, cy + hh - 1e-9])


def with_context(box: Rect, canvas: Rect, context: float, min_margin: int = MIN_MARGIN) -> Rect:
    """`box` grown by `context` times its longer side (at least `min_margin`), kept on the canvas."""
    margin = max(min_margin, math.ceil(context * max(box.width, box.height)))
    return box.pad(margin).intersect(canvas)


def edit_region(
    mode: str,
    canvas: Rect,
    arrows: Sequence[Arrow],
    mask_box: Optional[Rect] = None,
    reference_box: Optional[Rect] = None,
    scale: float = 1.0,
    context: float = 0.25,
) -> Rect:
    """The part of the canvas an edit needs: everything it may change, plus context.

    move: the object and where it goes (first arrow, scaled about its centre); drag: every arrow and
    the editable region; appearance: the object; paste: where the reference object lands (the first
    arrow goes from a point of the reference object to its place in the image).
    """
    empty = Rect(0, 0, 0, 0)
    box = mask_box or empty
    if mode == "move":
        x0, y0, x1, y1 = arrows[0]
        box = box.union(moved_rect(box, x1 - x0, y1 - y0, scale))
    elif mode == "drag":
        box = box.union(arrows_rect(arrows))
    elif mode == "paste":
        x0, y0, x1, y1 = arrows[0]
        box = box.union(moved_rect(reference_box or empty, x1 - x0, y1 - y0, scale))
    return with_context(box, canvas, context)


def relative_arrows(arrows: Sequence[Arrow], origin: Rect) -> List[Arrow]:
    """Arrows moved into the coordinates of a region whose top-left corner is `origin`."""
    return [(x0 - origin.x, y0 - origin.y, x1 - origin.x, y1 - origin.y) for x0, y0, x1, y1 in arrows]


def paste_arrows(arrows: Sequence[Arrow], reference_region: Rect, image_region: Rect) -> List[Arrow]:
    """Paste arrows: the start in the reference crop's coordinates, the end in the image crop's."""
    return [
        (x0 - reference_region.x, y0 - reference_region.y, x1 - image_region.x, y1 - image_region.y)
        for x0, y0, x1, y1 in arrows
    ]


def result_rect(region: Rect, offset_x: int, offset_y: int, width: int, height: int) -> Rect:
    """Where a result of `width` x `height` at `offset` inside `region` sits in the document."""
    return Rect(region.x + offset_x, region.y + offset_y, width, height)


def preview_crop(focus: Rect, region: Rect, box: Sequence[int], size: Sequence[int]) -> Rect:
    """The part of a preview image that shows `focus` (document pixels): the preview is `size` (width,
    height) pixels showing `box` (x, y, width, height, in the pixels of `region`, the area sent). The
    whole image when they do not overlap."""
    x, y, width, height = box
    sx, sy = size[0] / max(width, 1), size[1] / max(height, 1)
    left, top = math.floor((focus.x - region.x - x) * sx), math.floor((focus.y - region.y - y) * sy)
    right, bottom = math.ceil((focus.right - region.x - x) * sx), math.ceil((focus.bottom - region.y - y) * sy)
    whole = Rect(0, 0, size[0], size[1])
    crop = Rect(left, top, right - left, bottom - top).intersect(whole)
    return whole if crop.is_empty() else crop
