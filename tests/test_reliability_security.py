"""Security (issue 6, part 4), beyond test_server_security.py (keys, plain clients, unsafe options): every
kind of public address needs keys, decompression bombs are refused or harmless, every field limit holds
at its edge, and nothing received reaches pickle, eval, or the file system."""

from __future__ import annotations

import ast
import pathlib
import pickle
import struct
import time
import zlib

import msgpack
import pytest

import serverkit as kit
from campaign import peak_rss_kib, record
from dragon_protocol import Accepted, Edit, Error, Hello, ProtocolError, Result, Welcome, decode, limits
from dragon_server.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECEIVING_CODE = sorted((ROOT / "server" / "dragon_server" / "serve").glob("*.py")) + sorted(
    (ROOT / "protocol" / "dragon_protocol").glob("*.py")
)
"""The code that handles what clients send: the socket loop, the worker's side of it, and the protocol."""


# -- remote access needs keys -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "[::]", "[::ffff:0.0.0.0]", "192.168.1.10", "10.0.0.1",
                                  "gpu-box.example.org", "eth0", "lo", "127.0.0.1;192.168.1.10"])
def test_every_non_loopback_address_needs_keys(capsys, host):
    code = main(["serve", "--model", "tiny", "--bind", f"tcp://{host}:{kit.free_port()}"])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to listen" in err and "--keys" in err
    record("security: public addresses refused without keys")


# -- every limit at its edge ------------------------------------------------------------------------


def edit_body(**changes) -> dict:
    body = kit.move_edit("limits").to_wire()
    body.update(changes)
    return body


def refused(body: dict) -> str:
    try:
        decode(msgpack.packb(body, use_bin_type=True), accept=("hello", "edit"))
    except ProtocolError as error:
        return error.code
    return ""


RANGES = {name: value for name, value in limits.as_dict().items() if isinstance(value, list)}


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_range_holds_at_both_edges(name):
    low, high = RANGES[name]
    integer = isinstance(low, int) and isinstance(high, int)
    step = 1 if integer else 1e-9 * max(1.0, abs(high))
    for value in (low, high):
        if name == "scale" and value == 0:
            continue  # in range for the protocol; the engine refuses it (bad_input)
        assert refused(edit_body(**{name: value})) == "", (name, value)
    assert refused(edit_body(**{name: low - step})) == "bad_field", name
    assert refused(edit_body(**{name: high + (step if integer else max(step, 1e-6 * abs(high)))})) == "bad_field"
    record("security: range edges checked", 4)


@pytest.mark.parametrize(
    "field, at_limit, over_limit",
    [
        ("arrows", [[1.0, 2.0, 3.0, 4.0]] * limits.MAX_ARROWS, [[1.0, 2.0, 3.0, 4.0]] * (limits.MAX_ARROWS + 1)),
        ("id", "i" * limits.MAX_ID_LENGTH, "i" * (limits.MAX_ID_LENGTH + 1)),
        ("prompt", "p" * limits.MAX_TEXT_LENGTH, "p" * (limits.MAX_TEXT_LENGTH + 1)),
        ("settings", {f"s{i}": 1.0 for i in range(limits.MAX_SETTINGS)},
         {f"s{i}": 1.0 for i in range(limits.MAX_SETTINGS + 1)}),
        ("arrows", [[limits.MAX_COORDINATE] * 4], [[limits.MAX_COORDINATE * 1.0001] * 4]),
    ],
    ids=["arrows", "id", "prompt", "settings", "coordinates"],
)
def test_every_size_limit_holds_at_its_edge(field, at_limit, over_limit):
    assert refused(edit_body(**{field: at_limit})) == ""
    assert refused(edit_body(**{field: over_limit})) == "bad_field"
    record("security: size limits checked", 2)


def test_hello_client_name_limit():
    assert refused({"v": 1, "type": "hello", "client": "c" * limits.MAX_TEXT_LENGTH}) == ""
    assert refused({"v": 1, "type": "hello", "client": "c" * (limits.MAX_TEXT_LENGTH + 1)}) == "bad_field"


