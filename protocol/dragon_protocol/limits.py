"""Every limit of the protocol in one place; PROTOCOL.md lists the same numbers."""

from __future__ import annotations

PROTOCOL_VERSION = 1
"""The version this package speaks; every message carries it as `v`."""

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest message, either direction. The server sets it on its socket; bigger ones drop the link."""

MAX_MESSAGE_VALUES = 4096
"""Most msgpack values in one message (each string or binary counts as one), checked before unpacking."""

MAX_NESTING = 8
"""Deepest nesting of arrays and maps in one message (the top-level map is level 1)."""

MAX_IMAGE_PIXELS = 64_000_000
"""Largest width * height of any image in an `edit`, read from the PNG header before decoding."""

MAX_IMAGE_SIDE = 16384
"""Largest width or height of any image in an `edit`."""

MAX_ARROWS = 32
MAX_ID_LENGTH = 64
MAX_TEXT_LENGTH = 1000
"""Longest prompt, client name or error message, in characters."""

MAX_COORDINATE = 65536.0
"""Arrow coordinates are finite numbers within +-MAX_COORDINATE pixels."""

MODES = ("move", "drag", "appearance", "paste")
GUIDANCES = ("release", "paper")

STEPS_RANGE = (2, 500)
SEED_RANGE = (0, 2**63 - 1)
STRENGTH_RANGE = (0.0, 100.0)
SCALE_RANGE = (0.0, 8.0)
"""Scale must also be above 0; the engine refuses 0 itself (error bad_input)."""
CONTEXT_RANGE = (0.0, 4.0)
WORKING_AREA_RANGE = (64 * 64, 2048 * 2048)
MAX_SETTINGS = 64
"""Most entries in an edit's `settings` map (method overrides by name)."""
PREVIEW_INTERVAL_RANGE = (0.0, 3600.0)
"""Seconds between preview images; 0 asks for none."""
PREVIEW_SIZE_RANGE = (16, 1024)
"""Longest side of a preview image, in pixels."""


def as_dict() -> dict:
    """The limits a `welcome` message reports, keyed by the names PROTOCOL.md uses."""
    return {
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "max_message_values": MAX_MESSAGE_VALUES,
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "max_image_side": MAX_IMAGE_SIDE,
        "max_arrows": MAX_ARROWS,
        "max_id_length": MAX_ID_LENGTH,
        "max_text_length": MAX_TEXT_LENGTH,
        "steps": list(STEPS_RANGE),
        "seed": list(SEED_RANGE),
        "strength": list(STRENGTH_RANGE),
        "scale": list(SCALE_RANGE),
        "context": list(CONTEXT_RANGE),
        "working_area": list(WORKING_AREA_RANGE),
        "max_settings": MAX_SETTINGS,
        "preview_interval": list(PREVIEW_INTERVAL_RANGE),
        "preview_size": list(PREVIEW_SIZE_RANGE),
    }
