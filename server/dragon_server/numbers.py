"""Numbers in messages as people write them: 4194304 and 0.0001, never 4.1943e+06 or 1e-04."""

from __future__ import annotations

import math
from decimal import Decimal


def plain(value: float) -> str:
    """`value` in positional notation with no trailing zeros (`2048.0` -> `2048`); nan and inf as is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