@pytest.mark.parametrize("side", [limits.MAX_IMAGE_SIDE + 1, 8001])
def test_image_pixel_and_side_limits_come_from_the_header(side):
    """8001 x 8001 is within the side limit but over the pixel limit; 16385 x 1 is over the side limit."""
    width, height = (side, side) if side == 8001 else (side, 1)
    assert refused(edit_body(image=bomb_png(width, height), mask=None)) == "image_too_large"


# -- decompression bombs ----------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, inflated: int = 1 << 20, extra: bytes = b"") -> bytes:
    """An RGB PNG promising `width` x `height` pixels whose IDAT inflates to `inflated` zero bytes."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    data = b"".join(compressor.compress(block[: min(len(block), inflated - i)]) for i in range(0, inflated, len(block)))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def icc_bomb() -> bytes:
    """A colour profile chunk that inflates to 256 MiB, in a 128x128 picture."""
    profile = zlib.compress(bytes(256 << 20), 9)
    return chunk(b"iCCP", b"bomb\x00\x00" + profile)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, endpoint = kit.start_server(str(tmp_path_factory.mktemp("security")), [])
    yield process, endpoint
    assert process.stop() == 0, process.console()


@pytest.mark.parametrize(
    "name, image, immediate",
    [
        ("giant header, tiny data", lambda: bomb_png(60000, 60000), True),
        ("side over the limit", lambda: bomb_png(limits.MAX_IMAGE_SIDE + 1, 16), True),
        ("small header, 512 MiB of pixels", lambda: bomb_png(128, 128, inflated=512 << 20), False),
        ("colour profile bomb", lambda: bomb_png(128, 128, inflated=128 * 385, extra=icc_bomb()), False),
    ],
)
def test_decompression_bombs_are_refused_or_harmless(server, name, image, immediate):
    process, endpoint = server
    data = image()
    peak_before = peak_rss_kib(process.process.pid)
    started = time.monotonic()
    edit = Edit(id=f"bomb-{time.monotonic_ns()}", mode="drag", image=data, arrows=[(40.0, 40.0, 50.0, 50.0)], steps=2)
    with kit.Client(endpoint) as client:
        client.send(edit)
        first = client.expect((Error, Accepted), 30, edit.id)
        if immediate:
            assert first.code == "image_too_large" and time.monotonic() - started < 2
        else:
            end = client.expect((Error, Result), 60, edit.id)
            assert isinstance(end, Result) or end.code in ("bad_image", "bad_input"), end
        good = kit.move_edit(steps=2)
        client.send(good)
        assert isinstance(client.expect((Result, Error), 60, good.id), Result)
    grown_mb = (peak_rss_kib(process.process.pid) - peak_before) / 1024
    assert grown_mb < 150, f"{name}: the server's peak memory grew by {grown_mb:.0f} MiB"
    record("security: decompression bombs sent")


# -- nothing received reaches pickle, eval or the file system ----------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "yaml",
                     "subprocess", "ctypes", "importlib", "shutil", "tempfile"}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "open", "breakpoint"}
ALLOWED_OS_CALLS = {"os._exit", "os.cpu_count", "os.environ.setdefault"}
"""Process calls that touch no file: exiting, counting CPUs, Ray's settings before it starts (cluster.py)."""
KEY_FILES = "keys.py"
"""keys.py reads and writes key files at paths the operator gives on the command line, never received data."""


