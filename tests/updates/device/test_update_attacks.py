"""Every attack leaves the device on its current, verified version with a specific error (SM-6, RL-1)."""

from __future__ import annotations

import hashlib
import json
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from medsec.updates.device_errors import (
    AssignmentRejected,
    DirectorImageMismatch,
    DowngradeRefused,
    ManifestMismatch,
    MetadataRejected,
    TargetHashMismatch,
    TargetNotInImageRepository,
    TargetTooLong,
    UnsafeBundlePath,
    WrongHardware,
)
from medsec.updates.device_update import Phase, StepResult
from medsec.updates.slots import DirectorySlots
from medsec.updates.window import MaintenancePolicy

from .device_env import DeviceEnv, release_files, running_release
from .repo_builder import make_bundle, release_custom, target_name

pytestmark = [pytest.mark.req("SM-6"), pytest.mark.req("RL-1")]


def assert_refused(env: DeviceEnv, result: StepResult, error: type[Exception], version: str = "1.0.0") -> None:
    assert result.phase is Phase.FAILED, result
    assert isinstance(result.error, error), result.error
    assert running_release(env.root).version == version
    slots = DirectorySlots(env.root / "slots")
    assert slots.state().trying is None
    downloads = env.paths.downloads_dir
    assert not downloads.exists() or not [p for p in downloads.iterdir() if p.stat().st_size]


def test_tampered_payload_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2)
    stored = env.image.target_file(target.path)
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert_refused(env, env.updater().step(), TargetHashMismatch)


def test_tampered_director_metadata_is_refused(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    path = env.director.meta_dir / "targets.json"
    doc = json.loads(path.read_bytes())
    [entry] = doc["signed"]["targets"].values()
    entry["custom"]["medsec_director"]["release_counter"] = 99
    path.write_text(json.dumps(doc))
    result = env.updater().step()
    assert_refused(env, result, MetadataRejected)
    assert "UnsignedMetadataError" in str(result.error)


def test_tampered_image_metadata_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2)
    bins = env.image.succinct.get_role_for_target(target.path)
    path = env.image.meta_dir / f"{env.image.bins[bins].signed.version}.{bins}.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["targets"][target.path]["length"] += 1
    path.write_text(json.dumps(doc))
    assert_refused(env, env.updater().step(), MetadataRejected)


def test_rollback_to_older_metadata_is_refused(env: DeviceEnv) -> None:
    old_timestamp = (env.image.meta_dir / "timestamp.json").read_bytes()
    env.image.publish()
    assert env.updater().step().phase is Phase.IDLE  # the device has now seen the newer timestamp
    env.release("1.1.0", 2)
    (env.image.meta_dir / "timestamp.json").write_bytes(old_timestamp)
    result = env.updater().step()
    assert_refused(env, result, MetadataRejected)
    assert "BadVersionNumberError" in str(result.error)


def test_release_counter_downgrade_is_refused(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    assert env.updater().step().phase is Phase.COMMITTED
    old = env.image.bins[env.image.succinct.get_role_for_target(target_name("1.0.0"))].signed.targets[
        target_name("1.0.0")
    ]
    env.director.assign(old)
    assert_refused(env, env.updater().step(), DowngradeRefused, version="1.1.0")


def test_director_counter_that_lies_about_an_old_release_is_refused(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    assert env.updater().step().phase is Phase.COMMITTED
    old_name = target_name("1.0.0")
    old = env.image.bins[env.image.succinct.get_role_for_target(old_name)].signed.targets[old_name]
    # A director claiming counter 5 for release 1.0.0 (counter 1) disagrees with the image repository.
    env.director.assign(old, counter=5)
    assert_refused(env, env.updater().step(), DirectorImageMismatch, version="1.1.0")


def test_freeze_attack_with_expired_timestamp_is_refused(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    env.image.publish_snapshot(timestamp_expires=datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1))
    result = env.updater().step()
    assert_refused(env, result, MetadataRejected)
    assert "ExpiredMetadataError" in str(result.error)


def test_endless_data_attack_is_cut_at_the_signed_length(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2)
    env.behaviour.extra_bytes["release.tar"] = 8 * 1024 * 1024
    assert_refused(env, env.updater().step(), TargetTooLong)
    part = env.paths.downloads_dir / f"{target.hashes['sha256']}.release.tar.part"
    assert not part.exists() or part.stat().st_size <= target.length


def test_endless_metadata_is_refused(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    env.behaviour.extra_bytes["timestamp.json"] = 64 * 1024
    assert_refused(env, env.updater().step(), MetadataRejected)


def test_wrong_hardware_id_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, assign=False)
    env.director.assign(target, hardware_id="ic200-rev-a")
    assert_refused(env, env.updater().step(), WrongHardware)


def test_assignment_for_another_serial_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, assign=False)
    env.director.assign(target, serial="IC300-9999")
    assert_refused(env, env.updater().step(), AssignmentRejected)


def test_image_release_for_other_hardware_is_refused(env: DeviceEnv) -> None:
    bundle = make_bundle("1.1.0", 2, release_files("1.1.0"), hardware_ids=("ic200-rev-a",))
    target = env.image.add_target(
        target_name("1.1.0"), bundle.data, release_custom(bundle, hardware_ids=("ic200-rev-a",))
    )
    env.image.publish()
    env.director.assign(target)
    assert_refused(env, env.updater().step(), DirectorImageMismatch)


def test_director_and_image_disagreeing_on_hashes_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, assign=False)
    env.director.assign(target, hashes={"sha256": hashlib.sha256(b"something else").hexdigest()})
    assert_refused(env, env.updater().step(), DirectorImageMismatch)


