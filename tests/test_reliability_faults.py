"""Faults (issue 6, part 3): a client killed mid-edit, the server stopped or restarted under connected
clients (raw, `dragon edit --server` and the Krita plugin's client), an injected out-of-memory error, and
a client that does not read. Nothing is lost, nothing hangs, and the server goes on serving."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import List

import pytest
import zmq

import serverkit as kit
from campaign import record, rss_kib
from dragon_krita.client import Client as PluginClient
from dragon_krita.errors import PluginError
from dragon_protocol import Accepted, Cancelled, Error, Fetch, Ping, Pong, Progress, Result, Welcome
from dragon_server.cli import main

TESTS = pathlib.Path(__file__).parent
TERMINAL = (Result, Cancelled, Error)


def ping_ms(client: kit.Client, nonce: int) -> float:
    """Round trip of one ping, in milliseconds (other messages on the way are skipped)."""
    started = time.monotonic()
    client.send(Ping(nonce=nonce))
    while True:
        message = client.expect((Pong,), 10)
        if message.nonce == nonce:
            return (time.monotonic() - started) * 1000


def plugin_events(plugin: PluginClient, until, timeout: float = 60.0) -> List[object]:
    """Poll the plugin's client (as Krita's timer does) until `until(events)` holds."""
    events: List[object] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += plugin.poll()
        if until(events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"the plugin's client did not get there; events: {events[-5:]}")


def terminal_for(request_id: str):
    return lambda events: any(isinstance(e, TERMINAL) and e.id == request_id for e in events)


# -- out of memory ------------------------------------------------------------------------------------


def test_bad_fault_spec_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("DRAGON_TEST_FAULTS", "explode@1")
    assert main(["serve", "--model", "tiny", "--bind", f"tcp://127.0.0.1:{kit.free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "DRAGON_TEST_FAULTS" in err and len(err.strip().splitlines()) == 1


def test_out_of_memory_fails_that_edit_only_and_the_next_succeeds(tmp_path, monkeypatch):
    monkeypatch.setenv("DRAGON_TEST_FAULTS", "oom@2")
    process, endpoint = kit.start_server(str(tmp_path), [])
    try:
        with kit.Client(endpoint) as client:
            ends = []
            for number in range(3):
                edit = kit.move_edit(f"oom-{number}", steps=3)
                client.send(edit)
                ends.append(client.expect(TERMINAL, 60, edit.id))
        assert isinstance(ends[0], Result) and isinstance(ends[2], Result)
        assert isinstance(ends[1], Error) and ends[1].code == "out_of_memory"
        assert "working area" in ends[1].message
    finally:
        assert process.stop() == 0
    console = process.console()
    assert "test-only fault injection is on" in console
    assert "request oom-1: out_of_memory" in console and "request oom-2: result" in console
    record("faults: out-of-memory errors injected")


# -- a client killed mid-edit -------------------------------------------------------------------------

KILLED_CLIENT = """
import sys
sys.path.insert(0, {tests!r})
import time
import serverkit as kit
from dragon_protocol import Progress