@pytest.mark.parametrize("path", RECEIVING_CODE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_receiving_code_has_no_pickle_eval_or_file_access(path):
    source = path.read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not {n.split(".")[0] for n in names} & FORBIDDEN_MODULES, (path.name, names)
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        where = (path.name, called, node.lineno)
        assert called not in FORBIDDEN_BUILTINS, where
        assert called != "torch.load" and not called.startswith(("pickle.", "marshal.")), where
        if called == "Image.open":  # Pillow, on bytes in memory only
            assert ast.unparse(node.args[0]).startswith("io.BytesIO("), where
        if called.startswith("os.") or called == "Path":
            assert called in ALLOWED_OS_CALLS or path.name == KEY_FILES, where
    for hook in ("ext_hook", "object_hook", "object_pairs_hook", "list_hook"):
        assert hook not in source, (path.name, hook)  # msgpack turns no received data into objects
    record("security: source files scanned")


class Trap:
    """Unpickling this writes a file: if the server ever unpickled received data, the file would appear."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.path), "unpickled"))


def test_received_pickles_paths_and_code_stay_data(server, tmp_path):
    process, endpoint = server
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Trap(str(marker)))
    assert not marker.exists()
    hostile = [
        [payload],
        [msgpack.packb(edit_body(image=payload))],
        [msgpack.packb(edit_body(image=msgpack.ExtType(1, payload)))],
        [msgpack.packb({"v": 1, "type": "hello", "client": msgpack.ExtType(42, payload)})],
        [msgpack.packb(edit_body(id="../../etc/passwd"))],
        [msgpack.packb(edit_body(mode="__class__"))],
    ]
    with kit.Client(endpoint) as client:
        for frames in hostile:
            client.send_raw(*frames)
            reply = client.expect((Error, Accepted), 10)
            assert isinstance(reply, Error) and reply.code in ("bad_message", "bad_field", "bad_image"), reply
        code_setting = kit.move_edit("code-in-settings", steps=2, settings={"__import__('os').system('id')": 1})
        client.send(code_setting)
        end = client.expect((Accepted, Error), 10, code_setting.id)
        assert end.code == "bad_input" and "setting" in end.message  # an unknown name, refused at once
        path_prompt = kit.move_edit("path-in-prompt", steps=2, prompt=str(marker))
        client.send(path_prompt)
        assert isinstance(client.expect((Result, Error), 60, path_prompt.id), Result)
        client.send(Hello(client=str(marker)))
        client.expect((Welcome,), 10)
    assert not marker.exists()
    record("security: pickle, path and code payloads sent", len(hostile) + 3)


def test_edit_fields_are_only_ever_data():
    """An edit keeps received values as plain data: bytes, str, numbers, lists and dicts of them."""
    body = edit_body(image=kit.move_edit().image)
    edit = decode(msgpack.packb(body, use_bin_type=True))
    assert isinstance(edit, Edit)
    plain = (bytes, str, int, float, type(None), list, tuple, dict)
    for name in edit.__dataclass_fields__:
        value = getattr(edit, name)
        assert isinstance(value, plain), name


def empty_arrays(count: int) -> bytes:
    """A message whose `type` is an array of `count` empty arrays: one byte each on the wire."""
    return b"\x82\xa1v\x01\xa4type\xdd" + struct.pack(">I", count) + b"\x90" * count


def test_small_messages_cannot_unpack_into_huge_structures():
    """20 MB of empty arrays would unpack into about 1.4 GB of lists; deep nesting could exhaust the stack."""
    nine_deep = msgpack.packb({"v": 1, "type": [[[[[[[[]]]]]]]]})
    for data in (empty_arrays(20_000_000), b"\x91" * 100_000 + b"\xc0", nine_deep):
        started = time.perf_counter()
        with pytest.raises(ProtocolError) as caught:
            decode(data)
        assert caught.value.code == "bad_message" and time.perf_counter() - started < 0.1
    record("security: unpacking bombs refused", 3)


def test_live_server_refuses_an_unpacking_bomb_without_building_it(server):
    process, endpoint = server
    peak_before = peak_rss_kib(process.process.pid)
    with kit.Client(endpoint) as client:
        client.send_raw(empty_arrays(50_000_000))
        assert client.expect((Error,), 30).code == "bad_message"
        good = kit.move_edit(steps=2)
        client.send(good)
        assert isinstance(client.expect((Result, Error), 60, good.id), Result)
    grown_mb = (peak_rss_kib(process.process.pid) - peak_before) / 1024
    assert grown_mb < 150, f"50 MB of empty arrays grew the server's peak memory by {grown_mb:.0f} MiB"
    record("security: unpacking bombs refused")
