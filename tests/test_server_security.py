"""CurveZMQ and bind rules: allowed keys are served, unknown keys and plain clients are not; public
addresses need keys; `dragon keys` makes usable key pairs; SIGTERM cancels running work cleanly."""

from __future__ import annotations

import shutil
import signal
from typing import Tuple

import pytest
import zmq.auth

import serverkit as kit
from dragon_protocol import Accepted, Cancelled, Error, Fetch, Hello, Progress, Result
from dragon_server.cli import main
from dragon_server.serve.client import run_remote_edit


def dragon(capsys, *args: str) -> Tuple[int, str, str]:
    """Run the `dragon` command in this process (the server itself always runs in its own)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs made by `dragon keys`: the server's, an allowed client's and a stranger's."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "laptop", "desk", "stranger"):
        assert main(["keys", name, "--dir", str(root / name)]) == 0
    (root / "allowed").mkdir()
    shutil.copy(root / "laptop" / "laptop.key", root / "allowed")
    shutil.copy(root / "desk" / "desk.key", root / "allowed")
    return root


@pytest.fixture(scope="module")
def curve_server(keys, tmp_path_factory):
    server_key = zmq.auth.load_certificate(str(keys / "server" / "server.key"))[0]
    laptop = zmq.auth.load_certificate(str(keys / "laptop" / "laptop.key_secret"))
    process, endpoint = kit.start_server(
        str(tmp_path_factory.mktemp("curve")),
        ["--keys", str(keys / "server"), "--allowed-clients", str(keys / "allowed")],
        server_key=server_key, client_pair=laptop,
    )
    yield endpoint, server_key
    assert process.stop() == 0, process.console()


def test_keys_refuses_to_overwrite_a_pair(keys, capsys):
    code, _, err = dragon(capsys, "keys", "laptop", "--dir", str(keys / "laptop"))
    assert code == 1 and "exists already" in err and len(err.splitlines()) == 1
    assert (keys / "laptop" / "laptop.key_secret").stat().st_mode & 0o077 == 0


def test_allowed_key_is_served(curve_server, keys):
    endpoint, _ = curve_server
    from dragon_server.engine import EditRequest, Mode

    image, mask = kit.scene()
    request = EditRequest(mode=Mode.MOVE, image=image, mask=mask, arrows=[(45, 55, 70, 60)], steps=4)
    result = run_remote_edit(
        request, endpoint, str(keys / "server" / "server.key"), str(keys / "laptop" / "laptop.key_secret")
    )
    assert result.image.size == (128, 128) and result.box[2] > 0


def test_requests_belong_to_the_key_that_sent_them(curve_server, keys):
    endpoint, server_key = curve_server
    laptop = zmq.auth.load_certificate(str(keys / "laptop" / "laptop.key_secret"))
    desk = zmq.auth.load_certificate(str(keys / "desk" / "desk.key_secret"))
    edit = kit.move_edit(steps=4)
    with kit.Client(endpoint, server_key=server_key, client_pair=laptop) as mine:
        mine.send(edit)
        result = mine.expect((Result,), 60, edit.id)
    with kit.Client(endpoint, server_key=server_key, client_pair=desk) as other:
        other.send(Fetch(id=edit.id))
        assert other.expect((Error, Result), 10).code == "unknown_request"
    with kit.Client(endpoint, server_key=server_key, client_pair=laptop) as mine_again:
        mine_again.send(Fetch(id=edit.id))
        assert mine_again.expect((Result,), 10, edit.id) == result


@pytest.mark.parametrize("who", ["stranger", "plain", "wrong server key"])
def test_unknown_key_and_plain_client_get_no_service(curve_server, keys, who):
    endpoint, server_key = curve_server
    name = "laptop" if who == "wrong server key" else "stranger"
    pair = zmq.auth.load_certificate(str(keys / name / f"{name}.key_secret"))
    if who == "wrong server key":  # an allowed client that trusts another server's key: the handshake fails
        server_key = zmq.auth.load_certificate(str(keys / "desk" / "desk.key"))[0]
    options = {} if who == "plain" else dict(server_key=server_key, client_pair=pair)
    with kit.Client(endpoint, **options) as client:
        client.send(Hello())
        assert client.receive(2.0) is None


def test_status_with_keys(curve_server, keys, capsys):
    endpoint, _ = curve_server
    args = ["status", "--server", endpoint, "--timeout", "2", "--server-key", str(keys / "server" / "server.key")]
    code, out, err = dragon(capsys, *args, "--client-key", str(keys / "laptop" / "laptop.key_secret"))
    assert code == 0 and "tiny" in out, err
    code, _, err = dragon(capsys, *args, "--client-key", str(keys / "stranger" / "stranger.key_secret"))
    assert code == 1 and "no answer" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bind", "tcp://0.0.0.0:{port}"], "refusing to listen on tcp://0.0.0.0"),
        (["--bind", "tcp://127.0.0.1:{port}", "--bind", "tcp://*:{port2}"], "refusing to listen on tcp://*"),
        (["--keys", "{keys}/server", "--insecure", "--allowed-clients", "{keys}/allowed"], "exclude each other"),
        (["--keys", "{keys}/server"], "go together"),
        (["--keys", "{keys}/laptop/laptop.key", "--allowed-clients", "{keys}/allowed"], "no secret key"),
        (["--keys", "{keys}/server", "--allowed-clients", "{keys}/server/none"], "does not exist"),
        (["--bind", "udp://127.0.0.1:5555"], "is not an endpoint"),
    ],
)
def test_serve_refuses_unsafe_or_wrong_options_before_loading(keys, capsys, args, message):
    values = dict(port=kit.free_port(), port2=kit.free_port(), keys=keys)
    code, _, err = dragon(capsys, "serve", "--model", "tiny", *[a.format(**values) for a in args])
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1


def test_sigterm_cancels_running_work_tells_the_client_and_exits_cleanly(tmp_path):
    public = f"tcp://0.0.0.0:{kit.free_port()}"  # Linux connects to 0.0.0.0 through loopback
    process, endpoint = kit.start_server(str(tmp_path), ["--insecure"], endpoint=public)
    try:
        assert "WARNING: listening on tcp://0.0.0.0" in process.console()
        with kit.Client(endpoint) as client:
            running, waiting = kit.move_edit(steps=400), kit.move_edit(steps=400)
            client.send(running)
            client.expect((Progress,), 30, running.id)
            client.send(waiting)
            client.expect((Accepted,), 10, waiting.id)
            process.process.send_signal(signal.SIGTERM)
            ends = [client.expect((Cancelled, Error, Result), 30) for _ in range(2)]
            assert sorted(ends, key=lambda m: m.id) == sorted(
                [Cancelled(id=running.id, reason="shutdown"), Cancelled(id=waiting.id, reason="shutdown")],
                key=lambda m: m.id,
            )
            client.send(Fetch(id=running.id))
            assert client.receive(1.0) is None
        code = process.process.wait(30)
    finally:
        process.stop()
    console = process.console()
    assert code == 0 and "SIGTERM received: stopping" in console and console.rstrip().endswith("stopped")
    assert f"request {running.id}: cancelled" in console

