"""What an edit asks for and what it gives back: the engine's public data types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Dict, List, Optional, Tuple

from PIL import Image


class Mode(str, enum.Enum):
    """The editing modes of DragonDiffusion."""

    MOVE = "move"
    DRAG = "drag"
    APPEARANCE = "appearance"
    PASTE = "paste"


GUIDANCES = ("release", "paper")
"""How guided steps compute their gradient: as the authors' release does (the default) or as the paper
writes it (see `MethodSettings.guidance`)."""

Arrow = Tuple[float, float, float, float]
"""(x0, y0, x1, y1) in image pixels: from the start point to the end point."""


class EditError(Exception):
    """An edit that cannot run, with a machine-readable code and a one-line message for people."""

    code = "bad_request"

    def __init__(self, message: str, code: Optional[str] = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InputError(EditError):
    """The request's inputs are wrong; the message says how to fix them."""

    code = "bad_input"


class ModelError(EditError):
    """The model cannot be loaded; the message says what to do instead."""

    code = "model_unavailable"


class NumericError(EditError):
    """The model's numbers became infinite or NaN and no retry helped; nothing is returned."""

    code = "not_finite"


class EditCancelled(EditError):
    """The caller's cancel callback asked the edit to stop."""

    code = "cancelled"

    def __init__(self, message: str = "the edit was cancelled"):
        super().__init__(message)


@dataclass
class EditRequest:
    """One edit of one image.

    Masks are images of the image's size, white where inside; a pixel is inside when its strength
    (alpha if the mask has transparent pixels, else its brightest channel) is at least 128 of 255.
    Images and masks with an EXIF Orientation are turned upright first; coordinates are upright pixels.
    For `move` and `appearance` the mask marks the object; for `drag` it marks the region allowed to
    change (optional: a region around the arrows is used when absent). `paste` and `appearance` need a
    reference image and its object mask; paste arrows start in the reference's pixels and end in the
    image's. `strength` multiplies the mode's default guidance strength. `steps` is the number of
    DDIM steps; the guidance schedule (fixed for 50 steps in the release) is scaled to it.
    """

    mode: Mode
    image: Image.Image
    mask: Optional[Image.Image] = None
    arrows: List[Arrow] = field(default_factory=list)
    scale: float = 1.0
    reference: Optional[Image.Image] = None
    reference_mask: Optional[Image.Image] = None
    prompt: str = ""
    steps: int = 50
    seed: int = 0
    strength: float = 1.0
    working_area: Optional[int] = None
    """Pixel area the region of interest is scaled to; None takes the model's default."""
    context: float = 0.25
    """Margin around the edit, as a fraction of its size, that the model sees as context."""
    settings: Dict[str, float] = field(default_factory=dict)
    """Overrides of the method's weights and schedule, by name (see `MethodSettings`)."""
    guidance: str = "release"
    """"release" (default) or "paper": see `MethodSettings.guidance`."""


@dataclass
class ProgressEvent:
    """Where a running edit is: `stage` (encode, inversion, reference, sampling, decode), step of total."""

    stage: str
    step: int
    total: int
    preview: Optional[Callable[[], Image.Image]] = None
    """Decodes the current estimate of the region of interest (at the working size); set during
    sampling, costs one VAE decode."""
    preview_box: Optional[Tuple[int, int, int, int]] = None
    """(x, y, width, height) in the input image's pixels that the preview shows."""


ProgressCallback = Callable[[ProgressEvent], None]
CancelCallback = Callable[[], bool]


@dataclass
class EditResult:
    """The edited image, of the input's size, and where it differs from the input.

    The edit is kept as its changed region over the input `picture` (not copied): `patch` (RGB) and
    `patch_mask` (L, the blend mask, 0 where the output is exactly the input), both the size of `box` =
    (x, y, width, height) in the picture's pixels. `image` (the whole edited picture) and `mask` (the
    whole blend mask) are made on first use, so a host that inserts only the changed pixels never pays
    for a copy of a huge picture.
    """

    picture: Image.Image
    patch: Image.Image
    patch_mask: Image.Image
    box: Tuple[int, int, int, int]
    timings: Dict[str, float]
    unet_evaluations: Dict[str, int]
    working_size: Tuple[int, int]
    warnings: List[str] = field(default_factory=list)
    """What the edit did differently from what was asked, one line each (a prompt cut to 77 tokens)."""
    raw: Optional[Image.Image] = None
    """The model's own output for the region of interest (RGB, `working_size`), before the paste-back."""
    raw_box: Optional[Tuple[int, int, int, int]] = None
    """(x0, y0, x1, y1) in the input image's pixels that `raw` shows (it may reach past the edges)."""

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the picture."""
        return self.picture.size

    @cached_property
    def image(self) -> Image.Image:
        """The whole edited picture (RGB): a copy of the input with the patch in place."""
        image = self.picture.copy()
        if self.patch.width and self.patch.height:
            image.paste(self.patch, self.box[:2])
        return image

    @cached_property
    def mask(self) -> Image.Image:
        """The whole blend mask (L, the picture's size)."""
        mask = Image.new("L", self.size, 0)
        if self.patch_mask.width and self.patch_mask.height:
            mask.paste(self.patch_mask, self.box[:2])
        return mask
