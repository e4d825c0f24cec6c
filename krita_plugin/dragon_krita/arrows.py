"""Drag arrows from the SVG of Krita's guide layer, in document pixels.

Krita hands out vector shapes as SVG in points (1/72 inch) with each shape's transform attached. An
arrow is any path, line or polyline: its first point is the start and its last point the end, unless
an arrowhead is drawn only at the start, which reverses it. Only the two end points matter, so curves
need no flattening: affine transforms map end points to end points.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import PluginError

Arrow = Tuple[float, float, float, float]
"""(x0, y0, x1, y1) in document pixels, from the start point to the end point."""

Matrix = Tuple[float, float, float, float, float, float]
"""An SVG affine matrix (a, b, c, d, e, f): x' = a*x + c*y + e, y' = b*x + d*y + f."""

IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
MIN_ARROW_PIXELS = 1.0
"""Arrows shorter than this (start and end on the same pixel) carry no direction."""

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PATH_TOKEN = re.compile(r"([MmLlHhVvCcSsQqTtAaZz])|([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_PREFIX = re.compile(r"[<\s/]([A-Za-z_][\w.-]*):[A-Za-z_]")
_TRANSFORM = re.compile(r"(matrix|translate|scale|rotate|skewX|skewY)\s*\(([^)]*)\)")
_ARGS_PER_COMMAND = {"M": 2, "L": 2, "H": 1, "V": 1, "C": 6, "S": 4, "Q": 4, "T": 2, "A": 7, "Z": 0}


def multiply(m: Matrix, n: Matrix) -> Matrix:
    """The matrix applying `n` first, then `m` (SVG nesting: parent times child)."""
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = n
    return (
        a * a2 + c * b2,
        b * a2 + d * b2,
        a * c2 + c * d2,
        b * c2 + d * d2,
        a * e2 + c * f2 + e,
        b * e2 + d * f2 + f,
    )


def apply(m: Matrix, x: float, y: float) -> Tuple[float, float]:
    """Point (x, y) mapped by matrix `m`."""
    a, b, c, d, e, f = m
    return a * x + c * y + e, b * x + d * y + f


def parse_transform(text: Optional[str]) -> Matrix:
    """The matrix of an SVG `transform` attribute (a list of functions applied right to left)."""
    result = IDENTITY
    if not text:
        return result
    for name, raw in _TRANSFORM.findall(text):
        args = [float(v) for v in _NUMBER.findall(raw)]
        result = multiply(result, _transform_function(name, args))
    return result


def _transform_function(name: str, args: List[float]) -> Matrix:
    """One SVG transform function as a matrix; malformed argument lists are a PluginError."""
    try:
        if name == "matrix":
            a, b, c, d, e, f = args
            return (a, b, c, d, e, f)
        if name == "translate":
            return (1.0, 0.0, 0.0, 1.0, args[0], args[1] if len(args) > 1 else 0.0)
        if name == "scale":
            sy = args[1] if len(args) > 1 else args[0]
            return (args[0], 0.0, 0.0, sy, 0.0, 0.0)
        if name == "rotate":
            t = math.radians(args[0])
            rot = (math.cos(t), math.sin(t), -math.sin(t), math.cos(t), 0.0, 0.0)
            if len(args) >= 3:
                cx, cy = args[1], args[2]
                there = (1.0, 0.0, 0.0, 1.0, cx, cy)
                back = (1.0, 0.0, 0.0, 1.0, -cx, -cy)
                return multiply(multiply(there, rot), back)
            return rot
        if name == "skewX":
            return (1.0, 0.0, math.tan(math.radians(args[0])), 1.0, 0.0, 0.0)
        return (1.0, math.tan(math.radians(args[0])), 0.0, 1.0, 0.0, 0.0)
    except (ValueError, IndexError):
        raise PluginError("bad_guide_svg", detail=f"transform {name}({', '.join(map(str, args))})") from None


def path_end_points(d: str) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """First and last point of SVG path data, or None when it draws nothing.

    Follows every command (absolute and relative, implicit repeats, closepath) to know the current
    point; control points are read and skipped.
    """
    tokens = _PATH_TOKEN.findall(d)
    if not tokens:
        return None
    first: Optional[Tuple[float, float]] = None
    x = y = 0.0
    start_x = start_y = 0.0
    command = ""
    i = 0
    while i < len(tokens):
        letter, number = tokens[i]
        if letter:
            command = letter
            i += 1
            if command in "Zz":
                x, y = start_x, start_y
                continue
        elif not command or command in "Zz":
            raise PluginError("bad_guide_svg", detail=f"path data {d[:40]!r}")
        upper = command.upper()
        count = _ARGS_PER_COMMAND[upper]
        raw = tokens[i : i + count]
        if len(raw) < count or any(letter for letter, _ in raw):
            raise PluginError("bad_guide_svg", detail=f"path data {d[:40]!r}")
        args = [float(number) for _, number in raw]
        i += count
        relative = command.islower()
        if upper == "H":
            x = args[0] + (x if relative else 0.0)
        elif upper == "V":
            y = args[0] + (y if relative else 0.0)
        else:
            nx, ny = args[-2], args[-1]
            if relative and first is not None:
                nx, ny = nx + x, ny + y
            x, y = nx, ny
        if upper == "M":
            start_x, start_y = x, y
            if first is None:
                first = (x, y)
            command = "l" if relative else "L"  # further pairs after a moveto are linetos
    if first is None:
        return None
    return first, (x, y)


def _points_list(text: str) -> List[Tuple[float, float]]:
    """The coordinate pairs of a `points` attribute."""
    values = [float(v) for v in _NUMBER.findall(text or "")]
    return list(zip(values[0::2], values[1::2]))


def _style(element: ET.Element) -> Dict[str, str]:
    """Presentation attributes with the `style` attribute's declarations taking precedence."""
    props = {key: value for key, value in element.attrib.items()}
    for declaration in element.attrib.get("style", "").split(";"):
        if ":" in declaration:
            key, value = declaration.split(":", 1)
            props[key.strip()] = value.strip()
    return props


