"""The socket loop of `dragon serve`: a ROUTER socket in front, the worker thread behind a queue.

The loop only decodes, checks, answers and routes; it never waits on the model. The worker's
messages arrive on a thread-safe queue, and a byte on an inproc PAIR socket wakes the loop up.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from dragon_protocol import (
    Accepted,
    Cancel,
    Cancelled,
    Edit,
    Error,
    Fetch,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Welcome,
    decode,
    encode,
    limits,
)
from dragon_protocol.errors import (
    BAD_INPUT,
    BAD_MESSAGE,
    DUPLICATE_ID,
    MODEL_UNAVAILABLE,
    QUEUE_FULL,
    SHUTTING_DOWN,
    UNKNOWN_REQUEST,
)
from dragon_server import __version__
from dragon_server.engine.request import InputError, Mode
from dragon_server.engine.settings import MethodSettings
from dragon_server.serve import keys
from dragon_server.serve.cluster import ClusterConfig, Replicas
from dragon_server.serve.endpoints import is_ipv6
from dragon_server.serve.faults import Faults
from dragon_server.serve.jobs import Job, JobKey, JobQueue, QueueFull
from dragon_server.serve.lograte import SERVING_LOGGERS, RepeatLimiter
from dragon_server.serve.store import ResultStore
from dragon_server.serve.worker import Worker, WorkerEvent

log = logging.getLogger("dragon.server")

CLIENT_MESSAGES = (Hello.type, Edit.type, Cancel.type, Fetch.type, Ping.type)
HEARTBEAT_MS = 2000
HANDSHAKE_MS = 10000
"""A connection that has not completed its ZeroMQ handshake by then is closed (idle sockets hold none)."""
SHUTDOWN_WAIT_S = 30.0
"""How long a stop waits for the running edit to notice its cancel (the default of --stop-wait)."""
SHUTDOWN_LINGER_S = 2.0
"""How long a stop goes on sending terminal messages that met a full send queue, before closing."""
EXIT_ABANDONED = 3
"""Exit status when the running edit did not stop within the wait and was abandoned."""
SEND_QUEUE_MESSAGES = 200
"""Messages queued for one client that does not read them (ZeroMQ's send high-water mark); beyond it,
progress for that client is dropped and its terminal message is sent again later (see `_retry`)."""
_WAKE_ENDPOINT = "inproc://dragon-worker-wake"
_MONITOR_ENDPOINT = "inproc://dragon-front-monitor"
_LARGEST_DEFAULT_AREA = 768 * 768
"""The largest default working area of a model, assumed while the model loads."""


class BindError(Exception):
    """An endpoint could not be bound (in use, bad address, no permission)."""


@dataclass
class ServerConfig:
    """Everything `dragon serve` was asked for."""

    binds: List[str]
    model: str = "sd15"
    device: str = "auto"
    queue_size: int = 8
    client_share: Optional[int] = None
    """Most waiting places one client (key, or connection without keys) may hold; None: half the queue."""
    max_work: float = 300.0
    """Most work one edit may ask for, in megapixel-steps: steps x working area in megapixels."""
    keep_seconds: float = 3600.0
    keep_bytes: int = 512 * 1024 * 1024
    secret_key: Optional[str] = None
    """Server key pair (.key_secret file or a folder with server.key_secret); None: no CURVE."""
    allowed_clients: Optional[str] = None
    """Folder of allowed client public keys (*.key), used with secret_key."""
    max_message_bytes: int = limits.MAX_MESSAGE_BYTES
    """Largest message accepted; a client that sends a bigger one is disconnected by ZeroMQ."""
    cache_bytes: Optional[int] = None
    """Memory kept for reuse between edits of the same picture; None: the engine's default."""
    max_connections: int = 16
    """Most client connections open at once (idle and half-sent ones included); more are closed at once.
    With `max_message_bytes` it bounds the memory of half-sent messages (their product; see the command's
    --max-pending-mb, which sets it)."""
    stop_wait: float = SHUTDOWN_WAIT_S
    """Seconds a stop waits for the running edit to end before abandoning it (exit status 3)."""
    faults: Faults = field(default_factory=Faults)
    """Test-only faults to inject (from DRAGON_TEST_FAULTS, see faults.py); none in normal use."""
    cluster: Optional[ClusterConfig] = None
    """Run the engines as replicas on Ray (cluster.py); None: one engine in this process."""


@dataclass
class _EngineInfo:
    state: str = "loading"
    model: str = ""
    device: str = ""
    dtype: str = ""


class Server:
    """Binds, starts the worker, serves until a signal or a model failure; `run` returns the exit code.

    The loop talks to `jobs` (a JobQueue) and `worker` (a Worker thread holding the engine). With
    replicas (config.cluster) both are one cluster.Replicas, which has the same methods and runs the
    edits on Ray actors instead.
    """

    def __init__(self, config: ServerConfig):
        self.config = config
        share = config.client_share or -(-config.queue_size // 2)
        self.replicas = None
        if config.cluster is not None:
            self.replicas = Replicas(config.cluster, config.model, config.device, config.queue_size,
                                     config.cache_bytes, config.faults, self._post)
        self.jobs = self.replicas or JobQueue(config.queue_size, share)
        self.default_area = _LARGEST_DEFAULT_AREA
        """The model's working area for edits that give none (known once it has loaded)."""
        self.active: Dict[JobKey, Job] = {}
        self.undelivered: Dict[JobKey, bytes] = {}
        """Routes of terminal messages that met a full send queue, by job key; the store holds the bytes."""
        self.routes: Dict[bytes, Tuple[str, int]] = {}
        """With CURVE: the key and connection (file descriptor) that last spoke on each routing id, while
        that connection is open. Messages about a key's requests go to a routing id only while this says
        the key holds it, so a connection of another key that takes the routing id over gets none."""
        self.monitor: Optional[zmq.Socket] = None
        """Reports each connection opened and closed on the front socket (see `_watch_connections`)."""
        self.connections: Set[int] = set()
        """File descriptors of the open client connections, at most `max_connections`."""
        self.store = ResultStore(config.keep_seconds, config.keep_bytes)
        self.info = _EngineInfo(model=config.model)
        self.events: queue.Queue[WorkerEvent] = queue.Queue()
        self.stop_signal: Optional[int] = None
        self.exit_code = 0
        self.abandoned = False
        """True when the stop left the running edit behind: the caller must end the process at once."""
        self._wake_out: Optional[zmq.Socket] = None
        self._wake_lock = threading.Lock()
        """Held around the worker's use of `_wake_out` and its closing, which happen in different threads."""
        self.context = zmq.Context()
        self.auth = None
        self.front = self.context.socket(zmq.ROUTER)
        self.wake_in = self.context.socket(zmq.PAIR)
        self.curve = self.config.secret_key is not None
        self.log_limiter = RepeatLimiter().attach(*SERVING_LOGGERS)
        """Every kind of line (refused messages, accepted or cancelled edits, ...) is logged 10 times per 10 s,
        then summarised: a flood of messages writes no megabytes."""

    # -- set-up -----------------------------------------------------------------------------------

    def bind(self) -> None:
        """Set up security and limits on the front socket and bind every endpoint (raises BindError)."""
        front = self.front
        if self.curve:
            self.auth = keys.start_authenticator(self.context, self.config.allowed_clients)
            keys.secure_server_socket(front, self.config.secret_key)
        front.monitor(_MONITOR_ENDPOINT, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.monitor = self.context.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.RCVHWM, 0)  # no connection may go unnoticed
        self.monitor.connect(_MONITOR_ENDPOINT)
        front.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        front.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        front.setsockopt(zmq.SNDHWM, SEND_QUEUE_MESSAGES)
        front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Without keys a reconnecting client takes its routing id over at once; with keys a routing id in
        # use is never handed to another connection (it may belong to another key).
        front.setsockopt(zmq.ROUTER_HANDOVER, 0 if self.curve else 1)
        front.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
        front.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_MS * 5)
        front.setsockopt(zmq.LINGER, 1000)
        front.setsockopt(zmq.IPV6, any(is_ipv6(endpoint) for endpoint in self.config.binds))
        for endpoint in self.config.binds:
            try:
                front.bind(endpoint)
            except zmq.ZMQError as error:
                raise BindError(f"cannot listen on {endpoint}: {error.strerror}") from None
            log.info("listening on %s%s", endpoint, " (CURVE)" if self.curve else "")
        self.wake_in.bind(_WAKE_ENDPOINT)

    def _post(self, event: WorkerEvent) -> None:
        """Worker side: hand an event to the loop and wake it (only the worker thread posts)."""
        self.events.put(event)
        with self._wake_lock:
            if self._wake_out is None:  # the server has stopped (this edit was abandoned)
                return
            try:
                self._wake_out.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:  # the loop is already awake with a full pipe
                pass

    def run(self) -> int:
        """Serve until stopped; return the process exit code."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._wake_out = self.context.socket(zmq.PAIR)
        self._wake_out.connect(_WAKE_ENDPOINT)
        self.worker = self.replicas or Worker(self.config.model, self.config.device, self.jobs, self._post,
                                              self.config.cache_bytes, self.config.faults)
        self.worker.start()
        try:
            self._loop()
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        """First signal: stop cleanly (the loop sees the flag). Second: leave at once."""
        if self.stop_signal is not None:
            log.warning("second %s: stopping at once", signal.Signals(signum).name)
            os._exit(130)
        self.stop_signal = signum

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.wake_in, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while self.stop_signal is None and self.info.state != "failed":
            ready = dict(poller.poll(250))
            if self.wake_in in ready:
                self._drain_events()
            if self.monitor in ready:
                self._watch_connections()
            if self.front in ready:
                for _ in range(100):
                    try:
                        frames = self.front.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._receive(frames)
            self.store.expire()
            self._retry()
            self.log_limiter.flush()
        if self.stop_signal is not None:
            log.info("%s received: stopping", signal.Signals(self.stop_signal).name)

    def _drain_events(self) -> None:
        while True:
            try:
                self.wake_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            self._on_event(event)

    def _on_event(self, event: WorkerEvent) -> None:
        job = event.job
        if event.kind == "ready":
            engine = self.worker.describe()
            self.info = _EngineInfo("ready", engine["model"], engine["device"], engine["dtype"])
            self.default_area = engine.get("default_area", _LARGEST_DEFAULT_AREA)
        elif event.kind == "load_failed":
            log.error("cannot load model %s: %s", self.config.model, event.detail)
            self.info.state = "failed"
            self.exit_code = 1
        elif event.kind == "progress":
            if not self._send(job.route, job.owner, event.payload) and not job.unread:
                job.unread = True
                log.info("request %s: its client is not reading: progress is dropped until it reads", job.edit.id)
        elif event.kind == "done":
            self._finish(job, event.payload)
            log.info(
                "request %s: %s after %.1f s", job.edit.id, event.detail, time.monotonic() - job.received
            )

    def _finish(self, job: Job, payload: bytes) -> None:
        """Keep and send `job`'s terminal message; the job is no longer active."""
        self.active.pop(job.key, None)
        self.store.put(job.key, payload)
        self.undelivered.pop(job.key, None)
        if not self._send(job.route, job.owner, payload):
            self.undelivered[job.key] = job.route

    def _retry(self) -> None:
        """Send again the terminal messages whose client's queue was full, while the store keeps them.

        A client that reads slowly still gets its result; one that went away gets it by `fetch`.
        """
        for key, route in list(self.undelivered.items()):
            payload = self.store.get(key)
            if payload is None or self._send(route, key[0], payload):
                del self.undelivered[key]

    def _send(self, route: bytes, owner: str, payload: bytes) -> bool:
        """Send to the connection on `route` if it belongs to `owner`, without waiting.

        False when the client's send queue is full, or (with CURVE) when no open connection of `owner`'s
        key holds the routing id: both are worth trying again later.
        """
        if self.curve and not self._holds(route, owner):
            return False
        try:
            self.front.send_multipart([route, payload], zmq.NOBLOCK)
        except zmq.Again:  # the client is not reading: never wait for it
            return False
        except zmq.ZMQError as error:  # peer gone: its result stays in the store for `fetch`
            log.debug("cannot send to %s: %s", route.hex(), error)
        return True

    def _holds(self, route: bytes, owner: str) -> bool:
        """With CURVE: whether the connection now on `route` is one of `owner`'s key."""
        self._watch_connections()
        return self.routes.get(route, ("", -1))[0] == owner

    def _watch_connections(self) -> None:
        """Count the connections the monitor reports; close those over `max_connections`, and drop the
        routes of those that closed.

        ZeroMQ reports a closed connection before another connection can take its routing id, so with
        CURVE a routing id taken over is never trusted until the new connection speaks with its own key.
        """
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self.connections.discard(fd)
                for route in [route for route, (_, held) in self.routes.items() if held == fd]:
                    del self.routes[route]
            elif len(self.connections) >= self.config.max_connections:
                log.warning("connection refused: %d are open, the most this server takes (--max-connections, "
                            "--max-pending-mb)",
                            len(self.connections))
                _hang_up(fd)
            else:
                self.connections.add(fd)

    def _reply(self, route: bytes, owner: str, message: Message) -> None:
        self._send(route, owner, encode(message))

    # -- client messages --------------------------------------------------------------------------

    def _receive(self, frames: List[zmq.Frame]) -> None:
        route = frames[0].bytes
        peer = _peer(frames[-1])
        owner = ""
        if self.curve:
            owner = frames[-1].get("User-Id")
            self._watch_connections()
            self.routes[route] = (owner, frames[-1].get(zmq.SRCFD))
        if len(frames) != 2:
            self._reply(route, owner, Error(id=None, code=BAD_MESSAGE, message="send each message as one frame"))
            return
        try:
            message = decode(frames[1].bytes, accept=CLIENT_MESSAGES)
        except ProtocolError as error:
            log.warning("bad message from %s: %s: %s", peer, error.code, error)
            self._reply(route, owner, Error(id=error.request_id, code=error.code, message=str(error)))
            return
        if isinstance(message, Hello):
            self._reply(route, owner, self._welcome())
        elif isinstance(message, Ping):
            waiting, running = self.jobs.counts()
            self._reply(route, owner, Pong(nonce=message.nonce, queued=waiting, running=running))
        elif isinstance(message, Edit):
            self._on_edit(message, owner, route, peer)
        elif isinstance(message, Cancel):
            self._on_cancel(message, owner, route)
        elif isinstance(message, Fetch):
            self._on_fetch(message, owner, route)

    def _welcome(self) -> Welcome:
        waiting, running = self.jobs.counts()
        engine = self.worker.describe()
        return Welcome(
            protocol=limits.PROTOCOL_VERSION,
            server=f"dragon {__version__}",
            state=self.info.state,
            model=self.info.model,
            device=self.info.device,
            dtype=self.info.dtype,
            modes=list(limits.MODES),
            image_formats=["png"],
            limits=dict(limits.as_dict(), max_message_bytes=self.config.max_message_bytes),
            queued=waiting,
            running=running,
            queue_capacity=self.jobs.capacity,
            cache=engine.get("cache", {}),
            replicas=engine.get("replicas", []),
        )

    def _on_edit(self, edit: Edit, owner: str, route: bytes, peer: str) -> None:
        def refuse(code: str, text: str) -> None:
            log.warning("request %s from %s refused: %s", edit.id, peer, text)
            self._reply(route, owner, Error(id=edit.id, code=code, message=text))

        key = (owner, edit.id)
        if key in self.active:
            return refuse(DUPLICATE_ID, f"request {edit.id} is queued or running already")
        problem = self._too_much(edit)
        if problem:
            return refuse(BAD_INPUT, problem)
        job = Job(edit=edit, owner=owner, route=route, peer=peer, client=owner or route.hex())
        try:
            position = self.jobs.put(job)
        except QueueFull as error:
            return refuse(QUEUE_FULL, str(error))
        self.store.discard(key)
        self.active[key] = job
        log.info(
            "request %s from %s: %s, %d arrows, %d steps, %d KiB; %d ahead",
            edit.id, peer, edit.mode, len(edit.arrows), edit.steps, len(edit.image) // 1024, position,
        )
        self._reply(route, owner, Accepted(id=edit.id, position=position))

    def _too_much(self, edit: Edit) -> str:
        """Why `edit` is refused before it waits (settings out of range, more work than this server
        allows), or "" when it may be queued."""
        try:
            MethodSettings.for_mode(Mode(edit.mode), edit.settings, edit.guidance)
        except InputError as error:
            return str(error)
        area = edit.working_area or self.default_area
        work = edit.steps * area / 1e6
        if work > self.config.max_work:
            return (
                f"this edit asks for {edit.steps} steps on a {area / 1e6:.2f}-megapixel working area "
                f"({work:.0f} megapixel-steps); this server takes at most {self.config.max_work:g}: use fewer "
                "steps or a smaller working area"
            )
        return ""

    def _on_cancel(self, cancel: Cancel, owner: str, route: bytes) -> None:
        job = self.active.get((owner, cancel.id))
        if job is None:
            text = f"no request {cancel.id} to cancel"
            self._reply(route, owner, Error(id=cancel.id, code=UNKNOWN_REQUEST, message=text))
            return
        job.route = route
        if self.jobs.remove(job):
            log.info("request %s: cancelled while queued", cancel.id)
            self._finish(job, encode(Cancelled(id=cancel.id, reason="client")))
        else:
            log.info("request %s: cancelling", cancel.id)
            job.cancel("client")

    def _on_fetch(self, fetch: Fetch, owner: str, route: bytes) -> None:
        key = (owner, fetch.id)
        job = self.active.get(key)
        if job is not None:
            job.route = route
            self._reply(route, owner, Accepted(id=fetch.id, position=self.jobs.position(job)))
            return
        kept = self.store.get(key)
        if kept is None:
            text = f"no request {fetch.id} is queued, running or kept"
            self._reply(route, owner, Error(id=fetch.id, code=UNKNOWN_REQUEST, message=text))
        elif self._send(route, owner, kept) and self.undelivered.get(key) == route:
            del self.undelivered[key]  # delivered to that client now: not again by `_retry`

    # -- shutdown ---------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Cancel waiting and running work, tell its clients, wait for the worker, close the sockets."""
        failed = self.info.state == "failed"
        told = bool(self.active)  # clients are told their edits ended: they get the linger time to read it
        for job in self.jobs.close():
            if failed:
                message = Error(id=job.edit.id, code=MODEL_UNAVAILABLE, message="the model could not be loaded")
            else:
                message = Cancelled(id=job.edit.id, reason="shutdown")
            self._finish(job, encode(message))
        running = self.jobs.running_jobs()
        for job in running:
            job.cancel("shutdown")
        if running:
            deadline = time.monotonic() + self.config.stop_wait
            while self.worker.is_alive() and time.monotonic() < deadline:
                self.worker.join(0.1)
                self._drain_events()
                self._discard_incoming()
                self._retry()
            if self.worker.is_alive():
                log.error("request %s did not stop within %g s: stopping without it",
                          ", ".join(job.edit.id for job in running), self.config.stop_wait)
                self.abandoned = True
                self.exit_code = EXIT_ABANDONED
        self._drain_events()
        for job in list(self.active.values()):  # did not stop in time
            self._finish(job, encode(Error(id=job.edit.id, code=SHUTTING_DOWN, message="the server stopped")))
        # A terminal message may wait behind a full queue of progress, or not be queued yet (`undelivered`):
        # both go out as the client reads, until the linger time is over.
        deadline = time.monotonic() + SHUTDOWN_LINGER_S
        while (told or self.undelivered) and time.monotonic() < deadline:
            time.sleep(0.02)
            self._discard_incoming()
            self._retry()
        with self._wake_lock:
            self._wake_out.close(0)
            self._wake_out = None
        self.close(linger=max(0.0, deadline - time.monotonic()))
        log.info("stopped")

    def _discard_incoming(self) -> None:
        """While stopping: read and drop what clients still send. Closing a connection with bytes unread
        resets it, and a reset throws away what its client has not read yet (its `cancelled`)."""
        for _ in range(1000):
            try:
                self.front.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    def close(self, linger: Optional[float] = None) -> None:
        """Close the sockets, waiting up to `linger` seconds (None: the socket's 1 s) for queued messages to
        leave, and stop the authenticator."""
        self.wake_in.close(0)
        if self.monitor is not None:
            self.monitor.close(0)
        self.front.close(None if linger is None else int(linger * 1000))
        if self.auth is not None:
            self.auth.stop()
        self.context.term()
        self.log_limiter.detach()


def _hang_up(fd: int) -> None:
    """End the TCP connection on `fd`, which ZeroMQ owns: it sees the end and closes the descriptor."""
    try:
        connection = socket.socket(fileno=fd)
    except OSError:  # gone already, or not a socket (ipc connections are refused the same way)
        return
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        connection.detach()


def _peer(frame: zmq.Frame) -> str:
    """The client's address, for the log."""
    try:
        return frame.get("Peer-Address")
    except zmq.ZMQError:
        return "?"
