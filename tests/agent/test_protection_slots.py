"""The agent's allowlist follows the A/B slot (``trustdb_file: null``): RL-3, SM-6, RL-1.

Releases are built with the real ``medsec release build --trust-db-key`` and installed with the
directory installer exactly as the agent's updater builds it (its trust database check comes from
``agent.json``); the agent's DeviceProtection enforces on the tmpfs device root this test mounts,
so every "runs" and "refused" below is the kernel's answer to a real exec.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.agent.config import AgentConfig
from medsec.agent.updater import _trustdb_check
from medsec.cli.main import app
from medsec.crypto.keys import SigningKey
from medsec.updates.device_errors import BundleRejected
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.release import ReleaseInfo, read_bundle
from medsec.updates.slots import DirectorySlots

from .test_protection import HARDWARE_ID, PRODUCT, Running, build_device_root, device_root, unused_url

__all__ = ["device_root"]
pytestmark = [pytest.mark.req("RL-3"), pytest.mark.req("SM-6"), pytest.mark.timeout(120)]

PUMP = "bin/pump-ctl"


def _build(work: Path, key_file: Path, version: str, counter: int) -> ReleaseInfo:
    payload = work / f"payload-{version}"
    (payload / "bin").mkdir(parents=True)
    (payload / PUMP).write_text(f"#!/bin/sh\necho pump {version}\n")
    (payload / PUMP).chmod(0o755)
    out = work / f"release-{version}-{key_file.stem}.tar"
    result = CliRunner().invoke(
        app,
        [
            "release", "build", str(payload), "--product", PRODUCT, "--version", version,
            "--counter", str(counter), "--hardware-id", HARDWARE_ID, "--out", str(out),
            "--trust-db-key", str(key_file), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout
    return read_bundle(out)


def _agent_installer(root: Path) -> DirectoryInstaller:
    """The installer as the agent's updater makes it from agent.json (trust database checked)."""
    check = _trustdb_check(AgentConfig.load(root))
    assert check is not None  # trustdb_file is null: the release's trust database is required
    return DirectoryInstaller(DirectorySlots(root / "slots"), trustdb_check=check)


def _exec(path: Path) -> str:
    """What ``path`` printed; PermissionError (EPERM) when the allowlist refused the exec."""
    done = subprocess.run([str(path)], capture_output=True, text=True, check=True, timeout=20)
    return done.stdout.strip()


def _refused(path: Path) -> None:
    with pytest.raises(PermissionError) as caught:
        _exec(path)
    assert caught.value.errno == errno.EPERM


def _wait_version(running: Running, version: str) -> None:
    assert running.service.wait_recorded(
        lambda: running.service.trust is not None and running.service.trust.version == version, 15
    ), f"trust database {version} not in force: {running.entries()}"


def test_trust_db_follows_the_slot_through_update_rollback_and_refuses_an_older_release(
    device_root: Path, tmp_path: Path
) -> None:
    root = device_root
    key = SigningKey.generate()
    key_file = tmp_path / "release.key"
    key.save(key_file)
    build_device_root(root, key, server_url=unused_url(), trustdb_file=None)
    old = _build(tmp_path / "build", key_file, "1.0.0", 1)
    new = _build(tmp_path / "build", key_file, "1.1.0", 2)
    slots = root / "slots"
    installer = _agent_installer(root)
    installer.install(old.path, old.assigned_target(), "a")
    installer.switch("a")
    installer.commit()

    running = Running(root)
    try:
        assert running.service.status["allowlist"] == "on"
        assert running.service.trust is not None and running.service.trust.version == "1.0.0"
        assert _exec(slots / "current" / PUMP) == "pump 1.0.0"

        # The update: 1.1.0 goes into slot b and runs on trial; its trust database comes with it.
        installer.install(new.path, new.assigned_target(), "b")
        installer.switch("b")
        _wait_version(running, "1.1.0")
        assert _exec(slots / "current" / PUMP) == "pump 1.1.0"
        _refused(slots / "a" / PUMP)  # 1.0.0's program is not in 1.1.0's allowlist

        # The health check fails: back to the committed 1.0.0, whose trust database is accepted again
        # (the floor is the committed slot's release, not the highest release seen).
        installer.rollback("health check failed")
        _wait_version(running, "1.0.0")
        assert _exec(slots / "current" / PUMP) == "pump 1.0.0"
        _refused(slots / "b" / PUMP)
        running.wait_for("protect.agent_applied", "trustdb_loaded")

        # 1.1.0 installed again and committed; then the older slot is put back under "current".
        installer.install(new.path, new.assigned_target(), "b")
        installer.switch("b")
        installer.commit()
        _wait_version(running, "1.1.0")
        link = slots / ".current.attack"
        os.symlink("a", link)
        os.replace(link, slots / "current")
        refusal = running.wait_for("protect.agent_error", "trustdb_refused")
        assert "rollback refused" in refusal["detail"]
        assert running.service.trust is not None and running.service.trust.version == "1.1.0"
        _refused(slots / "current" / PUMP)  # the older release's program stays refused
        assert _exec(slots / "b" / PUMP) == "pump 1.1.0"
    finally:
        running.close()


def test_agent_installer_refuses_a_release_whose_trust_db_another_key_signed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "device"
    key = SigningKey.generate()
    build_device_root(root, key, server_url=unused_url(), trustdb_file=None)
    other = tmp_path / "other.key"
    SigningKey.generate().save(other)
    foreign = _build(tmp_path / "build", other, "1.0.0", 1)
    with pytest.raises(BundleRejected, match="trust database is refused"):
        _agent_installer(root).install(foreign.path, foreign.assigned_target(), "a")
    assert DirectorySlots(root / "slots").release("a") is None
