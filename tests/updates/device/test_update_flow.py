"""The normal update path, resume, windows, clinical use, health-gated commit and rollback, USB installs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medsec.updates.client import InstalledRelease
from medsec.updates.device_errors import HealthCheckFailed, UpdateTransportError
from medsec.updates.device_update import Phase
from medsec.updates.health import CommandCheck, HealthChecker
from medsec.updates.slots import DirectorySlots
from medsec.updates.window import FlagFileProbe, MaintenancePolicy

from .device_env import SELFTEST_FAIL, DeviceEnv, release_files, running_release

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-6")]


def phases(env: DeviceEnv) -> list[str]:
    return [t.phase.value for t in env.transitions]


def test_assigned_release_is_downloaded_installed_checked_and_committed(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    updater = env.updater()
    result = updater.step()
    assert result.phase is Phase.COMMITTED, result
    assert result.error is None
    assert phases(env) == ["downloading", "downloaded", "installing", "switched", "health_check", "committed"]
    assert env.running_version() == "1.1.0"
    slots = DirectorySlots(env.root / "slots")
    assert slots.current() == "b"
    assert slots.state().committed == "b"
    assert not list(env.paths.downloads_dir.iterdir())
    status = updater.status()
    assert status.running == InstalledRelease("1.1.0", 2, "infusion-pump/1.1.0/release.tar")
    # The director still names the installed release: nothing more to do, and no downgrade alarm.
    again = updater.step()
    assert again.phase is Phase.COMMITTED and again.error is None
    assert len(env.transitions) == 6


def test_no_assignment_means_no_download(env: DeviceEnv) -> None:
    env.release("1.1.0", 2, assign=False)
    result = env.updater().step()
    assert result.phase is Phase.IDLE and result.error is None
    assert not any("release.tar" in path for path, _ in env.behaviour.requests)
    assert env.running_version() == "1.0.0"


@pytest.mark.req("SM-5")
def test_cut_download_resumes_with_a_range_request(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, files=release_files("1.1.0", big=3 * 1024 * 1024))
    env.behaviour.cut_after["release.tar"] = 1_000_000
    updater = env.updater()
    first = updater.step()
    assert first.phase is Phase.DOWNLOADING
    assert isinstance(first.error, UpdateTransportError)
    part = env.paths.downloads_dir / f"{target.hashes['sha256']}.release.tar.part"
    assert part.stat().st_size == 1_000_000
    second = updater.step()
    assert second.phase is Phase.COMMITTED, second
    ranges = [r for path, r in env.behaviour.requests if path.endswith("release.tar")]
    assert ranges == [None, "bytes=1000000-"]
    assert env.running_version() == "1.1.0"


def test_resume_survives_a_new_process(env: DeviceEnv) -> None:
    env.release("1.1.0", 2, files=release_files("1.1.0", big=2 * 1024 * 1024))
    env.behaviour.cut_after["release.tar"] = 700_000
    assert env.updater().step().phase is Phase.DOWNLOADING
    # A fresh updater (a restarted agent) continues from the state file and the part file.
    result = env.updater().step()
    assert result.phase is Phase.COMMITTED
    assert [r for p, r in env.behaviour.requests if p.endswith("release.tar")][-1] == "bytes=700000-"


def test_server_that_ignores_ranges_gets_a_clean_restart(env: DeviceEnv) -> None:
    env.release("1.1.0", 2, files=release_files("1.1.0", big=2 * 1024 * 1024))
    env.behaviour.cut_after["release.tar"] = 500_000
    updater = env.updater()
    assert updater.step().phase is Phase.DOWNLOADING
    env.behaviour.ignore_range = True
    assert updater.step().phase is Phase.COMMITTED
    assert env.running_version() == "1.1.0"


def test_maintenance_window_blocks_install_but_not_download(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    policy = MaintenancePolicy.from_mapping(
        {"timezone": "Asia/Tokyo", "weekly": [{"days": ["tue"], "start": "02:00", "duration_minutes": 60}]}
    )
    env.now = datetime(2025, 4, 1, 3, 30, tzinfo=UTC)  # Tuesday 12:30 in Tokyo
    updater = env.updater(policy=policy)
    result = updater.step()
    assert result.phase is Phase.WAITING_FOR_WINDOW
    assert updater.state.reason == "outside_window"
    assert updater.state.bundle is not None and Path(updater.state.bundle).exists()
    assert env.running_version() == "1.0.0"
    assert 0 < result.next_step_seconds <= 300
    env.now = datetime(2025, 4, 7, 17, 30, tzinfo=UTC)  # Tuesday 02:30 in Tokyo
    assert updater.step().phase is Phase.COMMITTED
    assert env.running_version() == "1.1.0"


def test_director_install_window_is_honoured(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, assign=False)
    start = env.now + timedelta(hours=2)
    window = {"one_off": [{"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}]}
    env.director.assign(target, install_window=window)
    updater = env.updater()
    assert updater.step().phase is Phase.WAITING_FOR_WINDOW
    env.now = start + timedelta(minutes=5)
    assert updater.step().phase is Phase.COMMITTED


@pytest.mark.req("RL-1")
def test_clinical_use_inhibits_install(env: DeviceEnv, tmp_path: Path) -> None:
    env.release("1.1.0", 2)
    flag = tmp_path / "in-use"
    flag.touch()
    updater = env.updater(clinical=FlagFileProbe(flag))
    assert updater.step().phase is Phase.WAITING_FOR_WINDOW
    assert updater.state.reason == "clinical_use"
    assert env.running_version() == "1.0.0"
    flag.unlink()
    assert updater.step().phase is Phase.COMMITTED


@pytest.mark.req("RL-1")
def test_failed_health_check_rolls_back_and_is_not_retried(env: DeviceEnv) -> None:
    env.release("1.1.0", 2, files=release_files("1.1.0", selftest=SELFTEST_FAIL))
    updater = env.updater()
    result = updater.step()
    assert result.phase is Phase.ROLLED_BACK
    assert isinstance(result.error, HealthCheckFailed)
    assert "exited with 3" in (updater.state.reason or "")
    assert env.running_version() == "1.0.0"
    slots = DirectorySlots(env.root / "slots")
    assert slots.current() == "a" and slots.state().committed == "a"
    assert slots.state().last_rollback is not None
    assert slots.release("b") is None  # the failed slot can never be switched to again
    assert phases(env)[-3:] == ["switched", "health_check", "rolled_back"]
    # The director still assigns it; the device does not try the same release again.
    again = updater.step()
    assert again.phase is Phase.ROLLED_BACK and len(env.transitions) == 6


class SimulatedCrash(BaseException):
    pass


@pytest.mark.req("RL-1")
def test_attempt_counter_rolls_back_a_release_that_keeps_crashing(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)

    def crash_in_health_check(name: str) -> None:
        if name == "health.attempt":
            raise SimulatedCrash

    for attempt in (1, 2):
        with pytest.raises(SimulatedCrash):
            env.updater(max_attempts=2, failpoint=crash_in_health_check).step()
        assert DirectorySlots(env.root / "slots").state().attempts == attempt
        assert env.running_version() == "1.1.0"  # on trial
    updater = env.updater(max_attempts=2, failpoint=crash_in_health_check)
    assert updater.step().phase is Phase.ROLLED_BACK
    assert "attempt 3 exceeds the limit of 2" in (updater.state.reason or "")
    assert env.running_version() == "1.0.0"


def test_health_command_that_hangs_is_a_failure(env: DeviceEnv) -> None:
    hang = b"#!/bin/sh\nsleep 30\n"
    env.release("1.1.0", 2, files=release_files("1.1.0", selftest=hang))
    health = HealthChecker((CommandCheck(("bin/selftest",), 0.5),))
    result = env.updater(health=health).step()
    assert result.phase is Phase.ROLLED_BACK
    assert "did not finish" in str(result.error)
    assert env.running_version() == "1.0.0"


def test_offline_bundle_goes_through_the_same_verification(env: DeviceEnv, tmp_path: Path) -> None:
    target = env.release("1.1.0", 2)
    stick = tmp_path / "usb"
    shutil.copytree(env.image.meta_dir, stick / "image")
    shutil.copytree(env.director.meta_dir, stick / "director")
    shutil.copy(env.image.target_file(target.path), stick / "release.tar")
    shutil.rmtree(env.www)  # no network: everything comes from the stick
    updater = env.updater()
    staged = updater.stage_offline_bundle(stick / "release.tar", stick)
    assert staged.phase is Phase.DOWNLOADED
    # Installing goes on as usual; the director check on the next step cannot reach a server,
    # which must not disturb the staged install.
    result = updater.step()
    assert result.phase is Phase.COMMITTED, result
    assert running_release(env.root).version == "1.1.0"
