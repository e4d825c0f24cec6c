"""Edits in flight: which document and layer each belongs to, and what to do with each reply.

`Jobs` turns client events into calls on a `Host` (the Krita side): progress, previews, results and
errors. It has no Qt in it, so queuing, cancelling and lost connections are tested without Krita.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from dragon_protocol import Accepted, Cancelled, Error, Progress, Result, Welcome

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
    "shutting_down": "server_busy",
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


def welcome_text(welcome: Welcome) -> str:
    """The docker's status line once connected: model, device and queue."""
    return (
        f"Connected: {welcome.model} on {welcome.device} ({welcome.dtype}), "
        f"{welcome.queued} queued, {welcome.running} running"
    )


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
    """The queue of edits sent through one client."""

    def __init__(self, host: Host, make_client: Callable[[], Client]):
        self.host = host
        self.make_client = make_client
        self.client: Optional[Client] = None
        self.jobs: Dict[str, Job] = {}

    def connect(self) -> None:
        """(Re)connect; failures reach the host as a connection message."""
        self.disconnect()
        try:
            self.client = self.make_client()
            self.client.connect()
        except PluginError as exc:
            self.client = None
            self.host.connection_changed(str(exc), False)
            return
        self.host.connection_changed(f"Connecting to {self.client.address}...", False)

    def disconnect(self) -> None:
        """Close the connection; edits still running are reported as lost."""
        if self.client is not None:
            self.client.close()
        self.client = None
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
        """Handle whatever the server sent; call from a GUI timer."""
        if self.client is None:
            return
        for event in self.client.poll():
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, PluginError):
            if event.code in ("cannot_connect", "timeout", "version_mismatch"):
                self.client = None
                self.host.connection_changed(str(event), False)
                self._fail_all(event)
            else:
                self.host.connection_changed(str(event), True)
            return
        if isinstance(event, Welcome):
            self.host.connection_changed(welcome_text(event), True)
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
            job.state, job.stage, job.step, job.total = "running", event.stage, event.step, event.total
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
            self.host.job_failed(job, PluginError("cancelled"))
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
