"""The server's pieces on their own: endpoint rules, the result store's bounds, the job queue's order."""

from __future__ import annotations

import logging
import threading

import pytest
import zmq

import serverkit as kit
from dragon_server.cli import main
from dragon_server.serve.endpoints import EndpointError, check_endpoint, is_loopback
from dragon_server.serve.jobs import Job, JobQueue, QueueFull
from dragon_server.serve.store import ENTRY_OVERHEAD, ResultStore


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/dragon.sock", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://gpu-box.example.org:5555", False),
    ],
)
def test_only_loopback_and_ipc_count_as_local(endpoint, local):
    assert is_loopback(check_endpoint(endpoint)) is local


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5555", "udp://127.0.0.1:5", "tcp://127.0.0.1", "tcp://:5", "tcp://h:0"])
def test_malformed_endpoints_are_refused(endpoint):
    with pytest.raises(EndpointError):
        check_endpoint(endpoint)


def test_store_drops_old_results_and_the_oldest_above_its_memory():
    now = [0.0]
    each = ENTRY_OVERHEAD  # counted for every kept message besides its bytes
    store = ResultStore(keep_seconds=10, max_bytes=10 + 3 * each, clock=lambda: now[0])
    store.put("a", b"1234")
    now[0] = 5
    store.put("b", b"5678")
    assert store.get("a") == b"1234" and store.nbytes == 8 + 2 * each
    now[0] = 8
    store.put("c", b"90")
    store.put("d", b"x")  # 11 bytes in 4 messages: the oldest goes
    assert store.get("a") is None and store.get("b") == b"5678" and store.nbytes == 7 + 3 * each
    store.put("huge", b"y" * (11 + 2 * each))  # over the whole budget: not kept, nothing else lost
    assert store.get("huge") is None and len(store) == 3
    now[0] = 15.5
    assert store.get("b") is None and store.get("c") == b"90"
    now[0] = 100
    store.expire()
    assert len(store) == 0 and store.nbytes == 0


def test_queue_is_fifo_bounded_and_counts_what_is_ahead():
    jobs = [Job(edit=kit.move_edit(f"j{i}"), owner="", route=b"r", peer="p") for i in range(4)]
    queue = JobQueue(capacity=2)
    assert queue.put(jobs[0]) == 0
    assert queue.take() is jobs[0]
    assert queue.put(jobs[1]) == 1 and queue.put(jobs[2]) == 2
    with pytest.raises(QueueFull):
        queue.put(jobs[3])
    assert queue.counts() == (2, 1) and queue.position(jobs[2]) == 2
    assert queue.remove(jobs[1]) and not queue.remove(jobs[1]) and not queue.remove(jobs[0])
    assert queue.position(jobs[2]) == 1
    queue.finished()
    assert queue.close() == [jobs[2]] and queue.take() is None


def test_take_waits_for_work_and_wakes_on_close():
    queue = JobQueue(capacity=1)
    taken = []
    worker = threading.Thread(target=lambda: taken.append(queue.take()))
    worker.start()
    job = Job(edit=kit.move_edit(), owner="", route=b"r", peer="p")
    queue.put(job)
    worker.join(5)
    assert taken == [job]
    worker = threading.Thread(target=lambda: taken.append(queue.take()))
    worker.start()
    queue.close()
    worker.join(5)
    assert taken == [job, None]


def test_a_model_that_cannot_load_ends_the_server_with_one_line(caplog, tmp_path):
    caplog.set_level(logging.INFO)
    missing = str(tmp_path / "nothing.safetensors")
    code = main(["serve", "--model", missing, "--bind", f"tcp://127.0.0.1:{kit.free_port()}"])
    assert code == 1
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "cannot load model" in failures[0] and "\n" not in failures[0]


def test_an_address_in_use_is_one_line_and_exit_1(capsys):
    endpoint = f"tcp://127.0.0.1:{kit.free_port()}"
    taken = zmq.Context.instance().socket(zmq.ROUTER)
    taken.bind(endpoint)
    try:
        assert main(["serve", "--model", "tiny", "--bind", endpoint]) == 1
    finally:
        taken.close(0)
    err = capsys.readouterr().err
    assert f"cannot listen on {endpoint}" in err and len(err.strip().splitlines()) == 1
