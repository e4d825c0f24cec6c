"""Abuse (issue 15): what a hostile or careless client can no longer do to `dragon serve`.

Confidentiality between keys, a range for every setting, a fair share of the queue and a bound on one
edit's work, memory and log lines under floods, big and odd pictures, shutdown under a full send queue,
and clients that are refused. Loopback only; counts scale with DRAGON_SOAK (see campaign.py).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
import zlib

import pytest
import zmq
import zmq.auth

import serverkit as kit
from campaign import peak_rss_kib, record, reset_peak_rss, rss_kib, scaled
from dragon_protocol import Accepted, Cancel, Cancelled, Edit, Error, Fetch, Ping, Pong, Progress, Result
from dragon_server.cli import main

TERMINAL = (Result, Cancelled, Error)


# -- 1. confidentiality -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs made by `dragon keys`: the server's, two allowed clients' (the painter and the snoop) and
    a stranger's."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "painter", "snoop", "stranger"):
        assert main(["keys", name, "--dir", str(root / name)]) == 0
    (root / "allowed").mkdir()
    for name in ("painter", "snoop"):
        shutil.copy(root / name / f"{name}.key", root / "allowed")
    return root


def pair(keys, name: str):
    return zmq.auth.load_certificate(str(keys / name / f"{name}.key_secret"))


@pytest.fixture(scope="module")
def curve_server(keys, tmp_path_factory):
    server_key = zmq.auth.load_certificate(str(keys / "server" / "server.key"))[0]
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("curve")),
        ["--keys", str(keys / "server"), "--allowed-clients", str(keys / "allowed")],
        server_key=server_key, client_pair=pair(keys, "painter"),
    )
    yield endpoint, server_key
    assert process.stop() == 0, process.console()


def about(messages, request_id: str) -> list:
    return [m for m in messages if getattr(m, "id", None) == request_id]


def listen(client: kit.Client, seconds: float) -> list:
    """Everything `client` receives within `seconds`."""
    messages, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = client.receive(max(0.0, deadline - time.monotonic()))
        if message is not None:
            messages.append(message)
    return messages


@pytest.mark.parametrize("painter_still_connected", [True, False])
def test_another_key_on_the_same_routing_id_gets_nothing_of_the_edit(curve_server, keys, painter_still_connected):
    """An allowed client that connects with the painter's routing id, while the painter is connected or
    after it went away, receives no progress and no result of the painter's edit; the painter (or its
    next connection) still gets them."""
    endpoint, server_key = curve_server
    route = os.urandom(16).hex().encode()
    painter = kit.Client(endpoint, server_key, pair(keys, "painter"), routing_id=route)
    edit = kit.move_edit(steps=30, preview_interval=0.01)
    try:
        painter.send(edit)
        painter.expect((Progress,), 60, edit.id)
        if not painter_still_connected:
            painter.close()
            time.sleep(0.3)
        with kit.Client(endpoint, server_key, pair(keys, "snoop"), routing_id=route) as snoop:
            snoop.send(Ping(nonce=7))
            heard = listen(snoop, 3.0)
            snoop.send(Fetch(id=edit.id))
            heard += listen(snoop, 1.0)
            assert not [m for m in about(heard, edit.id) if not isinstance(m, Error)], heard[:3]
            assert all(m.code == "unknown_request" for m in about(heard, edit.id))
        if not painter_still_connected:
            painter = kit.Client(endpoint, server_key, pair(keys, "painter"))
            painter.send(Fetch(id=edit.id))
        assert isinstance(painter.expect(TERMINAL, 120, edit.id), Result)
    finally:
        painter.close()
    record("abuse: routing-id takeovers by another key, nothing leaked")


def test_secret_key_files_are_private_from_creation(tmp_path, monkeypatch):
    """The secret file is created 0600 in one step: with a umask that lets everyone read and chmod out of
    order, it is still private; the public file is readable."""
    previous = os.umask(0)
    try:
        def no_chmod(*args, **kwargs):
            raise AssertionError("the key file was made readable first and restricted afterwards")

        monkeypatch.setattr(os, "chmod", no_chmod)
        assert main(["keys", "box", "--dir", str(tmp_path)]) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "box.key_secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "box.key").stat().st_mode & 0o044 == 0o044
    public, secret = zmq.auth.load_certificate(str(tmp_path / "box.key_secret"))
    assert len(public) == len(secret) == 40
    assert zmq.auth.load_certificate(str(tmp_path / "box.key")) == (public, None)


@pytest.mark.parametrize("stray", ["text file", "folder", "bad key"])
def test_an_unreadable_allowed_client_entry_is_named_at_start(keys, tmp_path, capsys, stray):
    """One bad *.key entry among good ones stops `dragon serve` before it loads, naming the entry, instead
    of silently locking out every client."""
    allowed = tmp_path / "allowed"
    shutil.copytree(keys / "allowed", allowed)
    entry = allowed / "notes.key"
    if stray == "folder":
        entry.mkdir()
    else:
        entry.write_text("remember to add the laptop\n" if stray == "text file" else 'public-key = "short"\n')
    capsys.readouterr()
    code = main(["serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{kit.free_port()}",
                 "--keys", str(keys / "server"), "--allowed-clients", str(allowed)])
    err = capsys.readouterr().err
    assert code == 2 and "notes.key" in err and "fix or remove it" in err, err
    assert len(err.strip().splitlines()) == 1


# -- a plain server for the other kinds ---------------------------------------------------------------

QUEUE, MAX_WORK = 4, 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A keyless server with 4 waiting places (2 per client) and at most 20 megapixel-steps per edit."""
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("abuse")), ["--queue", str(QUEUE), "--max-work", str(MAX_WORK)]
    )
    yield process, endpoint
    assert process.stop() == 0, process.console()


