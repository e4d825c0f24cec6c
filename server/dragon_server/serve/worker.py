"""The one thread that holds the model: loads it, then runs queued edits one at a time.

It never touches the client socket: everything it has to say goes through `post` as a WorkerEvent,
which the socket loop picks up (see server.py), so pings and cancels never wait on the accelerator.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from dragon_protocol import Cancelled, Edit, Error, Progress, ProtocolError, Result, encode
from dragon_protocol.errors import INTERNAL_ERROR, OUT_OF_MEMORY
from dragon_server.engine import (
    EditCancelled,
    EditError,
    EditRequest,
    EditResult,
    Engine,
    Mode,
    ProgressEvent,
)
from dragon_server.serve.faults import Faults
from dragon_server.serve.images import RESOURCE_ERRORS, image_to_png, png_to_image
from dragon_server.serve.jobs import Job, JobQueue

log = logging.getLogger("dragon.worker")

INTERNAL_ERROR_TEXT = "the server failed on this edit (a bug: its console has the details); other edits go on"
"""What a client is told of a server bug: the details (exception, traceback) stay in the server's log."""


@dataclass
class WorkerEvent:
    """Something the socket loop must act on: kind is ready, load_failed, progress or done."""

    kind: str
    job: Optional[Job] = None
    payload: bytes = b""
    detail: str = ""


class Worker(threading.Thread):
    """Loads the engine, then takes jobs from `jobs` until the queue is closed."""

    def __init__(self, model: str, device: str, jobs: JobQueue, post: Callable[[WorkerEvent], None],
                 cache_bytes: Optional[int] = None, faults: Optional[Faults] = None):
        super().__init__(name="dragon-worker", daemon=True)
        self.model = model
        self.device = device
        self.cache_bytes = cache_bytes
        self.jobs = jobs
        self.post = post
        self.faults = faults or Faults()
        """Test-only faults to inject (see faults.py); none in normal use."""
        self.runs = 0
        """Edits started so far, numbering them for the fault injection."""
        self.engine: Optional[Engine] = None

    def run(self) -> None:
        log.info("loading model %s on device %s ...", self.model, self.device)
        started = time.monotonic()
        try:
            self.engine = Engine.load(model=self.model, device=self.device, cache_bytes=self.cache_bytes)
        except Exception as error:  # any failure to load ends the server with its one-line reason
            self.post(WorkerEvent("load_failed", detail=_one_line(error)))
            return
        log.info(
            "model %s ready on %s (%s) in %.1f s",
            self.engine.model_name, self.engine.device, self.engine.dtype, time.monotonic() - started,
        )
        self.post(WorkerEvent("ready"))
        while True:
            job = self.jobs.take()
            if job is None:
                return
            try:
                payload, outcome = self._run(job)
            finally:
                self.jobs.finished()
            self.post(WorkerEvent("done", job, payload, outcome))

    def describe(self) -> Dict[str, Any]:
        """model, device, dtype and cache (the reuse counters) of the loaded engine; {} while it loads."""
        engine = self.engine
        if engine is None:
            return {}
        return {"model": engine.model_name, "device": str(engine.device), "dtype": str(engine.dtype),
                "cache": engine.cache.info(), "default_area": engine.components.default_area}

    def _run(self, job: Job) -> tuple[bytes, str]:
        """Run one job; return its encoded terminal message and a word for the log."""
        edit = job.edit
        waited = time.monotonic() - job.received
        self.runs += 1
        try:
            request = to_engine_request(edit)
            log.info(
                "request %s: running %s on %dx%d, %d arrows, %d steps",
                edit.id, edit.mode, request.image.width, request.image.height, len(edit.arrows), edit.steps,
            )
            result = self.engine.edit(request, progress=self._progress(job), cancel=job.cancel_event.is_set)
            return encode(result_message(edit.id, result, waited)), "result"
        except EditCancelled:
            return encode(Cancelled(id=edit.id, reason=job.cancel_reason)), "cancelled"
        except (ProtocolError, EditError) as error:
            return encode(Error(id=edit.id, code=error.code, message=_one_line(error))), error.code
        except (torch.cuda.OutOfMemoryError, MemoryError) as error:
            log.warning("request %s: out of memory: %s", edit.id, _one_line(error))
        except OSError as error:
            if error.errno not in RESOURCE_ERRORS:
                log.exception("request %s failed unexpectedly", edit.id)
                return encode(Error(id=edit.id, code=INTERNAL_ERROR, message=INTERNAL_ERROR_TEXT)), INTERNAL_ERROR
            log.error("request %s: the server ran out of resources: %s", edit.id, _one_line(error))
            text = f"the server ran out of {RESOURCE_ERRORS[error.errno]} for this edit; try again later"
            return encode(Error(id=edit.id, code=OUT_OF_MEMORY, message=text)), OUT_OF_MEMORY
        except RuntimeError as error:
            if "out of memory" not in str(error):
                log.exception("request %s failed unexpectedly", edit.id)
                return encode(Error(id=edit.id, code=INTERNAL_ERROR, message=INTERNAL_ERROR_TEXT)), INTERNAL_ERROR
            log.warning("request %s: out of memory: %s", edit.id, _one_line(error))
        except Exception:  # a bug must fail this request only, never the server
            log.exception("request %s failed unexpectedly", edit.id)
            return encode(Error(id=edit.id, code=INTERNAL_ERROR, message=INTERNAL_ERROR_TEXT)), INTERNAL_ERROR
        return self._out_of_memory(edit), OUT_OF_MEMORY

    def _out_of_memory(self, edit: Edit) -> bytes:
        """Free what the failed edit held, then its `out_of_memory` error.

        Called after the except block has ended: until then the traceback's frames keep the edit's
        tensors alive, and emptying the allocator's cache would free nothing.
        """
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        message = "out of accelerator memory for this edit; use a smaller working area or fewer steps"
        return encode(Error(id=edit.id, code=OUT_OF_MEMORY, message=message))

    def _progress(self, job: Job) -> Callable[[ProgressEvent], None]:
        """The engine's progress callback for `job`: posts progress, with previews at the asked rate."""
        edit = job.edit
        run = self.runs
        last_preview = [float("-inf")]

        def report(event: ProgressEvent) -> None:
            self.faults.at_step(run, event.stage)
            preview = None
            now = time.monotonic()
            if edit.preview_interval > 0 and event.preview is not None:
                if now - last_preview[0] >= edit.preview_interval:
                    last_preview[0] = now
                    preview = _preview_png(event, edit.preview_size)
            box = event.preview_box if preview is not None else None
            message = Progress(edit.id, event.stage, event.step, event.total, preview, box)
            self.post(WorkerEvent("progress", job, encode(message)))

        return report


