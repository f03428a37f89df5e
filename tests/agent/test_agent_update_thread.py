"""Signed updates run beside the check-ins: a long download never silences the device (SM-1, SM-5)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig
from medsec.agent.daemon import run_agent
from medsec.updates.client import UpdatePaths
from medsec.updates.fetcher import PART_SUFFIX
from updates.device.device_env import provision, release_files
from updates.device.repo_builder import (
    HARDWARE_ID,
    PRODUCT,
    SERIAL,
    DirectorRepo,
    ImageRepo,
    make_bundle,
    release_custom,
    target_name,
)

from .conftest import TOKEN, events, make_device_root, read_access_log
from .fake_server import FakeServer

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-5")]

BIG = 6 * 1024 * 1024
HOLD_AFTER = 1024 * 1024
UPDATE = {
    "product": PRODUCT,
    "health_checks": [{"type": "command", "argv": ["bin/selftest"], "timeout_seconds": 10}],
    "maintenance": {"always": True},
    "poll_seconds": 1,
    "retry_seconds": 1,
}


@dataclass
class Fleet:
    server: FakeServer
    config: AgentConfig
    bundle_sha256: str


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Fleet]:
    """A device on 1.0.0 whose director assigns a large 1.1.0, served by a server that can stall it."""
    www = tmp_path / "www"
    image, director = ImageRepo(www), DirectorRepo(www)
    factory = make_bundle("1.0.0", 1, release_files("1.0.0"))
    image.add_target(target_name("1.0.0"), factory.data, release_custom(factory))
    big = make_bundle("1.1.0", 2, release_files("1.1.0", big=BIG))
    target = image.add_target(target_name("1.1.0"), big.data, release_custom(big))
    image.publish()
    director.assign(target)
    root = tmp_path / "device"
    with FakeServer(tokens={TOKEN}, interval=1, www=www, hold_after=HOLD_AFTER) as server:
        config = make_device_root(root, server.url, serial=SERIAL, hardware_id=HARDWARE_ID, update=UPDATE)
        provision(root, image.root_bytes, director.root_bytes, factory)
        try:
            yield Fleet(server, config, big.sha256)
        finally:
            server.release_hold.set()


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def start_agent(config: AgentConfig) -> tuple[threading.Thread, threading.Event, list[BaseException]]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            run_agent(config, stop)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=main, name="agent-under-test")
    thread.start()
    return thread, stop, errors


def update_states(server: FakeServer, since: int = 0) -> list[Any]:
    return [(r.update or {}).get("state") for r in server.reports[since:]]


def test_checkins_continue_while_a_download_is_stalled(device: Fleet) -> None:
    server = device.server
    thread, stop, errors = start_agent(device.config)
    try:
        assert server.holding.wait(30), "the download never started"
        held_at = len(server.reports)
        # The download is stuck after 1 MiB; the device must keep reporting, and say it is downloading.
        wait_for(lambda: len(server.reports) >= held_at + 3, timeout=15)
        assert server.holding.is_set(), "the download finished early; the test proves nothing"
        assert update_states(server, held_at)[-1] == "downloading"
        server.release_hold.set()
        wait_for(lambda: "committed" in update_states(server), timeout=60)
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive() and not errors
    log = events(read_access_log(device.config))
    updates = [e for e in log if e.startswith("update.")]
    assert updates == [
        "update.downloading",
        "update.downloaded",
        "update.installing",
        "update.switched",
        "update.health_check",
        "update.committed",
    ]
    assert log[-1] == "agent.stopped"


def test_stop_during_a_stalled_download_is_prompt_and_keeps_the_part_file(device: Fleet) -> None:
    server = device.server
    thread, stop, errors = start_agent(device.config)
    try:
        assert server.holding.wait(30), "the download never started"
        part = UpdatePaths(device.config.root).downloads_dir / f"{device.bundle_sha256}.release.tar{PART_SUFFIX}"
        # The server has sent HOLD_AFTER bytes; wait until the agent has them all on disk, so the
        # stop below lands while the download is stalled, not while bytes are still in flight.
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size == HOLD_AFTER):
            assert time.monotonic() < deadline, "the agent never wrote the bytes it was sent"
            time.sleep(0.02)
        asked = time.monotonic()
        stop.set()
        thread.join(10)
        stopped_in = time.monotonic() - asked
    finally:
        stop.set()
        server.release_hold.set()
        thread.join(15)
    assert not thread.is_alive() and not errors
    assert stopped_in < 5, f"stopping took {stopped_in:.1f} s"
    # Every byte received before the stop is on disk for the next start to resume from.
    assert part.stat().st_size == HOLD_AFTER
    log = events(read_access_log(device.config))
    assert "update.downloaded" not in log and log[-1] == "agent.stopped"
