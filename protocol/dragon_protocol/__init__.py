"""The DragonDiffusion wire protocol: message types, validation and limits (pure Python, msgpack only).

This package runs in the server and inside Krita's bundled Python (3.8 and newer), so it depends on
nothing but the standard library and msgpack. PROTOCOL.md next to it is the specification.
"""

from __future__ import annotations

from dragon_protocol.errors import ERROR_CODES, ProtocolError
from dragon_protocol.limits import PROTOCOL_VERSION
from dragon_protocol.messages import (
    MESSAGE_TYPES,
    Accepted,
    Cancel,
    Cancelled,
    Edit,
    Error,
    Fetch,
    Hello,
    Message,
    Ping,
    Pong,
    Progress,
    Result,
    Welcome,
    decode,
    encode,
)
from dragon_protocol.png import PngInfo, read_png_header

__all__ = [
    "ERROR_CODES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Accepted",
    "Cancel",
    "Cancelled",
    "Edit",
    "Error",
    "Fetch",
    "Hello",
    "Message",
    "Ping",
    "PngInfo",
    "Pong",
    "Progress",
    "ProtocolError",
    "Result",
    "Welcome",
    "decode",
    "encode",
    "read_png_header",
]
