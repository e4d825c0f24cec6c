"""The server over real sockets: one `dragon serve --model tiny` process for the whole module."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
import uuid

import msgpack
import pytest
from PIL import Image

import serverkit as kit
from dragon_protocol import (
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
    Result,
    Welcome,
)

MAX_MESSAGE_MB = 2
LONG_STEPS = 400
"""Long enough that a cancel always arrives while the edit runs (about a second per 10 steps here)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("server")),
        ["--queue", "2", "--client-share", "2", "--max-message-mb", str(MAX_MESSAGE_MB)],
    )
    yield endpoint
    assert process.stop(signal.SIGTERM) == 0, process.console()
    assert "stopped" in process.console()


@pytest.fixture
def client(server):
    with kit.Client(server) as c:
        yield c


def result_images(result: Result):
    image = Image.open(kit.io.BytesIO(result.image))
    mask = Image.open(kit.io.BytesIO(result.mask))
    return image, mask


def test_welcome_reports_model_limits_and_queue(client):
    client.send(Hello(client="test"))
    welcome = client.expect((Welcome,))
    assert welcome.state == "ready" and welcome.model == "tiny" and welcome.device == "cpu"
    assert welcome.modes == ["move", "drag", "appearance", "paste"]
    assert welcome.limits["max_arrows"] == 32
    assert welcome.limits["max_message_bytes"] == MAX_MESSAGE_MB * 2**20
    assert (welcome.queued, welcome.running, welcome.queue_capacity) == (0, 0, 2)


def test_two_clients_edit_at_once(server):
    with kit.Client(server) as first, kit.Client(server) as second:
        a, b = kit.move_edit(seed=1), kit.move_edit(seed=2)
        first.send(a)
        second.send(b)
        positions = sorted(
            [first.expect((Accepted,), request_id=a.id).position, second.expect((Accepted,), request_id=b.id).position]
        )
        assert positions == [0, 1]
        results = [first.expect((Result,), 60, a.id), second.expect((Result,), 60, b.id)]
    for result in results:
        x, y, w, h = result.box
        image, mask = result_images(result)
        assert w > 0 and h > 0 and image.size == mask.size == (w, h)
        assert mask.mode == "L" and result.size == (128, 128)
        assert result.timings["total"] > 0 and result.unet_evaluations["forward"] > 0
    assert results[0].image != results[1].image  # different seeds, different pictures


def test_progress_comes_with_previews_at_the_asked_rate(client):
    edit = kit.move_edit(steps=6, preview_interval=0.000001, preview_size=32)
    client.send(edit)
    progress = []
    while True:
        message = client.expect((Progress, Result), 60, edit.id)
        if isinstance(message, Result):
            break
        progress.append(message)
    stages = [p.stage for p in progress]
    assert stages[0] == "encode" and "inversion" in stages and stages[-1] == "decode"
    sampling = [p for p in progress if p.stage == "sampling"]
    assert [p.step for p in sampling] == list(range(1, 7)) and all(p.total == 6 for p in sampling)
    previews = [Image.open(kit.io.BytesIO(p.preview)) for p in sampling]
    assert previews and max(previews[0].size) <= 32
    assert all(p.preview_box == (0, 0, 128, 128) for p in sampling)  # the whole 128 px scene is edited
    assert all(p.preview is None and p.preview_box is None for p in progress if p.stage != "sampling")


def test_cancel_queued_and_running_while_pings_stay_instant(client):
    running, queued = kit.move_edit(steps=LONG_STEPS), kit.move_edit(steps=LONG_STEPS)
    client.send(running)
    client.send(queued)
    assert client.expect((Accepted,), request_id=queued.id).position == 1
    client.expect((Progress,), 30, running.id)

    started = time.monotonic()
    client.send(Ping(nonce=7))
    pong = client.expect((Pong,), 5)
    assert time.monotonic() - started < 1.0
    assert (pong.nonce, pong.queued, pong.running) == (7, 1, 1)

    client.send(Cancel(id=queued.id))
    assert client.expect((Cancelled,), 5, queued.id).reason == "client"
    started = time.monotonic()
    client.send(Cancel(id=running.id))
    assert client.expect((Cancelled, Result, Error), 30, running.id) == Cancelled(id=running.id, reason="client")
    assert time.monotonic() - started < 10

    client.send(Cancel(id=running.id))
    assert client.expect((Error,), 5).code == "unknown_request"
    client.send(Fetch(id=queued.id))
    assert client.expect((Cancelled,), 5, queued.id).reason == "client"


