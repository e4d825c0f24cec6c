"""The plugin's non-blocking client and job queue against a stand-in ROUTER server (no Krita, no model)."""

import time

import pytest
import zmq
import zmq.auth

from dragon_krita.client import Client, check_address, load_curve_keys
from dragon_krita.edit import PreparedEdit
from dragon_krita.errors import PluginError
from dragon_krita.jobs import (
    Host,
    Job,
    Jobs,
    edit_fraction,
    finished_text,
    new_request_id,
    progress_text,
    server_error,
    time_left,
    welcome_text,
)
from dragon_krita.region import Rect
from dragon_protocol import (
    Accepted,
    Cancelled,
    Edit,
    Error,
    Pong,
    Progress,
    Result,
    Welcome,
    decode,
    encode,
)

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082"
)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def router():
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    yield sock
    context.destroy(linger=0)


def receive(router):
    """(routing id, message) of the next client message, waiting up to 5 s."""
    assert router.poll(5000), "the client sent nothing"
    route, data = router.recv_multipart()
    return route, decode(data)


def welcome(**changes):
    fields = dict(
        protocol=1,
        server="test",
        state="ready",
        model="tiny",
        device="cpu",
        dtype="float32",
        modes=["move"],
        image_formats=["png"],
        limits={},
        queued=0,
        running=0,
        queue_capacity=8,
    )
    fields.update(changes)
    return Welcome(**fields)


def poll_until(client, count=1):
    events = []
    deadline = time.monotonic() + 5
    while len(events) < count and time.monotonic() < deadline:
        events += client.poll()
        time.sleep(0.01)
    return events


def endpoint(router):
    return router.getsockopt(zmq.LAST_ENDPOINT).decode()


def connected_client(router, clock=None):
    client = Client(endpoint(router), clock=clock or Clock(), context=router.context)
    client.connect()
    route, hello = receive(router)
    assert hello.type == "hello" and hello.client == "dragon_krita"
    router.send_multipart([route, encode(welcome())])
    assert isinstance(poll_until(client)[0], Welcome)
    return client, route


def edit(request_id="e1"):
    return Edit(id=request_id, mode="move", image=PNG, arrows=[(0, 0, 1, 1)])


def test_check_address():
    assert check_address(" tcp://127.0.0.1:5555 ") == "tcp://127.0.0.1:5555"
    assert check_address("ipc:///tmp/dragon") == "ipc:///tmp/dragon"
    for bad in ("localhost:5555", "tcp://host", "tcp://host:0", "tcp://:5555", "ipc://", ""):
        with pytest.raises(PluginError) as info:
            check_address(bad)
        assert info.value.code == "bad_address"


def test_hello_welcome_and_submit(router):
    client, route = connected_client(router)
    assert client.connected
    client.submit(edit())
    _, message = receive(router)
    assert message.type == "edit" and message.id == "e1"
    router.send_multipart([route, encode(Accepted(id="e1", position=0))])
    assert poll_until(client)[0] == Accepted(id="e1", position=0)
    client.cancel("e1")
    assert receive(router)[1].type == "cancel"
    router.send_multipart([route, encode(Cancelled(id="e1", reason="client"))])
    poll_until(client)
    assert not client.outstanding
    client.close()
    client.close()
    assert client.poll() == [] and not client.connected


def test_no_server_is_cannot_connect(router):
    clock = Clock()
    client = Client("tcp://127.0.0.1:1", clock=clock, timeout=5, context=router.context)
    client.connect()
    assert client.poll() == []
    clock.now = 6
    (error,) = client.poll()
    assert error.code == "cannot_connect" and "tcp://127.0.0.1:1" in str(error)
    assert client.socket is None


