"""The plugin's connection to `dragon serve`: a ZeroMQ DEALER socket that never blocks.

Krita's GUI thread calls `poll()` from a timer; it reads whatever has arrived and returns at once.
Liveness is tracked here too: no `welcome` soon after connecting means the server is not there; once
connected, every second of silence is answered with a `ping` (its `pong` carries the server's queue, so
the status line stays live), plus a `fetch` of each outstanding edit (a restarted server answers
`unknown_request`), and `timeout` seconds of silence mean the server is gone.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Callable, List, Optional, Tuple, Union

import zmq

from dragon_protocol import Cancel, Edit, Fetch, Hello, Message, Ping, ProtocolError, Welcome, decode, encode

from .errors import PluginError

CLIENT_NAME = "dragon_krita"
SERVER_TYPES = ("welcome", "accepted", "progress", "result", "error", "cancelled", "pong")

Event = Union[Message, PluginError]
"""What `poll` hands over: a server message, or a connection problem worded for the painter."""


def load_curve_keys(server_key: str, client_key: str) -> Tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) from key files made by `dragon keys`.

    A server with keys only lets in clients whose public key it knows, so both files are needed.
    """
    import zmq.auth

    if not server_key or not client_key:
        raise PluginError("bad_key", detail="(give both the server's .key file and your .key_secret file)")
    loaded = []
    for path in (server_key, client_key):
        try:
            loaded.append(zmq.auth.load_certificate(path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise PluginError("bad_key", detail=f"{path} ({exc})") from None
    (server_public, _), (public, secret) = loaded
    if not secret:
        raise PluginError("bad_key", detail=f"{client_key} (no secret key in it; pick the .key_secret file)")
    return server_public, public, secret


def check_address(address: str) -> str:
    """The address trimmed, or PluginError(bad_address) when it is not tcp://HOST:PORT or ipc://PATH."""
    address = address.strip()
    if address.startswith("ipc://") and len(address) > 6:
        return address
    if address.startswith("tcp://"):
        host, _, port = address[6:].rpartition(":")
        ipv6_ok = ":" not in host or host.startswith("[") and host.endswith("]")  # IPv6 in brackets
        if host and ipv6_ok and port.isdigit() and 0 < int(port) < 65536:
            return address
    raise PluginError("bad_address", detail=repr(address))


class Client:
    """One connection to the server. Call `poll()` often; it returns the events that arrived."""

    def __init__(
        self,
        address: str,
        server_key: str = "",
        client_key: str = "",
        timeout: float = 5.0,
        ping_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        context: Optional[zmq.Context] = None,
    ):
        self.address = check_address(address)
        self.keys = load_curve_keys(server_key, client_key) if server_key or client_key else None
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.clock = clock
        self.context = context or zmq.Context.instance()
        self.socket: Optional[zmq.Socket] = None
        self.welcome: Optional[Welcome] = None
        self.outstanding: set = set()
        self._nonces = itertools.count(1)
        self._heard = 0.0
        self._pinged = 0.0
        self._asked: Optional[float] = None
        """When the server was first asked something (hello, ping) since it was last heard."""
        self._fetched = False

    @property
    def connected(self) -> bool:
        """True once the server has answered `hello`, until the connection is closed or lost."""
        return self.socket is not None and self.welcome is not None

    def connect(self) -> None:
        """Open the socket and say hello; the `welcome` (or a failure) arrives through `poll`."""
        self.close()
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTING_ID, uuid.uuid4().hex.encode())  # survives reconnects underneath
        socket.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        # Never stop reading the link when Krita's GUI thread is frozen: a receive queue that fills and then
        # meets a reconnect aborts the whole process inside libzmq (its issue 3937). What an edit sends is
        # bounded by its steps and the preview rate (one a second), so the queue stays small.
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.IPV6, self.address.startswith("tcp://["))
        if self.keys:
            socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = self.keys
        socket.connect(self.address)
        self.socket = socket
        self._heard = self._pinged = self._asked = self.clock()
        self._fetched = False
        self.hello()

    def hello(self) -> None:
        """Say hello; the server answers with a `welcome` (its model, state and queue)."""
        self._send(Hello(client=CLIENT_NAME))

    def close(self) -> None:
        """Drop the socket and forget outstanding edits; safe to call more than once."""
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = None
        self.welcome = None
        self.outstanding.clear()

    def submit(self, edit: Edit) -> None:
        """Queue an edit on the server; its replies carry `edit.id`."""
        if not self.connected:
            raise PluginError("not_connected")
        self.outstanding.add(edit.id)
        self._send(edit)

    def cancel(self, request_id: str) -> None:
        """Ask the server to stop an edit; a `cancelled` (or its result, if too late) follows."""
        if self.connected and request_id in self.outstanding:
            self._send(Cancel(id=request_id))

    def _send(self, message: Message) -> None:
        assert self.socket is not None
        try:
            self.socket.send(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            raise PluginError("timeout", detail=self.address) from None

    def poll(self) -> List[Event]:
        """Everything that has arrived, without waiting; connection problems come as PluginErrors."""
        if self.socket is None:
            return []
        events: List[Event] = []
        while self.socket is not None:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._heard = self.clock()
            self._asked = None
            self._fetched = False
            events.extend(self._receive(frames[-1]))
        events.extend(self._check_liveness())
        return events

    def _receive(self, data: bytes) -> List[Event]:
        try:
            message = decode(data, accept=SERVER_TYPES)
        except ProtocolError as exc:
            if exc.code == "unsupported_version":
                self.close()
                return [PluginError("version_mismatch", detail=str(exc))]
            return [PluginError("bad_reply", detail=str(exc))]
        if isinstance(message, Welcome):
            self.welcome = message
        elif message.type in ("result", "cancelled", "error"):
            self.outstanding.discard(getattr(message, "id", None))
        return [message]

    def _check_liveness(self) -> List[Event]:
        """The server is gone when it has been silent for `timeout` seconds while being asked: a long
        pause in polling (a busy GUI thread) first sends a ping and gives it time to answer."""
        now = self.clock()
        silent = now - self._heard
        asked_long_ago = self._asked is not None and now - self._asked >= self.timeout - self.ping_interval
        if silent > self.timeout and asked_long_ago:
            code = "timeout" if self.welcome is not None else "cannot_connect"
            self.close()
            return [PluginError(code, detail=self.address)]
        if self.welcome is None or silent < self.ping_interval or now - self._pinged < self.ping_interval:
            return []
        self._pinged = now
        if self._asked is None:
            self._asked = now
        try:
            self._send(Ping(nonce=next(self._nonces)))
            if not self._fetched:
                self._fetched = True
                for request_id in sorted(self.outstanding):  # a restarted server answers unknown_request
                    self._send(Fetch(id=request_id))
        except PluginError:  # the send queue is full: the server is not reading, the timeout will tell
            pass
        return []
