"""Checks a request before any work: every problem becomes one InputError line that says how to fix it.

Image conventions: a photo with an EXIF Orientation is turned upright first, as viewers show it (its
mask and arrows are in the upright picture's pixels); RGB is used as is; greyscale, palette and 16-bit
images are converted to 8-bit RGB; an alpha channel is dropped when fully opaque and refused otherwise
(transparent pixels have no colour to edit: flatten the image first).

Mask rule, the same in every check and in the engine: a mask pixel's strength is its alpha when the
mask has transparent pixels, otherwise its brightest colour channel (so red on black counts as white);
the pixel is inside when its strength is at least INSIDE (half white). A mask with no inside pixel is
refused as empty or too faint; the checked mask is black and white, and the engine feathers the edit's
edge itself.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageChops, ImageOps

from dragon_server.engine.request import GUIDANCES, Arrow, EditRequest, InputError, Mode
from dragon_server.numbers import plain

MAX_ARROWS = 32
MAX_PIXELS = 64_000_000
MIN_SIDE = 16
ORIENTATION = 0x0112
"""The EXIF tag of a photo's orientation."""
INSIDE = 128
"""The strength (0-255) from which a mask pixel is inside the mask."""


def check_size(size: Tuple[int, int], what: str) -> None:
    """Raise InputError when an image of `size` (width, height) is too small or too large to edit."""
    width, height = size
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(f"the {what} is {width}x{height}: it must be at least {MIN_SIDE}x{MIN_SIDE}")
    if width * height > MAX_PIXELS:
        raise InputError(f"the {what} has {width * height} pixels, more than {MAX_PIXELS}: crop or scale it down")


def upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF Orientation tag says (as viewers show it), or itself when it has none."""
    if image.getexif().get(ORIENTATION, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image, what: str) -> Image.Image:
    """An 8-bit RGB copy of `image`, or an InputError naming `what` and the fix."""
    if not isinstance(image, Image.Image):
        raise InputError(f"the {what} is not an image")
    check_size(image.size, what)
    image = upright(image)
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
    """The black-and-white (L, 0 or 255) mask of `size` by the mask rule (see the module), not empty;
    None when absent and not `required`. Raises InputError for an empty or too faint mask."""
    if mask is None:
        if required:
            raise InputError(f"this mode needs a {what}: a grey image, white where the object is")
        return None
    if not isinstance(mask, Image.Image):
        raise InputError(f"the {what} is not an image")
    mask = upright(mask)
    if mask.size != tuple(size):
        raise InputError(f"the {what} is {mask.width}x{mask.height} but its image is {size[0]}x{size[1]}: "
                         "give a mask of the same size")
    strength = _strength(mask, what)
    top = strength.getextrema()[1]
    if top == 0:
        raise InputError(f"the {what} is empty: paint the area white on black")
    if top < INSIDE:
        raise InputError(f"the {what} is too faint: its strongest pixel is {top} of 255 and pixels count as "
                         f"inside from {INSIDE} (half white): paint the area white")
    if not any(strength.histogram()[1:255]):  # black and white already: no copy of a huge mask
        return strength
    return strength.point(lambda v: 255 if v >= INSIDE else 0)


def _strength(mask: Image.Image, what: str) -> Image.Image:
    """Each pixel's strength (L): alpha when some pixel is transparent, else the brightest channel."""
    if mask.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return to_rgb(mask, what).convert("L")
    if mask.mode == "P":
        mask = mask.convert("RGBA")
    if "A" in mask.getbands() and mask.getchannel("A").getextrema()[0] < 255:
        return mask.getchannel("A")
    if mask.mode == "L":
        return mask
    if mask.mode == "1":
        return mask.convert("L")
    rgb = mask.convert("RGB")
    return ImageChops.lighter(ImageChops.lighter(rgb.getchannel(0), rgb.getchannel(1)), rgb.getchannel(2))


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
        raise InputError(f"{name} must be a number, got {plain(value)}")
    if whole and value != int(value):
        raise InputError(f"{name} must be a whole number, got {plain(value)}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be between {plain(lo)} and {plain(hi)}, got {plain(value)}")
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
        raise InputError(f"scale must be positive, got {plain(scale)}")
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
            raise InputError(f"arrow {n} starts at ({plain(x0)}, {plain(y0)}), outside the "
                             f"{start_image.width}x{start_image.height} {where}")
        if mode == Mode.DRAG and not _inside(x1, y1, image):
            raise InputError(f"arrow {n} ends at ({plain(x1)}, {plain(y1)}), outside the "
                             f"{image.width}x{image.height} image")
        if mode == Mode.PASTE and not _inside(x1, y1, image):
            raise InputError(f"the paste arrow ends at ({plain(x1)}, {plain(y1)}), outside the "
                             f"{image.width}x{image.height} image")
    return replace(request, mode=mode, image=image, mask=mask, arrows=arrows, scale=float(scale),
                   reference=reference, reference_mask=reference_mask, steps=int(request.steps),
                   seed=int(request.seed))
