"""Reads a PNG's header (IHDR) without decoding pixels, so size limits hold before any work is done."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from dragon_protocol.errors import BAD_IMAGE, IMAGE_TOO_LARGE, ProtocolError
from dragon_protocol.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
"""Allowed bit depths per colour type (PNG specification, table 11.1)."""


@dataclass(frozen=True)
class PngInfo:
    """What a PNG header says: size in pixels, bits per sample and colour type (0, 2, 3, 4 or 6)."""

    width: int
    height: int
    bit_depth: int
    colour_type: int


def read_png_header(data: bytes, field: str = "image") -> PngInfo:
    """Parse and check the signature and IHDR chunk of `data`; raise ProtocolError(bad_image) if wrong."""
    if not isinstance(data, (bytes, bytearray)) or data[:8] != PNG_SIGNATURE:
        raise ProtocolError(BAD_IMAGE, f"{field}: not a PNG image")
    if len(data) < 33:
        raise ProtocolError(BAD_IMAGE, f"{field}: PNG is truncated")
    length, chunk_type = struct.unpack(">I4s", data[8:16])
    if length != 13 or chunk_type != b"IHDR":
        raise ProtocolError(BAD_IMAGE, f"{field}: PNG does not start with an IHDR chunk")
    (crc,) = struct.unpack(">I", data[29:33])
    if zlib.crc32(data[12:29]) & 0xFFFFFFFF != crc:
        raise ProtocolError(BAD_IMAGE, f"{field}: PNG header is corrupt (CRC mismatch)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if width == 0 or height == 0:
        raise ProtocolError(BAD_IMAGE, f"{field}: PNG has zero width or height")
    if depth not in _BIT_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise ProtocolError(
            BAD_IMAGE, f"{field}: PNG has an invalid header (colour type {colour}, depth {depth})"
        )
    return PngInfo(width, height, depth, colour)


def check_png(data: bytes, field: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> PngInfo:
    """read_png_header, then enforce the pixel and side limits (ProtocolError image_too_large)."""
    info = read_png_header(data, field)
    if info.width * info.height > max_pixels or max(info.width, info.height) > MAX_IMAGE_SIDE:
        raise ProtocolError(
            IMAGE_TOO_LARGE,
            f"{field}: {info.width}x{info.height} is over the limit of {max_pixels} pixels "
            f"and {MAX_IMAGE_SIDE} per side",
        )
    return info
