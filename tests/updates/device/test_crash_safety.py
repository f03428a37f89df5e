"""SIGKILL at every step of download, install, switch, health check and commit (RL-1, SM-1).

The update runs in a child process that kills itself at one failpoint. Then the device
"restarts" (the slots are recovered and a new updater reads the state file), and:

- the running slot holds exactly one verified release, old or new, never a mix;
- the state machine reports what actually runs;
- continuing the update ends committed (or rolled back when the health check fails).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from medsec.updates.device_update import RESTING, Phase
from medsec.updates.health import CommandCheck, HealthChecker
from medsec.updates.slots import DirectorySlots

from .device_env import DeviceEnv, check_slot, release_files, running_release

pytestmark = [pytest.mark.req("RL-1"), pytest.mark.req("SM-1"), pytest.mark.req("SM-6")]

CHILD = Path(__file__).with_name("crash_child.py")

# (failpoint, hit) in the order an update reaches them.
COMMIT_PATH = [
    ("state.downloading", 1),
    ("download.chunk", 12),
    ("download.verified", 1),
    ("download.moved", 1),
    ("state.downloaded", 1),
    ("state.installing", 1),
    ("install.cleared", 1),
    ("install.file", 3),
    ("install.unpacked", 1),
    ("install.done", 1),
    ("switch.recorded", 1),
    ("switch.done", 1),
    ("state.switched", 1),
    ("state.health_check", 1),
    ("health.attempt", 1),
    ("commit.before", 1),
    ("commit.done", 1),
    ("state.committed", 1),
]
ROLLBACK_PATH = [
    ("health.attempt", 1),
    ("rollback.recorded", 1),
    ("rollback.done", 1),
    ("state.rolled_back", 1),
]


def run_child(env: DeviceEnv, failpoint: str, hit: int, *, health: str = "ok") -> subprocess.CompletedProcess[str]:
    child_env = {
        **os.environ,
        "MEDSEC_FAILPOINT": failpoint,
        "MEDSEC_FAILPOINT_HIT": str(hit),
        "MEDSEC_TEST_HEALTH": health,
    }
    return subprocess.run(
        [sys.executable, str(CHILD), str(env.root), env.url],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_truthful_after_restart(env: DeviceEnv, health: HealthChecker | None = None) -> Phase:
    updater = env.updater(health=health)  # a restart: recovers the slots, reads the state file
    running = running_release(env.root)
    assert running.version in ("1.0.0", "1.1.0")
    status = updater.status()
    assert status.running is not None and status.running.version == running.version
    slots = DirectorySlots(env.root / "slots")
    state = slots.state()
    assert slots.current() in (state.committed, state.trying)
    committed = slots.release(state.committed or "")
    assert committed is not None and status.committed is not None
    assert status.committed.version == committed.version
    if status.phase in {Phase.IDLE, Phase.DOWNLOADING, Phase.DOWNLOADED, Phase.WAITING_FOR_WINDOW}:
        assert running.version == "1.0.0"
    if status.phase is Phase.COMMITTED:
        assert running.version == "1.1.0" and committed.version == "1.1.0"
    return status.phase


def finish(env: DeviceEnv, health: HealthChecker | None = None) -> Phase:
    updater = env.updater(health=health)
    for _ in range(5):
        result = updater.step()
        if result.phase in RESTING:
            return result.phase
    return updater.state.phase


@pytest.mark.parametrize(("failpoint", "hit"), COMMIT_PATH, ids=[f"{f}#{h}" for f, h in COMMIT_PATH])
def test_sigkill_during_update_leaves_a_verified_version(env: DeviceEnv, failpoint: str, hit: int) -> None:
    env.release("1.1.0", 2, files=release_files("1.1.0", big=2 * 1024 * 1024))
    child = run_child(env, failpoint, hit)
    assert child.returncode == -signal.SIGKILL, f"failpoint {failpoint} not reached: {child.stdout}{child.stderr}"
    parts = list(env.paths.downloads_dir.glob("*.part")) if env.paths.downloads_dir.exists() else []
    kept = parts[0].stat().st_size if parts else 0
    assert_truthful_after_restart(env)
    assert finish(env) is Phase.COMMITTED
    if failpoint == "download.chunk":
        # Whatever reached the disk before the kill is kept and the rest is asked for with a Range.
        ranges = [r for path, r in env.behaviour.requests if path.endswith("release.tar")]
        assert ranges == [None, f"bytes={kept}-" if kept else None], (ranges, kept)
    assert running_release(env.root).version == "1.1.0"
    slots = DirectorySlots(env.root / "slots")
    assert slots.state().trying is None
    check_slot(env.root / "slots" / (slots.state().committed or ""))


@pytest.mark.parametrize(("failpoint", "hit"), ROLLBACK_PATH, ids=[f"{f}#{h}" for f, h in ROLLBACK_PATH])
def test_sigkill_during_rollback_leaves_the_old_version(env: DeviceEnv, failpoint: str, hit: int) -> None:
    env.release("1.1.0", 2)
    failing = HealthChecker((CommandCheck(("/bin/false",), 10),))
    child = run_child(env, failpoint, hit, health="fail")
    assert child.returncode == -signal.SIGKILL, f"failpoint {failpoint} not reached: {child.stdout}{child.stderr}"
    assert_truthful_after_restart(env, failing)
    assert finish(env, failing) is Phase.ROLLED_BACK
    assert running_release(env.root).version == "1.0.0"
    assert DirectorySlots(env.root / "slots").state().committed == "a"


def test_child_without_failpoint_commits(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    child = run_child(env, "none", 1)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "committed"
    assert running_release(env.root).version == "1.1.0"
