"""The agent as a real process: signals, and SIGKILL at the worst moments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig

from .conftest import events, make_device_root, read_access_log
from .fake_server import FakeServer

AGENT = """
import logging, sys
from pathlib import Path
from medsec.agent.config import AgentConfig
from medsec.agent.daemon import run_agent
logging.basicConfig(level=logging.INFO)
run_agent(AgentConfig.load(Path(sys.argv[1])))
"""


@contextmanager
def agent_process(root: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (root / "agent.stderr").open("ab") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", AGENT, str(root)], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def stored_counter(config: AgentConfig) -> int:
    state: dict[str, Any] = json.loads(config.layout.state_file.read_text())
    return int(state["counter"])


@pytest.mark.req("RA-2")
def test_sigterm_stops_the_agent_promptly_and_is_logged(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    with agent_process(tmp_path) as proc:
        wait_for(lambda: len(server.reports) == 1)
        time.sleep(0.1)  # now inside the 60 s wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert time.monotonic() - sent < 2
    with agent_process(tmp_path) as proc:
        wait_for(lambda: len(server.reports) == 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0
    assert events(read_access_log(config)) == [
        "agent.key_created",
        "agent.started",
        "agent.enrolled",
        "agent.checkin",
        "agent.stopped",
        "agent.started",
        "agent.stopped",
    ]


def test_counter_is_persisted_before_sending_and_never_reused_after_sigkill(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    server.interval = 1
    # As the real server does: a resynchronising nonce carries the last cosigned checkpoint, so the
    # agent knows which log size the witness holds after reports whose answers were lost.
    server.nonce_with_checkpoint = True
    arrived = threading.Event()
    release = threading.Event()
    held: list[int] = []

    def hold_second_report(body: dict[str, Any]) -> None:
        if len(server.received_counters) == 1:
            held.append(body["report"]["counter"])
            arrived.set()
            release.wait(10)

    server.on_checkin = hold_second_report
    with agent_process(tmp_path) as proc:
        assert arrived.wait(10)
        # The report is on the wire: its counter must already be on disk.
        assert stored_counter(config) == held[0] == 2
        proc.kill()
        proc.wait()
    release.set()  # the server now accepts counter 2; its answer goes nowhere
    wait_for(lambda: len(server.reports) == 2)
    server.on_checkin = None

    # Persisted, never delivered: the server is unreachable while the agent counts on.
    server.down = True
    with agent_process(tmp_path) as proc:
        wait_for(lambda: stored_counter(config) >= 4)
        proc.kill()
    unsent = stored_counter(config)
    server.down = False

    with agent_process(tmp_path) as proc:
        wait_for(lambda: len(server.reports) == 4)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    accepted = [r.counter for r in server.reports]
    assert accepted == sorted(set(accepted))
    assert accepted[:2] == [1, 2] and accepted[2] > unsent
    assert len(server.received_counters) == len(set(server.received_counters))  # no counter signed twice
    assert server.refusals == ["stale_nonce"]  # the lost answer, resynchronised once
    assert os.listdir(config.layout.state_dir).count("state.json") == 1
