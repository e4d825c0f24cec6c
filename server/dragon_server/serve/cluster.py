"""Engine replicas on Ray, for `dragon serve --replicas N` (one machine) and `--ray ADDRESS` (a cluster).

The socket loop, the protocol, the keys and the result store stay as they are: `Replicas` takes the
place of the job queue and the worker thread (same methods), and runs each edit on one of N Ray actors
(`ReplicaActor`), each holding its own engine and reuse cache in its own process. An edit goes to the
replica chosen by a key of its picture and the settings that make the engine's cache entry, so a
repeat edit of a picture finds its inversion there. Progress streams back from the actor's generator
method; a cancel is a second call on the actor; an actor that dies ends its edit with one `engine_lost`
error, and Ray starts it again.

Ray is imported only here, and only when the server starts replicas: `dragon serve` without
--replicas/--ray, and `dragon --help`, never load it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from dragon_protocol import Edit, Error, decode, encode
from dragon_protocol.errors import ENGINE_LOST
from dragon_server.serve.faults import Faults
from dragon_server.serve.jobs import Job, JobQueue
from dragon_server.serve.worker import Worker, WorkerEvent, _one_line
from dragon_server.threads import use_threads

log = logging.getLogger("dragon.cluster")

INSTALL_HINT = 'Ray is not installed: install the cluster extra, pip install ".[cluster]"'
READY_TIMEOUT_S = 900.0
"""Longest wait for a replica to load its model (first start or restart) before it counts as failed."""
_POLL_S = 0.1
"""How often a replica's lane looks for a cancel while it waits for the next message of an edit."""
_RAY_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",  # every replica's console lines, not the first one's only
    "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",  # Ctrl-C and SIGTERM stop the server without a stack dump
}
_LOCAL_RAY_ENVIRONMENT = {
    # A single-machine Ray: its node address is loopback, so every Ray port listens on 127.0.0.1 only.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@dataclass(frozen=True)
class ClusterConfig:
    """How `dragon serve` runs its engines on Ray."""

    replicas: int = 1
    """How many engine replicas (each its own process, model and reuse cache; one GPU each on GPUs)."""
    address: Optional[str] = None
    """A running Ray cluster to join (host:port of its head); None: a private Ray on this machine."""
    spill: bool = False
    """Run an edit on an idle replica when the one its picture is routed to is busy (strict: False)."""
    threads: int = 1
    """CPU threads for each replica's math (threads.py)."""


def routing_key(edit: Edit) -> bytes:
    """A key of what makes the engine's cache entry for `edit`'s picture.

    The engine keys its cache on the pixels of the crop the model sees, the prompt, the step count and
    the steps whose attention is kept (engine/cache.py `source_key`). Those depend on the working area
    and the mask, known only once the request is decoded; the image and reference bytes, prompt, steps
    and mode are a close approximation that the loop can compute at once: a repeat edit of the same
    picture and settings always gets the same key (an edit with a changed mask or working area may
    share the key and miss the cache, never the reverse).
    """
    digest = hashlib.blake2b(digest_size=16)
    for part in (edit.image, edit.reference or b"", edit.prompt.encode(), str(edit.steps).encode(),
                 edit.mode.encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def choose_replica(key: bytes, replicas: int) -> int:
    """The replica (0 .. replicas-1) that a routing key belongs to: the same for the same key."""
    return int.from_bytes(key[:8], "little") % replicas


class ReplicaActor:
    """One engine in a Ray worker process: the server's own Worker thread, fed one edit at a time.

    Created through `ray.remote` (see `Replicas`); the constructor returns once the model is loaded
    (raises RuntimeError with the one-line reason when it cannot be). Its methods run on a small pool of
    threads, so `cancel` and `describe` answer while `edit` streams.
    """

    def __init__(self, model: str, device: str, cache_bytes: Optional[int], faults: Faults, threads: int):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stderr)
        use_threads(threads)
        self.jobs = JobQueue(1)
        self.streams: Dict[int, queue.Queue] = {}
        self.loaded: queue.Queue = queue.Queue()
        self.running: Optional[Tuple[str, Job]] = None
        self.early_cancel: Optional[Tuple[str, str]] = None
        self.lock = threading.Lock()
        self.worker = Worker(model, device, self.jobs, self._post, cache_bytes, faults)
        self.worker.start()
        event = self.loaded.get()
        if event.kind == "load_failed":
            raise RuntimeError(event.detail)

    def _post(self, event: WorkerEvent) -> None:
        """The worker's events: ready/load_failed for the constructor, the rest to the edit's stream."""
        if event.job is None:
            self.loaded.put(event)
        else:
            self.streams[id(event.job)].put(event)

    def describe(self) -> Dict[str, Any]:
        """The engine's model, device, dtype and cache counters (Worker.describe)."""
        return self.worker.describe()

    def edit(self, edit: Edit, waited: float, token: str, crash: bool) -> Iterator[Tuple[str, bytes, Any]]:
        """Run `edit`, yielding ("progress", encoded progress, None) per step, then ("done", encoded
        terminal message, (outcome, cache counters)). `token` names this run for `cancel`; `crash` is
        the test-only fault that ends this process at the edit's first sampling step."""
        job = Job(edit=edit, owner="", route=b"", peer="", received=time.monotonic() - waited)
        stream: queue.Queue = queue.Queue()
        self.streams[id(job)] = stream
        with self.lock:
            self.running = (token, job)
            if self.early_cancel is not None and self.early_cancel[0] == token:
                job.cancel(self.early_cancel[1])
            self.early_cancel = None
        self.jobs.put(job)
        try:
            while True:
                event = stream.get()
                if event.kind != "progress":
                    yield "done", event.payload, (event.detail, self.worker.describe().get("cache", {}))
                    return
                if crash and decode(event.payload).stage == "sampling":
                    log.warning("request %s: test-only fault: this replica crashes now", edit.id)
                    os._exit(70)
                yield "progress", event.payload, None
        finally:
            with self.lock:
                self.running = None
            del self.streams[id(job)]

    def cancel(self, token: str, reason: str) -> None:
        """Stop the run named `token` within one step (or as soon as it starts, if it has not yet)."""
        with self.lock:
            if self.running is not None and self.running[0] == token:
                self.running[1].cancel(reason)
            else:
                self.early_cancel = (token, reason)


@dataclass(eq=False)
class _Lane:
    """One replica as the server sees it: its actor, its queue and what it last said about itself."""

    index: int
    jobs: JobQueue
    actor: Any = None
    state: str = "loading"
    """loading, ready, restarting or failed."""
    restarts: int = 0
    info: Dict[str, Any] = field(default_factory=dict)
    """The replica's Worker.describe(): model, device, dtype, cache counters."""

    def summary(self) -> Dict[str, Any]:
        waiting, running = self.jobs.counts()
        cache = self.info.get("cache", {})
        return {
            "index": self.index, "state": self.state, "device": self.info.get("device", ""),
            "queued": waiting, "running": running, "restarts": self.restarts,
            **{name: cache.get(name, 0) for name in ("entries", "hits", "misses")},
        }


class Replicas:
    """The server's queue and worker when its engines are Ray actors (see the module docstring).

    Queue side (the socket loop's thread): put, remove, position, counts, running_jobs, close and
    capacity, as JobQueue. Worker side: start, is_alive, join and describe, as Worker; events go to
    `post`. Each replica has a bounded queue of `queue_size` waiting edits and one thread, its lane,
    that feeds the replica one edit at a time.
    """

    def __init__(self, cluster: ClusterConfig, model: str, device: str, queue_size: int,
                 cache_bytes: Optional[int], faults: Faults, post: Callable[[WorkerEvent], None]):
        self.cluster = cluster
        self.model = model
        self.device = device
        self.cache_bytes = cache_bytes
        self.faults = faults
        self.post = post
        self.capacity = queue_size * cluster.replicas
        self.lanes = [_Lane(index, JobQueue(queue_size)) for index in range(cluster.replicas)]
        self._where: Dict[Job, _Lane] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._crashed: set = set()
        self._ready = 0
        self._thread = threading.Thread(target=self._run, name="dragon-replicas")

    # -- queue side ---------------------------------------------------------------------------------

    def put(self, job: Job) -> int:
        """Queue `job` on its replica; return how many edits are ahead of it there. Raises QueueFull
        when that replica's queue is full (with spill: when no replica can take it at once either)."""
        live = [lane for lane in self.lanes if lane.state != "failed"] or self.lanes
        lane = live[choose_replica(routing_key(job.edit), len(live))]
        if self.cluster.spill and lane.jobs.counts() != (0, 0):
            idle = [other for other in self.lanes if other.state == "ready" and other.jobs.counts() == (0, 0)]
            lane = idle[0] if idle else lane
        position = lane.jobs.put(job)
        with self._lock:
            self._where[job] = lane
        return position

    def remove(self, job: Job) -> bool:
        """Take a waiting job out of its replica's queue; False if it runs already or is gone."""
        lane = self._lane(job)
        if lane is None or not lane.jobs.remove(job):
            return False
        self._forget(job)
        return True

    def position(self, job: Job) -> int:
        """How many edits are ahead of `job` on its replica (0 when it runs)."""
        lane = self._lane(job)
        return 0 if lane is None else lane.jobs.position(job)

    def counts(self) -> Tuple[int, int]:
        """(waiting, running) edits over all replicas."""
        waiting = running = 0
        for lane in self.lanes:
            w, r = lane.jobs.counts()
            waiting, running = waiting + w, running + r
        return waiting, running

    def running_jobs(self) -> List[Job]:
        """The edits the replicas run now."""
        return [job for job in (lane.jobs.running for lane in self.lanes) if job is not None]

    def close(self) -> List[Job]:
        """Stop handing out edits; return those that were still waiting. Running ones go on until
        cancelled; then the replicas stop and Ray shuts down."""
        self._closed.set()
        waiting = [job for lane in self.lanes for job in lane.jobs.close()]
        for job in waiting:
            self._forget(job)
        return waiting

    def _lane(self, job: Job) -> Optional[_Lane]:
        with self._lock:
            return self._where.get(job)

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._where.pop(job, None)

    # -- worker side --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start Ray and the replicas in the background; `post` gets ready (all loaded) or load_failed."""
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        self._thread.join(timeout)

    def describe(self) -> Dict[str, Any]:
        """model, device, dtype and cache (summed) of the replicas, and `replicas`: one summary each."""
        infos = [lane.info for lane in self.lanes if "model" in lane.info]
        cache: Dict[str, int] = {}
        for info in infos:
            for name, value in info.get("cache", {}).items():
                cache[name] = cache.get(name, 0) + value

        def joined(name: str) -> str:
            return ", ".join(sorted({str(info[name]) for info in infos}))

        described: Dict[str, Any] = {"replicas": [lane.summary() for lane in self.lanes]}
        if infos:
            described.update(model=joined("model"), device=joined("device"), dtype=joined("dtype"), cache=cache)
        return described

    def _run(self) -> None:
        """Start Ray and the actors, run one lane thread per replica until closed, then stop Ray."""
        try:
            ray = _start_ray(self.cluster)
        except Exception as error:  # Ray could not start or the cluster cannot be reached: say why, stop
            self.post(WorkerEvent("load_failed", detail=f"cannot start Ray: {_one_line(error)}"))
            return
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            gpus = gpus if self.device != "cpu" else 0
            remote = ray.remote(
                num_cpus=0, num_gpus=1 if gpus else 0, max_concurrency=4, max_restarts=-1, max_task_retries=0
            )(ReplicaActor)
            log.info("starting %d engine replicas on Ray (%s)", len(self.lanes),
                     f"one GPU each, {gpus:g} in the cluster" if gpus else "without GPUs")
            if gpus and gpus < len(self.lanes):
                log.warning("WARNING: %d replicas but %g GPUs: the others wait until a GPU is free",
                            len(self.lanes), gpus)
            for lane in self.lanes:
                lane.actor = remote.remote(self.model, self.device, self.cache_bytes, self.faults,
                                           self.cluster.threads)
            lanes = [threading.Thread(target=self._serve, args=(lane, ray), name=f"dragon-replica-{lane.index}")
                     for lane in self.lanes]
            for thread in lanes:
                thread.start()
            for thread in lanes:
                thread.join()
        finally:
            for lane in self.lanes:
                if lane.actor is not None:
                    ray.kill(lane.actor, no_restart=True)
            ray.shutdown()
            log.info("Ray stopped")

    def _serve(self, lane: _Lane, ray: Any) -> None:
        """One replica's lane: wait for it to load, then feed it its queue's edits one at a time."""
        if not self._await_ready(lane, ray):
            if lane.restarts == 0:
                self.post(WorkerEvent("load_failed", detail=f"replica {lane.index}: {lane.info.get('error')}"))
            return
        with self._lock:
            self._ready += 1
            if self._ready == len(self.lanes):
                self.post(WorkerEvent("ready"))
        while True:
            job = lane.jobs.take()
            if job is None:
                return
            try:
                payload, outcome = self._edit(lane, job, ray)
            finally:
                lane.jobs.finished()
                self._forget(job)
            self.post(WorkerEvent("done", job, payload, outcome))
            if lane.state == "restarting" and not self._await_ready(lane, ray):
                self._fail_waiting(lane)
                return

    def _await_ready(self, lane: _Lane, ray: Any) -> bool:
        """Wait until the replica has loaded its model (again); False when it cannot, or on close."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        reference = lane.actor.describe.remote()
        while time.monotonic() < deadline and not self._closed.is_set():
            try:
                lane.info = ray.get(reference, timeout=1.0)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.ActorUnavailableError:  # between a crash and the restart
                time.sleep(_POLL_S)
                reference = lane.actor.describe.remote()
                continue
            except ray.exceptions.RayError as error:
                lane.state = "failed"
                lane.info = dict(lane.info, error=_cause(error))
                log.error("replica %d cannot load the model: %s", lane.index, lane.info["error"])
                return False
            lane.state = "ready"
            log.info("replica %d ready: %s on %s (%s)", lane.index, lane.info.get("model"),
                     lane.info.get("device"), lane.info.get("dtype"))
            return True
        if not self._closed.is_set():
            lane.state = "failed"
            lane.info = dict(lane.info, error=f"not ready within {READY_TIMEOUT_S:.0f} s")
        return False

    def _fail_waiting(self, lane: _Lane) -> None:
        """A replica that cannot come back: answer the edits waiting for it with `engine_lost` (later
        ones go to the other replicas); with none left, the server stops as if its model failed."""
        if all(other.state == "failed" for other in self.lanes):
            self.post(WorkerEvent("load_failed", detail="no engine replica could start again"))
        for job in lane.jobs.close():
            self._forget(job)
            text = f"engine replica {lane.index} stopped and could not start again; try again later"
            self.post(WorkerEvent("done", job, encode(Error(id=job.edit.id, code=ENGINE_LOST, message=text)),
                                  ENGINE_LOST))

    def _edit(self, lane: _Lane, job: Job, ray: Any) -> Tuple[bytes, str]:
        """Run `job` on the lane's replica, posting its progress; return its terminal message and outcome."""
        edit = job.edit
        token = uuid.uuid4().hex
        crash = edit.id in self.faults.crash_ids and edit.id not in self._crashed
        if crash:
            self._crashed.add(edit.id)
        log.info("request %s: on replica %d", edit.id, lane.index)
        stream = lane.actor.edit.remote(edit, time.monotonic() - job.received, token, crash)
        cancel_sent = False
        try:
            while True:
                if job.cancel_event.is_set() and not cancel_sent:
                    lane.actor.cancel.remote(token, job.cancel_reason)
                    cancel_sent = True
                ready, _ = ray.wait([stream], timeout=_POLL_S)
                if not ready:
                    continue
                kind, payload, extra = ray.get(next(stream))
                if kind == "progress":
                    self.post(WorkerEvent("progress", job, payload))
                    continue
                outcome, cache = extra
                lane.info = dict(lane.info, cache=cache)
                return payload, outcome
        except (ray.exceptions.RayError, StopIteration) as error:
            log.error("request %s: replica %d stopped during the edit: %s", edit.id, lane.index, _one_line(error))
        lane.state = "restarting"
        lane.restarts += 1
        text = (f"the engine running this edit stopped (replica {lane.index}: a crash, or killed for lack of "
                "memory); it is starting again: send the edit again")
        return encode(Error(id=edit.id, code=ENGINE_LOST, message=text)), ENGINE_LOST


def _start_ray(cluster: ClusterConfig) -> Any:
    """Import Ray and connect to the cluster at `cluster.address`, or start a private one on this
    machine (loopback only, no dashboard, no usage reporting); return the `ray` module."""
    local = _LOCAL_RAY_ENVIRONMENT if cluster.address is None else {}
    for name, value in {**_RAY_ENVIRONMENT, **local}.items():
        os.environ.setdefault(name, value)
    import ray

    if cluster.address is None:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING,
                 num_cpus=os.cpu_count() or 1)
    else:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
    return ray


def _cause(error: BaseException) -> str:
    """The first line of what made a Ray actor fail (its constructor's error when it has one)."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return text[-1][:500] if text else type(cause).__name__

