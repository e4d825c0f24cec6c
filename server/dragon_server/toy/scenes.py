"""Procedural scenes for the `toy` model: a background (gradient, stripes, checks or blobs) with one to
three objects (discs, squares, triangles, stars; flat or textured fills), each with its exact mask.

Everything is drawn from a `numpy.random.Generator`, so a seed fixes a scene; the quality benchmark
builds scenes from explicit `Shape`s to know where each object is and what colour it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (235, 210, 40),
    "cyan": (40, 200, 210), "magenta": (200, 50, 190), "orange": (240, 130, 30), "purple": (120, 50, 170),
    "white": (240, 240, 235), "black": (25, 25, 30), "grey": (128, 128, 128), "brown": (130, 80, 40),
}
KINDS = ("disc", "square", "triangle", "star")
FILLS = ("flat", "striped", "dotted")
BACKGROUNDS = ("gradient", "striped", "checked", "blobby")


@dataclass(frozen=True)
class Shape:
    """One object: `centre` (x, y) and `radius` in pixels, `angle` in degrees, RGB `colour` 0-255;
    a textured fill mixes `colour` with `second` (the colour named `colour_name` dominates)."""

    kind: str
    centre: Tuple[float, float]
    radius: float
    colour: Tuple[int, int, int]
    colour_name: str
    fill: str = "flat"
    second: Tuple[int, int, int] = (255, 255, 255)
    angle: float = 0.0

    def moved(self, dx: float, dy: float) -> Shape:
        return replace(self, centre=(self.centre[0] + dx, self.centre[1] + dy))

    def scaled(self, factor: float) -> Shape:
        return replace(self, radius=self.radius * factor)


@dataclass(frozen=True)
class Background:
    """A background: its `kind`, two RGB colours, a period in pixels and an angle in degrees; `seed`
    fixes the blobs of a `blobby` one."""

    kind: str
    colours: Tuple[Tuple[int, int, int], Tuple[int, int, int]]
    colour_names: Tuple[str, str]
    period: float
    angle: float
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    background: Background
    shapes: Tuple[Shape, ...]

    def caption(self) -> str:
        """A short prompt: the objects front to back, then the background."""
        things = [f"a {s.fill + ' ' if s.fill != 'flat' else ''}{s.colour_name} {s.kind}" for s in self.shapes]
        bg = self.background
        return f"{', '.join(things)} on a {bg.colour_names[0]} and {bg.colour_names[1]} {bg.kind} background"


def _jitter(rng: np.random.Generator, rgb: Tuple[int, int, int], amount: int = 18) -> Tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore


def _colour(rng: np.random.Generator, avoid: Tuple[str, ...] = ()) -> Tuple[str, Tuple[int, int, int]]:
    names = [n for n in COLOURS if n not in avoid]
    name = names[int(rng.integers(len(names)))]
    return name, _jitter(rng, COLOURS[name])


def random_scene(rng: np.random.Generator, size: int) -> Scene:
    """A random scene for a `size` x `size` picture."""
    (n0, c0), (n1, c1) = _colour(rng), _colour(rng)
    while n1 == n0:
        n1, c1 = _colour(rng)
    bg = Background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], (c0, c1), (n0, n1),
                    float(rng.uniform(0.12, 0.35) * size), float(rng.uniform(0, 180)), int(rng.integers(1 << 30)))
    shapes: List[Shape] = []
    for _ in range(int(rng.integers(1, 4))):
        name, colour = _colour(rng, avoid=(n0, n1))
        radius = float(rng.uniform(0.08, 0.22) * size)
        centre = (float(rng.uniform(radius, size - radius)), float(rng.uniform(radius, size - radius)))
        fill = FILLS[int(rng.choice(3, p=(0.6, 0.2, 0.2)))]
        second = _colour(rng, avoid=(name,))[1]
        shapes.append(Shape(KINDS[int(rng.integers(len(KINDS)))], centre, radius, colour, name, fill, second,
                            float(rng.uniform(0, 360))))
    return Scene(bg, tuple(shapes))


def _background(bg: Background, size: int) -> np.ndarray:
    """Float RGB (size, size, 3) in 0-1."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5).astype(np.float32)
    a = math.radians(bg.angle)
    u = x * math.cos(a) + y * math.sin(a)
    if bg.kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif bg.kind == "striped":
        t = (np.sin(2 * math.pi * u / bg.period) > 0).astype(np.float32)
    elif bg.kind == "checked":
        v = -x * math.sin(a) + y * math.cos(a)
        t = ((np.floor(u / bg.period) + np.floor(v / bg.period)) % 2).astype(np.float32)
    elif bg.kind == "blobby":
        coarse = np.random.default_rng(bg.seed).random((5, 5)).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.BICUBIC), dtype=np.float32)
        t = np.clip((t - 0.5) * 2.5 + 0.5, 0, 1)
    else:
        raise ValueError(f"unknown background kind {bg.kind!r}")
    c0, c1 = (np.asarray(c, np.float32) / 255 for c in bg.colours)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _outline(shape: Shape) -> List[Tuple[float, float]]:
    cx, cy = shape.centre
    r, a0 = shape.radius, math.radians(shape.angle)
    if shape.kind == "square":
        pts = [(r * 0.85, k * math.pi / 2 + math.pi / 4) for k in range(4)]
    elif shape.kind == "triangle":
        pts = [(r, k * 2 * math.pi / 3) for k in range(3)]
    else:
        pts = [(r if k % 2 == 0 else 0.45 * r, k * math.pi / 5) for k in range(10)]
    return [(cx + d * math.cos(t + a0), cy + d * math.sin(t + a0)) for d, t in pts]


