"""The demo's device protection: tmpfs software areas, signed documents, cleanup of stale mounts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.config import AgentConfig
from medsec.demo_protect import MOUNT_REL, demo_mounts, remove_stale_mounts, setup_demo_protection

from .test_protection import Running, fanotify_unavailable, run_binary


def _info(data_dir: Path, serials: list[str]) -> dict[str, Any]:
    devices = []
    for serial in serials:
        root = data_dir / "devices" / serial
        (root / "etc/medsec").mkdir(parents=True)
        config = {"server_url": "http://127.0.0.1:9", "serial": serial, "hardware_id": "ic300-rev-b"}
        (root / "etc/medsec/agent.json").write_text(json.dumps(config))
        devices.append({"serial": serial, "hospital": "hospital-a", "root": str(root)})
    return {"url": "http://127.0.0.1:9", "model": {"hardware_id": "ic300-rev-b"}, "devices": devices}


@pytest.mark.req("RL-3")
@pytest.mark.timeout(120)
def test_demo_devices_enforce_on_their_own_tmpfs_and_mounts_are_removed(tmp_path: Path) -> None:
    reason = fanotify_unavailable()
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path / "demo"
    info = _info(data_dir, ["IC300-0001", "IC300-0002"])
    protection = setup_demo_protection(data_dir, info)
    try:
        assert protection.off_reason is None
        assert sorted(protection.mounts) == sorted(demo_mounts(data_dir / "devices"))
        root = Path(info["devices"][0]["root"])
        assert os.path.ismount(root / MOUNT_REL) and not os.path.ismount(root)
        config = AgentConfig.load(root)
        assert config.protection is not None and config.protection.mount == root / MOUNT_REL
        running = Running(root)
        try:
            assert running.service.status["allowlist"] == "on"
            assert running.service.policy is not None and running.service.policy.fail_open
            assert run_binary(root / MOUNT_REL / "bin/pump-monitor") == 0
            unknown = root / MOUNT_REL / "incoming/unknown"
            shutil.copy2(Path("/usr/bin/id").resolve(), unknown)
            with pytest.raises(PermissionError) as refused:
                run_binary(unknown)
            assert refused.value.errno == errno.EPERM
            running.wait_for("protect.exec_denied")
            # Python is a listed interpreter: a script dropped on the device does not run through it,
            # while a Python process reading the clinical configuration is left alone.
            evil = root / MOUNT_REL / "incoming/evil.py"
            evil.write_text("print('payload ran')\n")
            done = subprocess.run([sys.executable, str(evil)], capture_output=True, text=True, check=False, timeout=30)
            assert done.returncode != 0 and "payload ran" not in done.stdout
            assert "Operation not permitted" in done.stderr
            running.wait_for("protect.open_denied", "interpreter_script_untrusted")
            config = root / MOUNT_REL / "etc/clinical.json"
            read = [sys.executable, "-c", "import sys; print(open(sys.argv[2]).read())", "--config", str(config)]
            done = subprocess.run(read, capture_output=True, text=True, check=False, timeout=30)
            assert done.returncode == 0 and "rate_ml_per_h" in done.stdout
        finally:
            running.close()
        assert "Operation not permitted" in protection.tour and "/protection" in protection.tour
    finally:
        protection.close()
    assert demo_mounts(data_dir / "devices") == []


@pytest.mark.timeout(60)
def test_stale_demo_mounts_are_removed_at_the_next_start(tmp_path: Path) -> None:
    reason = fanotify_unavailable()
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path / "demo"
    info = _info(data_dir, ["IC300-0001"])
    first = setup_demo_protection(data_dir, info)  # a demo that is then killed: close() never runs
    assert len(demo_mounts(data_dir / "devices")) == 1
    second = setup_demo_protection(data_dir, info)
    try:
        # The stale mount was removed first, so exactly one (fresh) mount is there, not two stacked.
        assert len(demo_mounts(data_dir / "devices")) == 1
    finally:
        second.close()
        first.mounts.clear()
    assert remove_stale_mounts(data_dir / "devices") == 0