with kit.Client({endpoint!r}) as client:
    edit = kit.move_edit({request_id!r}, steps=60)
    client.send(edit)
    client.expect((Progress,), 60, edit.id)
    print("running", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, endpoint = kit.start_server(str(tmp_path_factory.mktemp("faults")), ["--queue", "4"])
    yield process, endpoint
    assert process.stop() == 0, process.console()


def test_client_killed_mid_edit_reconnects_and_fetches_its_result(server):
    process, endpoint = server
    request_id = "killed-client-edit"
    script = KILLED_CLIENT.format(tests=str(TESTS), endpoint=endpoint, request_id=request_id)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "running"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    record("faults: clients killed with SIGKILL mid-edit")
    with kit.Client(endpoint) as back:
        back.send(Fetch(id=request_id))
        first = back.expect((Accepted, Result), 10, request_id)
        result = first if isinstance(first, Result) else back.expect((Result,), 60, request_id)
        assert result.box[2] > 0
        back.send(Fetch(id=request_id))
        assert back.expect((Result,), 10, request_id) == result


# -- a client that does not read ----------------------------------------------------------------------


def test_client_that_does_not_read_neither_blocks_the_server_nor_loses_its_result(server):
    """A client that stops reading (a frozen GUI, a stalled link) fills its queues; the server drops its
    progress beyond SEND_QUEUE_MESSAGES (and, after the heartbeat timeout, the connection) instead of
    waiting or buffering without bound. Its result is kept: it arrives when the client reads again, or
    by `fetch` once ZeroMQ has reconnected."""
    process, endpoint = server
    steps = 100
    stuck = zmq.Context.instance().socket(zmq.DEALER)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.ROUTING_ID, b"stuck-" + os.urandom(8).hex().encode())  # as PROTOCOL.md recommends
    stuck.setsockopt(zmq.RCVHWM, 1)  # as little as ZeroMQ allows: the rest waits in TCP and on the server
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.connect(endpoint)
    edit = kit.move_edit("never-reads", steps=steps, preview_interval=0.000001, preview_size=1024)
    before = rss_kib(process.process.pid)
    try:
        stuck.send(kit.encode(edit))
        slowest = 0.0
        with kit.Client(endpoint) as other:
            for nonce in range(10**6):
                slowest = max(slowest, ping_ms(other, nonce))
                other.send(Fetch(id=edit.id))
                reply = other.expect((Accepted, Result, Error), 10, edit.id)
                if isinstance(reply, Result):
                    break
                time.sleep(0.1)
            during = rss_kib(process.process.pid)
        messages = drain(stuck, quiet=2.0)
        pushed = [m for m in messages if isinstance(m, Result)]
        if not pushed:
            stuck.send(kit.encode(Fetch(id=edit.id)))
            messages += drain(stuck, quiet=2.0, stop=lambda m: isinstance(m, Result))
    finally:
        stuck.close(0)
    assert slowest < 2000, f"a ping took {slowest:.0f} ms while a client was not reading"
    results = [m for m in messages if isinstance(m, Result)]
    assert results and all(r == reply for r in results) and len(pushed) <= 1
    growth_mb = (during - before) / 1024
    assert growth_mb < 150, f"the server grew by {growth_mb:.0f} MiB for a client that does not read"
    progress = sum(isinstance(m, Progress) for m in messages)
    record("faults: clients that do not read")
    record("faults: results of clients that did not read, " + ("pushed when it read again" if pushed else "fetched"))
    record("faults: progress messages dropped for the client that does not read", 2 * steps + 4 - progress)


class FullThenFree:
    """A stand-in for the server's socket: its client's send queue is full until `full` is cleared."""

    def __init__(self):
        self.full = True
        self.sent: List[List[bytes]] = []

    def send_multipart(self, frames: List[bytes], flags: int = 0) -> None:
        if self.full:
            raise zmq.Again()
        self.sent.append(frames)


@pytest.mark.parametrize("then", ["reads again", "fetches"])
def test_a_terminal_message_that_meets_a_full_queue_arrives_exactly_once(then):
    from dragon_server.serve.jobs import Job
    from dragon_server.serve.server import Server, ServerConfig

    server = Server(ServerConfig(binds=[]))
    real, fake = server.front, FullThenFree()
    server.front = fake
    try:
        job = Job(edit=kit.move_edit("slow-reader"), owner="", route=b"route", peer="?")
        server.active[job.key] = job
        server._finish(job, b"terminal")
        server._retry()
        assert fake.sent == [] and job.key in server.undelivered
        fake.full = False
        if then == "fetches":
            server._on_fetch(Fetch(id="slow-reader"), "", b"route")
        server._retry()
        server._retry()
        assert fake.sent == [[b"route", b"terminal"]] and not server.undelivered
    finally:
        server.front = real
        server.close()


def drain(socket: zmq.Socket, quiet: float, stop=lambda message: False) -> List[object]:
    """Read `socket` until `quiet` seconds pass without a message, or `stop(message)`."""
    messages: List[object] = []
    while socket.poll(int(quiet * 1000)):
        messages.append(kit.decode(socket.recv()))
        if stop(messages[-1]):
            break
    return messages


# -- the server stopped, or restarted, under connected clients ---------------------------------------


