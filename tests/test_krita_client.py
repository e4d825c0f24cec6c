"""The plugin's non-blocking client and job queue against a stand-in ROUTER server (no Krita, no model)."""

import time

import pytest
import zmq
import zmq.auth

from dragon_krita.client import Client, check_address, load_curve_keys
from dragon_krita.edit import PreparedEdit
from dragon_krita.errors import PluginError
from dragon_krita.jobs import Host, Job, Jobs, finished_text, new_request_id, server_error, welcome_text
from dragon_krita.region import Rect
from dragon_protocol import (
    Accepted,
    Cancelled,
    Edit,
    Error,
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


def test_silent_server_gets_a_ping_then_times_out(router):
    clock = Clock()
    client, route = connected_client(router, clock)
    client.submit(edit())
    receive(router)
    clock.now = 16
    assert client.poll() == []
    _, ping = receive(router)
    assert ping.type == "ping"
    _, fetch = receive(router)
    assert fetch.type == "fetch" and fetch.id == "e1"
    clock.now = 25
    assert client.poll() == [], "one ping per silence"
    clock.now = 31
    events = client.poll()
    (error,) = events
    assert error.code == "timeout"


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
    assert "tiny on cpu" in welcome_text(welcome())
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


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