def _preview_png(event: ProgressEvent, size: int) -> Optional[bytes]:
    try:
        image = event.preview()
        image.thumbnail((size, size))
        return image_to_png(image, compress_level=1)
    except Exception:  # a preview is a courtesy: the edit goes on without it
        log.warning("preview failed", exc_info=True)
        return None


def to_engine_request(edit: Edit) -> EditRequest:
    """The engine's request for a checked `edit` message, its PNGs decoded as they are."""

    def optional(data: Optional[bytes], field: str):
        return None if data is None else png_to_image(data, field)

    return EditRequest(
        mode=Mode(edit.mode),
        image=png_to_image(edit.image, "edit.image"),
        mask=optional(edit.mask, "edit.mask"),
        arrows=[tuple(arrow) for arrow in edit.arrows],
        scale=edit.scale,
        reference=optional(edit.reference, "edit.reference"),
        reference_mask=optional(edit.reference_mask, "edit.reference_mask"),
        prompt=edit.prompt,
        steps=edit.steps,
        seed=edit.seed,
        strength=edit.strength,
        working_area=edit.working_area,
        context=edit.context,
        settings=dict(edit.settings),
        guidance=edit.guidance,
    )


def result_message(request_id: str, result: EditResult, waited: float) -> Result:
    """The `result` message for an engine result: the changed region and its blend mask as PNGs."""
    x, y, w, h = (int(v) for v in result.box)
    image = mask = None
    if w > 0 and h > 0:
        image = image_to_png(result.patch)
        mask = image_to_png(result.patch_mask)
    timings = {name: float(seconds) for name, seconds in result.timings.items()}
    timings["queue"] = waited
    return Result(
        id=request_id,
        image=image,
        mask=mask,
        box=(x, y, w, h),
        size=result.size,
        working_size=tuple(int(v) for v in result.working_size),
        timings=timings,
        unet_evaluations={name: int(n) for name, n in result.unet_evaluations.items()},
        warnings=list(result.warnings),
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]
