"""Attacks on the image repository, each refused by the stock client with its specific error (SM-6)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from repo_support import PRODUCT, Ceremony, StaticServer, make_bundle, updater_for
from tuf.api import exceptions as tuf_exc
from tuf.ngclient import Updater

from medsec.updates.errors import ReleaseCounterNotIncreasing, ReleaseError
from medsec.updates.metadata_files import write_metadata
from medsec.updates.release import ReleaseInfo, publish, sign_release
from medsec.updates.repository import ImageRepository
from medsec.updates.roots import next_root

pytestmark = pytest.mark.req("SM-6")
NAME = "infusion-pump/1.1.0/release.tar"


def _released(repo: ImageRepository, ceremony: Ceremony, tmp_path: Path) -> ReleaseInfo:
    bundle = make_bundle(tmp_path, "1.1.0", 7)
    sign_release(repo, bundle.path, ceremony.targets)
    publish(repo, bundle.path, ceremony.online)
    return bundle


def _device(static_server: StaticServer, repo: ImageRepository, tmp_path: Path, name: str = "device") -> Updater:
    return updater_for(static_server, PRODUCT, tmp_path / name, repo.roots.path(1).read_bytes())


def test_tampered_target_bytes_are_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    bundle = _released(repo, ceremony, tmp_path)
    target = repo.target_path(repo.published_targets()[NAME])
    data = bytearray(target.read_bytes())
    data[600] ^= 0x01  # inside manifest.json: same length, different bytes
    target.write_bytes(bytes(data))
    updater = _device(static_server, repo, tmp_path)
    info = updater.get_targetinfo(NAME)
    assert info is not None and info.length == bundle.length
    with pytest.raises(tuf_exc.LengthOrHashMismatchError):
        updater.download_target(info)


def test_tampered_bin_metadata_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    _released(repo, ceremony, tmp_path)
    bin_name = repo.bin_for(NAME)
    path = repo.metadata_dir / f"{repo.latest_version(bin_name)}.{bin_name}.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["targets"][NAME]["custom"]["medsec"]["hardware_ids"].append("attacker-board")
    path.write_text(json.dumps(doc))
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        _device(static_server, repo, tmp_path).get_targetinfo(NAME)


def test_tampered_timestamp_is_refused(repo: ImageRepository, static_server: StaticServer, tmp_path: Path) -> None:
    path = repo.metadata_dir / "timestamp.json"
    doc = json.loads(path.read_bytes())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"
    path.write_text(json.dumps(doc))
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        _device(static_server, repo, tmp_path).refresh()


def test_root_signed_below_threshold_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    """One stolen root key (threshold 2) cannot publish a new root."""
    attacker = next_root(repo.root(), datetime.now(UTC))
    attacker.signed.roles["timestamp"].keyids = [ceremony.root[0].public_key.keyid]
    attacker.sign(ceremony.root[0])
    write_metadata(repo.metadata_dir / "2.root.json", attacker)
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        _device(static_server, repo, tmp_path).refresh()


def test_rollback_to_older_metadata_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    _released(repo, ceremony, tmp_path)
    _device(static_server, repo, tmp_path).refresh()  # the device has seen the new state
    (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
    with pytest.raises(tuf_exc.BadVersionNumberError):
        _device(static_server, repo, tmp_path).refresh()


def test_freeze_attack_with_expired_timestamp_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    """A mirror that keeps serving a stale (validly signed) timestamp: the device notices."""
    repo.refresh_timestamp(ceremony.online.timestamp, datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(tuf_exc.ExpiredMetadataError):
        _device(static_server, repo, tmp_path).refresh()


def test_mix_and_match_snapshot_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    """Serving an older, validly signed snapshot under the current name."""
    _released(repo, ceremony, tmp_path)
    current = repo.snapshot().signed.version
    shutil.copy(repo.metadata_dir / "1.snapshot.json", repo.metadata_dir / f"{current}.snapshot.json")
    with pytest.raises(tuf_exc.LengthOrHashMismatchError):
        _device(static_server, repo, tmp_path).refresh()


def test_mix_and_match_bin_is_refused(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    """Serving an older, validly signed bin (without the release) under the current version's name."""
    _released(repo, ceremony, tmp_path)
    bin_name = repo.bin_for(NAME)
    v = repo.snapshot().signed.meta[f"{bin_name}.json"].version
    shutil.copy(repo.metadata_dir / f"1.{bin_name}.json", repo.metadata_dir / f"{v}.{bin_name}.json")
    with pytest.raises(tuf_exc.BadVersionNumberError):
        _device(static_server, repo, tmp_path).get_targetinfo(NAME)


def test_endless_data_target_is_cut_off(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    _released(repo, ceremony, tmp_path)
    target = repo.target_path(repo.published_targets()[NAME])
    with target.open("ab") as f:
        f.write(b"\0" * (4 << 20))
    updater = _device(static_server, repo, tmp_path)
    info = updater.get_targetinfo(NAME)
    assert info is not None
    with pytest.raises(tuf_exc.DownloadLengthMismatchError):
        updater.download_target(info)


def test_endless_data_timestamp_is_cut_off(repo: ImageRepository, static_server: StaticServer, tmp_path: Path) -> None:
    path = repo.metadata_dir / "timestamp.json"
    path.write_bytes(path.read_bytes() + b" " * 100_000)
    with pytest.raises(tuf_exc.DownloadLengthMismatchError):
        _device(static_server, repo, tmp_path).refresh()


def test_release_counter_downgrade_is_refused_by_sign_release(
    repo: ImageRepository, ceremony: Ceremony, tmp_path: Path
) -> None:
    _released(repo, ceremony, tmp_path)
    for version, counter in (("1.2.0", 7), ("1.0.9", 3)):
        with pytest.raises(ReleaseCounterNotIncreasing, match="not greater than 7"):
            sign_release(repo, make_bundle(tmp_path, version, counter).path, ceremony.targets)
    sign_release(repo, make_bundle(tmp_path, "1.2.0", 8).path, ceremony.targets)
    # A signed but unpublished counter counts too.
    with pytest.raises(ReleaseCounterNotIncreasing):
        sign_release(repo, make_bundle(tmp_path, "1.3.0", 8).path, ceremony.targets)


def test_the_same_version_is_never_signed_twice(repo: ImageRepository, ceremony: Ceremony, tmp_path: Path) -> None:
    _released(repo, ceremony, tmp_path)
    other = make_bundle(tmp_path / "again", "1.1.0", 9)
    with pytest.raises(ReleaseError, match="already signed"):
        sign_release(repo, other.path, ceremony.targets)


def test_publish_refuses_a_bundle_that_was_not_signed(
    repo: ImageRepository, ceremony: Ceremony, tmp_path: Path
) -> None:
    signed = make_bundle(tmp_path, "1.1.0", 7)
    sign_release(repo, signed.path, ceremony.targets)
    swapped = make_bundle(tmp_path / "evil", "1.1.0", 7, trust_db=b"{}")
    with pytest.raises(ReleaseError, match="not the bundle that was signed"):
        publish(repo, swapped.path, ceremony.online)
    assert NAME not in repo.published_targets()


def test_director_root_cannot_sign_image_targets(repo: ImageRepository, ceremony: Ceremony, tmp_path: Path) -> None:
    from medsec.updates.errors import KeyCeremonyError

    bundle = make_bundle(tmp_path, "1.1.0", 7)
    with pytest.raises(KeyCeremonyError):
        sign_release(repo, bundle.path, ceremony.director_online["targets"])
    assert repo.signed_targets() == {}