def test_malformed_messages_get_errors_and_the_next_request_is_served(client):
    image, mask = kit.scene()

    def answer(send, *args):
        send(*args)
        return client.expect((Error, Accepted), 10)

    assert answer(client.send_raw, b"\xc1 not msgpack").code == "bad_message"
    assert answer(client.send_raw, msgpack.packb([1, "hello"])).code == "bad_message"
    assert answer(client.send_raw, b"one", b"two").code == "bad_message"
    assert answer(client.send_map, {"v": 1}).code == "bad_message"
    assert answer(client.send_map, {"v": 1, "type": "reboot"}).code == "unknown_type"
    assert answer(client.send_map, {"v": 1, "type": "welcome"}).code == "unknown_type"
    error = answer(client.send_map, {"v": 1, "type": "edit", "id": "e1", "mode": "move"})
    assert (error.code, error.id) == ("bad_field", "e1") and "image" in error.message
    error = answer(client.send_map, {"v": 1, "type": "edit", "id": "e2", "mode": "move", "image": "abc"})
    assert (error.code, error.id) == ("bad_field", "e2")
    bad = kit.move_edit("e3")
    bad.steps = 10**9
    assert answer(client.send, bad).code == "bad_field"
    bad = kit.move_edit("e4")
    bad.arrows = [(1.0, 2.0, 3.0, 4.0)] * 33
    assert answer(client.send, bad).code == "bad_field"
    bad = kit.move_edit("e5")
    bad.image = b"GIF89a" + bytes(100)
    assert answer(client.send, bad).code == "bad_image"
    bad = kit.move_edit("e6")
    bad.mask = kit.png(mask.resize((64, 64)))
    assert answer(client.send, bad).code == "bad_image"
    bad = kit.move_edit("e7")
    bad.image = kit.png_header(9000, 9000)  # 81 Mpx: refused from the header alone
    assert answer(client.send, bad).code == "image_too_large"

    corrupt = kit.move_edit("e8")
    corrupt.image = corrupt.image[:60] + bytes(len(corrupt.image) - 60)  # header fine, pixels broken
    assert answer(client.send, corrupt).id == "e8"
    assert client.expect((Error, Result), 30, "e8").code == "bad_image"
    empty_mask = kit.move_edit("e9", mask=kit.png(Image.new("L", (128, 128))))
    assert answer(client.send, empty_mask).id == "e9"
    error = client.expect((Error, Result), 30, "e9")
    assert error.code == "bad_input" and "empty" in error.message

    good = kit.move_edit()
    client.send(good)
    assert client.expect((Result, Error), 60, good.id).box[2] > 0


def test_oversized_message_drops_only_that_connection(server, client):
    client.send_raw(bytes(MAX_MESSAGE_MB * 2**20 + 1))
    assert client.receive(1.0) is None
    good = kit.move_edit()
    with kit.Client(server) as fresh:
        fresh.send(good)
        assert isinstance(fresh.expect((Result, Error), 60, good.id), Result)


def test_wrong_protocol_version_is_refused(client):
    client.send_map({"v": 2, "type": "hello"})
    error = client.expect((Error,))
    assert error.code == "unsupported_version" and "version 1" in error.message
    client.send_map({"v": "1", "type": "hello"})
    assert client.expect((Error,)).code == "bad_message"
    client.send(Hello())
    assert isinstance(client.expect((Welcome,)), Welcome)


def test_client_that_disconnects_fetches_its_result_from_a_new_connection(server):
    edit = kit.move_edit(steps=60)
    with kit.Client(server) as gone:
        gone.send(edit)
        gone.expect((Progress,), 30, edit.id)
    with kit.Client(server) as back:
        back.send(Fetch(id=edit.id))
        first = back.expect((Accepted, Result), 30, edit.id)
        result = first if isinstance(first, Result) else back.expect((Result,), 60, edit.id)
        back.send(Fetch(id=edit.id))
        assert back.expect((Result,), 10, edit.id) == result
        back.send(Fetch(id="never-sent"))
        error = back.expect((Error,), 10)
        assert (error.code, error.id) == ("unknown_request", "never-sent")