def cli_edit(tmp_path: pathlib.Path, endpoint: str, steps: int) -> subprocess.Popen:
    """`dragon edit --server` on the test scene, as a subprocess."""
    image, mask = kit.scene()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    return subprocess.Popen(
        kit.DRAGON + ["edit", str(tmp_path / "in.png"), "--mode", "move", "--mask", str(tmp_path / "mask.png"),
                      "--arrow", "45,55,70,60", "--steps", str(steps), "--out", str(tmp_path / "out.png"),
                      "--json", "--server", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def wait_running(client: kit.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client.send(Ping(nonce=1))
        if client.expect((Pong,), 10).running:
            return
        time.sleep(0.1)
    raise AssertionError("nothing started running")


def test_sigterm_mid_edit_tells_every_client_and_exits_promptly(tmp_path):
    process, endpoint = kit.start_server(str(tmp_path), [])
    plugin = PluginClient(endpoint, timeout=5.0)
    try:
        plugin.connect()
        plugin_events(plugin, lambda events: any(isinstance(e, Welcome) for e in events))
        with kit.Client(endpoint) as raw:
            running = kit.move_edit("stop-running", steps=400)
            raw.send(running)
            raw.expect((Progress,), 30, running.id)
            queued = kit.move_edit("stop-plugin", steps=4)
            plugin.submit(queued)
            plugin_events(plugin, lambda events: any(isinstance(e, Accepted) for e in events))
            stopped = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            assert raw.expect(TERMINAL, 30, running.id) == Cancelled(id=running.id, reason="shutdown")
            events = plugin_events(plugin, terminal_for(queued.id), 30)
            assert Cancelled(id=queued.id, reason="shutdown") in events
            assert process.process.wait(30) == 0
            assert time.monotonic() - stopped < 10, "the server took long to stop"
    finally:
        plugin.close()
        process.stop()
    record("faults: server stopped with SIGTERM mid-edit")


def test_server_restart_under_the_cli_and_the_plugin_both_reconnect_by_themselves(tmp_path):
    endpoint = f"tcp://127.0.0.1:{kit.free_port()}"
    first, _ = kit.start_server(str(tmp_path), [], endpoint=endpoint)
    plugin = PluginClient(endpoint, timeout=5.0)
    cli = None
    second = None
    try:
        plugin.connect()
        plugin_events(plugin, lambda events: any(isinstance(e, Welcome) for e in events))
        cli = cli_edit(tmp_path, endpoint, steps=60)
        with kit.Client(endpoint) as watcher:
            wait_running(watcher)
        lost = kit.move_edit("plugin-during-restart", steps=4)
        plugin.submit(lost)
        plugin_events(plugin, lambda events: any(isinstance(e, Accepted) for e in events))

        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(30) == 0
        events = plugin_events(plugin, terminal_for(lost.id), 30)
        assert Cancelled(id=lost.id, reason="shutdown") in events
        os.rename(tmp_path / "server.log", tmp_path / "first.log")
        second, _ = kit.start_server(str(tmp_path), [], endpoint=endpoint)
        record("faults: server restarts under connected clients")

        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 0, err
        assert json.loads(out)["box"][2] > 0 and (tmp_path / "out.png").exists()
        after = kit.move_edit("plugin-after-restart", steps=4)
        assert plugin.connected
        plugin.submit(after)  # the same client object, no connect(): ZeroMQ reconnected underneath
        events = plugin_events(plugin, terminal_for(after.id), 60)
        assert any(isinstance(e, Result) and e.id == after.id for e in events)
        assert not any(isinstance(e, PluginError) for e in events), events
    finally:
        plugin.close()
        if cli is not None and cli.poll() is None:
            cli.kill()
        first.stop()
        if second is not None:
            assert second.stop() == 0
    assert "request" in second.console() and "result" in second.console()


def test_server_killed_and_restarted_the_plugin_learns_its_edit_is_lost(tmp_path):
    """A crash loses what was queued or running (only a clean stop can say so). The plugin's liveness
    check asks about its outstanding edits, so the restarted server's `unknown_request` ends them
    instead of leaving the painter waiting forever."""
    endpoint = f"tcp://127.0.0.1:{kit.free_port()}"
    first, _ = kit.start_server(str(tmp_path), [], endpoint=endpoint)
    plugin = PluginClient(endpoint, timeout=2.0)
    second = None
    try:
        plugin.connect()
        plugin_events(plugin, lambda events: any(isinstance(e, Welcome) for e in events))
        edit = kit.move_edit("lost-in-a-crash", steps=400)
        plugin.submit(edit)
        plugin_events(plugin, lambda events: any(isinstance(e, Progress) for e in events))
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
        os.rename(tmp_path / "server.log", tmp_path / "first.log")
        second, _ = kit.start_server(str(tmp_path), [], endpoint=endpoint)
        events = plugin_events(plugin, terminal_for(edit.id), 30)
        ends = [e for e in events if isinstance(e, TERMINAL) and e.id == edit.id]
        assert len(ends) == 1 and ends[0].code == "unknown_request"
        assert plugin.connected and not plugin.outstanding
    finally:
        plugin.close()
        first.stop()
        if second is not None:
            assert second.stop() == 0
    record("faults: servers killed with SIGKILL mid-edit")