def test_silence_is_pinged_every_second_and_a_dead_server_noticed_within_five(router):
    clock = Clock()
    client, route = connected_client(router, clock)
    clock.now = 1.5
    assert client.poll() == []
    _, ping = receive(router)
    assert ping.type == "ping", "an idle connection is checked too"
    router.send_multipart([route, encode(Pong(nonce=ping.nonce, queued=3, running=1))])
    (pong,) = poll_until(client)
    assert pong == Pong(nonce=ping.nonce, queued=3, running=1), "the queue's state reaches the status line"
    client.submit(edit())
    receive(router)
    clock.now = 3.0
    client.poll()
    assert receive(router)[1].type == "ping"
    _, fetch = receive(router)
    assert fetch.type == "fetch" and fetch.id == "e1", "a restarted server answers unknown_request"
    clock.now = 3.5
    client.poll()
    assert not router.poll(200), "at most one ping a second"
    clock.now = 4.2
    client.poll()
    assert receive(router)[1].type == "ping" and not router.poll(200), "one fetch per silence"
    clock.now = 6.6  # silent for 5 s, but asked only 3.6 s ago (this test polls sparsely; Krita's timer does not)
    assert client.poll() == [] and client.connected
    clock.now = 7.1
    (error,) = client.poll()
    assert error.code == "timeout" and not client.connected


def test_a_long_pause_in_polling_asks_before_it_declares_the_server_gone(router):
    """A GUI thread busy for half a minute has heard nothing because it did not listen: it pings first."""
    clock = Clock()
    client, route = connected_client(router, clock)
    clock.now = 30.0
    assert client.poll() == [] and client.connected
    _, ping = receive(router)
    assert ping.type == "ping"
    router.send_multipart([route, encode(Pong(nonce=ping.nonce, queued=0, running=0))])
    clock.now = 30.2
    (pong,) = poll_until(client)
    assert pong.nonce == ping.nonce and client.connected


def test_submit_needs_a_connection(router):
    client = Client(endpoint(router), context=router.context)
    with pytest.raises(PluginError) as info:
        client.submit(edit())
    assert info.value.code == "not_connected"


def test_other_protocol_version_and_garbage(router):
    client, route = connected_client(router)
    router.send_multipart([route, b"\x92garbage"])
    (bad,) = poll_until(client)
    assert bad.code == "bad_reply"
    body = welcome().to_wire()
    body["v"] = 99
    import msgpack

    router.send_multipart([route, msgpack.packb(body)])
    (mismatch,) = poll_until(client)
    assert mismatch.code == "version_mismatch" and not client.connected


def test_curve_keys(tmp_path):
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(tmp_path), "client")
    keys = load_curve_keys(server_public, client_secret)
    assert keys[0] == zmq.auth.load_certificate(server_public)[0] and len(keys[2]) == 40
    for server_key, client_key in (
        (server_public, ""),
        ("", client_secret),
        (server_public, client_public),
        (str(tmp_path / "missing.key"), client_secret),
    ):
        with pytest.raises(PluginError) as info:
            load_curve_keys(server_key, client_key)
        assert info.value.code == "bad_key"


def test_encrypted_connection(tmp_path):
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    _, client_secret = zmq.auth.create_certificates(str(tmp_path), "client")
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.curve_publickey, router.curve_secretkey = zmq.auth.load_certificate(server_secret)
    router.curve_server = True
    router.bind("tcp://127.0.0.1:*")
    try:
        client = Client(endpoint(router), server_public, client_secret, context=context)
        client.connect()
        route, hello = receive(router)
        assert hello.type == "hello"
        client.close()
    finally:
        context.destroy(linger=0)


class RecordingHost(Host):
    def __init__(self):
        self.calls = []

    def job_changed(self, job):
        self.calls.append(("changed", job.id, job.state))

    def job_preview(self, job, png, box):
        self.calls.append(("preview", job.id, box))

    def job_result(self, job, result):
        if result.box == (0, 0, 0, 0):
            raise PluginError("nothing_changed")
        self.calls.append(("result", job.id))

    def job_failed(self, job, error):
        self.calls.append(("failed", job.id, error.code))

    def connection_changed(self, text, ok):
        self.calls.append(("connection", ok, text))