def terminals(client: kit.Client, request_ids, timeout: float = 60.0) -> dict:
    """The terminal message of each of `request_ids`, by id (other messages are skipped)."""
    ends, deadline = {}, time.monotonic() + timeout
    while set(request_ids) - set(ends) and time.monotonic() < deadline:
        message = client.receive(deadline - time.monotonic())
        if isinstance(message, TERMINAL) and message.id in request_ids:
            ends[message.id] = message
    assert set(ends) == set(request_ids), f"terminal messages missing: {set(request_ids) - set(ends)}"
    return ends


def first_answer(client: kit.Client, request_id: str, timeout: float = 10.0):
    """The first message about `request_id` (an edit's `accepted` or its refusal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.receive(deadline - time.monotonic())
        if getattr(message, "id", None) == request_id:
            return message
    raise AssertionError(f"no answer about {request_id} within {timeout} s")


# -- 2. every setting has a range ---------------------------------------------------------------------


def numeric_fields():
    import dataclasses

    from dragon_server.engine.settings import MethodSettings

    return [f.name for f in dataclasses.fields(MethodSettings) if f.type in ("int", "float")]


def test_every_numeric_setting_has_a_range_held_at_both_edges():
    from dragon_server.engine.request import InputError, Mode
    from dragon_server.engine.settings import RANGES, MethodSettings

    assert sorted(numeric_fields()) == sorted(RANGES)
    for name, (low, high) in RANGES.items():
        for mode in Mode:
            assert getattr(MethodSettings.for_mode(mode), name) is not None
            assert low <= getattr(MethodSettings.for_mode(mode), name) <= high, (name, mode)
        for value in (low, high):
            assert getattr(MethodSettings.for_mode(Mode.MOVE, {name: value}), name) == value
        step = 1 if isinstance(low, int) else 1e-6 * max(1.0, high)
        for value in (low - step, high + step):
            with pytest.raises(InputError, match=f"setting '{name}' must be from"):
                MethodSettings.for_mode(Mode.MOVE, {name: value})
    record("abuse: settings with a range, checked at both edges", len(RANGES))


HOSTILE_SETTINGS = [
    {"time_travel_repeats": 1e9},
    {"sde_end": 1e15},
    {"alpha": 0, "beta": 0},
    {"energy_scale": 1e12},
    {"bank_start": -1},
    {"time_travel_every": 0},
    {"drag_patch": 1e6},
]


def test_out_of_range_settings_are_refused_at_once_even_behind_a_running_edit(server):
    """Each is `bad_input` as the first answer, while another edit runs: nothing out of range waits in
    the queue or reaches the engine."""
    _, endpoint = server
    with kit.Client(endpoint) as client:
        running = kit.move_edit(steps=200)
        client.send(running)
        client.expect((Progress,), 60, running.id)
        for settings in HOSTILE_SETTINGS:
            edit = kit.move_edit(settings=settings)
            client.send(edit)
            answer = first_answer(client, edit.id)
            assert isinstance(answer, Error) and answer.code == "bad_input", (settings, answer)
            assert "must be from" in answer.message and sorted(settings)[0] in answer.message
        client.send(Cancel(id=running.id))
        assert isinstance(client.expect(TERMINAL, 60, running.id), Cancelled)
    record("abuse: out-of-range settings refused at once", len(HOSTILE_SETTINGS))


def test_cancel_stops_within_one_unet_pass_whatever_the_settings(tiny_engine, monkeypatch):
    """With the most work between two progress steps that the ranges allow (time travel on every step,
    10 repeats), a cancel asked in the middle of a step stops the edit before its next UNet pass: at most
    the pass under way and the backward passes of its energy (release guidance: 2) run after it."""
    from dragon_server.engine import EditCancelled, EditRequest, Mode

    image, mask = kit.scene()
    settings = dict(time_travel_start=0.0, time_travel_end=1.0, time_travel_every=1, time_travel_repeats=10,
                    guidance_end=1.0, dense_guidance_end=1.0)
    request = EditRequest(mode=Mode.MOVE, image=image, mask=mask, arrows=[(45, 55, 70, 60)], steps=4,
                          settings=settings)
    monkeypatch.setattr(tiny_engine.runner, "cancel", None)  # the engine's next users get no stale callback
    counts = tiny_engine.runner.counts
    for stop_at in (8, 21):
        with pytest.raises(EditCancelled):
            tiny_engine.edit(request, cancel=lambda at=stop_at: sum(counts.values()) >= at)
        assert stop_at <= sum(counts.values()) <= stop_at + 3, dict(counts)
    record("abuse: cancels inside a time-travel step, stopped within one UNet pass", 2)


# -- 3. fair share and bounded work -------------------------------------------------------------------


def test_one_client_cannot_take_every_queue_place(server):
    """A client holds at most half the waiting places (`queue_full` naming its share); another client is
    still accepted."""
    _, endpoint = server
    with kit.Client(endpoint) as greedy, kit.Client(endpoint) as other:
        edits = [kit.move_edit(steps=200) for _ in range(4)]
        greedy.send(edits[0])
        greedy.expect((Progress,), 60, edits[0].id)
        answers = []
        for edit in edits[1:]:
            greedy.send(edit)
            answers.append(first_answer(greedy, edit.id))
        assert [type(a) for a in answers] == [Accepted, Accepted, Error], answers
        assert answers[2].code == "queue_full" and "the most one client may" in answers[2].message
        polite = kit.move_edit(steps=2)
        other.send(polite)
        assert isinstance(first_answer(other, polite.id), Accepted)
        for edit in edits[:3]:
            greedy.send(Cancel(id=edit.id))
        ends = terminals(greedy, [edit.id for edit in edits[:3]])
        assert all(isinstance(end, Cancelled) for end in ends.values()), ends
        assert isinstance(other.expect(TERMINAL, 60, polite.id), Result)
    record("abuse: edits over one client's share refused", 1)


@pytest.mark.parametrize("steps, working_area", [(500, 2048 * 2048), (6, 2048 * 2048), (500, 256 * 256)])
def test_one_edit_cannot_ask_for_more_work_than_the_server_allows(server, steps, working_area):
    _, endpoint = server
    with kit.Client(endpoint) as client:
        edit = kit.move_edit(steps=steps, working_area=working_area)
        client.send(edit)
        answer = first_answer(client, edit.id)
    assert isinstance(answer, Error) and answer.code == "bad_input", answer
    assert f"{steps} steps" in answer.message and "at most 20 megapixel-steps" not in answer.message
    assert f"at most {MAX_WORK:g}" in answer.message and "fewer steps or a smaller working area" in answer.message
    record("abuse: edits over the server's work bound refused")


# -- 7. clients that are refused ----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["unknown key", "no keys"])
def test_a_refused_client_ends_with_the_no_answer_error(curve_server, keys, who):
    """`dragon edit --server` against a server that refuses its handshake stops after its timeout with the
    documented "no answer" error, instead of blocking in a keep-alive send."""
    from dragon_server.engine import EditError, EditRequest, Mode
    from dragon_server.serve.client import run_remote_edit

    endpoint, _ = curve_server
    options = {}
    if who == "unknown key":
        options = dict(server_key=str(keys / "server" / "server.key"),
                       client_key=str(keys / "stranger" / "stranger.key_secret"))
    image, mask = kit.scene()
    request = EditRequest(mode=Mode.MOVE, image=image, mask=mask, arrows=[(45, 55, 70, 60)], steps=4)
    started = time.monotonic()
    with pytest.raises(EditError) as raised:
        run_remote_edit(request, endpoint, timeout=3.0, **options)
    assert time.monotonic() - started < 3.0 + 2 * 2.0 + 3.0
    assert raised.value.code == "unreachable" and "no answer from" in str(raised.value)
    record("abuse: refused clients that ended with the no-answer error")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def broken_pngs() -> dict:
    """PNGs whose header is valid (so they pass the size check) and whose pixel data is not."""
    from PIL import Image

    header = kit.png_header(128, 128)
    whole = kit.png(Image.new("RGB", (128, 128), (10, 20, 30)))
    end = png_chunk(b"IEND", b"")
    return {
        "header only": header,
        "no pixel data": header + end,
        "cut in half": whole[: len(whole) // 2],
        "garbage pixel data": header + png_chunk(b"IDAT", b"garbage") + end,
        "too few pixels": header + png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + end,
    }


INTERNALS = re.compile(r"0x[0-9a-fA-F]{4,}|object at|<[^>]*>|Traceback|\.py\b")


@pytest.mark.parametrize("field", ["image", "mask"])
def test_error_texts_never_show_internals(server, field):
    """Broken pixel data in any image is `bad_image` with a one-line reason and no object address."""
    _, endpoint = server
    with kit.Client(endpoint) as client:
        for name, data in broken_pngs().items():
            edit = kit.move_edit(**{field: data})
            client.send(edit)
            end = client.expect((Error,), 60, edit.id)
            assert end.code == "bad_image" and f"edit.{field}" in end.message, (name, end)
            assert not INTERNALS.search(end.message) and "\n" not in end.message, (name, end.message)
    record("abuse: broken PNGs answered without internals", len(broken_pngs()))


# -- 5. big and odd pictures --------------------------------------------------------------------------


def flat(size, colour=(150, 140, 130)) -> bytes:
    from PIL import Image

    return kit.png(Image.new("RGB", size, colour))


def box_mask(size, box) -> bytes:
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return kit.png(mask)


ODD_PICTURES = {
    "move on 1500x16": dict(mode="move", image=flat((1500, 16)), mask=box_mask((1500, 16), (10, 2, 30, 12)),
                            arrows=[(20.0, 8.0, 60.0, 8.0)]),
    "drag on 16x2048": dict(mode="drag", image=flat((16, 2048)), arrows=[(8.0, 100.0, 8.0, 160.0)]),
    "drag on 2048x16, feathered across": dict(mode="drag", image=flat((2048, 16)), arrows=[(100.0, 8.0, 900.0, 8.0)]),
    "appearance 2048x32 from a 32x2048 reference": dict(
        mode="appearance", image=flat((2048, 32)), mask=box_mask((2048, 32), (10, 4, 40, 28)),
        reference=flat((32, 2048), (200, 30, 40)), reference_mask=box_mask((32, 2048), (4, 10, 28, 2000)),
        working_area=256 * 256),
}


@pytest.mark.parametrize("name", list(ODD_PICTURES))
def test_long_thin_pictures_are_edited_in_bounded_memory(server, name):
    """Long thin pictures and references of the opposite shape end in a result (never internal_error),
    and a reference frame that reaches far past its picture costs no memory for the part outside."""
    process, endpoint = server
    pid = process.process.pid
    reset_peak_rss(pid)
    before = rss_kib(pid)
    with kit.Client(endpoint) as client:
        edit = Edit(id=f"odd-{time.monotonic_ns()}", steps=2, **ODD_PICTURES[name])
        client.send(edit)
        end = client.expect(TERMINAL, 120, edit.id)
    assert isinstance(end, Result), (name, end)
    grown_mb = (peak_rss_kib(pid) - before) / 1024
    assert grown_mb < 200, f"{name}: the server's peak memory grew by {grown_mb:.0f} MiB"
    record("abuse: long thin pictures edited")


def test_a_huge_flat_picture_is_blended_in_bounded_memory(server):
    """An 8000x8000 picture (a small message) with a small edit: the server's memory grows by the decoded
    picture and mask, and by the edit's frame only (no full-size mask, float copy or result)."""
    process, endpoint = server
    pid = process.process.pid
    size = (8000, 8000)
    edit = Edit(id="huge-flat", mode="move", image=flat(size), mask=box_mask(size, (4000, 4000, 4060, 4060)),
                arrows=[(4030.0, 4030.0, 4070.0, 4040.0)], steps=2)
    with kit.Client(endpoint) as client:
        warm = kit.move_edit(steps=2)  # the server's first edit allocates what every edit reuses
        client.send(warm)
        client.expect(TERMINAL, 60, warm.id)
        reset_peak_rss(pid)
        before = rss_kib(pid)
        client.send(edit)
        end = client.expect(TERMINAL, 180, edit.id)
    assert isinstance(end, Result) and end.size == size and end.box[2] < 200, end
    grown_mb = (peak_rss_kib(pid) - before) / 1024
    assert grown_mb < HUGE_PICTURE_MB, f"the server's peak memory grew by {grown_mb:.0f} MiB"
    record("abuse: 8000x8000 picture, peak memory growth in MiB", int(grown_mb))


