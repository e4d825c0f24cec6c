"""Load (issue 6, part 2): 8 clients send small edits at once, two in flight each, and cancel some at
random. Every accepted edit ends in exactly one terminal message, none is lost or duplicated, refusals
are `queue_full` (never a growing queue), and the kept terminal messages match what was delivered."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import Dict, List

import pytest

import serverkit as kit
from campaign import record, scaled
from dragon_protocol import Accepted, Cancel, Cancelled, Error, Fetch, Ping, Pong, Progress, Result

CLIENTS = 8
QUEUE = 3
IN_FLIGHT = 2
CANCEL_RATE = 0.3
QUIET_S = 1.5
"""How long each client keeps listening after its last terminal message, to catch duplicates."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, endpoint = kit.start_server(str(tmp_path_factory.mktemp("load")), ["--queue", str(QUEUE)])
    yield endpoint
    assert process.stop() == 0, process.console()


class Painter(threading.Thread):
    """One client: keeps IN_FLIGHT edits going until `count` were accepted, cancelling some at random.

    A `queue_full` refusal is met as a real client would: wait a little, then send a new edit.
    """

    def __init__(self, endpoint: str, number: int, count: int):
        super().__init__(name=f"painter-{number}")
        self.endpoint = endpoint
        self.number = number
        self.count = count
        self.random = random.Random(number)
        self.messages: Dict[str, List[object]] = defaultdict(list)
        self.accepted: List[str] = []
        self.refused: List[str] = []
        self.cancels = 0
        self.queue_seen: List[int] = []
        self.failure: BaseException = None
        self.backoff_until = 0.0

    def run(self) -> None:
        try:
            with kit.Client(self.endpoint) as client:
                self._work(client)
        except BaseException as error:  # reported by the test
            self.failure = error

    def _work(self, client: kit.Client) -> None:
        sent = 0
        open_ids = set()
        deadline = time.monotonic() + 120
        while (len(self.accepted) < self.count or open_ids) and time.monotonic() < deadline:
            while len(self.accepted) + len(open_ids) < self.count and len(open_ids) < IN_FLIGHT:
                if time.monotonic() < self.backoff_until:
                    break
                edit = kit.move_edit(f"p{self.number}-{sent}", steps=self.random.choice([2, 3, 4]), seed=sent)
                client.send(edit)
                open_ids.add(edit.id)
                sent += 1
                if self.random.random() < CANCEL_RATE:
                    time.sleep(self.random.uniform(0, 0.05))
                    client.send(Cancel(id=edit.id))
                    self.cancels += 1
                if self.random.random() < 0.2:
                    client.send(Ping(nonce=sent))
            message = client.receive(0.05 if time.monotonic() < self.backoff_until else 5.0)
            if message is None:
                continue
            if isinstance(message, Pong):
                self.queue_seen.append(message.queued)
                continue
            self._note(message, open_ids)
        assert not open_ids, f"no terminal message for {sorted(open_ids)}"
        quiet_until = time.monotonic() + QUIET_S
        while time.monotonic() < quiet_until:
            message = client.receive(max(quiet_until - time.monotonic(), 0.001))
            if message is not None and not isinstance(message, Pong):
                self._note(message, set())
        for request_id in self.accepted[:: max(1, len(self.accepted) // 3)]:
            client.send(Fetch(id=request_id))
            kept = client.expect((Result, Cancelled, Error), 10, request_id)
            assert kept == terminal_of(self.messages[request_id]), request_id

    def _note(self, message: object, open_ids: set) -> None:
        request_id = message.id
        history = self.messages[request_id]
        if isinstance(message, Error) and message.code == "unknown_request":
            return  # the answer to a cancel that came after the end: not a terminal message
        history.append(message)
        if isinstance(message, Accepted):
            assert len(history) == 1, f"{request_id}: accepted after {history}"
            self.accepted.append(request_id)
        elif isinstance(message, Error) and len(history) == 1:
            assert message.code == "queue_full", message
            self.refused.append(request_id)
            self.backoff_until = time.monotonic() + self.random.uniform(0.05, 0.2)
            open_ids.discard(request_id)
        elif isinstance(message, (Result, Cancelled, Error)):
            open_ids.discard(request_id)
        else:
            assert isinstance(message, Progress), message


def terminal_of(history: List[object]) -> object:
    ends = [m for m in history if isinstance(m, (Result, Cancelled, Error))]
    return ends[0] if len(ends) == 1 else ends


def test_eight_clients_with_random_cancels_lose_and_duplicate_nothing(server):
    per_client = scaled(10)
    painters = [Painter(server, number, per_client) for number in range(CLIENTS)]
    started = time.monotonic()
    for painter in painters:
        painter.start()
    for painter in painters:
        painter.join(180)
    elapsed = time.monotonic() - started
    for painter in painters:
        assert not painter.is_alive(), f"{painter.name} hung"
        if painter.failure is not None:
            raise painter.failure

    outcomes = defaultdict(int)
    for painter in painters:
        for request_id in painter.accepted:
            history = painter.messages[request_id]
            ends = [m for m in history if isinstance(m, (Result, Cancelled, Error))]
            assert len(ends) == 1, f"{request_id}: {ends}"  # exactly one terminal message
            assert history[-1] is ends[0], f"{request_id}: messages after the end: {history}"
            outcomes[type(ends[0]).__name__ if not isinstance(ends[0], Error) else ends[0].code] += 1
        for request_id in painter.refused:
            assert len(painter.messages[request_id]) == 1, painter.messages[request_id]
        assert all(queued <= QUEUE for queued in painter.queue_seen)

    accepted = sum(len(p.accepted) for p in painters)
    refused = sum(len(p.refused) for p in painters)
    sent = accepted + refused
    assert accepted == CLIENTS * per_client
    assert refused > 0, "16 edits in flight against a queue of 3 must meet queue_full"
    assert outcomes["Result"] > 0 and outcomes["Cancelled"] > 0, outcomes
    record("load: requests sent", sent)
    record("load: requests accepted", accepted)
    record("load: refused with queue_full", refused)
    record("load: results", outcomes["Result"])
    record("load: cancelled", outcomes["Cancelled"])
    record("load: other terminal errors", accepted - outcomes["Result"] - outcomes["Cancelled"])
    record("load: cancels sent", sum(p.cancels for p in painters))
    record("load: terminal messages lost or duplicated", 0)
    record("load: seconds", round(elapsed))
