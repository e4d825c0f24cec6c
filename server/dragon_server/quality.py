"""`dragon bench quality`: edits whose right answer is known, turned into numbers.

Fixed synthetic scenes (flat objects on procedural backgrounds, see `toy.scenes`) are edited in each
mode (move, resize, drag, appearance, paste), under three conditions: a control with guidance strength
0 (inversion and regeneration with the memory bank, no energy guidance), the release's guidance and
the paper's. The edited object is found in the output by its known colour, and compared with where
the edit should have put it:

- `distance`: pixels from the object's centre to the target centre (move, resize, drag, paste);
- `ghost`: share of the object's old place (not overlapping its new one) still in its colour;
- `fill`: RGB distance (0-255) of that old place to what should be there (the background), on
  average: a ghost scores badly on both, a hole filled with anything but background only on `fill`;
- `arrival`: share of its new place (not overlapping its old one) in its colour;
- `size`: object area after / before (resize; the right answer is the scale squared);
- `colour`: distance (RGB, 0-255) from the object's mean colour to the reference's (appearance);
- `match`: PSNR (dB) against the expected picture on the pixels the edit touches (not appearance): low
  for a ghost, a hole, or false colours anywhere in the edited area;
- `bg_psnr`: PSNR (dB) of the model's own output, before the paste-back, against the input, on the
  pixels more than `FAR` pixels from anything the edit touches;
- `seconds`: the edit's wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dragon_server.engine import EditRequest, Engine, Mode
from dragon_server.engine.request import EditResult
from dragon_server.toy.scenes import COLOURS, Background, Scene, Shape, render

SIZE = 256
"""Side of the benchmark's pictures in pixels (the toy model's working size)."""
FAR = 24
"""Pixels from the edit beyond which the background must be unchanged."""
COLOUR_MATCH = 90.0
"""RGB distance (0-255) under which a pixel counts as the object's colour."""
CONDITIONS = ("control", "release", "paper")
MODES = ("move", "resize", "drag", "appearance", "paste")


@dataclass(frozen=True)
class Case:
    """One edit with a known answer. `index` is the edited object in `scene`; `target` is the scene the
    edit should produce (None for appearance: there the colour is the answer); `reference` the scene
    that paste and appearance take an object from (its object `ref_index`)."""

    name: str
    mode: str
    scene: Scene
    index: int
    target: Optional[Scene] = None
    arrows: Tuple[Tuple[float, float, float, float], ...] = ()
    scale: float = 1.0
    reference: Optional[Scene] = None
    ref_index: int = 0
    drag_region: Optional[Tuple[float, float, float, float]] = None


U = SIZE / 128
"""The cases below are written for 128-pixel pictures and scaled by U."""


def _shape(kind: str, x: float, y: float, r: float, colour: str, angle: float = 0.0) -> Shape:
    return Shape(kind, (x * U, y * U), r * U, COLOURS[colour], colour, angle=angle)


def _bg(kind: str, a: str, b: str, period: float = 24.0, angle: float = 30.0, seed: int = 7) -> Background:
    return Background(kind, (COLOURS[a], COLOURS[b]), (a, b), period * U, angle, seed)


def _arrow(x0: float, y0: float, x1: float, y1: float) -> Tuple[Tuple[float, float, float, float]]:
    return ((x0 * U, y0 * U, x1 * U, y1 * U),)


def _with(scene: Scene, index: int, shape: Shape) -> Scene:
    shapes = list(scene.shapes)
    shapes[index] = shape
    return Scene(scene.background, tuple(shapes))


