"""Reuse between edits: inverted source images (trajectory, memory bank, guidance features) kept in a
least-recently-used store bounded by memory, keyed by the pixels the model saw and the settings that
shaped the inversion. A second edit of the same picture skips all of that work."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Dict, FrozenSet, Hashable, Optional, Tuple

from PIL import Image

from dragon_server.engine.inversion import SourceState

log = logging.getLogger(__name__)


def source_key(crop: Image.Image, prompt: str, steps: int, bank_steps: FrozenSet[int]) -> Tuple[Hashable, ...]:
    """What an inversion depends on, besides the model: the working-size crop, the prompt, the step
    count and the steps whose attention is recorded."""
    digest = hashlib.blake2b(crop.tobytes(), digest_size=20).hexdigest()
    return digest, crop.size, prompt, steps, tuple(sorted(bank_steps))


class SourceCache:
    """Least-recently-used SourceStates, at most `max_bytes` in all (0 disables reuse). Safe to read
    (`info`) from another thread than the one editing."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Tuple[Hashable, ...], SourceState] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Tuple[Hashable, ...]) -> Optional[SourceState]:
        with self._lock:
            state = self._items.get(key)
            if state is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return state

    def put(self, key: Tuple[Hashable, ...], state: SourceState) -> None:
        if 0 < self.max_bytes < state.nbytes:
            log.warning("an inverted picture takes %.0f MiB, more than the %.0f MiB kept for reuse: "
                        "raise the bound (dragon serve --cache-mb) to make repeat edits faster",
                        state.nbytes / 2**20, self.max_bytes / 2**20)
        with self._lock:
            self._items[key] = state
            self._items.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        """Evict the least recently used until the total fits (states grow as features are added)."""
        with self._lock:
            while self._items and self._nbytes() > self.max_bytes:
                self._items.popitem(last=False)

    def _nbytes(self) -> int:
        return sum(state.nbytes for state in self._items.values())

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes()

    def __len__(self) -> int:
        return len(self._items)

    def info(self) -> Dict[str, int]:
        """entries, bytes, max_bytes, hits, misses."""
        with self._lock:
            return {"entries": len(self._items), "bytes": self._nbytes(), "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}
