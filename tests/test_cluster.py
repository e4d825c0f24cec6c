"""`dragon serve --replicas 2` over real sockets: two tiny engines as Ray actors (issue 14).

One server (and so one private Ray, on loopback only) for the whole module. Its tests need the cluster
extra (`pip install ".[cluster]"`, which install/test.sh installs) and are skipped only when Ray is not
installed; the routing, option and protocol tests at the end need no Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Dict, List

import msgpack
import pytest
from PIL import ImageDraw

import serverkit as kit
from dragon_protocol import (
    Accepted,
    Cancel,
    Cancelled,
    Edit,
    Error,
    Hello,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Result,
    Welcome,
    decode,
    encode,
)
from dragon_server.cli import main
from dragon_server.commands import serve as serve_command
from dragon_server.commands.serve import ray_installed
from dragon_server.serve.cluster import ClusterConfig, Replicas, choose_replica, routing_key
from dragon_server.serve.faults import Faults
from dragon_server.serve.jobs import Job, QueueFull

START_TIMEOUT = 420.0
"""Ray and two replicas that each import torch: about a minute on a loaded 2-core machine."""
RESTART_TIMEOUT = 300.0
CRASH_ID = "crash-me"
TERMINAL = (Result, Cancelled, Error)
LONG_STEPS = 400


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not ray_installed():
        pytest.skip('needs the cluster extra: pip install ".[cluster]"')
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("cluster")), ["--replicas", "2", "--queue", "2"],
        env={"DRAGON_TEST_FAULTS": f"crash@{CRASH_ID}"}, timeout=START_TIMEOUT,
    )
    family = descendants(process.process.pid)
    yield endpoint
    with kit.Client(endpoint) as client:  # stopping mid-edit cancels it on its replica and tells the client
        edit = picture_edit(2, steps=LONG_STEPS)
        client.send(edit)
        client.expect((Progress,), 60, edit.id)
        assert process.stop(signal.SIGTERM, timeout=120) == 0, process.console()
        assert client.expect(TERMINAL, 10, edit.id) == Cancelled(id=edit.id, reason="shutdown")
    assert "Ray stopped" in process.console() and "stopped" in process.console()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in family):
        time.sleep(0.5)
    assert not [pid for pid in family if alive(pid)], "Ray processes left running after the server stopped"


@pytest.fixture
def client(server):
    with kit.Client(server) as c:
        yield c


def descendants(root: int) -> List[int]:
    """Every process below `root` (Ray's GCS, raylet and workers below `dragon serve`)."""
    parents: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def picture_edit(shade: int, **fields) -> Edit:
    """A move edit of the test scene with a mark of `shade`: each shade is a different picture."""
    image, mask = kit.scene()
    ImageDraw.Draw(image).rectangle((100, 5, 120, 25), fill=(shade, 30, 200))
    return kit.move_edit(image=kit.png(image), mask=kit.png(mask), **fields)


def edits_for_each_replica(**fields) -> List[Edit]:
    """Two edits of different pictures that the server routes to replica 0 and replica 1."""
    chosen: Dict[int, Edit] = {}
    for shade in range(256):
        edit = picture_edit(shade, **fields)
        chosen.setdefault(choose_replica(routing_key(edit), 2), edit)
        if len(chosen) == 2:
            return [chosen[0], chosen[1]]
    raise AssertionError("no pictures for both replicas")


def replicas(client: kit.Client) -> List[dict]:
    client.send(Hello(client="test"))
    return client.expect((Welcome,)).replicas


def wait_until_ready(client: kit.Client, timeout: float) -> List[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = replicas(client)
        if all(r["state"] == "ready" for r in states):
            return states
        time.sleep(1.0)
    raise AssertionError(f"replicas not ready again within {timeout} s: {states}")


def run(client: kit.Client, edit: Edit, timeout: float = 120.0) -> List[object]:
    """Send `edit` and return everything about it up to and including its terminal message."""
    client.send(edit)
    seen: List[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = client.receive(deadline - time.monotonic())
        if getattr(message, "id", None) == edit.id:
            seen.append(message)
            if isinstance(message, TERMINAL):
                return seen
    raise AssertionError(f"no terminal message for {edit.id} within {timeout} s; saw {seen[-3:]}")


def terminals(client: kit.Client, ids: set, timeout: float) -> Dict[str, object]:
    """The terminal message of each of `ids`, in whatever order they end."""
    ended: Dict[str, object] = {}
    deadline = time.monotonic() + timeout
    while set(ended) != ids and time.monotonic() < deadline:
        message = client.receive(deadline - time.monotonic())
        if isinstance(message, TERMINAL) and message.id in ids:
            ended[message.id] = message
    assert set(ended) == ids, f"no terminal message within {timeout} s for {ids - set(ended)}"
    return ended


def test_welcome_shows_both_replicas_and_their_queues(client):
    client.send(Hello(client="test"))
    welcome = client.expect((Welcome,))
    assert welcome.state == "ready" and welcome.model == "tiny" and welcome.device == "cpu"
    assert welcome.queue_capacity == 4  # --queue 2 per replica
    assert [(r["index"], r["state"], r["device"], r["restarts"]) for r in welcome.replicas] == [
        (0, "ready", "cpu", 0), (1, "ready", "cpu", 0)
    ]


def test_progress_streams_then_the_result(client):
    edit = picture_edit(1, steps=6, preview_interval=0.001, preview_size=32)
    messages = run(client, edit)
    assert isinstance(messages[0], Accepted) and isinstance(messages[-1], Result)
    sampling = [m for m in messages if isinstance(m, Progress) and m.stage == "sampling"]
    assert [p.step for p in sampling] == list(range(1, 7)) and sampling[0].preview is not None
    assert messages[-1].box[2] > 0 and messages[-1].image is not None


def test_a_repeat_edit_runs_on_the_replica_that_keeps_its_picture(client):
    first, second = (picture_edit(7, steps=6, seed=seed) for seed in (0, 1))
    home = choose_replica(routing_key(first), 2)
    before = replicas(client)
    assert isinstance(run(client, first)[-1], Result)
    middle = replicas(client)
    assert isinstance(run(client, second)[-1], Result)
    after = replicas(client)
    assert middle[home]["misses"] == before[home]["misses"] + 1
    assert after[home]["hits"] == middle[home]["hits"] + 1  # the inversion was reused there
    assert after[1 - home] == before[1 - home]  # the other replica did not see the picture


def test_both_replicas_run_edits_at_the_same_time(client):
    edits = edits_for_each_replica(steps=LONG_STEPS)
    for edit in edits:
        client.send(edit)
    for edit in edits:
        client.expect((Progress,), 60, edit.id)
    client.send(Ping(nonce=3))
    assert client.expect((Pong,), 5).running == 2
    for edit in edits:
        client.send(Cancel(id=edit.id))
        assert client.expect(TERMINAL, 30, edit.id) == Cancelled(id=edit.id, reason="client")


def test_cancel_reaches_the_replica_and_stops_the_edit_within_a_step(client):
    edit = picture_edit(3, steps=LONG_STEPS)
    client.send(edit)
    client.expect((Progress,), 60, edit.id)
    while True:  # wait until it samples, so the stop is mid-edit
        progress = client.expect((Progress,), 60, edit.id)
        if progress.stage == "sampling":
            break
    client.send(Cancel(id=edit.id))
    started = time.monotonic()
    after: List[Progress] = []
    while True:
        message = client.expect((Progress,) + TERMINAL, 30, edit.id)
        if isinstance(message, TERMINAL):
            break
        after.append(message)
    assert message == Cancelled(id=edit.id, reason="client")
    assert time.monotonic() - started < 10
    # Steps already under way when the cancel was sent: the one running and those on their way back
    # (the lane looks for a cancel every 0.1 s, a tiny step takes about as long here); never more.
    assert len(after) <= 5, [(p.stage, p.step) for p in after]
    assert client.receive(1.0) is None  # nothing more about it


def test_a_full_replica_queue_answers_queue_full(client):
    same_picture = [picture_edit(5, steps=LONG_STEPS, seed=n) for n in range(4)]
    client.send(same_picture[0])
    client.expect((Progress,), 60, same_picture[0].id)
    for e in same_picture[1:]:
        client.send(e)
    replies = [client.expect((Accepted, Error), 30, e.id) for e in same_picture[1:]]
    # one runs and two wait on the picture's replica: the fourth finds its queue full, although the
    # other replica is idle (strict affinity, the default)
    assert [type(r).__name__ for r in replies] == ["Accepted", "Accepted", "Error"]
    assert replies[-1].code == "queue_full"
    for e in same_picture[:3]:
        client.send(Cancel(id=e.id))
        assert isinstance(client.expect(TERMINAL, 30, e.id), Cancelled)


def test_a_replica_killed_mid_edit_ends_it_once_restarts_and_both_serve_again(client):
    edit = picture_edit(9, request_id=CRASH_ID, steps=6)
    home = choose_replica(routing_key(edit), 2)
    messages = run(client, edit)
    terminal = messages[-1]
    assert isinstance(terminal, Error) and terminal.code == "engine_lost", terminal
    assert "send the edit again" in terminal.message
    assert any(isinstance(m, Progress) for m in messages)  # it died mid-edit, not before
    more = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # exactly one terminal message
        message = client.receive(0.5)
        if getattr(message, "id", None) == CRASH_ID:
            more.append(message)
    assert more == []

    resent = run(client, edit, timeout=RESTART_TIMEOUT)  # waits for the restart on its replica
    assert isinstance(resent[-1], Result), resent[-1]
    states = wait_until_ready(client, RESTART_TIMEOUT)
    assert states[home]["restarts"] == 1 and states[1 - home]["restarts"] == 0

    edits = edits_for_each_replica(steps=6)
    for e in edits:
        client.send(e)
    ended = terminals(client, {e.id for e in edits}, 120)
    assert all(isinstance(r, Result) for r in ended.values()), ended


# -- without Ray ------------------------------------------------------------------------------------


def test_the_routing_key_follows_the_picture_and_the_settings_of_its_inversion():
    edit = picture_edit(11, steps=6)
    key = routing_key(edit)
    assert routing_key(picture_edit(11, steps=6, seed=5, arrows=[(40.0, 50.0, 20.0, 20.0)])) == key
    assert routing_key(picture_edit(12, steps=6)) != key
    assert routing_key(picture_edit(11, steps=8)) != key
    assert routing_key(picture_edit(11, steps=6, prompt="a cat")) != key
    assert all(choose_replica(key, n) == choose_replica(routing_key(edit), n) < n for n in (1, 2, 3, 8))


def make_replicas(spill: bool) -> Replicas:
    replicas = Replicas(ClusterConfig(replicas=2, spill=spill), "tiny", "cpu", 1, None, Faults(), lambda event: None)
    for lane in replicas.lanes:
        lane.state = "ready"
    return replicas


def job(edit: Edit) -> Job:
    return Job(edit=edit, owner="", route=b"r", peer="test")


@pytest.mark.parametrize("spill", [False, True])
def test_an_edit_waits_for_its_pictures_replica_unless_spilling_is_on(spill):
    replicas = make_replicas(spill)
    same = [job(picture_edit(13, steps=6, seed=n)) for n in range(3)]
    home = replicas.lanes[choose_replica(routing_key(same[0].edit), 2)]
    assert replicas.put(same[0]) == 0
    assert home.jobs.take() is same[0]  # it runs on its replica
    if spill:
        assert replicas.put(same[1]) == 0 and replicas.lanes[1 - home.index].jobs.take() is same[1]
        assert replicas.put(same[2]) == 1  # both busy: back to its own replica's queue
        assert replicas.position(same[2]) == 1 and home.jobs.counts() == (1, 1)
    else:
        assert replicas.put(same[1]) == 1 and replicas.position(same[1]) == 1
        with pytest.raises(QueueFull):  # one place per replica here, although the other is idle
            replicas.put(same[2])
    assert replicas.counts() == (1, 2 if spill else 1)
    assert len(replicas.running_jobs()) == (2 if spill else 1)
    waiting = same[2] if spill else same[1]
    assert replicas.remove(waiting) and not replicas.remove(waiting)
    assert replicas.close() == []


def serve(*args: str) -> int:
    return main(["serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{kit.free_port()}", *args])


def test_replicas_without_ray_installed_is_one_line_naming_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(serve_command, "ray_installed", lambda: False)
    assert serve("--replicas", "2") == 2
    err = capsys.readouterr().err
    assert '.[cluster]' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["--replicas", "0"], ["--spill"]])
def test_bad_replica_options_are_one_line_and_exit_2(args, capsys):
    assert serve(*args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_crash_fault_needs_replicas(monkeypatch, capsys):
    monkeypatch.setenv("DRAGON_TEST_FAULTS", "crash@x")
    assert serve() == 2
    err = capsys.readouterr().err
    assert "crash@ID needs --replicas" in err and len(err.strip().splitlines()) == 1


def test_a_single_engine_server_never_imports_ray():
    code = ("import sys, dragon_server.cli as c, dragon_server.serve.server; c.build_parser(); "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_welcome_carries_replicas_and_refuses_malformed_ones():
    welcome = Welcome(
        protocol=1, server="dragon", state="ready", model="tiny", device="cpu", dtype="float32", modes=["move"],
        image_formats=["png"], limits={}, queued=0, running=1, queue_capacity=4,
        replicas=[{"index": 0, "state": "ready", "device": "cpu", "restarts": 1, "hits": 2}],
    )
    assert decode(encode(welcome)) == welcome
    body = welcome.to_wire()
    del body["replicas"]
    assert decode(msgpack.packb(body, use_bin_type=True)).replicas == []  # an older server: no replicas
    body["replicas"] = [{"index": [1]}]
    with pytest.raises(ProtocolError) as caught:
        decode(msgpack.packb(body, use_bin_type=True))
    assert caught.value.code == "bad_field" and "replicas" in str(caught.value)
