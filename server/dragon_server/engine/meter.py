"""Per-stage cost of an edit, for benchmarks: wall time, UNet passes, floating-point operations
(PyTorch's flop counter) and peak GPU memory. Stages nest; every figure goes to the innermost stage
running, so the stages of one edit add up to its total. Measuring waits for the GPU at each stage
boundary, which is why it is off in normal runs."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator, List, Optional

import torch


def _cpu_attention_formulas() -> Dict[object, object]:
    """PyTorch's flop counter knows the GPU kernels of scaled_dot_product_attention but not the CPU's
    fused one, whose FLOPs it would silently leave out; it is the same attention, so the same counts
    apply."""
    from torch.utils import flop_counter

    def forward(query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)

    def backward(grad_out, query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    formulas = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
        if hasattr(torch.ops.aten, name):
            formula._get_raw = True  # called with the op's arguments, not their shapes
            formulas[getattr(torch.ops.aten, name)] = formula
    return formulas


class Meter:
    """Collects figures per stage while it is active (`with meter.active():`)."""

    def __init__(self, device: torch.device, count_flops: bool = True):
        self.device = device
        self.count_flops = count_flops
        self.stages: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._stack: List[str] = []
        self._flops: Optional[object] = None
        self._mark_time = 0.0
        self._mark_flops = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[Meter]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) if self.count_flops \
            else contextlib.nullcontext()
        with counter:
            self._flops = counter if self.count_flops else None
            self._stack = ["other"]
            self._mark()
            try:
                yield self
            finally:
                self._charge()
                self._flops = None

    def _total_flops(self) -> int:
        return self._flops.get_total_flops() if self._flops is not None else 0

    def _mark(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._mark_time = time.perf_counter()
        self._mark_flops = self._total_flops()

    def _charge(self) -> None:
        """Give the figures since the last mark to the stage now running."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        stage = self.stages[self._stack[-1]]
        stage["seconds"] += time.perf_counter() - self._mark_time
        stage["flops"] += self._total_flops() - self._mark_flops
        if self.device.type == "cuda":
            stage["peak_bytes"] = max(stage["peak_bytes"], torch.cuda.max_memory_allocated(self.device))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self._stack:
            yield
            return
        self._charge()
        self._stack.append(name)
        self._mark()
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()
            self._mark()

    def count(self, kind: str, n: int) -> None:
        if self._stack:
            self.stages[self._stack[-1]][kind] += n

    def report(self) -> Dict[str, Dict[str, float]]:
        """{stage: {seconds, flops, peak_bytes (GPU), forward, features, backward}} plus a 'total'."""
        out = {name: dict(figures) for name, figures in self.stages.items() if any(figures.values())}
        total: Dict[str, float] = defaultdict(float)
        for figures in out.values():
            for key, value in figures.items():
                total[key] = max(total[key], value) if key == "peak_bytes" else total[key] + value
        out["total"] = dict(total)
        return out
