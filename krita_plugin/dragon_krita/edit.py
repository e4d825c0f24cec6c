"""Turning what is in the document into one `edit` message, and a result into layer pixels.

The Krita adapter implements `Source` (a handful of reads); everything else here is plain Python, so
the rules (which inputs each mode needs, what region is sent, what the layer is called) are tested
without Krita.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from dragon_protocol import Edit
from dragon_protocol import limits as protocol_limits

from . import pixels
from .arrows import Arrow, arrows_from_svg
from .errors import PluginError
from .region import Rect, bounding_rect, edit_region, paste_arrows, relative_arrows, result_rect, with_context

MODE_LABELS = ("Move", "Resize", "Drag", "Appearance", "Paste")
"""The docker's modes; Resize is a move with a scale."""

WIRE_MODES = {"Move": "move", "Resize": "move", "Drag": "drag", "Appearance": "appearance", "Paste": "paste"}

Raw = Tuple[bytes, int, int, int]
"""Pixels to become a PNG: R,G,B,A (channels 4) or grey (channels 1) bytes, width, height, channels."""
PngWriter = Callable[[bytes, int, int, int], bytes]


@dataclass
class EditSettings:
    """What the painter chose in the docker (defaults that work for a first try)."""

    mode: str = "Move"
    scale: float = 1.0
    strength: float = 1.0
    steps: int = 50
    seed: int = 0
    prompt: str = ""
    context: float = 0.25
    preview: bool = True
    visible_canvas: bool = False
    """Send the visible canvas instead of the active layer's pixels."""
    reference: str = ""
    """Name of the reference layer (appearance and paste)."""
    paper_guidance: bool = False
    """Guide as the paper does (one pass; faster, experimental) instead of as the authors' release does."""

    def check(self) -> None:
        """PluginError(bad_parameter) when a value is outside what the server accepts."""
        if self.mode not in WIRE_MODES:
            raise PluginError(
                "bad_parameter", detail=f"Unknown mode {self.mode!r}; pick one of {', '.join(MODE_LABELS)}."
            )
        ranges = (
            ("Scale", self.scale, protocol_limits.SCALE_RANGE),
            ("Strength", self.strength, protocol_limits.STRENGTH_RANGE),
            ("Steps", self.steps, protocol_limits.STEPS_RANGE),
            ("Seed", self.seed, protocol_limits.SEED_RANGE),
            ("Context", self.context, protocol_limits.CONTEXT_RANGE),
        )
        for name, value, (low, high) in ranges:
            if not low <= value <= high:
                raise PluginError("bad_parameter", detail=f"{name} must be from {low:g} to {high:g} (it is {value:g}).")
        if len(self.prompt) > protocol_limits.MAX_TEXT_LENGTH:
            raise PluginError(
                "bad_parameter",
                detail=f"The prompt is longer than {protocol_limits.MAX_TEXT_LENGTH} characters.",
            )


class Source(ABC):
    """What an edit reads from the document; the Krita adapter implements it (tests use fakes).

    Pixels are B,G,R,A bytes of the given rectangle; masks one byte per pixel.
    """

    canvas: Rect
    x_res: float
    y_res: float
    source_name: str

    @abstractmethod
    def guide_svg(self) -> Optional[List[str]]:
        """SVG of each top-level shape on the guide layer, or None when there is no guide layer."""

    @abstractmethod
    def selection(self) -> Optional[Tuple[Rect, bytes]]:
        """The global selection's bounds and bytes, or None when nothing is selected."""

    @abstractmethod
    def image_pixels(self, rect: Rect) -> bytes:
        """The edited layer's pixels in `rect`."""

    @abstractmethod
    def visible_pixels(self, rect: Rect) -> bytes:
        """What the painter sees in `rect`: the visible layers but the guides, over white (opaque)."""

    @abstractmethod
    def reference_pixels(self, rect: Rect) -> bytes:
        """The reference layer's pixels in `rect`."""

    @abstractmethod
    def reference_mask(self) -> Tuple[Rect, bytes]:
        """The reference object: the reference layer's selection mask, or else its alpha."""


