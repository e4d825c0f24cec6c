"""Checks a request before any work: every problem becomes one InputError line that says how to fix it.

Image conventions: RGB is used as is; greyscale, palette and 16-bit images are converted to 8-bit
RGB; an alpha channel is dropped when fully opaque and refused otherwise (transparent pixels have no
colour to edit: flatten the image first).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import List, Optional

import numpy as np
from PIL import Image

from dragon_server.engine.request import GUIDANCES, Arrow, EditRequest, InputError, Mode

MAX_ARROWS = 32
MAX_PIXELS = 64_000_000
MIN_SIDE = 16


def to_rgb(image: Image.Image, what: str) -> Image.Image:
    """An 8-bit RGB copy of `image`, or an InputError naming `what` and the fix."""
    if not isinstance(image, Image.Image):
        raise InputError(f"the {what} is not an image")
    if image.width < MIN_SIDE or image.height < MIN_SIDE:
        raise InputError(f"the {what} is {image.width}x{image.height}: it must be at least {MIN_SIDE}x{MIN_SIDE}")
    if image.width * image.height > MAX_PIXELS:
        raise InputError(f"the {what} has {image.width * image.height} pixels, more than {MAX_PIXELS}: "
                         "crop or scale it down")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr * 255.0 / top), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        raise InputError(f"the {what} has floating-point pixels: save it as an 8- or 16-bit image")
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < 255:
            raise InputError(f"the {what} has transparent pixels: flatten it onto a background first")
        return image.convert("RGB")
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    if mode != "RGB":
        raise InputError(f"the {what} has pixel format {mode}: save it as an 8-bit RGB image")
    return image


def to_mask(mask: Optional[Image.Image], size, what: str, required: bool) -> Optional[Image.Image]:
    """An 8-bit greyscale mask of `size`, not empty; None when absent and not `required`."""
    if mask is None:
        if required:
            raise InputError(f"this mode needs a {what}: a grey image, white where the object is")
        return None
    if not isinstance(mask, Image.Image):
        raise InputError(f"the {what} is not an image")
    if mask.size != tuple(size):
        raise InputError(f"the {what} is {mask.width}x{mask.height} but its image is {size[0]}x{size[1]}: "
                         "give a mask of the same size")
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A") if mask.getchannel("A").getextrema()[0] < 255 else mask.convert("L")
    elif mask.mode in ("I;16", "I;16B", "I;16L", "I"):
        mask = to_rgb(mask, what).convert("L")
    elif mask.mode != "L":
        mask = mask.convert("L")
    if mask.getextrema()[1] == 0:
        raise InputError(f"the {what} is empty: paint the area white on black")
    return mask


def _arrows(arrows: List[Arrow]) -> List[Arrow]:
    out = []
    for n, arrow in enumerate(arrows, 1):
        try:
            values = tuple(float(v) for v in arrow)
        except (TypeError, ValueError):
            raise InputError(f"arrow {n} is not four numbers x0,y0,x1,y1") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise InputError(f"arrow {n} must be four finite numbers x0,y0,x1,y1")
        out.append(values)
    return out


def _inside(x: float, y: float, image: Image.Image) -> bool:
    return 0 <= x < image.width and 0 <= y < image.height


def _number(value, name: str, lo: float, hi: float, whole: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    if whole and value != int(value):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def check_request(request: EditRequest) -> EditRequest:
    """A normalised copy of `request` (RGB images, L masks, float arrows), or an InputError."""
    try:
        mode = Mode(request.mode)
    except ValueError:
        raise InputError(f"unknown mode '{request.mode}': use move, drag, appearance or paste") from None
    image = to_rgb(request.image, "image")
    arrows = _arrows(request.arrows)
    if len(arrows) > MAX_ARROWS:
        raise InputError(f"{len(arrows)} arrows is too many: at most {MAX_ARROWS}")
    scale = _number(request.scale, "scale", 0, 8)
    if scale <= 0:
        raise InputError(f"scale must be positive, got {scale:g}")
    _number(request.steps, "steps", 2, 500, whole=True)
    _number(request.seed, "seed", 0, 2**63 - 1, whole=True)
    _number(request.strength, "strength", 0, 100)
    _number(request.context, "context", 0, 4)
    if request.working_area is not None:
        _number(request.working_area, "working area", 64 * 64, 2048 * 2048, whole=True)
    if request.guidance not in GUIDANCES:
        raise InputError(f"unknown guidance {request.guidance!r}: choose {' or '.join(GUIDANCES)}")
    if not isinstance(request.prompt, str) or len(request.prompt) > 1000:
        raise InputError("prompt must be text of at most 1000 characters")

    reference = reference_mask = None
    needs_reference = mode in (Mode.APPEARANCE, Mode.PASTE)
    if needs_reference:
        if request.reference is None:
            raise InputError(f"{mode.value} needs a reference image (and its object mask)")
        reference = to_rgb(request.reference, "reference image")
        reference_mask = to_mask(request.reference_mask, reference.size, "reference mask", required=True)
    mask = to_mask(request.mask, image.size, "mask", required=mode in (Mode.MOVE, Mode.APPEARANCE))

    if mode == Mode.MOVE:
        if len(arrows) > 1:
            raise InputError(f"move takes one arrow, got {len(arrows)}")
        if not arrows and scale == 1:
            raise InputError("move needs an arrow (where the object goes) or a scale other than 1")
    elif mode == Mode.PASTE:
        if len(arrows) != 1:
            raise InputError(f"paste takes one arrow, from the reference object to its place, got {len(arrows)}")
    elif mode == Mode.DRAG:
        if not arrows:
            raise InputError("drag needs at least one arrow, from a handle point to its target")
    elif arrows:
        raise InputError("appearance takes no arrow: it keeps the object where it is")

    for n, (x0, y0, x1, y1) in enumerate(arrows, 1):
        start_image = reference if mode == Mode.PASTE else image
        if not _inside(x0, y0, start_image):
            where = "reference image" if mode == Mode.PASTE else "image"
            raise InputError(f"arrow {n} starts at ({x0:g}, {y0:g}), outside the "
                             f"{start_image.width}x{start_image.height} {where}")
        if mode == Mode.DRAG and not _inside(x1, y1, image):
            raise InputError(f"arrow {n} ends at ({x1:g}, {y1:g}), outside the {image.width}x{image.height} image")
        if mode == Mode.PASTE and not _inside(x1, y1, image):
            raise InputError(f"the paste arrow ends at ({x1:g}, {y1:g}), outside the "
                             f"{image.width}x{image.height} image")
    return replace(request, mode=mode, image=image, mask=mask, arrows=arrows, scale=float(scale),
                   reference=reference, reference_mask=reference_mask, steps=int(request.steps),
                   seed=int(request.seed))