def test_duplicate_id_and_full_queue_are_refused(client):
    edits = [kit.move_edit(steps=LONG_STEPS) for _ in range(4)]
    client.send(edits[0])
    client.expect((Progress,), 30, edits[0].id)  # running: the queue is empty again
    for edit in edits[1:3]:
        client.send(edit)
        client.expect((Accepted,), 10, edit.id)
    client.send(edits[3])
    assert client.expect((Error,), 10, edits[3].id).code == "queue_full"
    client.send(kit.move_edit(edits[0].id))
    assert client.expect((Error,), 10, edits[0].id).code == "duplicate_id"
    for edit in edits[:3]:
        client.send(Cancel(id=edit.id))
    cancelled = {client.expect((Cancelled,), 30).id for _ in range(3)}
    assert cancelled == {edit.id for edit in edits[:3]}


def test_remote_edit_gives_the_in_process_picture(server):
    import torch

    from dragon_server.engine import EditRequest, Engine, Mode
    from dragon_server.serve.client import run_remote_edit

    image, mask = kit.scene()
    request = EditRequest(mode=Mode.MOVE, image=image, mask=mask, arrows=[(45, 55, 70, 60)], steps=6, seed=3)
    events = []
    remote = run_remote_edit(request, server, progress=events.append)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as many as the server uses: float sums then add up in the same order
    try:
        local = Engine.load("tiny", device="cpu").edit(request)
    finally:
        torch.set_num_threads(threads)
    assert remote.image.tobytes() == local.image.tobytes() and remote.image.mode == local.image.mode
    assert remote.mask.tobytes() == local.mask.tobytes()
    assert remote.box == local.box and remote.working_size == local.working_size
    assert events and events[-1].stage == "decode"


def test_status_command_prints_the_welcome(server, capsys):
    from dragon_server.cli import main

    assert main(["status", "--server", server]) == 0
    out = capsys.readouterr().out
    assert "tiny on cpu" in out and "state:    ready" in out


def test_bad_request_ids_and_modes_are_refused(client):
    for bad_id in ("has space", "x" * 65, ""):
        client.send_map(dict(kit.move_edit().to_wire(), id=bad_id))
        error = client.expect((Error,))
        assert error.code == "bad_field" and error.id is None
    client.send(Edit(id=uuid.uuid4().hex, mode="sideways", image=b""))
    assert client.expect((Error,)).code == "bad_field"


CTRL_C_CLIENT = """
import sys
sys.path.insert(0, {tests!r})
import serverkit as kit
from dragon_server.engine import EditRequest, Mode
from dragon_server.serve.client import run_remote_edit

image, mask = kit.scene()
request = EditRequest(mode=Mode.MOVE, image=image, mask=mask, arrows=[(45, 55, 70, 60)], steps={steps})
try:
    run_remote_edit(request, {server!r}, progress=lambda event: print(event.stage, flush=True))
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_in_a_remote_edit_cancels_it_on_the_server(server, client):
    script = CTRL_C_CLIENT.format(tests=str(pathlib.Path(__file__).parent), steps=LONG_STEPS, server=server)
    edit = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert edit.stdout.readline().strip() == "encode"
        edit.send_signal(signal.SIGINT)
        out, _ = edit.communicate(timeout=30)
    finally:
        edit.kill()
    assert out.splitlines()[-1] == "interrupted"
    client.send(Ping())
    assert client.expect((Pong,)).running == 0  # the server is free again: the edit was cancelled


def test_welcome_reports_reuse_of_a_repeated_picture(client):
    client.send(Hello(client="test"))
    before = client.expect((Welcome,)).cache
    assert set(before) == {"entries", "bytes", "max_bytes", "hits", "misses"}
    for seed in (0, 1):  # the same picture twice: the second edit reuses the first one's inversion
        edit = kit.move_edit(steps=4, seed=seed)
        client.send(edit)
        client.expect((Result,), 60, edit.id)
    client.send(Hello(client="test"))
    after = client.expect((Welcome,)).cache
    assert after["hits"] >= before["hits"] + 1
    assert after["entries"] >= 1 and 0 < after["bytes"] <= after["max_bytes"]