HUGE_PICTURE_MB = 360
"""Bound on the peak memory growth of one 64-megapixel edit: the picture and its mask decoded (8-bit RGB
and L: 244 MiB, some 300 as Pillow holds them) and the edit's frame (285 MiB measured; 723 when the plan
made full-size masks and the result a full-size copy, 3.7 GB when the blend worked on the whole picture in
float32)."""


@pytest.mark.parametrize("mode", ["move", "drag", "appearance", "paste"])
def test_editing_a_huge_picture_costs_only_its_frame(tiny_engine, mode):
    """Once a 64-megapixel picture and its masks are decoded, planning, guiding and blending a small edit
    of it, and making its `result` message, raise the peak memory by what its frame needs: a few MiB,
    not a full-size mask (61 MiB), and every pixel outside the changed box is the input's."""
    from dragon_server.serve.worker import result_message, to_engine_request

    size = (8000, 8000)
    fields = {
        "move": dict(mask=box_mask(size, (4000, 4000, 4060, 4060)), arrows=[(4030.0, 4030.0, 4070.0, 4040.0)]),
        "drag": dict(arrows=[(4030.0, 4030.0, 4070.0, 4040.0)]),
        "appearance": dict(mask=box_mask(size, (4000, 4000, 4060, 4060)), reference=flat((64, 64), (20, 200, 40)),
                           reference_mask=box_mask((64, 64), (10, 10, 50, 50))),
        "paste": dict(reference=flat((64, 64), (20, 200, 40)), reference_mask=box_mask((64, 64), (10, 10, 50, 50)),
                      arrows=[(30.0, 30.0, 4030.0, 4030.0)]),
    }[mode]
    request = to_engine_request(Edit(id="huge", mode=mode, image=flat(size), steps=2, **fields))
    small = dict(fields, arrows=[tuple(v - 4000 for v in arrow) for arrow in fields.get("arrows", [])],
                 mask=box_mask((128, 128), (0, 0, 60, 60)) if "mask" in fields else None)
    if mode == "paste":
        small["arrows"] = [(30.0, 30.0, 30.0, 30.0)]
    tiny_engine.edit(to_engine_request(Edit(id="warm", mode=mode, image=flat((128, 128)), steps=2, **small)))
    pid = os.getpid()
    reset_peak_rss(pid)
    before = rss_kib(pid)
    result = tiny_engine.edit(request)
    message = result_message("huge", result, 0.0)
    grown_mb = (peak_rss_kib(pid) - before) / 1024
    assert grown_mb < 24, f"{mode}: the edit raised the peak memory by {grown_mb:.0f} MiB"
    x, y, w, h = message.box
    assert message.size == size and 0 < w < 400 and 0 < h < 400, message.box
    assert result.patch.size == (w, h) and result.picture is request.image
    record(f"abuse: 64-megapixel {mode} edit, peak MiB beyond the decoded picture", int(grown_mb))


