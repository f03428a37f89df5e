"""The trust database travels in the signed release and switches with the A/B slot (RL-3, SM-6).

Bundles are built with the real ``medsec release build`` command and installed with the real
directory installer; the attacks edit the files a device root holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medsec.cli.main import app
from medsec.crypto.keys import SigningKey
from medsec.protect.errors import TrustDatabaseError
from medsec.protect.events import ProtectionEvent
from medsec.protect.trustdb import ActiveTrustDB, TrustDB, TrustEntry, installer_check, load_active, read_unverified
from medsec.updates.device_errors import BundleRejected
from medsec.updates.installer import DirectoryInstaller
from medsec.updates.release import ReleaseInfo, read_bundle
from medsec.updates.slots import MARKER_DIR, MARKER_FILE, DirectorySlots

PRODUCT = "infusion-pump"
HARDWARE = "ic300-rev-b"


@dataclass
class Release:
    info: ReleaseInfo
    trust_db: bytes


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    key = SigningKey.generate()
    key.save(tmp_path / "release.key")
    return key


def _payload(folder: Path, version: str) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "bin/pump-ctl").write_bytes(f"#!/bin/sh\necho pump {version}\n".encode())
    (folder / "bin/pump-ctl").chmod(0o755)
    (folder / "etc").mkdir()
    (folder / "etc/pump.conf").write_text(f"build={version}\n")
    return folder


def _build(tmp: Path, version: str, counter: int, *extra: str, product: str = PRODUCT) -> Release:
    out = tmp / "bundles" / product / version / "release.tar"
    image = tmp / "os-image"
    if not image.exists():
        (image / "bin").mkdir(parents=True)
        (image / "bin/sh").write_bytes(b"\x7fELF shell")
    result = CliRunner().invoke(
        app,
        [
            "release", "build", str(_payload(tmp / f"payload-{product}-{version}", version)),
            "--product", product, "--version", version, "--counter", str(counter), "--hardware-id", HARDWARE,
            "--out", str(out), "--trust-db-key", str(tmp / "release.key"), "--os-image", str(image), *extra, "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout
    info = read_bundle(out)
    with tarfile.open(out) as tar:
        member = tar.extractfile("trustdb.json")
        assert member is not None
        data = member.read()
    return Release(info, data)


def _install(slots_dir: Path, release: Release, slot: str, key: SigningKey, *, commit: bool = True) -> None:
    installer = DirectoryInstaller(DirectorySlots(slots_dir), trustdb_check=installer_check([key.verify_key]))
    installer.install(release.info.path, release.info.assigned_target(), slot)
    installer.switch(slot)
    if commit:
        installer.commit()


def _overwrite_trust_db(slots_dir: Path, slot: str, data: bytes, *, fix_manifest: bool) -> None:
    """The attacker replaces the slot's trust database, and with root on the box its manifest hash too."""
    (slots_dir / slot / MARKER_DIR / "trustdb.json").write_bytes(data)
    if fix_manifest:
        marker = slots_dir / slot / MARKER_DIR / MARKER_FILE
        release = json.loads(marker.read_bytes())
        release["manifest"]["trust_db"] = hashlib.sha256(data).hexdigest()
        marker.write_text(json.dumps(release))


@pytest.fixture
def device(tmp_path: Path, key: SigningKey) -> tuple[Path, Release, Release]:
    """A device that committed 1.0.0 in slot a and then 1.1.0 in slot b."""
    old = _build(tmp_path, "1.0.0", 1)
    new = _build(tmp_path, "1.1.0", 2)
    slots = tmp_path / "device/slots"
    _install(slots, old, "a", key)
    _install(slots, new, "b", key)
    return slots, old, new


@pytest.mark.req("RL-3")
def test_release_build_puts_a_signed_trust_db_of_the_payload_in_the_bundle(tmp_path: Path, key: SigningKey) -> None:
    release = _build(tmp_path, "1.0.0", 1)
    assert release.info.manifest["trust_db"] == hashlib.sha256(release.trust_db).hexdigest()
    assert json.loads(release.trust_db)["payloadType"] == "application/vnd.medsec.trustdb+json"
    db = read_unverified(release.trust_db)
    assert (db.product, db.version, db.release_counter) == (PRODUCT, "1.0.0", 1)
    assert {(e.path, e.source) for e in db.entries} == {
        ("/slots/current/bin/pump-ctl", "payload"),
        ("/bin/sh", "os-image"),
    }


@pytest.mark.req("SM-6")
def test_switching_the_slot_switches_the_trust_db(tmp_path: Path, key: SigningKey) -> None:
    old = _build(tmp_path, "1.0.0", 1)
    new = _build(tmp_path, "1.1.0", 2)
    slots_dir = tmp_path / "device/slots"
    _install(slots_dir, old, "a", key)
    assert load_active(slots_dir, [key.verify_key], PRODUCT).version == "1.0.0"
    _install(slots_dir, new, "b", key, commit=False)
    db = load_active(slots_dir, [key.verify_key], PRODUCT)
    assert db.version == "1.1.0"
    assert hashlib.sha256(b"#!/bin/sh\necho pump 1.1.0\n").digest() in db
    assert hashlib.sha256(b"#!/bin/sh\necho pump 1.0.0\n").digest() not in db
    # A failed health check rolls back to the committed slot: its database is in force again.
    holder = ActiveTrustDB(slots_dir, [key.verify_key], PRODUCT)
    assert holder.reload().version == "1.1.0"
    DirectoryInstaller(DirectorySlots(slots_dir)).rollback("health check failed")
    assert holder.reload().version == "1.0.0"