def job(request_id):
    return Job(PreparedEdit(edit(request_id), Rect(0, 0, 1, 1), "layer", [], bytes(4)), document="doc", node="node")


def test_jobs_follow_replies(router):
    host = RecordingHost()
    jobs = Jobs(host, lambda: Client(endpoint(router), context=router.context))
    with pytest.raises(PluginError):
        jobs.submit(job("a"))
    jobs.connect()
    route, _ = receive(router)
    router.send_multipart([route, encode(welcome(queued=2))])
    deadline = time.monotonic() + 5
    while not jobs.client.connected and time.monotonic() < deadline:
        jobs.poll()
    assert host.calls[-1] == ("connection", True, "Connected: tiny on cpu (float32), 2 queued, 0 running")
    router.send_multipart([route, encode(Pong(nonce=1, queued=0, running=1))])
    router.send_multipart([route, encode(Pong(nonce=2, queued=0, running=1))])
    deadline = time.monotonic() + 5
    while "1 running" not in host.calls[-1][2] and time.monotonic() < deadline:
        jobs.poll()
    jobs.poll()
    assert [c for c in host.calls if "running" in c[2]][-2:] == [
        ("connection", True, "Connected: tiny on cpu (float32), 2 queued, 0 running"),
        ("connection", True, "Connected: tiny on cpu (float32), 0 queued, 1 running"),
    ], "the status line follows the server's queue, once per change"
    for request_id in ("a", "b", "c", "d", "e", "e2"):
        jobs.submit(job(request_id))
        receive(router)
    replies = [
        Accepted(id="a", position=1),
        Progress(id="a", stage="sampling", step=2, total=4, preview=PNG, preview_box=(0, 0, 1, 1)),
        Result(id="a", image=PNG, mask=PNG, box=(0, 0, 1, 1), size=(1, 1), working_size=(1, 1)),
        Result(id="b", image=None, mask=None, box=(0, 0, 0, 0), size=(1, 1), working_size=(1, 1)),
        Error(id="c", code="bad_input", message="the mask is empty"),
        Cancelled(id="d", reason="client"),
        Error(id="e", code="unknown_request", message="no such edit"),
        Error(id=None, code="bad_message", message="what?"),
        Accepted(id="unknown", position=0),
    ]
    for reply in replies:
        router.send_multipart([route, encode(reply)])
    deadline = time.monotonic() + 5
    while len(jobs.running()) > 1 and time.monotonic() < deadline:
        jobs.poll()
    jobs.poll()
    calls = [c for c in host.calls if c[0] != "changed" or c[1] == "a"]
    assert ("changed", "a", "queued") in calls and ("changed", "a", "running") in calls
    assert ("preview", "a", (0, 0, 1, 1)) in calls and ("result", "a") in calls
    assert ("failed", "b", "nothing_changed") in calls
    assert ("failed", "c", "server_bad_input") in calls
    assert ("failed", "d", "cancelled") in calls
    assert any(c[0] == "connection" and "what?" in c[2] for c in calls)
    assert ("failed", "e", "server_lost") in calls
    assert [j.id for j in jobs.running()] == ["e2"]
    jobs.cancel()
    assert receive(router)[1].type == "cancel"
    jobs.drop(lambda j: j.document == "doc", PluginError("document_closed"))
    assert jobs.running() == [] and host.calls[-1] == ("failed", "e2", "document_closed")
    jobs.submit(job("f"))
    jobs.disconnect()
    assert host.calls[-1] == ("failed", "f", "not_connected")


def test_jobs_report_bad_addresses():
    host = RecordingHost()
    jobs = Jobs(host, lambda: Client("nonsense"))
    jobs.connect()
    assert host.calls[-1][:2] == ("connection", False) and "tcp://127.0.0.1:5555" in host.calls[-1][2]