def cases() -> List[Case]:
    """The benchmark's fixed edits (SIZE x SIZE pictures): two per mode except appearance and paste."""
    out: List[Case] = []
    s = Scene(_bg("gradient", "grey", "white"), (_shape("disc", 40, 60, 16, "red"),))
    out.append(Case("move-disc", "move", s, 0, _with(s, 0, s.shapes[0].moved(36 * U, 0)),
                    _arrow(40, 60, 76, 60)))
    s = Scene(_bg("blobby", "yellow", "white", seed=3), (_shape("square", 82, 46, 18, "blue", 10),
                                                          _shape("disc", 30, 100, 11, "green")))
    out.append(Case("move-square", "move", s, 0, _with(s, 0, s.shapes[0].moved(-30 * U, 28 * U)),
                    _arrow(82, 46, 52, 74)))
    s = Scene(_bg("gradient", "cyan", "white", angle=100), (_shape("star", 64, 64, 20, "magenta", 18),))
    out.append(Case("resize-up", "resize", s, 0, _with(s, 0, s.shapes[0].scaled(1.4)), scale=1.4))
    s = Scene(_bg("striped", "grey", "white", period=40, angle=60), (_shape("disc", 60, 68, 24, "orange"),))
    out.append(Case("resize-down", "resize", s, 0, _with(s, 0, s.shapes[0].scaled(0.65)), scale=0.65))
    s = Scene(_bg("gradient", "white", "yellow", angle=45), (_shape("triangle", 44, 64, 18, "purple", 30),))
    out.append(Case("drag-triangle", "drag", s, 0, _with(s, 0, s.shapes[0].moved(28 * U, 0)),
                    _arrow(44, 64, 72, 64), drag_region=(20 * U, 40 * U, 96 * U, 88 * U)))
    s = Scene(_bg("blobby", "grey", "white", seed=11), (_shape("disc", 70, 44, 16, "blue"),))
    out.append(Case("drag-disc", "drag", s, 0, _with(s, 0, s.shapes[0].moved(0, 30 * U)),
                    _arrow(70, 44, 70, 74),
                    drag_region=(46 * U, 22 * U, 94 * U, 98 * U)))
    s = Scene(_bg("gradient", "grey", "white", angle=80), (_shape("disc", 64, 64, 24, "red"),))
    ref = Scene(_bg("gradient", "white", "grey"), (_shape("disc", 64, 64, 24, "blue"),))
    out.append(Case("appearance-disc", "appearance", s, 0, reference=ref))
    s = Scene(_bg("blobby", "yellow", "white", seed=5), (_shape("disc", 34, 34, 12, "green"),))
    ref = Scene(_bg("gradient", "grey", "white"), (_shape("square", 64, 64, 18, "red", 20),))
    target = Scene(s.background, s.shapes + (ref.shapes[0].moved(24 * U, 24 * U),))
    out.append(Case("paste-square", "paste", s, 0, target, _arrow(64, 64, 88, 88), reference=ref))
    return out


def _mask(cover: np.ndarray) -> Image.Image:
    return Image.fromarray((cover > 0.5).astype(np.uint8) * 255, "L")


@dataclass
class Prepared:
    """A case's request inputs and ground truth in pixels."""

    image: Image.Image
    request: Dict[str, object]
    colour: np.ndarray
    """The object's colour in the output: its own, or the reference's for paste and appearance."""
    source: np.ndarray
    target: np.ndarray
    touched: np.ndarray
    """Every pixel the edit may change (bool)."""
    target_image: Optional[Image.Image] = None


def prepare(case: Case, size: int = SIZE) -> Prepared:
    """The request's fields (image, mask, arrows, reference) and the ground truth of `case`."""
    image, covers = render(case.scene, size)
    shape = case.scene.shapes[case.index]
    source = covers[case.index] > 0.5
    request: Dict[str, object] = dict(image=image, arrows=list(case.arrows), scale=case.scale)
    colour = np.asarray(shape.colour, np.float32)
    target_image = None
    if case.target is not None:
        target_image, target_covers = render(case.target, size)
        moved = len(case.target.shapes) - 1 if case.mode == "paste" else case.index
        target = target_covers[moved] > 0.5
    else:
        target = source
    if case.mode == "paste":
        source = np.zeros_like(source)
    if case.mode in ("move", "resize", "appearance"):
        request["mask"] = _mask(covers[case.index])
    if case.mode == "drag":
        region = Image.new("L", (size, size), 0)
        ImageDraw.Draw(region).rectangle(case.drag_region, fill=255)
        request["mask"] = region
    if case.reference is not None:
        ref_image, ref_covers = render(case.reference, size)
        request["reference"] = ref_image
        request["reference_mask"] = _mask(ref_covers[case.ref_index])
        colour = np.asarray(case.reference.shapes[case.ref_index].colour, np.float32)
    touched = source | target
    if "mask" in request:
        touched |= np.asarray(request["mask"]) > 127
    return Prepared(image, request, colour, source, target, touched, target_image)


def object_map(image: Image.Image, colour: np.ndarray) -> np.ndarray:
    """Pixels (bool, H x W) within COLOUR_MATCH of `colour` (RGB 0-255)."""
    pixels = np.asarray(image.convert("RGB"), np.float32)
    return np.linalg.norm(pixels - colour, axis=-1) < COLOUR_MATCH


def _centre(m: np.ndarray) -> Optional[Tuple[float, float]]:
    if m.sum() == 0:
        return None
    y, x = np.nonzero(m)
    return float(x.mean()) + 0.5, float(y.mean()) + 0.5


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pixel arrays (equal shapes); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def far_from(touched: np.ndarray, distance: int) -> np.ndarray:
    """Pixels more than about `distance` pixels from any True pixel of `touched` (bool)."""
    grown = Image.fromarray(touched.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * distance + 1))
    return np.asarray(grown) == 0