def _has_marker(props: Dict[str, str], name: str) -> bool:
    value = props.get(name, "").strip()
    return bool(value) and value != "none"


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _walk(element: ET.Element, ctm: Matrix, inherited: Dict[str, str]) -> Iterator[Arrow]:
    """Arrows below `element` in document order, mapped by `ctm` (marker properties are inherited)."""
    for child in element:
        tag = _local_name(child.tag)
        if tag in ("defs", "marker", "title", "desc", "metadata", "style"):
            continue
        matrix = multiply(ctm, parse_transform(child.attrib.get("transform")))
        props = dict(inherited)
        props.update(_style(child))
        props.pop("transform", None)
        if tag in ("g", "svg", "a", "switch"):
            yield from _walk(child, matrix, {k: v for k, v in props.items() if k.startswith("marker")})
            continue
        ends = _element_end_points(tag, child)
        if ends is None:
            continue
        (x0, y0), (x1, y1) = ends
        if _has_marker(props, "marker-start") and not _has_marker(props, "marker-end"):
            (x0, y0), (x1, y1) = (x1, y1), (x0, y0)
        ax, ay = apply(matrix, x0, y0)
        bx, by = apply(matrix, x1, y1)
        yield (ax, ay, bx, by)


def _element_end_points(tag: str, element: ET.Element) -> Optional[Tuple[Tuple[float, float], Tuple[float, float]]]:
    """Start and end of an arrow-like element, None for shapes that are not arrows."""
    try:
        if tag == "path":
            return path_end_points(element.attrib.get("d", ""))
        if tag == "line":
            get = element.attrib.get
            return (float(get("x1", 0)), float(get("y1", 0))), (float(get("x2", 0)), float(get("y2", 0)))
        if tag == "polyline":
            points = _points_list(element.attrib.get("points", ""))
            return (points[0], points[-1]) if len(points) >= 2 else None
    except ValueError:
        raise PluginError("bad_guide_svg", detail=f"<{tag}> coordinates") from None
    return None


def arrows_from_svg(
    fragments: Sequence[str], x_res: float = 72.0, y_res: float = 72.0, min_length: float = MIN_ARROW_PIXELS
) -> List[Arrow]:
    """Arrows, in document pixels, of SVG fragments in points (one per top-level shape, in order).

    `x_res` / `y_res` are the document's resolution in pixels per inch. Fragments may be whole SVG
    documents or bare elements such as Krita's `Shape.toSvg()`. Arrows shorter than `min_length`
    pixels are refused, because they have no direction.
    """
    if x_res <= 0 or y_res <= 0:
        raise PluginError("bad_resolution", detail=f"{x_res} x {y_res} ppi")
    to_pixels: Matrix = (x_res / 72.0, 0.0, 0.0, y_res / 72.0, 0.0, 0.0)
    arrows: List[Arrow] = []
    for fragment in fragments:
        text = fragment.strip()
        if not text:
            continue
        if text.startswith("<?xml"):
            text = text.split("?>", 1)[1]
        # Krita writes krita:/sodipodi: attributes without declaring them; any namespace will do.
        prefixes = sorted(set(_PREFIX.findall(text)) - {"xmlns", "xml"})
        declared = "".join(f' xmlns:{prefix}="urn:dragon-krita:{prefix}"' for prefix in prefixes)
        try:
            root = ET.fromstring(f'<wrapper xmlns="http://www.w3.org/2000/svg"{declared}>{text}</wrapper>')
        except ET.ParseError as exc:
            raise PluginError("bad_guide_svg", detail=str(exc)) from None
        for arrow in _walk(root, to_pixels, {}):
            if math.hypot(arrow[2] - arrow[0], arrow[3] - arrow[1]) < min_length:
                raise PluginError("short_arrow", detail=f"at ({arrow[0]:.0f}, {arrow[1]:.0f})")
            arrows.append(arrow)
    return arrows


def arrow_svg(arrow: Arrow) -> str:
    """An SVG document drawing `arrow` as a line, for `VectorLayer.addShapesFromSvg`.

    Krita reads the user units of added SVG as document pixels (and writes shapes back in points), so
    the coordinates here are the arrow's pixels as they are.
    """
    x0, y0, x1, y1 = arrow
    return (
        '<svg xmlns="http://www.w3.org/2000/svg">'
        f'<path d="M{x0:.4f} {y0:.4f} L{x1:.4f} {y1:.4f}" fill="none" stroke="#ff2a2a" stroke-width="2"/></svg>'
    )
