"""Maintenance windows and clinical use (pure decisions), and health checks with deadlines."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medsec.updates.device_errors import HealthCheckFailed, UpdateSettingsError
from medsec.updates.health import CommandCheck, FileCheck, HealthChecker, PortCheck
from medsec.updates.window import CommandProbe, MaintenancePolicy, install_decision

pytestmark = pytest.mark.req("SM-1")

NIGHTLY = MaintenancePolicy.from_mapping(
    {"timezone": "Europe/Berlin", "weekly": [{"days": ["sat", "sun"], "start": "23:30", "duration_minutes": 120}]}
)


def test_weekly_window_crosses_midnight_in_its_own_timezone() -> None:
    saturday_late = datetime(2025, 1, 11, 22, 45, tzinfo=UTC)  # 23:45 in Berlin
    sunday_early = datetime(2025, 1, 12, 0, 15, tzinfo=UTC)  # 01:15 Sunday, still Saturday's window
    monday_early = datetime(2025, 1, 13, 0, 15, tzinfo=UTC)  # 01:15 Monday, Sunday's window
    tuesday = datetime(2025, 1, 14, 0, 15, tzinfo=UTC)
    assert NIGHTLY.is_open(saturday_late) and NIGHTLY.is_open(sunday_early) and NIGHTLY.is_open(monday_early)
    assert not NIGHTLY.is_open(tuesday)
    assert NIGHTLY.next_opening(tuesday) == datetime(2025, 1, 18, 22, 30, tzinfo=UTC)


def test_window_length_is_real_time_across_a_dst_change() -> None:
    # 2025-03-30 02:00 Berlin clocks jump to 03:00; a 120-minute window from 01:00 ends 04:00 local.
    policy = MaintenancePolicy.from_mapping(
        {"timezone": "Europe/Berlin", "weekly": [{"days": ["sun"], "start": "01:00", "duration_minutes": 120}]}
    )
    assert policy.is_open(datetime(2025, 3, 30, 1, 30, tzinfo=UTC))  # 03:30 CEST
    assert not policy.is_open(datetime(2025, 3, 30, 2, 0, tzinfo=UTC))


def test_one_off_window_and_decision_reasons() -> None:
    start = datetime(2025, 5, 1, 10, 0, tzinfo=UTC)
    policy = MaintenancePolicy.from_mapping(
        {"one_off": [{"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}]}
    )
    before = install_decision(start - timedelta(minutes=2), policy, in_clinical_use=False)
    assert not before.allowed and before.reason == "outside_window" and before.retry_after_seconds == 120
    assert install_decision(start, policy, in_clinical_use=False).allowed
    assert install_decision(start, policy, in_clinical_use=True).reason == "clinical_use"
    assert install_decision(start, MaintenancePolicy(), in_clinical_use=False).reason == "outside_window"


@pytest.mark.parametrize(
    "bad",
    [
        {"timezone": "Mars/Olympus"},
        {"weekly": [{"days": ["funday"], "start": "01:00", "duration_minutes": 5}]},
        {"weekly": [{"days": ["mon"], "start": "25:00", "duration_minutes": 5}]},
        {"weekly": [{"days": ["mon"], "start": "01:00", "duration_minutes": 5000}]},
        {"one_off": [{"start": "2025-01-01T00:00:00", "end": "2025-01-01T01:00:00"}]},
        {"windows": []},
    ],
)
def test_bad_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(UpdateSettingsError):
        MaintenancePolicy.from_mapping(bad)


@pytest.mark.req("RL-1")
def test_command_probe_fails_safe() -> None:
    assert CommandProbe(["/bin/sh", "-c", "exit 0"]).in_use()
    assert not CommandProbe(["/bin/sh", "-c", "exit 1"]).in_use()
    assert CommandProbe(["/bin/sh", "-c", "exit 7"]).in_use()
    assert CommandProbe(["/nonexistent/probe"]).in_use()
    assert CommandProbe(["/bin/sleep", "5"], timeout_seconds=0.2).in_use()


def test_health_checks_from_config(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "ok"
    script.write_text('#!/bin/sh\ntest "$MEDSEC_SLOT" = "$PWD"\n')
    script.chmod(0o755)
    (tmp_path / "ready").touch()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        checker = HealthChecker.from_config(
            [
                {"type": "command", "argv": ["bin/ok"], "timeout_seconds": 5},
                {"type": "file", "path": "ready", "timeout_seconds": 1},
                {"type": "port", "port": port, "timeout_seconds": 1},
            ]
        )
        checker.run(tmp_path)


def test_health_checks_have_deadlines(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(HealthCheckFailed, match="in time"):
        PortCheck(closed_port, timeout_seconds=0.3).run(tmp_path, time.monotonic() + 10)
    with pytest.raises(HealthCheckFailed, match="did not appear"):
        FileCheck("never", timeout_seconds=0.3).run(tmp_path, time.monotonic() + 10)
    with pytest.raises(HealthCheckFailed, match="leaves the slot"):
        CommandCheck(("../../bin/true",)).run(tmp_path, time.monotonic() + 10)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "shell"},
        {"type": "command", "argv": []},
        {"type": "port", "port": 0},
        {"type": "file", "timeout_seconds": -1},
    ],
)
def test_bad_health_checks_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(UpdateSettingsError):
        HealthChecker.from_config([bad])
