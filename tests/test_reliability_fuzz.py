"""Fuzzing (issue 6, part 1): random, mutated and hostile messages against the protocol decoder and
against a live server. Every case gets an `error` reply (or, over the size limit, a dropped connection),
never a crash, and a valid request right after it is served. The counts go to the session's figures."""

from __future__ import annotations

import struct
import time
import zlib
from typing import List, Optional

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import serverkit as kit
from campaign import record, scaled
from dragon_protocol import (
    ERROR_CODES,
    Accepted,
    Cancel,
    Cancelled,
    Edit,
    Error,
    Fetch,
    Hello,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Result,
    decode,
    encode,
)
from dragon_protocol.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_MESSAGE_VALUES, MAX_NESTING
from dragon_protocol.png import check_png
from dragon_protocol.shape import check_shape

MAX_MESSAGE_MB = 1
CLIENT_TYPES = ("hello", "edit", "cancel", "fetch", "ping")
TERMINAL = (Result, Cancelled, Error)


def small_edit(request_id: str = "fuzz-template") -> Edit:
    """A valid 2-step edit of a 32x32 picture: small, so that random mutations often hit its structure."""
    image = Image.new("RGB", (32, 32), (150, 150, 150))
    ImageDraw.Draw(image).ellipse((8, 8, 18, 18), fill=(200, 40, 40))
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).ellipse((8, 8, 18, 18), fill=255)
    return Edit(id=request_id, mode="move", image=kit.png(image), mask=kit.png(mask),
                arrows=[(13.0, 13.0, 20.0, 15.0)], steps=2)