# -- 6. shutdown --------------------------------------------------------------------------------------

FROZEN_PLUGIN = """
import sys, time
from dragon_krita.client import Client
client = Client({endpoint!r}, timeout=600.0)
client.connect()
print("connected", flush=True)
sys.stdin.readline()  # the GUI thread is frozen until told
received, deadline = 0, time.monotonic() + 3
while time.monotonic() < deadline:
    received += len(client.poll())
    time.sleep(0.01)
print("read", received, flush=True)
"""


def test_a_frozen_plugin_survives_the_server_stopping_under_a_full_queue(tmp_path):
    """libzmq asserts (aborting the whole process: Krita) when a socket whose receive queue was full
    reconnects and is then read (libzmq issue 3937). The plugin's client, frozen while a server floods it
    and then replaced by another server on the same address, reads on without crashing."""
    import subprocess
    import sys

    from dragon_protocol import Progress, encode

    endpoint = f"tcp://127.0.0.1:{kit.free_port()}"
    context = zmq.Context.instance()
    server = context.socket(zmq.ROUTER)
    server.bind(endpoint)
    child = subprocess.Popen([sys.executable, "-c", FROZEN_PLUGIN.format(endpoint=endpoint)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        route = server.recv_multipart()[0]
        flood = encode(Progress("frozen", "sampling", 1, 2, b"\0" * 1024, (0, 0, 8, 8)))
        sent = 0
        for _ in range(scaled(5000)):
            try:
                server.send_multipart([route, flood], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.001)
        time.sleep(0.5)
        server.close(0)
        server = context.socket(zmq.ROUTER)  # "restarted": the client reconnects by itself
        for _ in range(100):
            try:
                server.bind(endpoint)
                break
            except zmq.ZMQError:  # the old socket lets go of the port asynchronously
                time.sleep(0.05)
        time.sleep(12.0)  # a stalled connection sees no EOF: its heartbeat timeout (10 s) ends it, then it reconnects
        child.stdin.write("read\n")
        child.stdin.flush()
        assert child.wait(30) == 0, "the plugin's process was killed (libzmq assertion)"
        assert int(child.stdout.readline().split()[1]) > 1000
    finally:
        server.close(0)
        if child.poll() is None:
            child.kill()
            child.wait()
    record("abuse: frozen plugin clients flooded, server replaced, no crash", 1)


def test_a_running_edit_that_does_not_stop_cannot_keep_the_server_alive(tmp_path, monkeypatch):
    """The running edit hangs without looking at its cancel flag (test-only fault): SIGTERM still ends the
    server after --stop-wait with exit status 3 (no abort, no core dump), and the client is told."""
    import signal

    monkeypatch.setenv("DRAGON_TEST_FAULTS", "hang@1")
    process, endpoint = kit.start_server(str(tmp_path), ["--stop-wait", "1"])
    try:
        with kit.Client(endpoint) as client:
            edit = kit.move_edit("hangs", steps=6)
            client.send(edit)
            client.expect((Progress,), 60, edit.id)
            time.sleep(2.0)  # at its first sampling step by now, hanging
            stopped = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            end = client.expect(TERMINAL, 30, edit.id)
            assert process.process.wait(30) == 3
            assert time.monotonic() - stopped < 10
    finally:
        process.stop()
    assert isinstance(end, Error) and end.code == "shutting_down", end
    assert "request hangs did not stop within 1 s" in process.console()
    record("abuse: servers stopped with a hung edit, exit status 3")


STALLING_CLIENT = """
import json, select, sys, time
import zmq
sys.path.insert(0, {tests!r})
import serverkit as kit
from dragon_protocol import Ping, Progress, decode, encode

socket = zmq.Context.instance().socket(zmq.DEALER)
socket.setsockopt(zmq.RCVHWM, 4)
socket.setsockopt(zmq.RCVBUF, 4096)
socket.setsockopt(zmq.LINGER, 0)
socket.connect({endpoint!r})
edits = [kit.move_edit("streams", steps=200, preview_interval=0.001)]
edits += [kit.move_edit(f"waits-{{n}}", steps=2) for n in range({queued})]
for edit in edits:
    socket.send(encode(edit))
heard = {{edit.id: [] for edit in edits}}

def read(until):
    previews = 0
    while time.monotonic() < until and socket.poll(max(1, int((until - time.monotonic()) * 1000))):
        message = decode(socket.recv())
        if hasattr(message, "id"):
            heard[message.id].append(type(message).__name__)
            previews += isinstance(message, Progress) and message.preview is not None
    return previews

deadline, previews = time.monotonic() + 60, 0
while time.monotonic() < deadline and not (all(heard.values()) and previews):
    previews += read(time.monotonic() + 0.05)
print("stalled", flush=True)
while not select.select([sys.stdin], [], [], 0.2)[0]:  # not reading until told; the previews stream on,
    for nonce in range(500):  # and pings answered fill the send queue in between
        try:
            socket.send(encode(Ping(nonce=nonce)), zmq.NOBLOCK)
        except zmq.Again:
            break
sys.stdin.readline()
read(time.monotonic() + 8)
print(json.dumps(heard), flush=True)
"""


def stop_under_a_full_queue(tmp_path, queued: int):
    """Start a server, let STALLING_CLIENT fill its send queue, SIGTERM the server and let the client read
    again half a second later; return what the client heard about each edit, and the exit status."""
    import json
    import signal
    import subprocess
    import sys

    process, endpoint = kit.start_server(str(tmp_path), [])
    script = STALLING_CLIENT.format(tests=os.path.dirname(__file__), endpoint=endpoint, queued=queued)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert child.stdout.readline().strip() == "stalled"
        deadline = time.monotonic() + 30
        while "its client is not reading" not in process.console() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "request streams: its client is not reading" in process.console(), process.console()[-2000:]
        process.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        child.stdin.write("read\n")
        child.stdin.flush()
        heard = json.loads(child.stdout.readline())
        assert child.wait(30) == 0
        return heard, process.process.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        process.stop()


def test_cancelled_reaches_a_live_client_that_stopped_reading_when_the_server_stops(tmp_path):
    """A real client with a small receive queue stops reading while the server streams previews to it (and
    answers its pings), so that its send queue is full; SIGTERM; the client reads again half a second
    later, within the linger time (2 s): every edit it had accepted ends with exactly one `cancelled`, last,
    and the server exits 0 (no abort, no core dump). Before, the `cancelled` went into the queue behind the
    progress and was lost when the server closed (after 1 s, or at once with a reset when the client's
    bytes were left unread)."""
    queued = 3
    for round in range(scaled(1)):
        (tmp_path / str(round)).mkdir()
        heard, code = stop_under_a_full_queue(tmp_path / str(round), queued)
        assert code == 0
        assert sorted(heard) == sorted(["streams"] + [f"waits-{n}" for n in range(queued)])
        for request_id, kinds in heard.items():
            assert kinds[0] == "Accepted" and kinds[-1] == "Cancelled", (request_id, kinds[:3], kinds[-3:])
            assert sum(kind in ("Cancelled", "Result", "Error") for kind in kinds) == 1, (request_id, kinds[-5:])
        record("abuse: live clients stopped reading at SIGTERM, every accepted edit cancelled once", 1 + queued)


# -- 4. memory, descriptors and log lines under abuse --------------------------------------------------


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_exhaust_descriptors(tmp_path):
    """Connections beyond --max-connections are closed at once (idle TCP sockets that never speak
    included), the refusals are logged a few times and then summarised, and an edit still succeeds."""
    import socket

    process, endpoint = kit.start_server(str(tmp_path), ["--max-connections", "10"])
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    idle = []
    try:
        before = open_descriptors(process.process.pid)
        for _ in range(scaled(60)):
            idle.append(socket.create_connection((host, int(port))))
        time.sleep(1.0)
        held = open_descriptors(process.process.pid) - before
        assert held <= 10 + 2, f"{held} descriptors held for idle connections"
        for connection in idle:
            connection.close()
        idle.clear()
        time.sleep(0.5)
        with kit.Client(endpoint) as client:
            edit = kit.move_edit(steps=2)
            client.send(edit)
            assert isinstance(client.expect(TERMINAL, 60, edit.id), Result)
    finally:
        for connection in idle:
            connection.close()
        assert process.stop() == 0
    refusals = len(re.findall(r"^\S+ connection refused:", process.console(), flags=re.M))
    assert 0 < refusals <= 10 and "more lines like 'connection refused: *" in process.console(), refusals
    record("abuse: idle connections opened against a limit of 10", scaled(60))


def zmtp_dealer(endpoint: str):
    """A raw TCP connection that has said what a DEALER socket says first (ZMTP 3.0 greeting, NULL
    security, READY), so that it can then send a frame's header and only part of its body."""
    import socket

    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    try:
        connection.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)
                           + b"\x04" + bytes([len(ready)]) + ready)
    except OSError:  # hung up at once: one connection too many
        pass
    return connection


