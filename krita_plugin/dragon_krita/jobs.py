"""Edits in flight: which document and layer each belongs to, and what to do with each reply.

`Jobs` turns client events into calls on a `Host` (the Krita side): progress, previews, results and
errors. It has no Qt in it, so queuing, cancelling and lost connections are tested without Krita.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from dragon_protocol import Accepted, Cancelled, Error, Pong, Progress, Result, Welcome

from .client import Client, Event
from .edit import PreparedEdit
from .errors import PluginError

SERVER_ERRORS = {
    "bad_input": "server_bad_input",
    "bad_field": "server_bad_input",
    "bad_image": "server_bad_input",
    "image_too_large": "server_bad_input",
    "model_unavailable": "server_model",
    "out_of_memory": "server_memory",
    "queue_full": "server_busy",
    "shutting_down": "server_shutdown",
    "unsupported_version": "version_mismatch",
    "unknown_request": "server_lost",
}
"""Server error codes and the painter's wording for them; any other code is `server_error`."""


def finished_text(job: Job, error: Optional[PluginError]) -> str:
    """The docker's line when a job ends: the error, or the new layer's name and the server's warnings
    (such as the words cut from a long prompt)."""
    if error is not None:
        return str(error)
    notes = "".join(f" Note: {warning}." for warning in job.extra.get("warnings", []))
    return f'Added layer "{job.prepared.layer_name}".{notes}'


def server_error(error: Error) -> PluginError:
    """The painter's message for a server `error` reply."""
    return PluginError(SERVER_ERRORS.get(error.code, "server_error"), detail=error.message)


RETRY_SECONDS = 3.0
"""How often a lost or unreachable server is tried again."""

STAGE_WEIGHTS = {"encode": 0.5, "inversion": 1.0, "reference": 1.0, "sampling": 2.0, "decode": 0.5}
"""Relative cost of one step of each stage the server reports (a guided sampling step also runs a
backward pass); the progress bar spans all stages of an edit."""


def welcome_text(welcome: Welcome, queued: int, running: int) -> str:
    """The docker's status line while connected: model, device (or the model's loading) and the queue now."""
    queue = f"{queued} queued, {running} running"
    if welcome.state == "failed":
        return f"Connected, but the server could not load its model {welcome.model} (see its log); {queue}"
    if welcome.state != "ready":
        return f"Connected: the server is still loading {welcome.model or 'its model'}; {queue}"
    return f"Connected: {welcome.model} on {welcome.device} ({welcome.dtype}), {queue}"


def edit_stages(mode: str) -> List[str]:
    """The stages an edit of wire `mode` goes through, in order."""
    middle = ["inversion", "reference"] if mode in ("appearance", "paste") else ["inversion"]
    return ["encode"] + middle + ["sampling", "decode"]


def edit_fraction(mode: str, steps: int, stage: str, step: int, total: int) -> float:
    """How much of the whole edit is done (0..1) when `stage` is at `step` of `total`.

    Stages not reported yet count `steps` steps (inversion and sampling run one step per sampling step).
    """
    stages = edit_stages(mode)
    if stage not in stages:
        return 0.0
    here = stages.index(stage)

    def size(name: str) -> float:
        count = total if name == stage else (1 if name in ("encode", "decode") else steps)
        return STAGE_WEIGHTS[name] * max(count, 1)

    done = sum(size(name) for name in stages[:here]) + STAGE_WEIGHTS[stage] * min(step, max(total, 1))
    return min(1.0, done / sum(size(name) for name in stages))


def time_left(fraction: float, elapsed: float) -> Optional[float]:
    """Seconds left, extrapolated from `elapsed` seconds for `fraction` of the work; None in the first
    second or before any work is done."""
    if fraction <= 0 or elapsed < 1.0:
        return None
    return elapsed * (1 - fraction) / fraction


def progress_text(job: Job, now: float, queued_behind: int) -> str:
    """The progress bar's words: stage, step, time left and how many more edits wait."""
    more = f" (+{queued_behind} queued)" if queued_behind else ""
    if job.state != "running" or not job.stage:
        return f"{job.state.capitalize()}{more}"
    left = time_left(job.fraction, now - job.started) if job.started is not None else None
    eta = f", about {left:.0f} s left" if left is not None else ""
    return f"{job.stage.capitalize()} {job.step}/{job.total}{eta}{more}"


@dataclass
class Job:
    """One edit: the prepared message plus handles the host uses to find its document and layer."""

    prepared: PreparedEdit
    document: Any
    node: Any
    state: str = "sending"
    step: int = 0
    total: int = 0
    stage: str = ""
    fraction: float = 0.0
    """Of the whole edit, all stages together (0..1)."""
    started: Optional[float] = None
    """When the server started running it (the client's clock)."""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.prepared.message.id


class Host:
    """What the Krita side does for the jobs; the docker implements it."""

    def job_changed(self, job: Job) -> None:
        """A job's state or progress changed (update the progress bar)."""

    def job_preview(self, job: Job, png: bytes, box: Tuple[int, int, int, int]) -> None:
        """A preview image arrived, of `box` (x, y, width, height) in the pixels of the image sent."""

    def job_lost(self, job: Job) -> bool:
        """True when the job's target went away meanwhile (its layer was deleted): it is cancelled."""
        return False

    def job_result(self, job: Job, result: Result) -> None:
        """The final result arrived; insert it (or raise PluginError if it cannot be)."""

    def job_failed(self, job: Job, error: PluginError) -> None:
        """The job ended without a result."""

    def connection_changed(self, text: str, ok: bool) -> None:
        """The connection status line changed."""


