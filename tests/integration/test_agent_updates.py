"""Signed updates end to end: real server, real repository, real agent processes (SM-1, SM-5, SM-6, RL-1).

A release engineer publishes 1.1.0 with insecure demo-style keys, a campaign is created and approved
by two different people and started; one agent downloads, installs, health-checks and commits,
another fails its health check and rolls back. The server learns both only from signed reports.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from medsec.agent.access_log import AccessLog
from medsec.crypto.keys import SigningKey, write_private_file
from medsec.demo_updates import (
    RELEASES,
    demo_keys,
    install_server_keys,
    open_repository,
    provision_device,
    release,
    update_section,
)
from medsec.server.models import Device, User
from medsec.server.services import accounts
from medsec.updates.slots import DirectorySlots

pytestmark = [pytest.mark.req("SM-1"), pytest.mark.req("SM-5"), pytest.mark.req("RL-1")]
TARGET = "infusion-pump/1.1.0/release.tar"


def _bearer(live_server: Any, username: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {live_server.seed.tokens[username]}"}


def _device_root(tmp_path: Path, live_server: Any, index: int, *, failing: bool) -> tuple[Path, str]:
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
        "update": update_section(failing=failing, poll_seconds=1, retry_seconds=1),
    }
    (root / "etc/medsec").mkdir(parents=True)
    (root / "etc/medsec/agent.json").write_text(json.dumps(config))
    (root / "etc/medsec/version").write_text("1.0.0\n")
    write_private_file(root / "etc/medsec/enrollment-token", d.enrollment_token.encode())
    return root, d.serial


def _start(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "medsec", "agent", "--root", str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out.decode(errors="replace")


def _wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("condition not reached in time")


def _device(live_server: Any, serial: str) -> Device:
    with live_server.ctx.tx() as s:
        device = s.scalar(select(Device).where(Device.serial == serial))
        assert device is not None
        return device


def _campaign(live_server: Any, cid: int) -> dict[str, Any]:
    r = httpx.get(f"{live_server.url}/api/v1/campaigns/{cid}", headers=_bearer(live_server, "maker-admin"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _states(live_server: Any, cid: int) -> dict[str, str]:
    return {d["serial"]: d["state"] for d in _campaign(live_server, cid)["devices"]}


def _log_events(root: Path, serial: str) -> list[dict[str, Any]]:
    log = AccessLog(root / "var/log/medsec/access-log", serial, SigningKey.load(root / "var/lib/medsec/device.key"))
    try:
        log.verify()
        return log.entries()
    finally:
        log.close()


def test_agents_commit_and_roll_back_a_campaign_from_signed_reports(live_server, tmp_path):
    settings = live_server.ctx.settings
    # The release engineer's side: demo-style keys without passphrases, 1.0.0 and 1.1.0 published.
    keys = demo_keys(tmp_path / "keys")
    install_server_keys(keys, settings.tuf_online_keys_dir, settings.director_root_dir)
    repo = open_repository(keys, settings.repo_dir)
    factory, _new = (release(keys, repo, tmp_path / "releases", spec) for spec in RELEASES)
    r = httpx.post(f"{live_server.url}/api/v1/releases/sync", headers=_bearer(live_server, "maker-admin"))
    assert r.status_code == 200, r.text

    # The factory: embedded roots, 1.0.0 in slot A. Device 2's health check cannot pass under 1.1.0.
    image_root = (repo.metadata_dir / "1.root.json").read_bytes()
    director_root = (keys.dir / "director" / "1.root.json").read_bytes()
    good, good_serial = _device_root(tmp_path, live_server, 0, failing=False)
    bad, bad_serial = _device_root(tmp_path, live_server, 1, failing=True)
    for root in (good, bad):
        provision_device(root, image_root, director_root, factory)

    procs = [_start(good), _start(bad)]
    outputs: list[str] = []
    try:
        _wait_for(lambda: all(_device(live_server, s).installed_version == "1.0.0" for s in (good_serial, bad_serial)))
        body = {
            "name": "1.1.0",
            "product": "infusion-pump",
            "version": "1.1.0",
            "selection": {"hospitals": ["hospital-a"]},
            "error_threshold": 100,
        }
        r = httpx.post(f"{live_server.url}/api/v1/campaigns", json=body, headers=_bearer(live_server, "maker-release"))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        for action in ("approve", "start"):
            r = httpx.post(
                f"{live_server.url}/api/v1/campaigns/{cid}/{action}", headers=_bearer(live_server, "maker-admin")
            )
            assert r.status_code == 200, r.text
        assert set(_states(live_server, cid)) == {good_serial, bad_serial}
        _wait_for(lambda: _states(live_server, cid) == {good_serial: "committed", bad_serial: "rolled_back"}, 90)
        # The committed device keeps reporting the truth: 1.1.0 from its running slot, not the version file.
        _wait_for(lambda: _device(live_server, good_serial).installed_version == "1.1.0")
    finally:
        outputs = [_stop(p) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs

    campaign = _campaign(live_server, cid)
    assert campaign["status"] == "completed"
    history = {d["serial"]: d["history"] for d in campaign["devices"]}
    assert all(h["source"] == "device" and h["report_counter"] for h in history[good_serial][1:])
    assert "flow-sensor-ready" in (history[bad_serial][-1]["reason"] or "")
    assert _device(live_server, bad_serial).installed_version == "1.0.0"

    # What really runs: slot B with 1.1.0 committed on one device, slot A with 1.0.0 on the other.
    good_slots, bad_slots = DirectorySlots(good / "slots"), DirectorySlots(bad / "slots")
    assert good_slots.current() == "b" and good_slots.state().committed == "b"
    assert bad_slots.current() == "a" and bad_slots.state().committed == "a"
    assert (good / "etc/medsec/version").read_text() == "1.0.0\n", "the static version file is not what is reported"

    # Every transition is in the signed access log, with its fields.
    good_events = [e for e in _log_events(good, good_serial) if e["event"].startswith("update.")]
    assert [e["event"] for e in good_events] == [
        "update.downloading",
        "update.downloaded",
        "update.installing",
        "update.switched",
        "update.health_check",
        "update.committed",
    ]
    assert all(e.get("target_name") == TARGET and e.get("release_counter") == 2 for e in good_events)
    bad_events = [e for e in _log_events(bad, bad_serial) if e["event"].startswith("update.")]
    assert bad_events[-1]["event"] == "update.rolled_back"
    assert bad_events[-1]["code"] == "health_check_failed"

    # The hospital's responsible person sees both outcomes and the release notes in the portal.
    with live_server.ctx.tx() as s:
        user = s.scalar(select(User).where(User.username == "a-responsible"))
        cookie, _row = accounts.create_web_session(s, settings, user, mfa_verified=True)
    with httpx.Client(base_url=live_server.url) as portal:
        portal.cookies.set("medsec_session", cookie)
        page = portal.get("/updates")
    assert page.status_code == 200
    for text in (good_serial, bad_serial, "1.1.0", "CVE-2025-0001", "投与量計算"):
        assert text in page.text, text
