"""Device protection in the demo (RL-1, RL-2, RL-3): every simulated device enforces an allowlist.

When the demo runs as root with fanotify available, each device's software area
(``ROOT/opt/device``, where its programs and its clinical configuration live) is its own fresh
tmpfs mount, and the device gets, signed by the demo's throwaway release key:

- a trust database learned from that area (everything on it at start may run, nothing else);
- a protection policy in ``enforce`` mode with ``fail_open`` (a late decision lets the exec through,
  so a mistake in the demo can never lock up the machine);
- an integrity baseline of its programs and configuration, with known-good copies to restore from.

Only these tmpfs mounts are ever marked: the agent's engine refuses any mount that shares a
filesystem with ``/`` or the Python it runs on. The rest of the device root (keys, state, access
log) stays on disk, so devices keep their identity across demo runs. The mounts are removed when
the demo stops, and stale ones from a demo that was killed are removed at the next start.

Without root (or without fanotify) nothing changes: the agents run as before and the demo says
which protections are off and why.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsec.atomic_file import atomic_write
from medsec.crypto.keys import SigningKey, write_private_file
from medsec.protect import integrity, trustdb
from medsec.protect.errors import FanotifyError
from medsec.protect.fanotify import FAN_CLASS_CONTENT, Fanotify
from medsec.protect.policy import parse_document

logger = logging.getLogger(__name__)

PRODUCT = "infusion-pump"
MOUNT_REL = "opt/device"
TMPFS_SOURCE = "medsec-demo-device"
KEYS_DIR = "protect-keys"
CLINICAL_CONFIG = f"{MOUNT_REL}/etc/clinical.json"
KEYS_WARNING = """THESE ARE DEMO PROTECTION KEYS.

'medsec demo' generated this release key to sign the simulated devices' protection policy,
trust database and integrity baseline. It has no passphrase. Never sign anything for a real
device with it.
"""


@dataclass
class DemoProtection:
    """What the demo set up for protection; :meth:`close` removes the mounts it made."""

    mounts: list[Path] = field(default_factory=list)
    off_reason: str | None = None
    tour: str = ""

    def close(self) -> None:
        for mount in reversed(self.mounts):
            _unmount(mount)
        self.mounts.clear()


def protection_unavailable() -> str | None:
    """Why the demo cannot enforce here, or None."""
    if os.geteuid() != 0:
        return "the demo does not run as root (fanotify permission events and tmpfs mounts need root)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount(8) and umount(8) are not installed"
    try:
        Fanotify(FAN_CLASS_CONTENT).close()
    except FanotifyError as e:
        return f"fanotify is unavailable: {e}"
    return None


def _unescape(field_text: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as octal."""
    return field_text.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")


def demo_mounts(devices_dir: Path) -> list[Path]:
    """The demo's tmpfs mounts below ``devices_dir`` (from a run that did not stop cleanly, too)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text("utf-8").splitlines()
    except OSError:
        return []
    base = str(devices_dir.resolve()) + os.sep
    found = []
    for line in lines:
        left, _sep, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        if len(parts) < 5 or len(tail) < 2:
            continue
        point = _unescape(parts[4])
        if tail[0] == "tmpfs" and tail[1] == TMPFS_SOURCE and point.startswith(base):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _tool(name: str, *args: str, check: bool = False) -> int:
    """Run mount(8) or umount(8) by absolute path, with a timeout; return its exit status."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed")
    argv = [path, *args]
    return subprocess.run(argv, check=check, capture_output=True, timeout=30).returncode  # noqa: S603 (fixed argv)


def _unmount(mount: Path) -> None:
    if _tool("umount", str(mount)) != 0:
        # Busy (a shell still in it): detach now, the kernel frees it when the last user leaves.
        _tool("umount", "-l", str(mount))


def remove_stale_mounts(devices_dir: Path) -> int:
    stale = demo_mounts(devices_dir)
    for mount in stale:
        logger.warning("removing the stale demo mount %s", mount)
        _unmount(mount)
    return len(stale)


def _release_key(folder: Path) -> SigningKey:
    path = folder / "release.key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        SigningKey.generate().save(path)
    atomic_write(folder / "DEMO-KEYS-README.txt", KEYS_WARNING.encode())
    return SigningKey.load(path)


def _interpreters() -> list[str]:
    """The shells and Python: the system's, and the one the demo itself runs on (a venv's may be elsewhere).

    Python is listed because the engine knows which file is a Python process's script (its first
    argument after the options), so a clinical process reading ``--config clinical.json`` is not refused.
    """
    found = ["/usr/bin/dash", "/usr/bin/bash", "/usr/bin/python3*"]
    ours = os.path.realpath(sys.executable)
    if not fnmatch.fnmatch(ours, "/usr/bin/python3*"):
        found.append(ours)
    return found


def _policy(hardware_id: str) -> dict[str, Any]:
    return {
        "format": "medsec-protect-policy/v1",
        "product": PRODUCT,
        "model": hardware_id,
        "version": 1,
        "mode": "enforce",
        "failure_mode": "fail_open",  # the demo must never lock the machine up
        "decision_deadline_ms": 250,
        "interpreters": _interpreters(),
        "loaders": [],
        "script_suffixes": [".sh", ".py"],
        "updater_sha256": "0" * 64,
        "excluded_paths": [],
        "memfd_noexec": None,  # a machine-wide sysctl: not the demo's to change
    }