def shape_mask(shape: Shape, size: int, supersample: int = 4) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in 0-1 of one shape."""
    s = supersample
    img = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(img)
    if shape.kind == "disc":
        cx, cy, r = shape.centre[0] * s, shape.centre[1] * s, shape.radius * s
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape.kind in KINDS:
        draw.polygon([(x * s, y * s) for x, y in _outline(shape)], fill=255)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r}")
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255


def _fill(shape: Shape, size: int) -> np.ndarray:
    c0 = np.asarray(shape.colour, np.float32) / 255
    if shape.fill == "flat":
        return np.broadcast_to(c0, (size, size, 3))
    y, x = (np.mgrid[0:size, 0:size] + 0.5).astype(np.float32)
    x, y = x - shape.centre[0], y - shape.centre[1]
    period = max(shape.radius * 0.45, 3.0)
    if shape.fill == "striped":
        t = (np.sin(2 * math.pi * (x + y) / period) > 0.4).astype(np.float32)
    else:
        t = ((np.hypot((x % period) - period / 2, (y % period) - period / 2)) < period * 0.22).astype(np.float32)
    c1 = np.asarray(shape.second, np.float32) / 255
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def render(scene: Scene, size: int, only: Optional[int] = None) -> Tuple[Image.Image, List[np.ndarray]]:
    """The picture (RGB, size x size) and each shape's visible coverage (float32 0-1, later shapes on
    top). With `only`, shapes other than index `only` are left out (for ground truth of one object)."""
    rgb = _background(scene.background, size)
    covers = []
    for i, shape in enumerate(scene.shapes):
        if only is not None and i != only:
            covers.append(np.zeros((size, size), np.float32))
            continue
        m = shape_mask(shape, size)
        rgb = rgb * (1 - m[..., None]) + _fill(shape, size) * m[..., None]
        covers = [c * (1 - m) for c in covers]
        covers.append(m)
    image = Image.fromarray(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")
    return image, covers


def batch(seed: int, index: int, count: int, size: int) -> Tuple[np.ndarray, List[str]]:
    """`count` scenes for training step `index`: float32 (count, 3, size, size) in -1..1 and captions.
    The same (seed, index) always gives the same batch, so training resumes exactly."""
    rng = np.random.default_rng([seed, index])
    pics, captions = [], []
    for _ in range(count):
        scene = random_scene(rng, size)
        image, _ = render(scene, size)
        pics.append(np.asarray(image, np.float32).transpose(2, 0, 1) / 127.5 - 1)
        captions.append(scene.caption())
    return np.stack(pics), captions
