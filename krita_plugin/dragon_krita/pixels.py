"""Pixel buffers as plain bytes: byte order, crops, masks and alpha, with no numpy.

Krita hands 8-bit RGBA pixels over in B, G, R, A order and selections as one byte per pixel; the
server speaks R, G, B, A. Strided slice assignment on bytearrays does the per-channel work in C.
"""

from __future__ import annotations

import re
from typing import Optional

from .region import Rect


def swap_red_blue(data: bytes) -> bytes:
    """B,G,R,A -> R,G,B,A, and back: the same swap of the first and third byte of each pixel."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of 4-byte pixels")
    out = bytearray(data)
    out[0::4] = data[2::4]
    out[2::4] = data[0::4]
    return bytes(out)


bgra_to_rgba = swap_red_blue
rgba_to_bgra = swap_red_blue


def _check(data: bytes, rect: Rect, channels: int) -> None:
    expected = rect.width * rect.height * channels
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes for a {rect.width}x{rect.height}x{channels} buffer (want {expected})")


def copy_into(data: bytes, rect: Rect, target: Rect, channels: int = 1) -> bytes:
    """The pixels of `target` taken from a buffer covering `rect`; what `rect` does not cover is 0."""
    _check(data, rect, channels)
    out = bytearray(target.width * target.height * channels)
    overlap = rect.intersect(target)
    if overlap.is_empty():
        return bytes(out)
    span = overlap.width * channels
    for y in range(overlap.y, overlap.bottom):
        src = ((y - rect.y) * rect.width + overlap.x - rect.x) * channels
        dst = ((y - target.y) * target.width + overlap.x - target.x) * channels
        out[dst : dst + span] = data[src : src + span]
    return bytes(out)


def alpha_channel(rgba: bytes) -> bytes:
    """The A byte of each 4-byte pixel (works for B,G,R,A and R,G,B,A alike)."""
    return bytes(rgba[3::4])


def with_alpha(rgba: bytes, mask: bytes) -> bytes:
    """The pixels with alpha replaced by `mask` (one byte per pixel) times their own alpha."""
    if len(rgba) != 4 * len(mask):
        raise ValueError(f"{len(rgba)} pixel bytes do not match a mask of {len(mask)} pixels")
    out = bytearray(rgba)
    alpha = rgba[3::4]
    if alpha.count(255) == len(alpha):
        out[3::4] = mask
    else:
        out[3::4] = bytes((m * a + 127) // 255 for m, a in zip(mask, alpha))
    return bytes(out)


_PARTIAL = re.compile(b"[\x01-\xfe]")


def unblend(blended: bytes, under: bytes, mask: bytes) -> bytes:
    """R,G,B,A colours that, drawn with alpha `mask` over `under`, give `blended`.

    The server's result is already mixed with the input where the blend mask is soft; a layer whose
    alpha is the mask must carry the unmixed colour, or soft edges would be mixed in twice. Only
    pixels with a partial mask change, found by a regular expression so the scan runs in C.
    """
    if not len(blended) == len(under) == 4 * len(mask):
        raise ValueError(f"{len(blended)} and {len(under)} pixel bytes for a mask of {len(mask)} pixels")
    out = bytearray(blended)
    for match in _PARTIAL.finditer(mask):
        i = match.start()
        m = mask[i]
        for p in range(4 * i, 4 * i + 3):
            value = (blended[p] * 255 - (255 - m) * under[p] + m // 2) // m
            out[p] = 0 if value < 0 else 255 if value > 255 else value
    return bytes(out)


def mask_bounds(mask: bytes, width: int, height: int, threshold: int = 0) -> Optional[Rect]:
    """Bounding box of the mask's pixels above `threshold`, or None when there are none."""
    if len(mask) != width * height:
        raise ValueError(f"{len(mask)} mask bytes for {width}x{height}")
    if threshold:
        mask = mask.translate(bytes(v if v > threshold else 0 for v in range(256)))
    top = bottom = None
    left, right = width, 0
    for y in range(height):
        row = mask[y * width : (y + 1) * width]
        stripped = row.lstrip(b"\0")
        if not stripped:
            continue
        if top is None:
            top = y
        bottom = y
        left = min(left, width - len(stripped))
        right = max(right, len(row.rstrip(b"\0")))
    if top is None or bottom is None:
        return None
    return Rect(left, top, right - left, bottom - top + 1)


def is_empty(mask: bytes) -> bool:
    """True when every byte is 0."""
    return not mask.strip(b"\0")


def is_opaque(alpha: bytes) -> bool:
    """True when every byte is 255."""
    return not alpha.strip(b"\xff")
