"""Requests the server has accepted, and the bounded FIFO queue between the socket loop and the worker."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Tuple

from dragon_protocol import Edit

JobKey = Tuple[str, str]
"""(owner, request id): the owner is the client's CURVE public key, or "" without CURVE."""


@dataclass(eq=False)
class Job:
    """One accepted edit. The loop owns `route`; the worker only reads `edit` and the cancel flag."""

    edit: Edit
    owner: str
    route: bytes
    peer: str
    client: str = ""
    """Who the job counts against in a client's share of the queue: its key, or its connection without keys."""
    received: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "client"
    unread: bool = False
    """Whether progress for this job met its client's full send queue (said once in the log)."""

    @property
    def key(self) -> JobKey:
        return (self.owner, self.edit.id)

    def cancel(self, reason: str) -> None:
        """Ask the running edit to stop; the engine checks this at every step."""
        self.cancel_reason = reason
        self.cancel_event.set()


class QueueFull(Exception):
    """The queue, or the client's share of it, holds its maximum of waiting jobs; the message says which."""


class JobQueue:
    """Waiting jobs in arrival order plus the one the worker runs; safe to use from both threads.

    One client (`Job.client`) may hold at most `share` of the `capacity` waiting places, so that one
    client cannot take every place and starve the others.
    """

    def __init__(self, capacity: int, share: Optional[int] = None):
        self.capacity = capacity
        self.share = capacity if share is None else share
        self._waiting: Deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, job: Job) -> int:
        """Append `job`; return how many jobs are ahead of it. Raise QueueFull when the queue or the
        client's share is full."""
        with self._cond:
            if len(self._waiting) >= self.capacity:
                raise QueueFull(f"the queue is full ({self.capacity} waiting); try again later")
            if sum(1 for waiting in self._waiting if waiting.client == job.client) >= self.share:
                raise QueueFull(
                    f"you have {self.share} edits waiting already, the most one client may on this server; "
                    "send more when one has started"
                )
            self._waiting.append(job)
            self._cond.notify()
            return self._ahead(len(self._waiting) - 1)

    def take(self) -> Optional[Job]:
        """Worker side: wait for the next job and mark it running; None once the queue is closed."""
        with self._cond:
            self._running = None
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            self._running = self._waiting.popleft()
            return self._running

    def finished(self) -> None:
        """Worker side: the running job has ended."""
        with self._cond:
            self._running = None

    def remove(self, job: Job) -> bool:
        """Take a waiting job out of the queue; False if it is not waiting (running or gone)."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
            return True

    def position(self, job: Job) -> int:
        """How many jobs are ahead of `job` (0 when it runs)."""
        with self._cond:
            if job is self._running:
                return 0
            try:
                return self._ahead(self._waiting.index(job))
            except ValueError:
                return 0

    def _ahead(self, index: int) -> int:
        return index + (1 if self._running is not None else 0)

    def counts(self) -> Tuple[int, int]:
        """(waiting, running) job counts."""
        with self._cond:
            return len(self._waiting), int(self._running is not None)

    @property
    def running(self) -> Optional[Job]:
        with self._cond:
            return self._running

    def running_jobs(self) -> List[Job]:
        """The running job in a list (empty when none runs)."""
        with self._cond:
            return [] if self._running is None else [self._running]

    def close(self) -> List[Job]:
        """Stop handing out jobs; return the jobs that were still waiting."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
            return waiting