def test_director_and_image_disagreeing_on_length_is_refused(env: DeviceEnv) -> None:
    target = env.release("1.1.0", 2, assign=False)
    env.director.assign(target, length=target.length + 1)
    assert_refused(env, env.updater().step(), DirectorImageMismatch)


def test_compromised_director_key_alone_cannot_install(env: DeviceEnv) -> None:
    evil = make_bundle("6.6.6", 99, release_files("6.6.6"))
    name = target_name("6.6.6")
    evil_path = env.image.targets_dir / "infusion-pump/6.6.6" / f"{evil.sha256}.release.tar"
    evil_path.parent.mkdir(parents=True)
    evil_path.write_bytes(evil.data)  # on the server, but never signed by the image repository
    env.director.assign(None, name=name, length=len(evil.data), hashes={"sha256": evil.sha256}, counter=99)
    result = env.updater().step()
    assert_refused(env, result, TargetNotInImageRepository)
    assert not any("6.6.6" in path for path, _ in env.behaviour.requests if path.endswith("release.tar"))


def test_compromised_image_online_keys_alone_cannot_install(env: DeviceEnv) -> None:
    # A release signed and published in the image repository but not assigned by the director.
    env.release("1.1.0", 2, assign=False)
    assert env.updater().step().phase is Phase.IDLE
    # The online keys (snapshot, timestamp) cannot add a target: the bins role is signed offline.
    evil = make_bundle("6.6.6", 99, release_files("6.6.6"))
    name = target_name("6.6.6")
    bins = env.image.succinct.get_role_for_target(name)
    path = env.image.meta_dir / f"{env.image.bins[bins].signed.version}.{bins}.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["targets"][name] = {
        "length": len(evil.data),
        "hashes": {"sha256": evil.sha256},
        "custom": release_custom(evil),
    }
    doc["signed"]["version"] += 1
    (env.image.meta_dir / f"{doc['signed']['version']}.{bins}.json").write_text(json.dumps(doc))
    env.image.bins[bins].signed.version += 1
    env.image.snapshot.signed.meta[f"{bins}.json"].version += 1
    env.image.publish_snapshot()
    env.director.assign(None, name=name, length=len(evil.data), hashes={"sha256": evil.sha256}, counter=99)
    result = env.updater().step()
    assert_refused(env, result, MetadataRejected)
    assert running_release(env.root).version == "1.0.0"


def test_path_traversal_in_the_manifest_is_refused(env: DeviceEnv) -> None:
    files = {**release_files("1.1.0"), "../../../etc/evil": (b"owned", 0o755)}
    env.release("1.1.0", 2, files=files)
    assert_refused(env, env.updater().step(), UnsafeBundlePath)
    assert not (env.root / "etc/evil").exists()
    assert not (env.tmp / "etc/evil").exists()


def test_symlink_member_in_the_bundle_is_refused(env: DeviceEnv) -> None:
    link = tarfile.TarInfo("payload/lib/escape")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    env.release("1.1.0", 2, extra_members=[link])
    assert_refused(env, env.updater().step(), UnsafeBundlePath)
    slots = DirectorySlots(env.root / "slots")
    assert slots.release("b") is None
    assert not (env.root / "slots/b/lib/escape").is_symlink()


def test_bundle_with_unlisted_file_is_refused(env: DeviceEnv) -> None:
    extra = tarfile.TarInfo("payload/bin/backdoor")
    extra.size = 4
    env.release("1.1.0", 2, extra_members=[extra])
    result = env.updater().step()
    assert result.phase is Phase.FAILED
    assert "not listed in the manifest" in str(result.error)
    assert running_release(env.root).version == "1.0.0"
    assert DirectorySlots(env.root / "slots").release("b") is None


def test_manifest_that_contradicts_the_signed_target_is_refused(env: DeviceEnv) -> None:
    bundle = make_bundle("1.1.0", 2, release_files("1.1.0"), manifest_changes={"release_counter": 7})
    target = env.image.add_target(target_name("1.1.0"), bundle.data, release_custom(bundle))
    env.image.publish()
    env.director.assign(target)
    assert_refused(env, env.updater().step(), ManifestMismatch)


def test_damaged_bundle_on_disk_is_caught_before_install(env: DeviceEnv) -> None:
    env.release("1.1.0", 2)
    updater = env.updater(policy=MaintenancePolicy())
    assert updater.step().phase is Phase.WAITING_FOR_WINDOW
    assert updater.state.bundle is not None
    bundle = env.root / updater.state.bundle
    with bundle.open("r+b") as f:
        f.seek(100)
        f.write(b"X")
    # The window opens days later; the bundle is checked against the signed hashes again first.
    assert_refused(env, env.updater().step(), TargetHashMismatch)
