"""The real agent process against the real server: enrollment, check-ins, witnessed access log, restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from medsec.agent.access_log import AccessLog
from medsec.auditlog.witness import verify_cosignature
from medsec.crypto.keys import SigningKey, write_private_file
from medsec.server.models import Device, DeviceLogCheckpoint

pytestmark = pytest.mark.req("RA-2")


def _device_root(tmp_path: Path, live_server, index: int = 0) -> tuple[Path, str]:
    d = live_server.seed.devices[index]
    root = tmp_path / "devices" / d.serial
    config = {
        "server_url": live_server.url,
        "serial": d.serial,
        "hardware_id": d.hardware_id,
        "checkin_interval_seconds": 1,
        "enrollment_token_file": "etc/medsec/enrollment-token",
        "retry_initial_seconds": 1,
        "retry_max_seconds": 2,
    }
    (root / "etc/medsec").mkdir(parents=True)
    (root / "etc/medsec/agent.json").write_text(json.dumps(config))
    (root / "etc/medsec/version").write_text("1.0.0\n")
    write_private_file(root / "etc/medsec/enrollment-token", d.enrollment_token.encode())
    return root, d.serial


def _start(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "medsec", "agent", "--root", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _device_row(live_server, serial: str) -> Device:
    with live_server.ctx.tx() as s:
        return s.scalar(select(Device).where(Device.serial == serial))


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_agent_enrolls_checks_in_and_its_log_is_witnessed(live_server, tmp_path):
    root, serial = _device_root(tmp_path, live_server)
    proc = _start(root)
    try:
        _wait_for(lambda: (_device_row(live_server, serial).last_counter or 0) >= 3)
    finally:
        _stop(proc)
    device = _device_row(live_server, serial)
    assert device.status == "active"
    assert device.installed_version == "1.0.0"
    assert not (root / "etc/medsec/enrollment-token").exists(), "the one-time token must be deleted"
    with live_server.ctx.tx() as s:
        rows = s.scalars(select(DeviceLogCheckpoint).where(DeviceLogCheckpoint.device_id == device.id)).all()
        notes = [r.note for r in rows if r.note]
    assert notes, "the server cosigned at least one access-log checkpoint"
    verify_cosignature(notes[-1], live_server.ctx.witness_vkey)

    # Restart: the counter continues, nothing is duplicated, the log keeps growing consistently.
    counter_before = device.last_counter
    proc = _start(root)
    try:
        _wait_for(lambda: _device_row(live_server, serial).last_counter >= counter_before + 2)
    finally:
        _stop(proc)
    state = json.loads((root / "var/lib/medsec/state.json").read_text())
    assert state["counter"] >= _device_row(live_server, serial).last_counter
    log = AccessLog(root / "var/log/medsec/access-log", serial, SigningKey.load(root / "var/lib/medsec/device.key"))
    try:
        log.verify()
        entries = [e["event"] for e in log.entries()]
    finally:
        log.close()
    assert entries.count("agent.started") == 2
    assert entries.count("agent.stopped") == 2
    assert entries.count("agent.enrolled") == 1


def test_agent_killed_hard_restarts_without_reusing_a_counter(live_server, tmp_path):
    root, serial = _device_root(tmp_path, live_server, 1)
    proc = _start(root)
    _wait_for(lambda: (_device_row(live_server, serial).last_counter or 0) >= 2)
    proc.kill()
    proc.communicate(timeout=10)
    proc = _start(root)
    try:
        before = _device_row(live_server, serial).last_counter
        _wait_for(lambda: _device_row(live_server, serial).last_counter > before + 1)
    finally:
        out = _stop(proc)
    assert "counter_not_increasing" not in out
    assert "replayed_report" not in out
