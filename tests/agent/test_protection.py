"""The agent's DeviceProtection service on its own: a tmpfs device root, the real kernel, no server.

Only a tmpfs mount made by the test is ever marked with fanotify. Uploads go to a loopback port
nobody listens on, so these tests see the spool and the retry path; the end-to-end test with the
real server is tests/integration/test_protection_e2e.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medsec.agent.access_log import AccessLog
from medsec.agent.client import ServerClient, make_http_client
from medsec.agent.config import AgentConfig
from medsec.agent.protection import DeviceProtection, parse_protection_section
from medsec.crypto.keys import SigningKey, write_private_file
from medsec.errors import ConfigError
from medsec.protect import integrity, trustdb
from medsec.protect.errors import FanotifyError
from medsec.protect.events import ProtectionEvent
from medsec.protect.fanotify import FAN_CLASS_CONTENT, Fanotify
from medsec.protect.policy import parse_document

PRODUCT = "infusion-pump"
SERIAL = "SN-PROT-1"
HARDWARE_ID = "hw-rev-b"
CLINICAL_CONFIG = "opt/device/etc/clinical.json"
TRUSTED = "opt/device/bin/pump-ctl"
# Python is a listed interpreter again: scripts it runs from the device are checked, the data files
# its clinical processes read (--config) are not (medsec.protect.engine.script_argument).
INTERPRETERS = ["/usr/bin/dash", "/usr/bin/bash", "/usr/bin/python3*", os.path.realpath(sys.executable)]


# -- helpers shared with tests/integration/test_protection_e2e.py -------------------------------------------


def fanotify_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (fanotify permission events and tmpfs mounts)"
    if shutil.which("mount") is None:
        return "needs mount(8)"
    try:
        Fanotify(FAN_CLASS_CONTENT).close()
    except FanotifyError as e:
        return f"fanotify is unavailable here: {e}"
    return None


def mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "medsec-device", str(where)], check=True)
    if not os.path.ismount(where):
        raise AssertionError(f"{where} is not a mount point after mount -t tmpfs")


def unmount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], check=False, capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)


def policy_doc(version: int = 3, mode: str = "enforce", model: str = HARDWARE_ID) -> dict[str, Any]:
    return {
        "format": "medsec-protect-policy/v1",
        "product": PRODUCT,
        "model": model,
        "version": version,
        "mode": mode,
        "failure_mode": "fail_closed",
        "decision_deadline_ms": 2000,
        "interpreters": INTERPRETERS,
        "loaders": [],
        "script_suffixes": [".sh", ".py"],
        "updater_sha256": "0" * 64,
        "excluded_paths": [],
        "memfd_noexec": None,
    }


def sign_policy(key: SigningKey, **kw: Any) -> bytes:
    return parse_document(policy_doc(**kw)).seal([key])


def build_device_root(
    root: Path,
    release_key: SigningKey,
    *,
    server_url: str,
    serial: str = SERIAL,
    hardware_id: str = HARDWARE_ID,
    token: str | None = None,
    **protection: Any,
) -> dict[str, Any]:
    """A provisioned device root: software, signed policy, trust DB learned from it, baseline, agent.json."""
    binary = root / TRUSTED
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path("/usr/bin/true").resolve(), binary)
    binary.chmod(0o755)
    config_file = root / CLINICAL_CONFIG
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text('{"rate_ml_per_h": 120}\n')
    etc = root / "etc/medsec"
    etc.mkdir(parents=True, exist_ok=True)
    trust_dir = root / "usr/share/medsec/trust"
    trust_dir.mkdir(parents=True, exist_ok=True)
    (trust_dir / "release.pub").write_text(release_key.verify_key.to_base64() + "\n")
    db = trustdb.TrustDB(PRODUCT, "1.0.0", 1, trustdb.utc_text(), trustdb.learn(root / "opt"))
    (etc / "trustdb.dsse").write_bytes(db.seal([release_key]))
    (etc / "protect-policy.dsse").write_bytes(sign_policy(release_key, model=hardware_id))
    baseline = integrity.build_baseline(
        root, [("opt/device/bin", "binary"), ("opt/device/etc", "config")], label=serial
    )
    (etc / "integrity-baseline.dsse").write_bytes(baseline.seal([release_key]))
    integrity.populate_store(root / "var/lib/medsec/known-good", root, baseline)
    section = {
        "enabled": True,
        "product": PRODUCT,
        "policy_file": "etc/medsec/protect-policy.dsse",
        "trust_keys": ["usr/share/medsec/trust/release.pub"],
        "trustdb_file": "etc/medsec/trustdb.dsse",
        "baseline_file": "etc/medsec/integrity-baseline.dsse",
        "known_good": ["var/lib/medsec/known-good"],
        "integrity_interval_seconds": 30,
        "reload_seconds": 1,
        "upload_seconds": 1,
        "report_seconds": 30,
        **protection,
    }
    config: dict[str, Any] = {
        "server_url": server_url,
        "serial": serial,
        "hardware_id": hardware_id,
        "checkin_interval_seconds": 1,
        "retry_initial_seconds": 1,
        "retry_max_seconds": 2,
        "protection": section,
    }
    if token is not None:
        write_private_file(etc / "enrollment-token", token.encode())
        config["enrollment_token_file"] = "etc/medsec/enrollment-token"
    (etc / "agent.json").write_text(json.dumps(config, indent=2))
    (etc / "version").write_text("1.0.0\n")
    return config


def run_binary(path: Path) -> int:
    """Exit status of ``path``; raises PermissionError when the exec is refused."""
    return subprocess.run([str(path)], check=False, timeout=20).returncode


def unused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# -- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def release_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def device_root(tmp_path: Path) -> Iterator[Path]:
    reason = fanotify_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "device"
    mount_tmpfs(root)
    try:
        yield root
    finally:
        unmount(root)


class Running:
    """A DeviceProtection over a device root, with its own access log, stopped at the end."""

    def __init__(self, root: Path, **kw: Any) -> None:
        self.config = AgentConfig.load(root)
        assert self.config.protection is not None
        key_file = self.config.layout.key_file
        if not key_file.exists():
            SigningKey.generate().save(key_file)
        self.key = SigningKey.load(key_file)
        self.log = AccessLog(self.config.layout.access_log_dir, self.config.serial, self.key)
        self.http = make_http_client()
        self.service = DeviceProtection(
            root,
            self.config.serial,
            self.config.hardware_id,
            self.config.protection,
            self.key,
            self.log,
            ServerClient(self.config.server_url, self.http),
            state_dir=self.config.layout.state_dir,
            **kw,
        )
        self.service.start()

    def entries(self, prefix: str = "protect.") -> list[dict[str, Any]]:
        return [e for e in self.log.entries() if e["event"].startswith(prefix)]

    def wait_for(self, what: str, rule: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.entries() if e["event"] == what and (rule is None or e.get("rule") == rule)]
            return bool(found)

        assert self.service.wait_recorded(seen, timeout), f"no {what} {rule or ''} in {self.entries()}"
        return found[0]

    def close(self) -> None:
        self.service.stop()
        self.final_entries = self.entries()
        self.log.close()
        self.http.close()


# -- settings --------------------------------------------------------------------------------------------------


def test_protection_section_names_the_bad_field(tmp_path: Path) -> None:
    base = {"policy_file": "p.dsse", "trust_keys": ["k.pub"], "product": PRODUCT}
    parsed = parse_protection_section(tmp_path, base)
    assert parsed is not None and parsed.mount == tmp_path and parsed.trustdb_file is None
    assert parsed.policy_file == tmp_path / "p.dsse"
    assert parse_protection_section(tmp_path, {**base, "enabled": False}) is None
    for bad, field in (
        ({**base, "trust_keys": []}, "protection.trust_keys"),
        ({**base, "reload_seconds": 0}, "protection.reload_seconds"),
        ({**base, "colour": "red"}, "protection.colour"),
        ({k: v for k, v in base.items() if k != "policy_file"}, "protection.policy_file"),
        ({k: v for k, v in base.items() if k != "product"}, "protection.product"),
        ({**base, "port_policy_file": "ports.dsse"}, "protection.netns"),
        ({**base, "port_policy_file": "ports.dsse", "netns": "dev ns"}, "protection.netns"),
        (
            {**base, "port_policy_file": "ports.dsse", "netns": "dev", "this_namespace": True},
            "protection.this_namespace",
        ),
        ({**base, "this_namespace": "yes"}, "protection.this_namespace"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            parse_protection_section(tmp_path, bad)
    # A port guard firewalls a named namespace, or this one only when asked for by name.
    guarded = parse_protection_section(tmp_path, {**base, "port_policy_file": "ports.dsse", "netns": "device"})
    assert guarded is not None and (guarded.netns, guarded.this_namespace) == ("device", False)
    here = parse_protection_section(tmp_path, {**base, "port_policy_file": "ports.dsse", "this_namespace": True})
    assert here is not None and (here.netns, here.this_namespace) == (None, True)
    # The product defaults to the update section's, as agent.json is usually written.
    assert parse_protection_section(tmp_path, {k: v for k, v in base.items() if k != "product"}, PRODUCT)


# -- attacks on a tmpfs device root -------------------------------------------------------------------------------


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
def test_unknown_binary_is_refused_with_eperm_and_logged(device_root: Path, release_key: SigningKey) -> None:
    build_device_root(device_root, release_key, server_url=unused_url())
    running = Running(device_root)
    try:
        assert running.service.status["allowlist"] == "on"
        assert run_binary(device_root / TRUSTED) == 0
        dropped = device_root / "opt/device/tmp/dropper"
        dropped.parent.mkdir(parents=True)
        shutil.copy2(Path("/usr/bin/id").resolve(), dropped)
        with pytest.raises(PermissionError) as refused:
            run_binary(dropped)
        assert refused.value.errno == errno.EPERM
        entry = running.wait_for("protect.exec_denied", "not_in_trustdb")
        assert entry["object"]["path"] == str(dropped) and entry["mode"] == "enforce"
        # The server is down: the event waits in the spool, on disk, for the next try.
        spool = (running.service.store.dir / "spool.jsonl").read_text()
        assert str(dropped) in spool
    finally:
        running.close()
    assert [e for e in running.final_entries if e["event"] == "protect.stopped"]


@pytest.mark.req("RL-3")
@pytest.mark.timeout(90)
def test_unsigned_trustdb_swapped_in_is_refused_and_the_old_one_stays(
    device_root: Path, release_key: SigningKey
) -> None:
    build_device_root(device_root, release_key, server_url=unused_url())
    dropped = device_root / "opt/device/tmp/dropper"
    dropped.parent.mkdir(parents=True)
    shutil.copy2(Path("/usr/bin/id").resolve(), dropped)
    running = Running(device_root)
    try:
        # The attacker's database allows the dropper, but nobody trusted signed it.
        forged = trustdb.TrustDB(PRODUCT, "6.6.6", 99, trustdb.utc_text(), trustdb.learn(device_root / "opt"))
        other = SigningKey.generate()
        (device_root / "etc/medsec/trustdb.dsse").write_bytes(forged.seal([other]))
        entry = running.wait_for("protect.agent_error", "trustdb_refused")
        assert "not signed by a trusted key" in entry["detail"]
        with pytest.raises(PermissionError):
            run_binary(dropped)
        assert run_binary(device_root / TRUSTED) == 0
        assert running.service.trust is not None and running.service.trust.version == "1.0.0"
        # A bare (unsigned) document is refused the same way.
        unsigned = json.dumps(forged.to_document()).encode()
        (device_root / "etc/medsec/trustdb.dsse").write_bytes(unsigned)
        running.service.reload()
        with pytest.raises(PermissionError):
            run_binary(dropped)
    finally:
        running.close()
    kept = (device_root / "var/lib/medsec/protection/trustdb.dsse").read_bytes()
    assert trustdb.read_unverified(kept).version == "1.0.0"


@pytest.mark.req("RL-1")
@pytest.mark.timeout(90)
def test_rolled_back_policy_is_refused_and_the_kept_one_is_used_after_restart(
    device_root: Path, release_key: SigningKey
) -> None:
    build_device_root(device_root, release_key, server_url=unused_url())
    policy_file = device_root / "etc/medsec/protect-policy.dsse"
    policy_file.write_bytes(sign_policy(release_key, version=5))
    running = Running(device_root)
    try:
        assert running.service.policy is not None and running.service.policy.version == 5
        # A validly signed but older policy in monitor mode would switch enforcement off: rollback.
        policy_file.write_bytes(sign_policy(release_key, version=4, mode="monitor"))
        entry = running.wait_for("protect.agent_error", "policy_refused")
        assert "rollback refused" in entry["detail"]
        assert running.service.policy.mode == "enforce"
    finally:
        running.close()
    restarted = Running(device_root)
    try:
        assert restarted.service.policy is not None and restarted.service.policy.version == 5
        assert restarted.service.status["allowlist"] == "on"
    finally:
        restarted.close()


@pytest.mark.req("RL-1")
@pytest.mark.timeout(60)
def test_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path, release_key: SigningKey) -> None:
    root = tmp_path / "device"
    build_device_root(root, release_key, server_url=unused_url(), queue_limit=3)
    cfg = json.loads((root / "etc/medsec/agent.json").read_text())
    cfg["protection"].pop("baseline_file")
    (root / "etc/medsec/agent.json").write_text(json.dumps(cfg))
    running = Running(root, is_root=lambda: False)
    try:
        for i in range(200):  # far more than the queue holds, from a part that must never wait
            running.service.sink(ProtectionEvent("exec", "deny", "not_in_trustdb", detail=f"burst {i}"))
        entry = running.wait_for("protect.agent_error", "events_dropped")
        assert "dropped" in entry["detail"]
        assert len(running.service.spool) <= 3
    finally:
        running.close()


_WITHOUT_FANOTIFY_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from agent.test_protection import Running
root = Path(sys.argv[2])
r = Running(root)
r.wait_for("protect.agent_error", "fanotify_unavailable")
r.wait_for("protect.started")
# Integrity still runs on its schedule without fanotify: a changed config is put back.
(root / sys.argv[3]).write_text('{"rate_ml_per_h": 1200}')
r.service.monitor.check_all()
r.wait_for("protect.integrity_restored")
print(json.dumps({"status": r.service.status, "entries": [e["event"] for e in r.entries()]}))
r.close()
"""