def test_server_error_wording_and_ids():
    assert server_error(Error(id="x", code="queue_full", message="full")).code == "server_busy"
    assert server_error(Error(id="x", code="out_of_memory", message="oom")).code == "server_memory"
    assert "oom" in str(server_error(Error(id="x", code="internal_error", message="oom")))
    assert server_error(Error(id="x", code="model_unavailable", message="no weights")).code == "server_model"
    assert "tiny on cpu" in welcome_text(welcome(), 0, 0)
    assert server_error(Error(id="x", code="shutting_down", message="bye")).code == "server_shutdown"
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


class LosingHost(RecordingHost):
    """A host whose edited layers can be deleted."""

    def __init__(self):
        super().__init__()
        self.deleted = set()

    def job_lost(self, job):
        return job.id in self.deleted


def connected_jobs(router, clock, host):
    jobs = Jobs(host, lambda: Client(endpoint(router), clock=clock, context=router.context), clock=clock)
    jobs.connect()
    route, hello = receive(router)
    assert hello.type == "hello"
    router.send_multipart([route, encode(welcome())])
    deadline = time.monotonic() + 5
    while not (jobs.client and jobs.client.connected) and time.monotonic() < deadline:
        jobs.poll()
    assert jobs.client.connected
    return jobs, route


def test_dead_server_is_noticed_and_a_restarted_one_reconnected(router):
    clock, host = Clock(), LosingHost()
    jobs, route = connected_jobs(router, clock, host)
    jobs.submit(job("a"))
    receive(router)
    clock.now = 1.0  # Krita's timer polls: the silence is asked about
    jobs.poll()
    clock.now = 5.5  # the server died: nothing comes back
    jobs.poll()
    assert ("failed", "a", "timeout") in host.calls
    lost = [c for c in host.calls if c[0] == "connection"][-1]
    assert lost[1] is False and "stopped answering" in lost[2] and "reconnects" in lost[2]
    while router.poll(100):
        router.recv_multipart()  # pings sent before the loss, some still on their way
    jobs.poll()
    late = [decode(router.recv_multipart()[1]).type for _ in range(5) if router.poll(200)]
    assert jobs.client is None and "hello" not in late, f"no retry before its time: {late}"
    clock.now = 9.0
    jobs.poll()
    route, hello = receive(router)
    assert hello.type == "hello", "the plugin tries the same address again by itself"
    router.send_multipart([route, encode(welcome(queued=1))])
    deadline = time.monotonic() + 5
    while not jobs.client.connected and time.monotonic() < deadline:
        jobs.poll()
    assert host.calls[-1] == ("connection", True, "Connected: tiny on cpu (float32), 1 queued, 0 running")


def test_shutdown_and_deleted_layers_end_edits_with_their_own_words(router):
    clock, host = Clock(), LosingHost()
    jobs, route = connected_jobs(router, clock, host)
    for request_id in ("a", "b"):
        jobs.submit(job(request_id))
        receive(router)
    router.send_multipart([route, encode(Cancelled(id="a", reason="shutdown"))])
    deadline = time.monotonic() + 5
    while len(jobs.running()) > 1 and time.monotonic() < deadline:
        jobs.poll()
    (failure,) = [c for c in host.calls if c[0] == "failed"]
    assert failure == ("failed", "a", "server_shutdown")
    assert "shut down" in str(PluginError("server_shutdown")) and "cancelled" not in str(PluginError("server_shutdown"))
    host.deleted.add("b")
    jobs.poll()
    assert host.calls[-1] == ("failed", "b", "layer_gone") and jobs.running() == []
    _, cancel = receive(router)
    assert cancel.type == "cancel" and cancel.id == "b", "deleting the edited layer cancels it on the server"


