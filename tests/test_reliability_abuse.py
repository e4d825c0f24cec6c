"""Abuse (issue 15): what a hostile or careless client can no longer do to `dragon serve`.

Confidentiality between keys, a range for every setting, a fair share of the queue and a bound on one
edit's work, memory and log lines under floods, big and odd pictures, shutdown under a full send queue,
and clients that are refused. Loopback only; counts scale with DRAGON_SOAK (see campaign.py).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import zmq
import zmq.auth

import serverkit as kit
from campaign import record
from dragon_protocol import Accepted, Cancelled, Error, Fetch, Ping, Pong, Progress, Result
from dragon_server.cli import main

TERMINAL = (Result, Cancelled, Error)


# -- 1. confidentiality -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs made by `dragon keys`: the server's and two allowed clients', the painter and the snoop."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("server", "painter", "snoop"):
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