TEMPLATE = small_edit()
TEMPLATES = [encode(m) for m in (TEMPLATE, Hello(client="fuzz"), Ping(nonce=3), Cancel(id="a1"), Fetch(id="a1"))]

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=12) | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def png_header(width: int, height: int, depth: int = 8, colour: int = 2, good_crc: bool = True) -> bytes:
    """A PNG signature and IHDR chunk promising `width` x `height` pixels, followed by a little zlib data."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    crc = zlib.crc32(body) if good_crc else zlib.crc32(body) ^ 1
    idat = zlib.compress(bytes(4096))
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", crc)
            + struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat)))


@st.composite
def mutated(draw, templates: List[bytes] = TEMPLATES) -> bytes:
    """A valid message with bytes flipped, cut off, inserted or deleted."""
    data = bytearray(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


def edit_with(**changes) -> bytes:
    body = TEMPLATE.to_wire()
    body.update(changes)
    return msgpack.packb(body, use_bin_type=True)


EDIT_FIELDS = sorted(set(TEMPLATE.to_wire()) - {"v", "type"})
wrong_types = st.builds(lambda name, value: edit_with(**{name: value}), st.sampled_from(EDIT_FIELDS), json_like)
giant_images = st.builds(
    lambda field, w, h, depth, colour, crc: edit_with(**{field: png_header(w, h, depth, colour, crc)}),
    st.sampled_from(["image", "mask", "reference", "reference_mask"]),
    st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1), st.sampled_from([1, 2, 4, 8, 16, 3, 0, 255]),
    st.sampled_from([0, 2, 3, 4, 6, 1, 7]), st.booleans(),
)
huge_fields = st.one_of(
    st.integers(1001, 20000).map(lambda n: edit_with(prompt="p" * n)),
    st.integers(65, 5000).map(lambda n: edit_with(id="i" * n)),
    st.integers(33, 2000).map(lambda n: edit_with(arrows=[[1.0, 2.0, 3.0, 4.0]] * n)),
    st.integers(65, 2000).map(lambda n: edit_with(settings={f"s{i}": 1.0 for i in range(n)})),
    st.integers(1001, 20000).map(lambda n: msgpack.packb({"v": 1, "type": "hello", "client": "c" * n})),
    st.integers(2**63, 2**64 - 1).map(lambda n: edit_with(seed=n)),
)
ext_types = st.builds(lambda code, data: edit_with(image=msgpack.ExtType(code, data)),
                      st.integers(0, 127), st.binary(max_size=32))
one_frame = st.one_of(
    st.binary(max_size=300), mutated(), wrong_types, giant_images, huge_fields, ext_types,
    st.builds(lambda d: msgpack.packb(d, use_bin_type=True),
              st.dictionaries(st.sampled_from(["v", "type", "id", "nonce", "client"]), json_like, max_size=4)),
)


# -- the decoder alone --------------------------------------------------------------------------------


def decode_or_error(data: bytes, accept=None) -> None:
    """Decode `data`; only a ProtocolError with a documented, one-line message may come out."""
    try:
        decode(data, accept=accept)
    except ProtocolError as error:
        assert error.code in ERROR_CODES and "\n" not in str(error)


@settings(max_examples=scaled(600), deadline=None)
@given(one_frame)
def test_decoder_survives_hostile_client_messages(data):
    record("fuzz: decoder cases (client messages)")
    decode_or_error(data, accept=CLIENT_TYPES)


SERVER_TEMPLATES = [
    encode(Result(id="r1", image=b"\x89PNG", mask=None, box=(1, 2, 3, 4), size=(8, 8), working_size=(8, 8),
                  timings={"total": 1.5}, unet_evaluations={"forward": 2})),
    encode(Progress(id="r1", stage="sampling", step=1, total=2)),
    encode(Error(id=None, code="bad_field", message="m")),
]


@settings(max_examples=scaled(300), deadline=None)
@given(mutated(SERVER_TEMPLATES))
def test_decoder_survives_mutated_server_messages(data):
    """Clients decode what a (possibly broken) server sends with the same checks."""
    record("fuzz: decoder cases (server messages)")
    decode_or_error(data)


@settings(max_examples=scaled(400), deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255),
       st.booleans())
def test_png_headers_are_judged_from_the_header_alone(width, height, depth, colour, good_crc):
    record("fuzz: PNG header cases")
    data = png_header(width, height, depth, colour, good_crc)
    started = time.perf_counter()
    try:
        info = check_png(data)
    except ProtocolError as error:
        assert error.code in ("bad_image", "image_too_large")
        if error.code == "image_too_large":
            assert width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_IMAGE_SIDE
    else:
        assert info.width * info.height <= MAX_IMAGE_PIXELS and max(info.width, info.height) <= MAX_IMAGE_SIDE
    assert time.perf_counter() - started < 0.5  # no pixel is ever decoded here (decoding a giant takes seconds)


# -- a live server --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("fuzz")), ["--queue", "2", "--max-message-mb", str(MAX_MESSAGE_MB)]
    )
    yield endpoint
    assert process.stop() == 0, process.console()


class Session:
    """One client connection that checks, after every hostile message, that the server still serves it."""

    def __init__(self, endpoint: str):
        self.client = kit.Client(endpoint)
        self.nonce = 10**9

    def sync(self, timeout: float = 15.0) -> List[object]:
        """Ping until the pong comes back (a dropped connection loses pings); return what came before."""
        before: List[object] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.nonce += 1
            self.client.send(Ping(nonce=self.nonce))
            stop = time.monotonic() + 1.0
            while time.monotonic() < stop:
                message = self.client.receive(max(stop - time.monotonic(), 0.001))
                if isinstance(message, Pong) and message.nonce == self.nonce:
                    return before
                if message is not None and not isinstance(message, Pong):
                    before.append(message)
        raise AssertionError(f"the server stopped answering pings; saw {before[-5:]}")

    def case(self, frames: List[bytes], expect_reply: bool = True) -> Optional[object]:
        """Send one hostile message; check its answer, end an accepted edit, then check the server serves."""
        self.client.send_raw(*frames)
        reply = self.client.receive(10.0) if expect_reply else None
        if expect_reply:
            assert reply is not None, "no answer to a hostile message"
            if isinstance(reply, Error):
                assert reply.code in ERROR_CODES and "\n" not in reply.message
            if isinstance(reply, Accepted):  # a mutation that is still a valid edit: it must end once
                self.client.send(Cancel(id=reply.id))
                ends = [self.client.expect(TERMINAL, 60, reply.id)]
                ends += [m for m in self.sync() if isinstance(m, TERMINAL) and m.id == reply.id
                         and not (isinstance(m, Error) and m.code == "unknown_request")]
                assert len(ends) == 1, ends
                return reply
        self.sync()
        return reply

    def good_edit(self) -> None:
        edit = small_edit(f"good-{self.nonce}")
        self.client.send(edit)
        assert isinstance(self.client.expect((Result, Error), 60, edit.id), Result)

    def close(self) -> None:
        self.client.close()


@pytest.fixture(scope="module")
def session(server):
    s = Session(server)
    yield s
    s.close()


@settings(max_examples=scaled(250), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(one_frame.map(lambda f: [f]), st.lists(st.binary(max_size=40), min_size=2, max_size=4)))
def test_live_server_answers_every_hostile_message_and_keeps_serving(session, frames):
    record("fuzz: live server cases")
    reply = session.case(frames)
    if isinstance(reply, Accepted):
        record("fuzz: live mutations accepted as edits (each ended once)")
    if session.nonce % 25 == 0:
        session.good_edit()


@settings(max_examples=scaled(5), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(MAX_MESSAGE_MB * 2**20 + 1, MAX_MESSAGE_MB * 2**20 + 4096))
def test_live_server_drops_oversized_messages_and_the_client_reconnects(session, size):
    record("fuzz: live oversized messages")
    session.case([bytes(size)], expect_reply=False)


def test_live_server_serves_a_good_edit_after_the_fuzzing(session):
    session.good_edit()


@settings(max_examples=scaled(300), deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=300)
    | st.binary(max_size=3000),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=8), inner, max_size=20),
    max_leaves=400,
))
def test_shape_check_counts_exactly_as_msgpack_builds(value):
    """The pre-unpacking check passes every value within the limits and refuses every other one."""
    record("fuzz: shape check cases")
    data = msgpack.packb(value, use_bin_type=True)
    values, depth = shape_of(value)
    if values <= MAX_MESSAGE_VALUES and depth <= MAX_NESTING:
        check_shape(data)
        check_shape(data[: len(data) // 2])  # truncated: left for the unpacker to refuse
    else:
        with pytest.raises(ProtocolError):
            check_shape(data)


def shape_of(value) -> tuple:
    """(values, nesting depth) of a Python value as msgpack holds it."""
    if isinstance(value, list):
        children = [shape_of(item) for item in value]
    elif isinstance(value, dict):
        children = [shape_of(item) for pair in value.items() for item in pair]
    else:
        return 1, 0
    return 1 + sum(c[0] for c in children), 1 + max((c[1] for c in children), default=0)
