"""Counts the values in msgpack bytes without building them, so that a small message cannot make the
receiver build a huge structure (a megabyte of empty-array bytes unpacks into some 60 MB of lists)."""

from __future__ import annotations

import struct

from dragon_protocol.errors import BAD_MESSAGE, ProtocolError
from dragon_protocol.limits import MAX_MESSAGE_VALUES, MAX_NESTING

_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
"""Headers followed by a payload of fixed size (fixext sizes include their type byte)."""
_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
          0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
"""bin, ext and str headers: (bytes of the length, extra bytes before the payload)."""
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
"""array and map headers: (bytes of the count, values per counted item)."""
_LENGTH = {1: ">B", 2: ">H", 4: ">I"}


def check_shape(data: bytes) -> None:
    """Raise ProtocolError(bad_message) if `data` holds more than MAX_MESSAGE_VALUES msgpack values or
    nests arrays and maps deeper than MAX_NESTING. Strings and binaries count as one value each.

    Only headers are read, and at most MAX_MESSAGE_VALUES of them, so the check costs little; whether
    the bytes are valid msgpack otherwise is left to the unpacker.
    """
    pending = [1]  # values still to read at each level
    pos = values = 0
    end = len(data)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            return  # truncated: the unpacker says so
        values += 1
        if values > MAX_MESSAGE_VALUES:
            raise ProtocolError(BAD_MESSAGE, f"the message holds more than {MAX_MESSAGE_VALUES} values")
        head = data[pos]
        pos += 1
        children = 0
        if head <= 0x7F or head >= 0xE0:
            continue
        if head <= 0x8F:
            children = 2 * (head & 0x0F)
        elif head <= 0x9F:
            children = head & 0x0F
        elif head <= 0xBF:
            pos += head & 0x1F
        elif head in _FIXED:
            pos += _FIXED[head]
        elif head in _SIZED:
            width, extra = _SIZED[head]
            if pos + width > end:
                return
            pos += width + extra + struct.unpack(_LENGTH[width], data[pos:pos + width])[0]
        elif head in _CONTAINERS:
            width, per_item = _CONTAINERS[head]
            if pos + width > end:
                return
            children = per_item * struct.unpack(_LENGTH[width], data[pos:pos + width])[0]
            pos += width
        else:
            return  # 0xC1 is never used: the unpacker refuses it
        if children:
            if len(pending) > MAX_NESTING:
                raise ProtocolError(BAD_MESSAGE, f"the message nests deeper than {MAX_NESTING} levels")
            pending.append(children)
