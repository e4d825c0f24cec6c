"""Terminal messages of finished requests, kept a while so that a reconnecting client can fetch them."""

from __future__ import annotations

import collections
import time
from typing import Callable, Hashable, Optional, OrderedDict, Tuple

ENTRY_OVERHEAD = 512
"""Bytes counted for each kept message besides its payload: its key, the object headers and the ordered
map's bookkeeping (about 450 measured with tracemalloc), so that many tiny results cannot exceed the
budget in real memory."""


class ResultStore:
    """Encoded terminal messages by key, dropped after `keep_seconds` or oldest-first above `max_bytes`
    (payloads plus ENTRY_OVERHEAD each)."""

    def __init__(self, keep_seconds: float, max_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.keep_seconds = keep_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[Hashable, Tuple[float, bytes]] = collections.OrderedDict()
        self._bytes = 0

    def put(self, key: Hashable, data: bytes) -> None:
        """Keep `data` under `key`, replacing what was there; a message over the whole budget is not kept."""
        self.discard(key)
        if len(data) + ENTRY_OVERHEAD > self.max_bytes:
            return
        self._items[key] = (self._clock(), data)
        self._bytes += len(data) + ENTRY_OVERHEAD
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def get(self, key: Hashable) -> Optional[bytes]:
        """The kept message for `key`, or None if none is kept."""
        self.expire()
        item = self._items.get(key)
        return item[1] if item else None

    def discard(self, key: Hashable) -> None:
        if key in self._items:
            self._drop(key)

    def expire(self) -> None:
        """Drop messages older than keep_seconds."""
        limit = self._clock() - self.keep_seconds
        while self._items:
            key, (stored, _) = next(iter(self._items.items()))
            if stored > limit:
                break
            self._drop(key)

    def _drop(self, key: Hashable) -> None:
        self._bytes -= len(self._items.pop(key)[1]) + ENTRY_OVERHEAD

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
