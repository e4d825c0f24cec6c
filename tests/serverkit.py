"""Helpers for the server tests: start a real `dragon serve` process, talk to it over real sockets."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from typing import List, Optional, Tuple

import msgpack
import zmq
from PIL import Image, ImageDraw

from dragon_protocol import Edit, Hello, Message, Welcome, decode, encode

DRAGON = [sys.executable, "-m", "dragon_server.cli"]
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of an 8-bit RGB PNG of the given size, and no pixels."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def scene(size: int = 128) -> Tuple[Image.Image, Image.Image]:
    """A two-colour picture with a disc, and the disc's mask."""
    image = Image.new("RGB", (size, size), (190, 170, 150))
    ImageDraw.Draw(image).rectangle((0, size * 3 // 4, size, size), fill=(60, 120, 60))
    ImageDraw.Draw(image).ellipse((30, 40, 60, 70), fill=(200, 50, 50))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse((28, 38, 62, 72), fill=255)
    return image, mask


def move_edit(request_id: Optional[str] = None, steps: int = 6, seed: int = 0, **fields) -> Edit:
    """A small valid `move` edit of the test scene."""
    image, mask = scene()
    values = dict(image=png(image), mask=png(mask), arrows=[(45.0, 55.0, 70.0, 60.0)], steps=steps, seed=seed)
    values.update(fields)
    return Edit(id=request_id or uuid.uuid4().hex, mode="move", **values)


class ServerProcess:
    """`dragon serve` in a subprocess, its console captured to a file."""

    def __init__(self, args: List[str], log_path: str, env: Optional[dict] = None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        # one math thread: on a small shared CI machine, OpenMP spinning in several processes is very slow
        env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
        self.process = subprocess.Popen(
            DRAGON + ["serve", *args], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def console(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()


def start_server(
    tmp_dir: str, extra: List[str], endpoint: Optional[str] = None, env: Optional[dict] = None,
    timeout: float = START_TIMEOUT, **client_keys
) -> Tuple[ServerProcess, str]:
    """Start a tiny-model server (`env`: more environment variables) and wait up to `timeout` seconds
    until it says it is ready; return it and its endpoint."""
    endpoint = endpoint or f"tcp://127.0.0.1:{free_port()}"
    server = ServerProcess(
        ["--model", "tiny", "--device", "cpu", "--bind", endpoint, *extra], os.path.join(tmp_dir, "server.log"), env
    )
    deadline = time.monotonic() + timeout
    with Client(endpoint, **client_keys) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.console()}")
            client.send(Hello())
            reply = client.receive(1.0)
            if isinstance(reply, Welcome) and reply.state == "ready":
                return server, endpoint
    server.stop()
    raise RuntimeError(f"server not ready in {timeout} s:\n{server.console()}")


class Client:
    """A raw DEALER socket speaking the protocol, for tests that need to misbehave too."""

    def __init__(
        self, endpoint: str, server_key: Optional[bytes] = None, client_pair: Optional[Tuple[bytes, bytes]] = None,
        routing_id: Optional[bytes] = None,
    ):
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.socket.setsockopt(zmq.ROUTING_ID, routing_id)
        self.socket.setsockopt(zmq.IPV6, endpoint.startswith("tcp://["))
        if server_key is not None:
            self.socket.curve_serverkey = server_key
            self.socket.curve_publickey, self.socket.curve_secretkey = client_pair
        self.socket.connect(endpoint)

    def send(self, message: Message) -> None:
        self.socket.send(encode(message))

    def send_raw(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def send_map(self, body: dict) -> None:
        self.socket.send(msgpack.packb(body, use_bin_type=True))

    def receive(self, timeout: float = 10.0) -> Optional[Message]:
        if not self.socket.poll(int(timeout * 1000)):
            return None
        return decode(self.socket.recv())

    def expect(self, kinds: Tuple[type, ...], timeout: float = 30.0, request_id: Optional[str] = None) -> Message:
        """The next message of one of `kinds` (about `request_id` if given), skipping progress and others."""
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                break
            if isinstance(message, kinds) and (request_id is None or getattr(message, "id", None) == request_id):
                return message
            seen.append(type(message).__name__)
        raise AssertionError(f"no {[k.__name__ for k in kinds]} within {timeout} s; saw {seen[-5:]}")

    def close(self) -> None:
        self.socket.close(0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