def test_one_progress_bar_spans_every_stage():
    stages = [("encode", 1, 1)] + [("inversion", s, 10) for s in range(11)]
    stages += [("sampling", s, 10) for s in range(11)] + [("decode", 1, 1)]
    fractions = [edit_fraction("move", 10, *stage) for stage in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 0.05
    assert 0.3 < edit_fraction("move", 10, "sampling", 0, 10) < 0.4, "sampling steps weigh double"
    paste = edit_fraction("paste", 10, "sampling", 0, 10)
    assert paste > edit_fraction("paste", 10, "reference", 0, 10) and paste == pytest.approx(0.5)
    assert edit_fraction("move", 10, "mystery", 1, 1) == 0.0
    assert time_left(0.25, 10.0) == pytest.approx(30.0) and time_left(0.01, 2.0) == pytest.approx(198.0)
    assert time_left(0.0, 5.0) is None and time_left(0.5, 0.5) is None, "no guess before there is data"
    running = job("a")
    running.state, running.stage, running.step, running.total = "running", "sampling", 5, 10
    running.fraction, running.started = 0.5, 100.0
    assert progress_text(running, 108.0, 2) == "Sampling 5/10, about 8 s left (+2 queued)"
    assert progress_text(job("b"), 0.0, 0) == "Sending"


def test_a_server_still_loading_says_so_until_it_is_ready(router):
    clock, host = Clock(), RecordingHost()
    jobs = Jobs(host, lambda: Client(endpoint(router), clock=clock, context=router.context), clock=clock)
    jobs.connect()
    route, _ = receive(router)
    router.send_multipart([route, encode(welcome(state="loading", device="", dtype=""))])
    deadline = time.monotonic() + 5
    while not (jobs.client and jobs.client.connected) and time.monotonic() < deadline:
        jobs.poll()
    assert host.calls[-1] == ("connection", True, "Connected: the server is still loading tiny; 0 queued, 0 running")
    router.send_multipart([route, encode(Pong(nonce=1, queued=0, running=0))])
    _, hello = receive(router) if poll_jobs_until(jobs, router) else (None, None)
    assert hello is not None and hello.type == "hello", "a pong while loading asks for a fresh welcome"
    router.send_multipart([route, encode(welcome())])
    deadline = time.monotonic() + 5
    while "cpu" not in host.calls[-1][2] and time.monotonic() < deadline:
        jobs.poll()
    assert host.calls[-1] == ("connection", True, "Connected: tiny on cpu (float32), 0 queued, 0 running")
    assert "could not load" in welcome_text(welcome(state="failed"), 0, 0)


def poll_jobs_until(jobs, router):
    """Poll the jobs until the stand-in server has a message waiting (True), or 5 s pass (False)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        jobs.poll()
        if router.poll(10):
            return True
    return False


def test_a_result_with_warnings_is_reported_with_them(router):
    host = RecordingHost()
    jobs = Jobs(host, lambda: Client(endpoint(router), context=router.context))
    jobs.connect()
    route, _ = receive(router)
    router.send_multipart([route, encode(welcome())])
    deadline = time.monotonic() + 5
    while not jobs.client.connected and time.monotonic() < deadline:
        jobs.poll()
    done = job("w")
    jobs.submit(done)
    receive(router)
    warning = "the prompt is longer than the 75 tokens the text encoder reads; these words were dropped: at dusk"
    router.send_multipart([route, encode(Result(id="w", image=PNG, mask=PNG, box=(0, 0, 1, 1), size=(1, 1),
                                                working_size=(1, 1), warnings=[warning]))])
    deadline = time.monotonic() + 5
    while ("result", "w") not in host.calls and time.monotonic() < deadline:
        jobs.poll()
    assert finished_text(done, None) == f'Added layer "layer". Note: {warning}.'
    assert finished_text(job("x"), None) == 'Added layer "layer".'
    assert finished_text(done, PluginError("nothing_changed")) == str(PluginError("nothing_changed"))