@pytest.mark.req("RL-1")
@pytest.mark.timeout(90)
def test_without_fanotify_the_device_keeps_working_and_says_which_protections_are_off(
    device_root: Path, release_key: SigningKey
) -> None:
    """The agent as root but stripped of every capability: the kernel itself refuses fanotify_init."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv(1) to start a process without capabilities")
    root = device_root
    build_device_root(root, release_key, server_url=unused_url())
    no_caps = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
    script = [sys.executable, "-c", _WITHOUT_FANOTIFY_SCRIPT, str(Path(__file__).parent.parent), str(root)]
    done = subprocess.run(
        [*no_caps, *script, CLINICAL_CONFIG],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"]["allowlist"] == "off: fanotify unavailable"
    assert result["status"]["ports"] == "off: no port policy configured"
    assert result["status"]["integrity"] == "on (schedule only)"
    assert "protect.integrity_detected" in result["entries"]
    assert (root / CLINICAL_CONFIG).read_text() == '{"rate_ml_per_h": 120}\n'


@pytest.mark.req("RL-1")
@pytest.mark.timeout(60)
def test_not_root_turns_allowlist_and_ports_off_and_reports_it(tmp_path: Path, release_key: SigningKey) -> None:
    root = tmp_path / "device"
    build_device_root(
        root, release_key, server_url=unused_url(), port_policy_file="etc/medsec/ports.dsse", netns="device"
    )
    running = Running(root, is_root=lambda: False)
    try:
        entry = running.wait_for("protect.agent_error", "not_root")
        assert "allowlisting (fanotify) and the port guard are off" in entry["detail"]
        assert running.service.status == {
            "allowlist": "off: not root",
            "integrity": "on (schedule only: not root)",
            "ports": "off: not root",
        }
        assert running.service.engine is None
        state = running.service.engine_state()
        assert (state.mode, state.off_reason, state.policy_version) == ("off", "not root", "3")
    finally:
        running.close()