def send_part_of_a_frame(connection, size: int, part: int) -> bool:
    """Send the header of a `size`-byte frame and its first `part` bytes; False when the server hung up."""
    try:
        connection.sendall(b"\x02" + struct.pack(">Q", size) + os.urandom(1024) * (part // 1024))
        return True
    except OSError:
        return False


def hung_up(connection, seconds: float) -> bool:
    """Whether the server closed `connection` within `seconds` (what it sent before is skipped)."""
    connection.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not connection.recv(65536):
                return True
    except OSError:  # reset, or the timeout
        return time.monotonic() < deadline
    return False


PENDING_MB, MESSAGE_MB = 64, 8


def test_half_sent_messages_hold_at_most_the_pending_budget(tmp_path):
    """--max-pending-mb bounds the memory of messages still arriving, all connections together: the
    connections default to as many as hold a whole message each, so 24 connections that send the header
    and most of a message's body and stall grow the server's memory by at most the budget (plus slack;
    three times the budget without it), a client keeps being served meanwhile, and a frame over
    --max-message-mb drops its connection. An inconsistent combination is refused at start, in one line."""
    process, endpoint = kit.start_server(
        str(tmp_path), ["--max-pending-mb", str(PENDING_MB), "--max-message-mb", str(MESSAGE_MB)])
    pid = process.process.pid
    stalled = []
    try:
        with kit.Client(endpoint) as client:
            client.send(Ping(nonce=1))
            assert client.expect((Pong,), 10).nonce == 1
            reset_peak_rss(pid)
            before = rss_kib(pid)
            for _ in range(scaled(24)):
                connection = zmtp_dealer(endpoint)
                stalled.append(connection)
                if send_part_of_a_frame(connection, MESSAGE_MB << 20, (MESSAGE_MB << 20) - (512 << 10)):
                    time.sleep(0.05)
            time.sleep(1.0)
            grown_mb = (peak_rss_kib(pid) - before) / 1024
            client.send(Ping(nonce=2))
            assert client.expect((Pong,), 10).nonce == 2
            edit = kit.move_edit(steps=2)
            client.send(edit)
            assert isinstance(client.expect(TERMINAL, 60, edit.id), Result)
        for connection in stalled:
            connection.close()
        time.sleep(0.5)
        over = zmtp_dealer(endpoint)
        send_part_of_a_frame(over, (MESSAGE_MB << 20) + 1, 1024)
        assert hung_up(over, 5.0), "a frame over --max-message-mb was not refused"
        over.close()
    finally:
        for connection in stalled:
            connection.close()
        assert process.stop() == 0
    log = process.console()
    assert "at most 64 MiB: 8 connections of at most 8 MiB (--max-pending-mb)" in log, log
    assert grown_mb < PENDING_MB + 40, f"half-sent messages grew the server's memory by {grown_mb:.0f} MiB"
    record("abuse: connections stalled in the middle of a message, against a budget of 64 MiB", scaled(24))
    record("abuse: growth of the server's peak memory for them, MiB", int(grown_mb))


@pytest.mark.parametrize("options, fix", [
    (["--max-connections", "9"], "give --max-connections 8 or less, or --max-message-mb 7 or less, or "
                                 "--max-pending-mb 72 or more"),
    (["--max-message-mb", "128"], "raise it to 128 or more, or lower --max-message-mb"),
])
def test_an_inconsistent_pending_budget_is_refused_at_start(capsys, options, fix):
    capsys.readouterr()
    code = main(["serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{kit.free_port()}",
                 "--max-pending-mb", str(PENDING_MB), "--max-message-mb", str(MESSAGE_MB), *options])
    err = capsys.readouterr().err
    assert code == 2 and fix in err and len(err.strip().splitlines()) == 1, err


def test_a_flood_of_refused_messages_writes_a_few_log_lines(server):
    """20000 one-byte messages are answered (while the client's queue has room) and the server goes on,
    but they are logged 10 times and then summarised."""
    process, endpoint = server
    count = scaled(20_000)
    with open(process.log_path) as log:
        log.seek(0, os.SEEK_END)
        with kit.Client(endpoint) as client:
            for _ in range(count):
                client.send_raw(b"x")
            answers = 0
            while answers < count and client.receive(2.0) is not None:
                answers += 1
            client.send(Ping(nonce=3))
            assert client.expect((Pong,), 10).nonce == 3
        written, deadline = "", time.monotonic() + 15  # the summary comes when the 10 s window ends
        while "more lines like" not in written and time.monotonic() < deadline:
            time.sleep(0.5)
            written += log.read()
    assert answers > count // 2  # the others met a full send queue: replies to a client that does not read
    assert len(re.findall(r"^\S+ bad message from", written, flags=re.M)) <= 10 and len(written) < 10_000, written
    assert re.search(r"\d+ more lines like 'bad message from \*: \*: \*' were not logged", written), written
    record("abuse: refused messages in a flood", count)
    record("abuse: log bytes written for the flood", len(written))


def test_a_flood_of_valid_requests_writes_a_few_info_lines(tmp_path):
    """Info lines are limited too: 1000 tiny edits, each accepted and cancelled at once behind a running
    edit (two info lines each), write 10 lines of each kind per 10 s, and the summaries count every line
    held back."""
    process, endpoint = kit.start_server(str(tmp_path), [])
    count, batch = scaled(1000), 50
    kinds = {"request * from *: *, * arrows, * steps, * KiB; * ahead": r"^\S+ request tiny-\d+ from ",
             "request *: cancelled while queued": r"^\S+ request tiny-\d+: cancelled while queued"}

    def accounted(written: str) -> dict:
        """Per kind: tiny lines logged plus lines the summaries say were held back."""
        return {kind: len(re.findall(line, written, flags=re.M))
                + sum(int(n) for n in re.findall(rf"(\d+) more lines like '{re.escape(kind)}'", written))
                for kind, line in kinds.items()}

    try:
        with open(process.log_path) as log:
            log.seek(0, os.SEEK_END)
            with kit.Client(endpoint) as client:
                running = kit.move_edit(steps=500)
                client.send(running)
                client.expect((Progress,), 60, running.id)
                tiny, ends = kit.move_edit(steps=2), 0
                for start in range(0, count, batch):
                    for number in range(start, min(count, start + batch)):
                        client.send(Edit(**dict(vars(tiny), id=f"tiny-{number}")))
                        client.send(Cancel(id=f"tiny-{number}"))
                    while ends < min(count, start + batch):
                        message = client.receive(30.0)
                        assert message is not None and not isinstance(message, Error), (ends, message)
                        ends += isinstance(message, Cancelled) and message.id.startswith("tiny-")
                client.send(Cancel(id=running.id))
                client.expect((Cancelled,), 60, running.id)
            written, deadline = "", time.monotonic() + 25  # a summary comes when its 10 s window ends
            while set(accounted(written).values()) != {count} and time.monotonic() < deadline:
                time.sleep(0.5)
                written += log.read()
    finally:
        assert process.stop() == 0
    assert accounted(written) == dict.fromkeys(kinds, count), written[-3000:]
    windows = len(re.findall(r"more lines like 'request \* from", written))
    assert 0 < len(re.findall(kinds["request * from *: *, * arrows, * steps, * KiB; * ahead"], written, re.M)) \
        <= 10 * windows and len(written) < 20_000, written[-3000:]
    record("abuse: tiny edits accepted and cancelled in a flood (2 info lines each)", count)
    record("abuse: log bytes written for them", len(written))


def test_many_tiny_kept_results_stay_within_the_store_budget():
    """The store counts each kept message with its bookkeeping, so 40000 tiny results fit the budget in
    real memory (measured with tracemalloc), not only in payload bytes (before: 12 times the budget)."""
    import tracemalloc

    from dragon_server.serve.store import ResultStore

    budget = 512 << 10
    store = ResultStore(keep_seconds=3600, max_bytes=budget)
    tracemalloc.start()
    try:
        for number in range(scaled(40_000)):
            key = ("client-key-" + "k" * 30, f"request-{number:020d}")
            store.put(key, kit.encode(Cancelled(id="x", reason="client")))
        used = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert store.nbytes <= budget and used <= budget * 1.1, (store.nbytes, used)
    record("abuse: tiny results kept, KiB of real memory for a 512 KiB budget", used // 1024)


def test_running_out_of_descriptors_is_reported_as_that_not_as_a_bad_picture(monkeypatch):
    """When the server cannot open a file while decoding, the edit ends with `out_of_memory` saying open
    files ran out, not with `bad_image` blaming the painter's picture."""
    import errno

    from PIL import Image

    from dragon_protocol import decode
    from dragon_server.serve.jobs import Job, JobQueue
    from dragon_server.serve.worker import Worker

    def no_files_left(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Image, "open", no_files_left)
    worker = Worker("tiny", "cpu", JobQueue(1), lambda event: None)
    payload, outcome = worker._run(Job(edit=kit.move_edit("no-files"), owner="", route=b"r", peer="p"))
    end = decode(payload)
    assert isinstance(end, Error) and end.code == outcome == "out_of_memory", end
    assert "ran out of open files" in end.message
