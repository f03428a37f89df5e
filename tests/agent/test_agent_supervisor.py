"""The supervisor brings a killed agent back, and the agent logs how long the device was unwatched (RL-1)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.supervisor import RestartPolicy, Supervisor, describe_exit
from medsec.auditlog.checkpoint import Checkpoint
from medsec.auditlog.note import parse_note

from .conftest import make_device_root, read_access_log
from .fake_server import FakeServer

pytestmark = pytest.mark.req("RL-1")


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def heartbeat(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data


def reported_log_size(report: Any) -> int:
    return Checkpoint.parse(parse_note(report.log_checkpoint)[0]).size


def test_sigkilled_agent_is_back_within_5_s_and_logs_the_gap(tmp_path: Path, server: FakeServer) -> None:
    server.interval = 1
    config = make_device_root(tmp_path, server.url, heartbeat_seconds=1)
    beat_file = config.layout.heartbeat_file
    with (tmp_path / "supervisor.stderr").open("ab") as stderr:
        sup = subprocess.Popen(
            [sys.executable, "-m", "medsec", "agent", "--supervise", "--root", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for(lambda: len(server.reports) >= 1, timeout=20)
        first = heartbeat(beat_file)
        assert first is not None and first["state"] == "running" and first["pid"] != sup.pid
        victim = int(first["pid"])
        time.sleep(1.5)  # at least one heartbeat after the first
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()

        def back() -> bool:
            beat = heartbeat(beat_file)
            return beat is not None and beat["pid"] != victim and beat["state"] == "running"

        wait_for(back, timeout=10)
        assert time.monotonic() - killed < 5, "the agent was not back within 5 s"
        reports_before = len(server.reports)
        wait_for(lambda: len(server.reports) > reports_before, timeout=10)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
    assert heartbeat(beat_file)["state"] == "stopped"  # type: ignore[index]

    entries = read_access_log(config)
    gaps = [(i, e) for i, e in enumerate(entries) if e["event"] == "agent.gap"]
    assert len(gaps) == 1, [e["event"] for e in entries]
    index, gap = gaps[0]
    assert gap["previous_pid"] == victim
    assert killed_at - 2.5 <= gap["last_heartbeat_at"] <= killed_at + 1
    assert killed_at - 1 <= gap["restarted_at"] <= killed_at + 6
    assert gap["gap_seconds"] == gap["restarted_at"] - gap["last_heartbeat_at"]
    assert entries[index + 1]["event"] == "agent.started"
    assert entries[index - 1]["event"] != "agent.stopped"  # the killed run never logged a stop
    # The next check-in carried a log checkpoint that covers the gap entry to the server's witness.
    assert any(r.log_checkpoint and reported_log_size(r) > index for r in server.reports)


def test_clean_stop_logs_no_gap(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url, heartbeat_seconds=1)
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-m", "medsec", "agent", "--root", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        pid = proc.pid
        wait_for(lambda: (heartbeat(config.layout.heartbeat_file) or {}).get("pid") == pid, timeout=20)  # noqa: B023
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert heartbeat(config.layout.heartbeat_file)["state"] == "stopped"  # type: ignore[index]
    assert "agent.gap" not in [e["event"] for e in read_access_log(config)]


def test_damaged_heartbeat_counts_as_a_gap_of_unknown_length(tmp_path: Path, server: FakeServer) -> None:
    config = make_device_root(tmp_path, server.url)
    config.layout.state_dir.mkdir(parents=True, exist_ok=True)
    config.layout.heartbeat_file.write_text('{"format": 1, "at": "yesterday"')
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsec", "agent", "--root", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: (heartbeat(config.layout.heartbeat_file) or {}).get("state") == "running", timeout=20)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    gaps = [e for e in read_access_log(config) if e["event"] == "agent.gap"]
    assert len(gaps) == 1 and gaps[0]["last_heartbeat_at"] is None and gaps[0]["gap_seconds"] is None


def test_repeated_crashes_back_off_up_to_the_limit() -> None:
    starts: list[float] = []
    stop = threading.Event()

    def started(pid: int) -> None:
        starts.append(time.monotonic())
        if len(starts) == 6:
            stop.set()

    policy = RestartPolicy(initial_delay=0.1, max_delay=0.4, stable_seconds=30)
    supervisor = Supervisor([sys.executable, "-c", "raise SystemExit(3)"], policy, on_start=started)
    runner = threading.Thread(target=supervisor.run, args=(stop,))
    runner.start()
    runner.join(30)
    assert not runner.is_alive()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Each gap is the child's short life plus the delay: 0.1, 0.2, 0.4, then capped at 0.4.
    assert supervisor.delays[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]
    for gap, delay in zip(gaps, supervisor.delays, strict=False):
        assert gap >= delay  # the supervisor really waited before each start


def test_stable_run_resets_the_backoff() -> None:
    policy = RestartPolicy(initial_delay=1, max_delay=60, stable_seconds=10)
    assert policy.next_delay(None, 0.1) == 1
    assert policy.next_delay(8, 0.5) == 16
    assert policy.next_delay(32, 11) == 1
    assert policy.next_delay(40, 1) == 60


def test_exit_descriptions_name_the_signal() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(2) == "exited with status 2"