def raw_canvas(result: EditResult, image: Image.Image) -> Image.Image:
    """The model's own output for its frame laid over `image`: the input where the frame does not reach."""
    canvas = image.convert("RGB").copy()
    x0, y0, x1, y1 = result.raw_box
    canvas.paste(result.raw.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
    return canvas


def score(case: Case, prep: Prepared, result: EditResult) -> Dict[str, Optional[float]]:
    """The figures of one edit (see the module's docstring); None where a figure does not apply."""
    out = result.image
    found = object_map(out, prep.colour)
    before = object_map(prep.image, prep.colour)
    figures: Dict[str, Optional[float]] = {"distance": None, "ghost": None, "arrival": None, "size": None,
                                           "colour": None, "fill": None, "match": None}
    if case.mode != "appearance":
        window = prep.touched if case.mode != "drag" else prep.touched | prep.target
        centre, goal = _centre(found & window), _centre(prep.target)
        figures["distance"] = (math.dist(centre, goal) if centre is not None else float(prep.image.size[0]))
        new_only = prep.target & ~prep.source
        figures["arrival"] = float(found[new_only].mean()) if new_only.any() else None
        old_only = prep.source & ~prep.target
        figures["ghost"] = float(found[old_only].mean()) if old_only.any() else None
        if old_only.any() and prep.target_image is not None:
            diff = np.asarray(out, np.float32) - np.asarray(prep.target_image, np.float32)
            figures["fill"] = float(np.linalg.norm(diff, axis=-1)[old_only].mean())
        if prep.target_image is not None:
            figures["match"] = psnr(np.asarray(out)[prep.touched], np.asarray(prep.target_image)[prep.touched])
    if case.mode == "resize":
        figures["size"] = float(found[prep.touched].sum() / max(1, before[prep.touched].sum()))
    if case.mode == "appearance":
        mean = np.asarray(out, np.float32)[prep.source].mean(axis=0)
        figures["colour"] = float(np.linalg.norm(mean - prep.colour))
    far = far_from(prep.touched, FAR)
    raw = np.asarray(raw_canvas(result, prep.image))
    figures["bg_psnr"] = psnr(raw[far], np.asarray(prep.image)[far]) if far.any() else None
    figures["seconds"] = float(result.timings.get("total", 0.0))
    return figures


def request_for(case: Case, prep: Prepared, condition: str, steps: int, seed: int = 0,
                strength: float = 1.0) -> EditRequest:
    """The engine request of `case` under `condition`: the guidance at `strength` (a factor on the model's
    own strength), or for the control strength 0 with the release's guidance."""
    mode = Mode.MOVE if case.mode == "resize" else Mode(case.mode)
    guidance = "release" if condition == "control" else condition
    fields = dict(prep.request)
    if mode in (Mode.APPEARANCE,):
        fields.pop("arrows")
    return EditRequest(mode, steps=steps, seed=seed, strength=0.0 if condition == "control" else strength,
                       guidance=guidance, **fields)


@dataclass
class Row:
    case: str
    mode: str
    condition: str
    figures: Dict[str, Optional[float]]
    image: Image.Image = field(repr=False)


def run_cases(engine: Engine, selected: Sequence[Case], conditions: Sequence[str], steps: int,
              progress=None, strength: float = 1.0) -> List[Row]:
    """Every case under every condition (guided ones at `strength`); `progress(text)` is called before
    each edit."""
    rows = []
    for case in selected:
        prep = prepare(case)
        for condition in conditions:
            if progress is not None:
                progress(f"{case.name} / {condition}")
            result = engine.edit(request_for(case, prep, condition, steps, strength=strength))
            rows.append(Row(case.name, case.mode, condition, score(case, prep, result), result.image))
    return rows


def summary(rows: Sequence[Row]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean of each figure per mode and condition."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for row in rows:
        bucket = out.setdefault(row.mode, {}).setdefault(row.condition, {})
        for key, value in row.figures.items():
            if value is not None and math.isfinite(value):
                bucket.setdefault(key, []).append(value)  # type: ignore[arg-type]
    return {m: {c: {k: float(np.mean(v)) for k, v in f.items()} for c, f in conds.items()} for m, conds in out.items()}


COLUMNS = (("distance", "dist px", "{:8.1f}"), ("ghost", "ghost", "{:6.2f}"), ("fill", "fill", "{:6.1f}"),
           ("arrival", "arrive", "{:6.2f}"),
           ("size", "size", "{:5.2f}"), ("colour", "colour", "{:6.1f}"), ("match", "match dB", "{:8.1f}"),
           ("bg_psnr", "bg dB", "{:6.1f}"),
           ("seconds", "sec", "{:6.1f}"))


def table(rows: Sequence[Row]) -> str:
    """Rows per case and condition, then the means per mode."""
    head = f"{'case':18} {'condition':9} " + " ".join(f"{title:>{len(fmt.format(0))}}" for _, title, fmt in COLUMNS)
    lines = [head]

    def line(name: str, condition: str, figures: Dict[str, Optional[float]]) -> str:
        cells = []
        for key, _, fmt in COLUMNS:
            value = figures.get(key)
            cells.append(fmt.format(value) if value is not None else " " * (len(fmt.format(0)) - 1) + "-")
        return f"{name:18} {condition:9} " + " ".join(cells)

    for row in rows:
        lines.append(line(row.case, row.condition, row.figures))
    lines.append("")
    lines.append("means per mode")
    for mode, conds in summary(rows).items():
        for condition, figures in conds.items():
            lines.append(line(mode, condition, figures))
    return "\n".join(lines)


def contact_sheet(selected: Sequence[Case], rows: Sequence[Row], tile: int = 128) -> Image.Image:
    """One row per case: input (arrows drawn), expected result, then each condition's output."""
    conditions = list(dict.fromkeys(r.condition for r in rows))
    titles = ["input", "expected"] + conditions
    label = 14
    sheet = Image.new("RGB", (tile * len(titles), label + (tile + label) * len(selected)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, title in enumerate(titles):
        draw.text((j * tile + 4, 1), title, fill=(0, 0, 0))
    for i, case in enumerate(selected):
        prep = prepare(case)
        y = label + i * (tile + label)
        draw.text((4, y + tile + 1), case.name, fill=(0, 0, 0))
        shown = prep.image.copy()
        pen = ImageDraw.Draw(shown)
        for x0, y0, x1, y1 in case.arrows:
            pen.line((x0, y0, x1, y1), fill=(0, 0, 0), width=3)
            pen.ellipse((x1 - 4, y1 - 4, x1 + 4, y1 + 4), fill=(0, 0, 0))
        expected = prep.target_image if prep.target_image is not None else prep.request.get("reference")
        pictures = [shown, expected] + [next((r.image for r in rows if r.case == case.name and r.condition == c),
                                             None) for c in conditions]
        for j, picture in enumerate(pictures):
            if picture is not None:
                sheet.paste(picture.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS), (j * tile, y))
    return sheet


def run(args: argparse.Namespace) -> int:
    """Run the selected cases, print the table, write the sheet (and the JSON)."""
    from dragon_server.engine.request import EditError

    modes = [m for m in args.modes.split(",") if m]
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [m for m in modes if m not in MODES] + [c for c in conditions if c not in CONDITIONS]
    if bad or not modes or not conditions:
        sys.stderr.write(f"dragon bench quality: error: unknown mode or condition {', '.join(bad) or '(none)'}: "
                         f"modes are {','.join(MODES)}, conditions {','.join(CONDITIONS)}\n")
        return 2
    if args.steps < 2:
        sys.stderr.write("dragon bench quality: error: --steps must be at least 2\n")
        return 2
    if not (math.isfinite(args.strength) and 0 < args.strength <= 100):
        sys.stderr.write("dragon bench quality: error: --strength must be a number above 0 and at most 100\n")
        return 2
    try:
        engine = Engine.load(args.model, args.device, args.dtype)
    except EditError as exc:
        sys.stderr.write(f"dragon bench quality: error: {exc}\n")
        return 2
    selected = [c for c in cases() if c.mode in modes]
    factors = ", ".join(f"{m} {engine.components.strength_for(m):g}" for m in ("move", "drag", "appearance", "paste"))
    sys.stdout.write(f"dragon bench quality: {args.model} (strength factors {factors}) on "
                     f"{engine.device}, {args.steps} steps, strength x{args.strength:g}, {len(selected)} cases x "
                     f"{len(conditions)} conditions\n")
    rows = run_cases(engine, selected, conditions, args.steps,
                     lambda text: (sys.stderr.write(f"  {text}\n"), sys.stderr.flush()), args.strength)
    sys.stdout.write(table(rows) + "\n")
    contact_sheet(selected, rows).save(args.sheet)
    sys.stdout.write(f"contact sheet: {args.sheet}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "strength": dict(engine.components.strength),
                       "strength_factor": args.strength, "steps": args.steps,
                       "rows": [{"case": r.case, "mode": r.mode, "condition": r.condition, **r.figures}
                                for r in rows], "summary": summary(rows)}, f, indent=1)
    return 0
