"""The port guard inside the agent (PA-2, RL-1): confined to the device's network namespace, its drift
reaching the real server signed by the device.

The namespaces are the lab of tests/protect/test_ports_lab.py, created and deleted by the test; the
namespace the test runs in is checked to be left exactly as it was.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from medsec.agent.config import AgentConfig
from medsec.crypto.keys import SigningKey
from medsec.protect.ports import sign_policy
from medsec.protocol import EnrollmentRequest
from protect.test_ports_lab import DEVICE_CLIN, Lab, lab, nft, policy_doc

from .test_protection import Running, build_device_root, unused_url

__all__ = ["lab"]
pytestmark = [pytest.mark.req("PA-2"), pytest.mark.req("RL-1")]

SERIAL = "IC300-0001"  # hospital-a's device in the seed
ROGUE_PORT = 4444


def _host_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True, timeout=20).stdout


def _enroll(live_server: Any, root: Path) -> Any:
    """Enroll the seed device with the key the agent will use (its layout's key file)."""
    device = next(d for d in live_server.seed.devices if d.serial == SERIAL)
    key_file = AgentConfig.load(root).layout.key_file
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    key.save(key_file)
    request = EnrollmentRequest(
        token=device.enrollment_token,
        serial=SERIAL,
        hardware_id=device.hardware_id,
        public_key=key.verify_key.to_base64(),
    )
    answer = httpx.post(f"{live_server.url}/api/v1/enroll", json=request.sign(key), timeout=30)
    assert answer.status_code == 200, answer.text
    return device


def _server_event(live_server: Any, match: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
    token = live_server.seed.tokens["a-responsible"]
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        answer = httpx.get(
            f"{live_server.url}/api/v1/devices/{SERIAL}/protection-events",
            params={"limit": 500},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        seen = answer.json()
        found = next((e for e in seen if match(e)), None)
        if found is not None:
            return dict(found)
        time.sleep(0.3)
    raise AssertionError(f"no matching event on the server: {[(e['category'], e['rule']) for e in seen]}")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_port_guard_in_the_agent_firewalls_only_the_device_namespace_and_reports_drift(
    live_server: Any, lab: Lab, tmp_path: Path
) -> None:
    root = tmp_path / "device"
    key = SigningKey.generate()
    device = next(d for d in live_server.seed.devices if d.serial == SERIAL)
    build_device_root(
        root,
        key,
        server_url=live_server.url,
        serial=SERIAL,
        hardware_id=device.hardware_id,
        port_policy_file="etc/medsec/ports.dsse",
        netns=lab.device,
        port_check_seconds=1,
        baseline_file=None,  # no integrity part: its change notifications would mark the disk tmp_path is on
    )
    (root / "etc/medsec/ports.dsse").write_bytes(sign_policy(policy_doc(model=device.hardware_id), [key]))
    _enroll(live_server, root)
    host_before = _host_tables()
    running = Running(root)
    try:
        assert running.service.status["ports"] == "on"
        applied = running.wait_for("protect.port_applied", "ruleset_applied")
        assert lab.device in applied["detail"]
        assert "table inet medsec" in nft(lab.device, "list", "tables")
        assert _host_tables() == host_before  # the agent's own namespace is not firewalled

        rogue = lab.listen(lab.device, "tcp", "0.0.0.0", ROGUE_PORT)
        assert lab.probe(lab.clinical, [(None, DEVICE_CLIN, ROGUE_PORT)]) == ["timeout"]  # default-deny inbound
        drift = _server_event(live_server, lambda e: e["rule"] == "listening_port_not_in_policy")
        assert (drift["category"], drift["action"]) == ("port", "drift")
        lab.stop(rogue)

        # Someone opens a hole in the device's firewall: reported, and closed again (enforce).
        nft(lab.device, "insert", "rule", "inet", "medsec", "input", "tcp", "dport", "8080", "accept")
        _server_event(live_server, lambda e: e["rule"] == "ruleset_changed" and e["action"] == "drift")
        _server_event(live_server, lambda e: e["rule"] == "ruleset_reapplied" and e["action"] == "applied")
        assert "dport 8080 accept" not in nft(lab.device, "list", "table", "inet", "medsec")
        assert _host_tables() == host_before
    finally:
        running.close()


@pytest.mark.timeout(60)
def test_port_guard_without_its_namespace_stays_off_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "device"
    key = SigningKey.generate()
    missing = "medsec-no-such-ns"
    build_device_root(
        root, key, server_url=unused_url(), port_policy_file="etc/medsec/ports.dsse", netns=missing, baseline_file=None
    )
    (root / "etc/medsec/ports.dsse").write_bytes(sign_policy(policy_doc(model="hw-rev-b"), [key]))
    running = Running(root, is_root=lambda: True)  # the namespace check comes before any root-only step
    try:
        assert running.service.status["ports"] == f"off: network namespace {missing!r} does not exist"
        entry = running.wait_for("protect.agent_error", "port_netns_missing")
        assert missing in entry["detail"]
    finally:
        running.close()
