"""Which layer an edit works on, what the reference chooser offers, and Krita's names in painter's words.

Plain Python: the Krita adapter lists the layers (top first, as the Layers docker shows them) and these
rules pick from the list, so the painter never has to re-select their layer after drawing an arrow.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

KIND_NAMES = {
    "paintlayer": "paint layer",
    "vectorlayer": "vector layer",
    "grouplayer": "group layer",
    "filelayer": "file layer",
    "filllayer": "fill layer",
    "clonelayer": "clone layer",
    "adjustmentlayer": "filter layer",
    "transparencymask": "transparency mask",
    "filtermask": "filter mask",
    "transformmask": "transform mask",
    "selectionmask": "selection mask",
    "colorizemask": "colorize mask",
}
"""Krita's node types (`Node.type()`) as the Layers docker names them."""

COLOR_MODELS = {
    "RGBA": "RGB/Alpha",
    "GRAYA": "Grayscale/Alpha",
    "CMYKA": "CMYK/Alpha",
    "LABA": "L*a*b*/Alpha",
    "XYZA": "XYZ/Alpha",
    "YCbCrA": "YCbCr/Alpha",
}
COLOR_DEPTHS = {"U8": "8-bit integer", "U16": "16-bit integer", "F16": "16-bit float", "F32": "32-bit float"}


def kind_name(kind: str) -> str:
    """'vector layer' for 'vectorlayer'; unknown types pass through."""
    return KIND_NAMES.get(kind, kind)


def color_name(model: str, depth: str) -> str:
    """'RGB/Alpha 16-bit integer' for ('RGBA', 'U16'), as Image > Convert Image Color Space words it."""
    return f"{COLOR_MODELS.get(model, model)} {COLOR_DEPTHS.get(depth, depth)}"


Layer = Tuple[str, bool]
"""(node type, visible) of one layer."""


def pick_edit_layer(stack: Sequence[Layer], active: Optional[int], remembered: Optional[int]) -> Optional[int]:
    """Index in `stack` (top first) of the paint layer to edit, or None when there is none.

    The active layer when it is a paint layer; else the paint layer the painter was last on
    (`remembered`, e.g. before they clicked the guide layer); else the first visible paint layer below
    the active one (the guides sit on top, so this is the picture under them); else the topmost one.
    """
    def paint(index: Optional[int]) -> bool:
        return index is not None and 0 <= index < len(stack) and stack[index][0] == "paintlayer"

    if paint(active):
        return active
    if paint(remembered):
        return remembered
    start = 0 if active is None else active + 1
    for index in list(range(start, len(stack))) + list(range(start)):
        kind, visible = stack[index]
        if kind == "paintlayer" and visible:
            return index
    return None


def reference_choice(names: Sequence[str], current: str, source: str) -> str:
    """The reference layer to show selected: `current` while it exists and is not the edited layer
    `source`, else the first other layer, else '' (the chooser never defaults to the layer being edited)."""
    if current in names and current != source:
        return current
    return next((name for name in names if name != source), "")
