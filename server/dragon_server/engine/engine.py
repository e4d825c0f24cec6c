"""The engine's entry point: load a model once, then edit many times.

An edit flows one way: check the request -> plan it in pixels -> cut and scale the region of interest
-> invert the source (and reference) -> build the mode's guide -> sample -> decode -> blend back.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from PIL import Image

from dragon_server.engine.attention import MemoryBank
from dragon_server.engine.cache import SourceCache, source_key
from dragon_server.engine.ddim import Timeline
from dragon_server.engine.geometry import paste_back
from dragon_server.engine.inversion import SourceState, invert
from dragon_server.engine.models import Components, load_components
from dragon_server.engine.planning import plan_pixels
from dragon_server.engine.regions import build_guide
from dragon_server.engine.request import (
    CancelCallback,
    EditCancelled,
    EditRequest,
    EditResult,
    Mode,
    ProgressCallback,
    ProgressEvent,
)
from dragon_server.engine.runner import Runner
from dragon_server.engine.sampler import sample
from dragon_server.engine.settings import MethodSettings, Schedule
from dragon_server.engine.validate import check_request


@dataclass(frozen=True)
class Economy:
    """The engine's savings over the authors' release. All on by default; `reference()` turns them
    off so that a benchmark can reproduce the release's cost profile in the same process."""

    reuse: bool = True
    """Keep inverted sources between edits (the cache)."""
    skip_empty_cfg: bool = True
    """No classifier-free guidance when the prompt is empty (both branches would be identical)."""
    memoize_features: bool = True
    """Guidance-branch features computed once per step, not at every guided evaluation."""
    bank_on_device: bool = True
    """The memory bank stays on the device instead of going to host memory and back."""
    share_trunk: bool = True
    """With release guidance, a guided step's feature pass and noise pass share the start of the UNet
    (the paper's guidance shares the whole pass)."""

    @classmethod
    def reference(cls) -> Economy:
        return cls(False, False, False, False, False)


class Engine:
    """One loaded model and everything needed to run DragonDiffusion edits with it. Edits run one at
    a time (a server puts one worker thread in front of it); reading `cache.info()` meanwhile is safe."""

    def __init__(self, components: Components, cache_bytes: Optional[int] = None, economy: Economy = Economy()):
        self.components = components
        self.runner = Runner(components)
        self.economy = economy
        if cache_bytes is None:
            cache_bytes = default_cache_bytes(components.device)
        self.cache = SourceCache(cache_bytes if economy.reuse else 0)

    @classmethod
    def load(cls, model: str = "sd15", device: str = "auto", dtype: Optional[str] = None,
             cache_bytes: Optional[int] = None) -> Engine:
        """Load `model` (see `load_components`) on `device`; raises ModelError with a one-line reason.
        `cache_bytes` bounds the memory kept for reuse between edits (default: a quarter of the GPU's
        memory, or of the host's)."""
        return cls(load_components(model, device, dtype), cache_bytes)

    @property
    def model_name(self) -> str:
        return self.components.name

    @property
    def device(self) -> str:
        return str(self.components.device)

    @property
    def dtype(self) -> str:
        return str(self.components.dtype).replace("torch.", "")

    def edit(self, request: EditRequest, progress: Optional[ProgressCallback] = None,
             cancel: Optional[CancelCallback] = None) -> EditResult:
        """Run one edit. `progress` gets a ProgressEvent after every step of every stage; when `cancel()`
        returns True the edit stops within one step with EditCancelled. Bad input raises InputError."""
        clock = _Clock(self.components.device)
        request = check_request(request)
        settings = MethodSettings.for_mode(request.mode, request.settings, request.guidance)
        schedule = Schedule.build(settings, request.steps)
        plan = plan_pixels(request, request.working_area or self.components.default_area)
        runner = self.runner
        runner.counts.clear()
        runner.cancel = cancel

        fx0, fy0, fx1, fy1 = plan.frame.box
        preview_box = (fx0, fy0, fx1 - fx0, fy1 - fy0)

        def report(stage: str, step: int, total: int, preview=None) -> None:
            if cancel is not None and cancel():
                raise EditCancelled()
            if progress is not None:
                progress(ProgressEvent(stage, step, total, preview, preview_box if preview else None))

        report("encode", 0, 1)
        timeline = Timeline.build(self.components.scheduler, request.steps, self.components.device)
        text = runner.text(request.prompt)
        cfg = bool(request.prompt.strip()) or not self.economy.skip_empty_cfg
        uncond = runner.text("") if cfg else None
        report("encode", 1, 1)
        clock.lap("encode")

        source = self._source(plan.frame.cut(request.image), request, text, timeline, schedule, "inversion", report)
        clock.lap("inversion")
        reference = None
        if request.mode in (Mode.APPEARANCE, Mode.PASTE):
            reference = self._source(plan.ref_frame.cut(request.reference), request, text, timeline, schedule,
                                     "reference", report)
            clock.lap("reference")

        guide = build_guide(runner, request, plan, settings, schedule, source, reference)
        generator = torch.Generator(device=self.components.device).manual_seed(request.seed)

        def step_done(done: int, total: int, x0: torch.Tensor) -> None:
            report("sampling", done, total, lambda: runner.decode(x0))

        with runner.stage("sampling"):
            latent = sample(runner, guide, timeline, schedule, settings, text, uncond,
                            request.strength * self.components.strength_for(request.mode),
                            generator, step_done, self.economy.share_trunk)
        clock.lap("sampling")
        with runner.stage("decode"):
            edited = runner.decode(latent)
        report("decode", 1, 1)
        clock.lap("decode")

        self.cache.trim()
        with runner.stage("blend"):
            patch, patch_mask, box = paste_back(request.image, edited, plan.frame, plan.blend)
        clock.lap("blend")
        return EditResult(request.image, patch, patch_mask, box, clock.timings, dict(runner.counts),
                          plan.frame.size, runner.prompt_warnings(request.prompt), raw=edited,
                          raw_box=plan.frame.box)

    def _source(self, crop: Image.Image, request: EditRequest, text: torch.Tensor, timeline: Timeline,
                schedule: Schedule, stage: str, report) -> SourceState:
        """The inverted crop, from the cache when this picture was inverted before with these settings."""
        key = source_key(crop, request.prompt, request.steps, schedule.bank)
        state = self.cache.get(key)
        if state is None:
            report(stage, 0, len(timeline))
            with self.runner.stage(stage):
                latent = self.runner.encode(crop)
                bank = MemoryBank(on_host=not self.economy.bank_on_device)
                state = invert(self.runner, latent, text, timeline, schedule.bank,
                               lambda done, total: report(stage, done, total), bank)
            state.memoize = self.economy.memoize_features
            self.cache.put(key, state)
        else:
            report(stage, len(timeline), len(timeline))
        return state


def default_cache_bytes(device: torch.device) -> int:
    """A quarter of the GPU's memory, or of the host's memory for the other devices."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 4
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): a fixed 2 GiB
        return 2 << 30


class _Clock:
    """Wall time per stage; waits for the GPU only at stage boundaries."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = self.last = time.perf_counter()
        self.timings: Dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.timings["total"] = now - self.start
        self.last = now
