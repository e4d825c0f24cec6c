"""PNG bytes to PIL images and back, for the wire."""

from __future__ import annotations

import errno
import io
import re
from typing import Optional

from PIL import Image, UnidentifiedImageError

from dragon_protocol.errors import BAD_IMAGE, ProtocolError
from dragon_protocol.png import check_png


def png_to_image(data: bytes, field: str, mode: Optional[str] = None) -> Image.Image:
    """Decode PNG `data` (size limits checked from its header first), converted to `mode` if given.

    The server leaves the mode as decoded, so the engine applies its own conversions exactly as it
    does for an in-process edit.
    """
    check_png(data, field)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            return image if mode is None else image.convert(mode)
    except UnidentifiedImageError:
        raise ProtocolError(BAD_IMAGE, f"{field}: the PNG cannot be decoded (no image data in it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        if getattr(error, "errno", None) in RESOURCE_ERRORS:  # the server's trouble, not the picture's
            raise
        raise ProtocolError(BAD_IMAGE, f"{field}: the PNG cannot be decoded ({_public(error)})") from None


RESOURCE_ERRORS = {errno.EMFILE: "open files", errno.ENFILE: "open files", errno.ENOMEM: "memory"}
"""OSError numbers that mean the server ran out of a resource, and what ran out."""


def _public(error: BaseException) -> str:
    """The decoder's reason without what only the server should see (object reprs, addresses)."""
    text = re.sub(r"<[^<>]*>|0x[0-9a-fA-F]+", "", str(error).splitlines()[0] if str(error) else "")
    return " ".join(text.split())[:200] or "corrupt data"


def image_to_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """Encode `image` as PNG; level 1 is for previews that must be fast, 6 for results that must be small."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


Image.preinit()  # Pillow's format plugins load now: decoding later needs no file (none left under a flood)

PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16")
"""PIL modes that PNG stores without loss."""