@dataclass
class PreparedEdit:
    """An edit to send, and what is needed to place its result.

    Its message's images are in `raw` until `encode_images` turns them into PNGs (slow on big
    regions, so the Krita side does it on a worker thread).
    """

    message: Edit
    region: Rect
    layer_name: str
    arrows: List[Arrow]
    image: bytes
    """The region's R,G,B,A pixels as sent, to unmix the result's soft edges against."""
    composite: bool = False
    """True when the visible canvas was sent (asked for, or the layer is transparent in the region)."""
    focus: Optional[Rect] = None
    """The part of the document the edit may change, with a small margin: what the live preview shows."""
    raw: Dict[str, Raw] = field(default_factory=dict)
    """The message's images not encoded yet: field name -> pixels."""


def encode_images(prepared: PreparedEdit, png: PngWriter) -> Edit:
    """The message with every image of `prepared.raw` encoded by `png`. Reads `prepared` only, so it
    may run on a worker thread."""
    return replace(prepared.message, **{name: png(*raw) for name, raw in prepared.raw.items()})


def _selection_mask(source: Source) -> Optional[Tuple[Rect, bytes, Rect]]:
    """(selection bounds, its bytes, tight box of its non-zero pixels), or None when empty."""
    selection = source.selection()
    if selection is None:
        return None
    rect, data = selection
    box = pixels.mask_bounds(data, rect.width, rect.height) if not rect.is_empty() else None
    if box is None:
        return None
    return rect, data, box.translate(rect.x, rect.y)


def _arrows(source: Source, needed: int) -> List[Arrow]:
    svg = source.guide_svg()
    if svg is None:
        raise PluginError("no_guide_layer")
    arrows = arrows_from_svg(svg, source.x_res, source.y_res)
    if len(arrows) < needed:
        raise PluginError("no_arrows")
    if len(arrows) > protocol_limits.MAX_ARROWS:
        raise PluginError("bad_parameter", detail=f"Use at most {protocol_limits.MAX_ARROWS} arrows at once.")
    return arrows


def layer_name(settings: EditSettings, arrows: List[Arrow]) -> str:
    """The result layer's name: the mode and the parameters that produced it."""
    parts = []
    if settings.mode in ("Move", "Resize", "Paste") and arrows:
        x0, y0, x1, y1 = arrows[0]
        parts.append(f"dx {x1 - x0:+.0f}, dy {y1 - y0:+.0f}")
    if settings.mode == "Drag":
        parts.append(f"{len(arrows)} arrow{'s' if len(arrows) != 1 else ''}")
    if settings.mode in ("Resize", "Paste") or settings.scale != 1.0:
        parts.append(f"scale {settings.scale:g}")
    if settings.mode in ("Appearance", "Paste"):
        parts.append(f"from {settings.reference}")
    if settings.prompt:
        parts.append(f'"{settings.prompt[:30]}"')
    parts += [f"strength {settings.strength:g}", f"steps {settings.steps}", f"seed {settings.seed}"]
    if settings.paper_guidance:
        parts.append("paper guidance")
    return f"Dragon {settings.mode} ({', '.join(parts)})"