def new_request_id() -> str:
    """An unguessable request id (UUID4 in hex), as the protocol asks: ids are the only guard on cancel."""
    return uuid.uuid4().hex


class Jobs:
    """The queue of edits sent through one client; a lost server is tried again every few seconds."""

    def __init__(
        self, host: Host, make_client: Callable[[], Client], clock: Callable[[], float] = time.monotonic
    ):
        self.host = host
        self.make_client = make_client
        self.clock = clock
        self.client: Optional[Client] = None
        self.jobs: Dict[str, Job] = {}
        self.welcome: Optional[Welcome] = None
        self.queue = (0, 0)
        """The server's (queued, running) edits, from its last welcome or pong."""
        self.retry_at: Optional[float] = None

    def connect(self) -> None:
        """(Re)connect; failures reach the host as a connection message."""
        self.disconnect()
        self._open("Connecting to {}...")

    def _open(self, connecting: str) -> None:
        try:
            self.client = self.make_client()
            self.client.connect()
        except PluginError as exc:
            self.client = None
            self.host.connection_changed(str(exc), False)
            return
        if connecting:
            self.host.connection_changed(connecting.format(self.client.address), False)

    def disconnect(self) -> None:
        """Close the connection and stop retrying; edits still running are reported as lost."""
        if self.client is not None:
            self.client.close()
        self.client = self.welcome = None
        self.retry_at = None
        self._fail_all(PluginError("not_connected"))

    def submit(self, job: Job) -> None:
        """Send a prepared edit; raises PluginError(not_connected) when there is no server."""
        if self.client is None or not self.client.connected:
            raise PluginError("not_connected")
        self.client.submit(job.prepared.message)
        self.jobs[job.id] = job
        self.host.job_changed(job)

    def cancel(self, job_id: Optional[str] = None) -> None:
        """Cancel one edit, or all of them."""
        for job in list(self.jobs.values()):
            if job_id in (None, job.id) and self.client is not None:
                job.state = "cancelling"
                self.client.cancel(job.id)
                self.host.job_changed(job)

    def drop(self, predicate: Callable[[Job], bool], error: Optional[PluginError] = None) -> None:
        """Cancel and forget jobs whose document went away, so nothing touches them later.

        With `error`, the host hears that each dropped job failed with it.
        """
        for job in [j for j in self.jobs.values() if predicate(j)]:
            if self.client is not None:
                self.client.cancel(job.id)
            del self.jobs[job.id]
            if error is not None:
                self.host.job_failed(job, error)

    def poll(self) -> None:
        """Handle whatever the server sent, and retry a lost server when due; call from a GUI timer."""
        if self.client is None:
            if self.retry_at is not None and self.clock() >= self.retry_at:
                self.retry_at = None
                self._open("")
            return
        lost = {job.id for job in self.jobs.values() if self.host.job_lost(job)}
        if lost:
            self.drop(lambda job: job.id in lost, PluginError("layer_gone"))
        for event in self.client.poll():
            self._handle(event)

    def _show_queue(self, queued: int, running: int) -> None:
        if self.welcome is not None and self.welcome.state == "loading" and self.client is not None:
            self.client.hello()  # its welcome says when the model is ready
        if self.welcome is not None and (queued, running) != self.queue:
            self.queue = (queued, running)
            self.host.connection_changed(welcome_text(self.welcome, queued, running), True)

    def _handle(self, event: Event) -> None:
        if isinstance(event, PluginError):
            if event.code in ("cannot_connect", "timeout", "version_mismatch"):
                self.client = self.welcome = None
                self.retry_at = None if event.code == "version_mismatch" else self.clock() + RETRY_SECONDS
                self.host.connection_changed(str(event), False)
                self._fail_all(event)
            else:
                self.host.connection_changed(str(event), True)
            return
        if isinstance(event, Welcome):
            self.welcome, self.queue = event, (event.queued, event.running)
            self.host.connection_changed(welcome_text(event, event.queued, event.running), True)
            return
        if isinstance(event, Pong):
            self._show_queue(event.queued, event.running)
            return
        if isinstance(event, Error) and event.id is None:
            self.host.connection_changed(str(server_error(event)), True)
            return
        job = self.jobs.get(getattr(event, "id", ""))
        if job is None:
            return
        if isinstance(event, Accepted):
            job.state = "queued" if event.position else "running"
        elif isinstance(event, Progress):
            if job.started is None:
                job.started = self.clock()
            job.state, job.stage, job.step, job.total = "running", event.stage, event.step, event.total
            message = job.prepared.message
            job.fraction = edit_fraction(message.mode, message.steps, event.stage, event.step, event.total)
            if event.preview and event.preview_box:
                self.host.job_preview(job, event.preview, event.preview_box)
        elif isinstance(event, Result):
            del self.jobs[job.id]
            job.state = "done"
            job.extra["warnings"] = list(event.warnings)
            try:
                self.host.job_result(job, event)
            except PluginError as exc:
                self.host.job_failed(job, exc)
            return
        elif isinstance(event, Cancelled):
            del self.jobs[job.id]
            self.host.job_failed(job, PluginError("server_shutdown" if event.reason == "shutdown" else "cancelled"))
            return
        elif isinstance(event, Error):
            del self.jobs[job.id]
            self.host.job_failed(job, server_error(event))
            return
        self.host.job_changed(job)

    def _fail_all(self, error: PluginError) -> None:
        jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            self.host.job_failed(job, error)

    def running(self) -> List[Job]:
        return list(self.jobs.values())