def _fill_software_area(root: Path) -> None:
    """What the device runs, on the fresh tmpfs: a program and the clinical configuration."""
    area = root / MOUNT_REL
    (area / "bin").mkdir(parents=True, exist_ok=True)
    (area / "etc").mkdir(parents=True, exist_ok=True)
    (area / "incoming").mkdir(mode=0o1777, exist_ok=True)  # not watched by integrity: files stay to be tried
    program = area / "bin/pump-monitor"
    shutil.copy2(Path("/usr/bin/true").resolve(), program)
    program.chmod(0o755)
    (area / "etc/clinical.json").write_text('{"rate_ml_per_h": 120}\n', encoding="utf-8")


def _protect_device(root: Path, serial: str, hardware_id: str, key: SigningKey) -> None:
    _fill_software_area(root)
    etc = root / "etc/medsec"
    trust_dir = root / "usr/share/medsec/trust"
    trust_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(trust_dir / "protect-release.pub", key.verify_key.to_base64().encode() + b"\n", mode=0o644)
    db = trustdb.TrustDB(PRODUCT, "1.0.0", 1, "2025-04-01T09:00:00Z", trustdb.learn(root / "opt"))
    atomic_write(etc / "protect-trustdb.dsse", db.seal([key]))
    atomic_write(etc / "protect-policy.dsse", parse_document(_policy(hardware_id)).seal([key]))
    baseline = integrity.build_baseline(
        root, [(f"{MOUNT_REL}/bin", "binary"), (f"{MOUNT_REL}/etc", "config")], label=serial, created=db.created
    )
    atomic_write(etc / "protect-baseline.dsse", baseline.seal([key]))
    integrity.populate_store(root / "var/lib/medsec/known-good", root, baseline)
    _configure_agent(
        root,
        {
            "enabled": True,
            "product": PRODUCT,
            "mount": MOUNT_REL,
            "policy_file": "etc/medsec/protect-policy.dsse",
            "trust_keys": ["usr/share/medsec/trust/protect-release.pub"],
            "trustdb_file": "etc/medsec/protect-trustdb.dsse",
            "baseline_file": "etc/medsec/protect-baseline.dsse",
            "known_good": ["var/lib/medsec/known-good"],
            "integrity_interval_seconds": 60,
            "upload_seconds": 2,
            "report_seconds": 30,
        },
    )


def _configure_agent(root: Path, section: dict[str, Any] | None) -> None:
    path = root / "etc/medsec/agent.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("protection") == section:
        return
    if section is None:
        config.pop("protection", None)
    else:
        config["protection"] = section
    atomic_write(path, json.dumps(config, indent=2).encode() + b"\n")


def setup_demo_protection(data_dir: Path, info: dict[str, Any]) -> DemoProtection:
    """Mount, provision and configure every device; or, when that cannot be done here, say why."""
    devices_dir = data_dir / "devices"
    remove_stale_mounts(devices_dir)
    result = DemoProtection()
    reason = protection_unavailable()
    if reason is not None:
        for device in info["devices"]:
            _configure_agent(Path(device["root"]), None)
        result.off_reason = reason
        result.tour = off_tour(reason)
        return result
    key = _release_key(data_dir / KEYS_DIR)
    write_private_file(data_dir / KEYS_DIR / "release.pub", key.verify_key.to_base64().encode() + b"\n")
    try:
        for device in info["devices"]:
            root = Path(device["root"])
            mount = root / MOUNT_REL
            mount.mkdir(parents=True, exist_ok=True)
            _tool("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", TMPFS_SOURCE, str(mount), check=True)
            result.mounts.append(mount)
            _protect_device(root, device["serial"], info["model"]["hardware_id"], key)
    except BaseException:
        result.close()
        raise
    result.tour = on_tour(info)
    return result


def off_tour(reason: str) -> str:
    return (
        "Device protection is OFF in this demo: "
        f"{reason}.\n"
        "  The devices run without execution allowlisting, integrity monitoring or the port guard.\n"
        "  Run the demo as root (sudo make run) on Linux with fanotify to see them enforce."
    )


def on_tour(info: dict[str, Any]) -> str:
    device = info["devices"][0]
    root = Path(device["root"])
    area = root / MOUNT_REL
    return f"""Device protection (RL-1..3): each device enforces an allowlist on its own tmpfs ({MOUNT_REL}), fail_open.
Try it on {device["serial"]} ({device["hospital"]}):
  cp /usr/bin/id {area}/incoming/unknown && {area}/incoming/unknown  # -> Operation not permitted
  echo 'print("payload")' > {root}/evil.py && cp {root}/evil.py {area}/incoming/
  python3 {area}/incoming/evil.py  # -> refused too (copied in with cp: a shell may not open scripts there)
  {area}/bin/pump-monitor && echo allowed                        # registered in advance: runs
  echo '{{"rate_ml_per_h": 1200}}' > {area}/etc/clinical.json; sleep 1; cat {area}/etc/clinical.json
                                                                      # -> restored to 120 by the agent
Then, signed in as the hospital's responsible person, open {info["url"]}/devices/{device["serial"]}/protection
(the refusal and the restore are listed; the other hospital does not see them). The device's access
log has them too (protect.exec_denied, protect.integrity_restored)."""