def gather_edit(settings: EditSettings, source: Source, request_id: str) -> PreparedEdit:
    """Read the document through `source` and build the `edit` message for `settings`, its images
    still raw (see `encode_images`).

    Raises PluginError, worded for the painter, when an input the mode needs is missing.
    """
    settings.check()
    mode = WIRE_MODES[settings.mode]
    arrows: List[Arrow] = []
    if mode in ("move", "drag", "paste"):
        arrows = _arrows(source, 1)
        if mode != "drag":
            arrows = arrows[:1]
    selection = _selection_mask(source)
    if selection is None and mode in ("move", "appearance"):
        raise PluginError("no_selection")
    reference_box = reference_region = None
    reference_data = b""
    if mode in ("appearance", "paste"):
        if not settings.reference:
            raise PluginError("no_reference", detail=settings.mode.lower())
        if settings.reference == source.source_name and not settings.visible_canvas:
            raise PluginError("reference_is_source")
        ref_rect, reference_data = source.reference_mask()
        found = pixels.mask_bounds(reference_data, ref_rect.width, ref_rect.height)
        if found is None:
            raise PluginError("empty_reference", detail=repr(settings.reference))
        reference_box = found.translate(ref_rect.x, ref_rect.y)
        reference_region = with_context(reference_box, source.canvas, settings.context)
        reference_data = pixels.copy_into(reference_data, ref_rect, reference_region)
        start = bounding_rect([arrows[0][0]], [arrows[0][1]]) if mode == "paste" else reference_box
        if reference_box.pad(1).intersect(start).is_empty():
            raise PluginError("paste_start", detail=repr(settings.reference))
    def area(context: float) -> Rect:
        mask_box = selection[2] if selection else None
        return edit_region(mode, source.canvas, arrows, mask_box, reference_box, settings.scale, context)

    region = area(settings.context)
    if region.is_empty():
        raise PluginError("no_selection")
    composite = settings.visible_canvas
    bgra = b"" if composite else source.image_pixels(region)
    if not composite:
        alpha = pixels.alpha_channel(bgra)
        if pixels.is_empty(alpha):
            raise PluginError("empty_layer")
        composite = not pixels.is_opaque(alpha)  # an object on its own layer: edit what the painter sees
    rgba = pixels.bgra_to_rgba(source.visible_pixels(region) if composite else bgra)
    raw = {"image": (rgba, region.width, region.height, 4)}
    if selection is not None:
        raw["mask"] = (pixels.copy_into(selection[1], selection[0], region), region.width, region.height, 1)
    if reference_region is not None:
        ref_rgba = pixels.bgra_to_rgba(source.reference_pixels(reference_region))
        raw["reference"] = (ref_rgba, reference_region.width, reference_region.height, 4)
        raw["reference_mask"] = (reference_data, reference_region.width, reference_region.height, 1)
    wire_arrows = (
        paste_arrows(arrows, reference_region, region)
        if mode == "paste" and reference_region is not None
        else relative_arrows(arrows, region)
    )
    message = Edit(
        id=request_id,
        mode=mode,
        image=b"",
        arrows=[tuple(a) for a in wire_arrows],
        prompt=settings.prompt,
        steps=settings.steps,
        seed=settings.seed,
        strength=settings.strength,
        scale=settings.scale,
        context=settings.context,
        preview_interval=1.0 if settings.preview else 0.0,
        guidance="paper" if settings.paper_guidance else "release",
    )
    return PreparedEdit(message, region, layer_name(settings, arrows), arrows, rgba, composite, area(0.0), raw)


BAND_PIXELS = 32768
"""Pixels per band when a result is turned into layer pixels: small enough that one band never holds
Krita's GUI thread for long, whatever the size of the result."""


def result_bands(
    prepared: PreparedEdit, box: Tuple[int, int, int, int], rgba: bytes, mask: bytes, band_pixels: int = BAND_PIXELS
) -> Iterator[Tuple[Rect, bytes]]:
    """Where the result goes in the document and its B,G,R,A bytes (unmixed colour, alpha = blend mask),
    as bands of whole rows of at most about `band_pixels` pixels, computed one band per `next`.

    Drawn over the edited layer, the bands give exactly the server's edited picture. The sizes and the
    box are checked at once: PluginError(bad_reply) when they do not fit the image sent.
    """
    x, y, width, height = box
    if len(rgba) != width * height * 4 or len(mask) != width * height:
        raise PluginError("bad_reply", detail=f"result pixels do not match its {width}x{height} box")
    rect = result_rect(prepared.region, x, y, width, height)
    if prepared.region.intersect(rect) != rect:
        raise PluginError("bad_reply", detail=f"result box {box} lies outside the image sent")
    rows = max(1, band_pixels // max(width, 1))

    def bands() -> Iterator[Tuple[Rect, bytes]]:
        for top in range(0, height, rows):
            band = Rect(rect.x, rect.y + top, width, min(rows, height - top))
            start, end = top * width, (top + band.height) * width
            under = pixels.copy_into(prepared.image, prepared.region, band, channels=4)
            part = pixels.unblend(rgba[4 * start : 4 * end], under, mask[start:end])
            yield band, pixels.rgba_to_bgra(pixels.with_alpha(part, mask[start:end]))

    return bands()
