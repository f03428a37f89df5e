"""Device protection end to end: the real server, a real enrolled device on a tmpfs root, the agent
under its supervisor in enforce mode, and the attacks a person with a shell on the device would try.

Only the tmpfs mount this test creates is ever marked with fanotify.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from agent.test_protection import (
    CLINICAL_CONFIG,
    TRUSTED,
    build_device_root,
    fanotify_unavailable,
    mount_tmpfs,
    run_binary,
    unmount,
)
from medsec.crypto.keys import SigningKey
from medsec.protect import trustdb
from medsec.protect.clinical import max_gap_seconds, read_beats

SERIAL = "IC300-0001"  # hospital-a's device in the seed
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not reached within {timeout} s")


def _events(url: str, token: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{url}/api/v1/devices/{SERIAL}/protection-events",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _server_has(url: str, token: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    answer = _events(url, token, limit=500)
    assert answer.status_code == 200, answer.text
    return next((e for e in answer.json() if match(e)), None)


def _sign_in(client: httpx.Client, user: Any) -> None:
    page = client.get("/login", params={"next": "/devices"})
    csrf = CSRF_RE.search(page.text)
    assert csrf
    answer = client.post(
        "/login",
        data={"username": user.username, "password": user.password, "csrf_token": csrf.group(1), "next": "/devices"},
    )
    assert answer.status_code == 303, answer.text
    if answer.headers["location"].startswith("/login/totp"):
        form = client.get(answer.headers["location"])
        csrf = CSRF_RE.search(form.text)
        assert csrf
        code = pyotp.TOTP(user.totp_secret).now()
        answer = client.post("/login/totp", data={"code": code, "csrf_token": csrf.group(1), "next": "/devices"})
        assert answer.status_code == 303, answer.text


def _agent_pid(root: Path) -> int | None:
    try:
        beat = json.loads((root / "var/lib/medsec/heartbeat.json").read_text())
    except (OSError, ValueError):
        return None
    return int(beat["pid"]) if beat.get("state") == "running" else None


def _log_events(root: Path) -> str:
    """The raw access-log records (read as bytes: the log stays locked by the running agent)."""
    folder = root / "var/log/medsec/access-log"
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.iterdir() if p.is_file())


@pytest.fixture
def tmpfs_root(tmp_path: Path) -> Iterator[Path]:
    reason = fanotify_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "device"
    mount_tmpfs(root)
    try:
        yield root
    finally:
        unmount(root)


@pytest.mark.req("RL-1")
@pytest.mark.req("RL-2")
@pytest.mark.req("RL-3")
@pytest.mark.req("PA-2")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_enforced_device_blocks_restores_reports_and_survives_a_kill(live_server: Any, tmpfs_root: Path) -> None:
    root = tmpfs_root
    device = next(d for d in live_server.seed.devices if d.serial == SERIAL)
    release_key = SigningKey.generate()
    build_device_root(
        root,
        release_key,
        server_url=live_server.url,
        serial=device.serial,
        hardware_id=device.hardware_id,
        token=device.enrollment_token,
    )
    url, tokens = live_server.url, live_server.seed.tokens
    log = (root.parent / "agent.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "medsec", "agent", "--root", str(root), "--supervise"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    clinical: subprocess.Popen[bytes] | None = None
    try:
        first_pid = _wait(lambda: _agent_pid(root), 60, "agent started")
        _wait(lambda: "protect.started" in _log_events(root), 60, "protection started")

        # RL-3: software not registered in advance does not run.
        assert run_binary(root / TRUSTED) == 0
        dropper = root / "opt/device/tmp/dropper"
        dropper.parent.mkdir(parents=True)
        shutil.copy2(Path("/usr/bin/id").resolve(), dropper)
        with pytest.raises(PermissionError) as refused:
            run_binary(dropper)
        assert refused.value.errno == errno.EPERM

        # The refusal reaches the server, signed by the device, and the owning hospital sees it.
        a_token, b_token = tokens["a-responsible"], tokens["b-responsible"]
        denied = _wait(
            lambda: _server_has(url, a_token, lambda e: e["action"] == "deny" and e["object"]["path"] == str(dropper)),
            60,
            "deny event on the server",
        )
        assert denied["rule"] == "not_in_trustdb" and denied["mode"] == "enforce"
        assert _events(url, b_token).status_code == 404  # another hospital: as if the device did not exist
        status = httpx.get(
            f"{url}/api/v1/devices/{SERIAL}/protection-status",
            headers={"Authorization": f"Bearer {a_token}"},
            timeout=30,
        ).json()
        assert status["reported"] and status["mode"] == "enforce" and status["trustdb_version"] == "1.0.0"
        with httpx.Client(base_url=url, timeout=30, headers={"accept-language": "en"}) as a_portal:
            a_portal.cookies.set("medsec_lang", "en")
            _sign_in(a_portal, live_server.seed.users["a-responsible"])
            page = a_portal.get(f"/devices/{SERIAL}/protection")
            assert page.status_code == 200 and str(dropper) in page.text
        with httpx.Client(base_url=url, timeout=30, headers={"accept-language": "en"}) as b_portal:
            b_portal.cookies.set("medsec_lang", "en")
            _sign_in(b_portal, live_server.seed.users["b-responsible"])
            other = b_portal.get(f"/devices/{SERIAL}/protection")
            assert other.status_code == 404 and str(dropper) not in other.text

        # An unsigned trust database that would allow the dropper is refused; the old one stays.
        forged = trustdb.TrustDB("infusion-pump", "6.6.6", 99, trustdb.utc_text(), trustdb.learn(root / "opt"))
        (root / "etc/medsec/trustdb.dsse").write_text(json.dumps(forged.to_document()))
        _wait(
            lambda: _server_has(url, a_token, lambda e: e["rule"] == "trustdb_refused"),
            60,
            "trustdb_refused on the server",
        )
        with pytest.raises(PermissionError):
            run_binary(dropper)

        # RL-3: Python is a listed interpreter, so a dropped script does not run through it either.
        evil = root / "opt/device/tmp/evil.py"
        staged = root.parent / "evil.py"
        staged.write_text("print('payload ran')\n")
        # Copied with cp: a listed interpreter (this test's Python) opening a .py file there is checked.
        subprocess.run(["cp", str(staged), str(evil)], check=True, timeout=30)
        done = subprocess.run([sys.executable, str(evil)], capture_output=True, text=True, check=False, timeout=30)
        assert done.returncode != 0 and "payload ran" not in done.stdout
        assert "Operation not permitted" in done.stderr
        _wait(
            lambda: _server_has(
                url, a_token, lambda e: e["rule"] == "interpreter_script_untrusted" and e["object"]["path"] == str(evil)
            ),
            60,
            "python script refusal on the server",
        )

        # RL-1/RL-2: a changed configuration is detected and restored while the essential function beats on.
        heartbeat = root / "var/clinical/heartbeat"
        heartbeat.parent.mkdir(parents=True)
        options = ["--config", str(root / CLINICAL_CONFIG), "--heartbeat", str(heartbeat), "--interval", "0.05"]
        # A Python process reading its --config on the device: a data file, not a script, so allowed.
        clinical = subprocess.Popen([sys.executable, "-m", "medsec.protect.clinical", *options])
        _wait(lambda: heartbeat.exists() and len(read_beats(heartbeat)) >= 10, 30, "clinical heartbeat")
        original = (root / CLINICAL_CONFIG).read_bytes()
        (root / CLINICAL_CONFIG).write_text('{"rate_ml_per_h": 1200}\n')  # a tenfold dose
        _wait(lambda: (root / CLINICAL_CONFIG).read_bytes() == original, 20, "config restored")
        _wait(
            lambda: _server_has(url, a_token, lambda e: e["category"] == "integrity" and e["action"] == "restored"),
            60,
            "integrity restored on the server",
        )
        beats_before = len(read_beats(heartbeat))
        _wait(lambda: len(read_beats(heartbeat)) >= beats_before + 10, 10, "heartbeat continues")
        beats = read_beats(heartbeat)
        assert [b.seq for b in beats] == list(range(1, len(beats) + 1))
        assert max_gap_seconds(beats) < 1.0
        assert all(b.rate == 120 for b in beats if b.config_state == "ok" and b.seq < 5)

        # RL-1: killed outright, the agent is back within 5 s and enforcing again.
        killed_at = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        second_pid = _wait(lambda: (p := _agent_pid(root)) and p != first_pid and p, 10, "agent restarted")
        restart_seconds = time.monotonic() - killed_at
        assert restart_seconds < 5.0, f"restart took {restart_seconds:.1f} s"
        assert second_pid != first_pid
        _wait(lambda: _log_events(root).count("protect.started") >= 2, 30, "protection restarted")
        assert '"event":"agent.gap"' in _log_events(root).replace(" ", "")
        with pytest.raises(PermissionError):
            run_binary(dropper)
        assert run_binary(root / TRUSTED) == 0
    finally:
        if clinical is not None:
            clinical.terminate()
            clinical.wait(timeout=10)
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=10)
        log.close()
    assert supervisor.returncode == 0, (root.parent / "agent.log").read_text(errors="replace")[-3000:]
