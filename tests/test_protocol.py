"""The wire protocol package: round trips, every validation rule, the PNG header reader, fuzzing."""

from __future__ import annotations

import ast
import io
import pathlib
import struct
import subprocess
import sys
import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dragon_protocol import (
    ERROR_CODES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
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
    Welcome,
    decode,
    encode,
    limits,
    read_png_header,
)

PROTOCOL_DIR = pathlib.Path(__file__).resolve().parent.parent / "protocol"


def png(mode: str = "RGB", size=(32, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def header(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def edit_map(**changes) -> dict:
    body = Edit(id="r1", mode="move", image=png(), mask=png("L"), arrows=[(1.0, 2.0, 3.0, 4.0)]).to_wire()
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def error_of(body) -> ProtocolError:
    data = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert "\n" not in str(caught.value) and caught.value.code in ERROR_CODES
    return caught.value


EXAMPLES = [
    Hello(client="krita 5.2"),
    Welcome(1, "dragon 0.1.0", "ready", "sd15", "cuda", "float16", ["move"], ["png"], limits.as_dict(), 1, 1, 8,
            {"entries": 1, "bytes": 2048, "max_bytes": 4096, "hits": 3, "misses": 1}),
    Edit(id="a.b:c-d_1", mode="paste", image=png(), reference=png(), reference_mask=png("L"),
         arrows=[(1.5, 2.0, 3.0, 4.0)], prompt="a cat", steps=30, seed=2**40, strength=1.5, scale=2.0, context=0.5,
         working_area=512 * 512, settings={"w_edit": 3.0, "drag_patch": 2}, preview_interval=0.5, preview_size=128),
    Accepted(id="x", position=3),
    Progress(id="x", stage="sampling", step=4, total=50, preview=png(), preview_box=(10, 20, 300, 200)),
    Progress(id="x", stage="inversion", step=1, total=50),
    Result(id="x", image=png(), mask=png("L"), box=(1, 2, 32, 24), size=(640, 480), working_size=(512, 384),
           timings={"total": 1.5}, unet_evaluations={"forward": 100}, warnings=["the prompt is longer..."]),
    Result(id="x", image=None, mask=None, box=(0, 0, 0, 0), size=(64, 64), working_size=(64, 64)),
    Error(id=None, code="bad_message", message="the message is not valid msgpack"),
    Error(id="x", code="queue_full", message="the queue is full"),
    Cancelled(id="x", reason="shutdown"),
    Cancel(id="x"),
    Fetch(id="x"),
    Ping(nonce=2**62),
    Pong(nonce=1, queued=0, running=1),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.type)
def test_every_message_round_trips(message):
    data = encode(message)
    assert msgpack.unpackb(data)["v"] == PROTOCOL_VERSION
    back = decode(data)
    assert type(back) is type(message)
    assert encode(back) == data


def test_every_message_type_has_an_example():
    assert {m.type for m in EXAMPLES} == set(MESSAGE_TYPES)


def test_defaults_of_an_edit_and_unknown_fields_ignored():
    body = {"v": 1, "type": "edit", "id": "r", "mode": "drag", "image": png(), "future_field": [1, 2]}
    edit = decode(msgpack.packb(body))
    assert (edit.steps, edit.seed, edit.strength, edit.scale, edit.context) == (50, 0, 1.0, 1.0, 0.25)
    assert edit.mask is None and edit.arrows == [] and edit.settings == {} and edit.preview_interval == 0.0
    assert edit.guidance == "release"
    assert decode(msgpack.packb({**body, "guidance": "paper"})).guidance == "paper"


@pytest.mark.parametrize(
    "data, code",
    [
        (b"", "bad_message"),
        (b"\xc1", "bad_message"),
        (msgpack.packb({"v": 1, "type": "ping"}) + b"\x00", "bad_message"),
        (msgpack.packb([1, "ping"]), "bad_message"),
        (msgpack.packb({"type": "ping"}), "bad_message"),
        (msgpack.packb({"v": True, "type": "ping"}), "bad_message"),
        (msgpack.packb({"v": 1}), "bad_message"),
        (msgpack.packb({1: 1}), "bad_message"),
        (msgpack.packb({"v": 0, "type": "ping"}), "unsupported_version"),
        (msgpack.packb({"v": 2, "type": "ping"}), "unsupported_version"),
        (msgpack.packb({"v": 1, "type": "shutdown"}), "unknown_type"),
    ],
)
def test_envelope_errors(data, code):
    assert error_of(data).code == code


def test_accept_limits_the_types():
    with pytest.raises(ProtocolError) as caught:
        decode(encode(Pong(nonce=1, queued=0, running=0)), accept=("hello", "ping"))
    assert caught.value.code == "unknown_type"


@pytest.mark.parametrize(
    "changes, code, words",
    [
        (dict(id=...), "bad_field", "edit.id: is missing"),
        (dict(id="has space"), "bad_field", "edit.id"),
        (dict(id="x" * 65), "bad_field", "edit.id"),
        (dict(mode="warp"), "bad_field", "edit.mode"),
        (dict(image=...), "bad_field", "edit.image: is missing"),
        (dict(image="text"), "bad_field", "binary"),
        (dict(image=b"GIF89a" + bytes(40)), "bad_image", "not a PNG"),
        (dict(image=header(100, 100)[:20]), "bad_image", "truncated"),
        (dict(image=header(100, 100)[:-1] + b"\x00"), "bad_image", "CRC"),
        (dict(image=header(100, 100, depth=3)), "bad_image", "invalid header"),
        (dict(image=header(0, 100)), "bad_image", "zero"),
        (dict(image=header(9000, 9000), mask=None), "image_too_large", "64000000"),
        (dict(image=header(20000, 10), mask=None), "image_too_large", "per side"),
        (dict(mask=png("L", (8, 8))), "bad_image", "edit.mask"),
        (dict(reference_mask=png("L")), "bad_field", "without a reference"),
        (dict(reference=png(), reference_mask=png("L", (3, 3))), "bad_image", "reference_mask"),
        (dict(reference=b"nope"), "bad_image", "edit.reference"),
        (dict(arrows=[[1, 2, 3]]), "bad_field", "edit.arrows"),
        (dict(arrows=[[1, 2, 3, float("nan")]]), "bad_field", "finite"),
        (dict(arrows=[[1, 2, 3, 1e9]]), "bad_field", "within"),
        (dict(arrows=[[1, 2, 3, True]]), "bad_field", "finite"),
        (dict(arrows=[[0, 0, 1, 1]] * 33), "bad_field", "more than 32"),
        (dict(steps=1), "bad_field", "edit.steps"),
        (dict(steps=2.5), "bad_field", "integer"),
        (dict(seed=-1), "bad_field", "edit.seed"),
        (dict(strength=float("inf")), "bad_field", "finite"),
        (dict(scale=9), "bad_field", "edit.scale"),
        (dict(context="wide"), "bad_field", "edit.context"),
        (dict(working_area=10), "bad_field", "edit.working_area"),
        (dict(prompt="p" * 1001), "bad_field", "longer"),
        (dict(settings={"w_edit": "high"}), "bad_field", "edit.settings"),
        (dict(settings={f"s{i}": 1 for i in range(65)}), "bad_field", "more than 64"),
        (dict(preview_size=4), "bad_field", "edit.preview_size"),
        (dict(preview_interval=-1), "bad_field", "edit.preview_interval"),
        (dict(guidance="fast"), "bad_field", "edit.guidance: must be one of release, paper"),
        (dict(guidance=1), "bad_field", "edit.guidance"),
    ],
)
def test_edit_validation(changes, code, words):
    error = error_of(edit_map(**changes))
    assert error.code == code and words in str(error)
    if "id" not in changes:
        assert error.request_id == "r1"  # the reply can name the request


@pytest.mark.parametrize(
    "body",
    [
        {"v": 1, "type": "cancel"},
        {"v": 1, "type": "fetch", "id": 5},
        {"v": 1, "type": "ping", "nonce": -1},
        {"v": 1, "type": "hello", "client": b"bytes"},
    ],
)
def test_small_messages_are_checked_too(body):
    assert error_of(body).code == "bad_field"


@pytest.mark.parametrize(
    "mode, depth, colour", [("1", 1, 0), ("L", 8, 0), ("LA", 8, 4), ("P", 1, 3), ("RGB", 8, 2), ("RGBA", 8, 6),
                            ("I;16", 16, 0)],
)
def test_png_header_reader_matches_pillow(mode, depth, colour):
    info = read_png_header(png(mode, (33, 17)))
    assert (info.width, info.height, info.bit_depth, info.colour_type) == (33, 17, depth, colour)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_protocol_errors(data):
    try:
        decode(data)
    except ProtocolError as error:
        assert error.code in ERROR_CODES


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.dictionaries(
    st.sampled_from(["id", "mode", "image", "mask", "arrows", "steps", "nonce", "client", "settings", "box",
                     "reference", "reference_mask", "code", "message", "limits", "position", "x"]),
    json_like, max_size=6,
))
def test_random_fields_never_escape_as_anything_but_protocol_errors(kind, fields):
    body = dict(fields, v=1, type=kind)
    try:
        decode(msgpack.packb(body, use_bin_type=True))
    except ProtocolError as error:
        assert error.code in ERROR_CODES and "\n" not in str(error)


def test_package_needs_nothing_but_msgpack():
    code = (
        "import sys, dragon_protocol; "
        "heavy = {'numpy', 'torch', 'PIL', 'zmq', 'dragon_server'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("path", sorted((PROTOCOL_DIR / "dragon_protocol").glob("*.py")), ids=lambda p: p.name)
def test_package_parses_as_python_3_8(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_protocol_md_documents_every_message_error_code_and_limit():
    text = (PROTOCOL_DIR / "PROTOCOL.md").read_text()
    for kind in MESSAGE_TYPES:
        assert f"### `{kind}`" in text, kind
    for code in ERROR_CODES:
        assert f"`{code}`" in text, code
    for name in limits.as_dict():
        assert f"`{name}`" in text, name
    for cls in MESSAGE_TYPES.values():
        for field in cls.__dataclass_fields__:
            if field != "type":
                assert f"`{field}`" in text, (cls.type, field)
