"""A client's connection to a dragon server: one DEALER socket, protocol messages in and out.

It imports neither torch nor the engine, so `dragon status` and tools stay quick to start.
"""

from __future__ import annotations

import time
import uuid
from typing import Optional, Type

import zmq

from dragon_protocol import Error, Hello, Message, ProtocolError, Welcome, decode, encode
from dragon_server.serve import keys
from dragon_server.serve.endpoints import EndpointError, check_endpoint, is_ipv6

DEFAULT_SERVER = "tcp://127.0.0.1:5555"
SERVER_MESSAGES = ("welcome", "accepted", "progress", "result", "error", "cancelled", "pong")


class LinkError(Exception):
    """The server cannot be reached or answered nonsense; `code` is unreachable or bad_reply."""

    def __init__(self, message: str, code: str = "unreachable"):
        super().__init__(message)
        self.code = code


class ServerLink:
    """A connection to `server`; with both key files the link is encrypted and authenticated (CURVE).

    The socket has a fixed random routing id, so that if ZeroMQ reconnects underneath (a network
    hiccup), the server's messages for this client keep arriving.
    """

    def __init__(self, server: str, server_key: Optional[str] = None, client_key: Optional[str] = None):
        if (server_key is None) != (client_key is None):
            raise LinkError("give both --server-key and --client-key, or neither", code="bad_keys")
        try:
            check_endpoint(server)
        except EndpointError as error:
            raise LinkError(str(error), code="bad_address") from None
        self.server = server
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.ROUTING_ID, uuid.uuid4().hex.encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # a full receive queue and a reconnect abort libzmq (issue 3937)
        self.socket.setsockopt(zmq.IPV6, is_ipv6(server))
        try:
            if server_key is not None:
                keys.secure_client_socket(self.socket, server_key, client_key)
            self.socket.connect(server)
        except keys.KeyFileError as error:
            self.close()
            raise LinkError(str(error), code="bad_keys") from None
        except zmq.ZMQError as error:
            self.close()
            raise LinkError(f"cannot connect to {server}: {error}") from None

    def send(self, message: Message) -> bool:
        """Queue `message` for the server without waiting; False when it cannot be queued now (no
        connection: the server is not there or refused the handshake). Callers find out from the silence."""
        try:
            self.socket.send(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def receive(self, timeout: float) -> Optional[Message]:
        """The next message from the server, or None after `timeout` seconds without one."""
        if not self.socket.poll(int(max(timeout, 0) * 1000)):
            return None
        data = self.socket.recv()
        try:
            return decode(data, accept=SERVER_MESSAGES)
        except ProtocolError as error:
            raise LinkError(f"the server at {self.server} sent a bad message: {error}", "bad_reply") from None

    def ask(self, message: Message, answer: Type[Message], timeout: float) -> Message:
        """Send `message` and return the first reply of type `answer` (or an `error` about it)."""
        self.send(message)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.receive(deadline - time.monotonic())
            if reply is None:
                raise LinkError(no_answer(self.server, timeout))
            if isinstance(reply, (answer, Error)):
                return reply

    def hello(self, timeout: float = 10.0) -> Welcome:
        """The server's `welcome`; raises LinkError when it does not answer."""
        reply = self.ask(Hello(client="dragon"), Welcome, timeout)
        if isinstance(reply, Error):
            raise LinkError(f"the server refused hello: {reply.code}: {reply.message}", "bad_reply")
        return reply

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> ServerLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def no_answer(server: str, timeout: float) -> str:
    """The one-line message for a server that stays silent."""
    return (
        f"no answer from {server} within {timeout:g} s: is `dragon serve` running there, "
        "and does it need --server-key/--client-key?"
    )