@pytest.mark.req("RL-3")
def test_unsigned_trust_db_swapped_into_the_slot_is_refused_and_the_old_one_stays(
    device: tuple[Path, Release, Release], key: SigningKey
) -> None:
    slots_dir, _old, _new = device
    events: list[ProtectionEvent] = []
    holder = ActiveTrustDB(slots_dir, [key.verify_key], PRODUCT, on_event=events.append)
    in_force = holder.reload()
    evil = TrustDB(PRODUCT, "1.1.0", 2, "2026-01-01T00:00:00Z", [TrustEntry("/tmp/x", "ab" * 32, 1, 0o755, "payload")])
    unsigned = json.dumps(evil.to_document()).encode()
    _overwrite_trust_db(slots_dir, "b", unsigned, fix_manifest=False)
    with pytest.raises(TrustDatabaseError, match="does not match the trust_db hash"):
        holder.reload()
    _overwrite_trust_db(slots_dir, "b", unsigned, fix_manifest=True)
    with pytest.raises(TrustDatabaseError, match="unsigned"):
        holder.reload()
    assert holder.current is in_force
    assert bytes.fromhex("ab" * 32) not in holder.current
    assert [(e.action, e.rule) for e in events] == [
        ("applied", "trustdb_loaded"),
        ("error", "trustdb_refused"),
        ("error", "trustdb_refused"),
    ]


@pytest.mark.req("SM-6")
def test_trust_db_of_an_older_release_is_refused(device: tuple[Path, Release, Release], key: SigningKey) -> None:
    slots_dir, old, _new = device
    _overwrite_trust_db(slots_dir, "b", old.trust_db, fix_manifest=True)
    with pytest.raises(TrustDatabaseError, match="rollback refused"):
        load_active(slots_dir, [key.verify_key], PRODUCT)


@pytest.mark.req("SM-6")
def test_trust_db_for_another_product_is_refused(
    tmp_path: Path, device: tuple[Path, Release, Release], key: SigningKey
) -> None:
    slots_dir, _old, _new = device
    foreign = _build(tmp_path, "1.1.0", 2, product="ventilator")
    _overwrite_trust_db(slots_dir, "b", foreign.trust_db, fix_manifest=True)
    with pytest.raises(TrustDatabaseError, match="for product 'ventilator'"):
        load_active(slots_dir, [key.verify_key], PRODUCT)


@pytest.mark.req("RL-3")
def test_tampered_trust_db_entry_is_refused(device: tuple[Path, Release, Release], key: SigningKey) -> None:
    slots_dir, _old, new = device
    envelope = json.loads(new.trust_db)
    text = base64.b64decode(envelope["payload"]).decode()
    real = read_unverified(new.trust_db).entries[0].sha256
    envelope["payload"] = base64.b64encode(text.replace(real, "cd" * 32).encode()).decode()
    _overwrite_trust_db(slots_dir, "b", json.dumps(envelope).encode(), fix_manifest=True)
    with pytest.raises(TrustDatabaseError, match="unsigned or not signed by a trusted key"):
        load_active(slots_dir, [key.verify_key], PRODUCT)


@pytest.mark.req("RL-3")
def test_installer_refuses_a_bundle_whose_trust_db_is_unsigned(tmp_path: Path, key: SigningKey) -> None:
    from medsec.updates.release import build_release

    old = _build(tmp_path, "1.0.0", 1)
    slots_dir = tmp_path / "device/slots"
    _install(slots_dir, old, "a", key)
    unsigned = json.dumps(read_unverified(old.trust_db).to_document()).encode()
    info = build_release(
        _payload(tmp_path / "evil-payload", "1.1.0"), PRODUCT, "1.1.0", 2, [HARDWARE], None, "", "", [], 0, True,
        tmp_path / "evil.tar", trust_db_json=unsigned,
    )  # fmt: skip
    installer = DirectoryInstaller(DirectorySlots(slots_dir), trustdb_check=installer_check([key.verify_key]))
    with pytest.raises(BundleRejected, match="trust database is refused"):
        installer.install(info.path, info.assigned_target(), "b")
    assert DirectorySlots(slots_dir).release("b") is None
    assert load_active(slots_dir, [key.verify_key], PRODUCT).version == "1.0.0"


def test_release_build_refuses_a_prepared_trust_db_for_another_release(tmp_path: Path, key: SigningKey) -> None:
    old = _build(tmp_path, "1.0.0", 1)
    prepared = tmp_path / "prepared.json"
    prepared.write_bytes(old.trust_db)
    result = CliRunner().invoke(
        app,
        [
            "release", "build", str(_payload(tmp_path / "p2", "1.1.0")), "--product", PRODUCT, "--version", "1.1.0",
            "--counter", "2", "--hardware-id", HARDWARE, "--out", str(tmp_path / "r.tar"),
            "--trust-db", str(prepared), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "counter 1, the release is infusion-pump 1.1.0 counter 2" in json.loads(result.stdout)["detail"]
    assert not (tmp_path / "r.tar").exists()
