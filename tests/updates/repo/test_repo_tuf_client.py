"""The stock tuf.ngclient.Updater against our repository: publish, root rotation, key revocation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from repo_support import PRODUCT, Ceremony, StaticServer, make_bundle, updater_for
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Timestamp

from medsec.updates.keys import revoke_key, rotate_root
from medsec.updates.metadata_files import write_metadata
from medsec.updates.release import publish, read_bundle, sign_release
from medsec.updates.repository import ImageRepository, OnlineSigners

pytestmark = pytest.mark.req("SM-6")


@pytest.mark.req("SM-1")
def test_stock_client_downloads_published_target_through_hash_bins(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "1.1.0", 7)
    signed = sign_release(repo, bundle.path, ceremony.targets)
    assert signed.bin.startswith("bins-") and len(signed.bin) == len("bins-0")
    published = publish(repo, bundle.path, ceremony.online)
    assert published.target_path.name == f"{bundle.sha256}.release.tar"

    updater = updater_for(static_server, PRODUCT, tmp_path / "device", repo.roots.path(1).read_bytes())
    updater.refresh()
    info = updater.get_targetinfo("infusion-pump/1.1.0/release.tar")
    assert info is not None
    assert info.custom["medsec"]["release_counter"] == 7
    assert info.custom["medsec"]["hardware_ids"] == ["ic300-rev-b"]
    assert info.custom["medsec"]["notes"]["ja"].startswith("投与量")
    path = updater.download_target(info)
    assert Path(path).read_bytes() == bundle.path.read_bytes()
    assert read_bundle(Path(path)).manifest["release_counter"] == 7


def test_client_with_only_root_v1_follows_root_rotation(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    first_root = repo.roots.path(1).read_bytes()
    old = ceremony.root
    newcomer = CryptoSigner.generate_ed25519()
    # root-3 leaves; a new officer joins. Old threshold (2 of root-1..3) and new (2 of 1, 2, new) sign.
    new_keys = [old[0].public_key, old[1].public_key, newcomer.public_key]
    md = rotate_root(repo, new_keys, old_signers=old[:2], new_signers=[old[0], newcomer])
    assert md.signed.version == 2
    assert old[2].public_key.keyid not in md.signed.roles["root"].keyids

    bundle = make_bundle(tmp_path, "1.2.0", 8)
    sign_release(repo, bundle.path, ceremony.targets)
    publish(repo, bundle.path, ceremony.online)

    updater = updater_for(static_server, PRODUCT, tmp_path / "device", first_root)
    updater.refresh()
    trusted = json.loads((tmp_path / "device" / "metadata" / "root.json").read_bytes())
    assert trusted["signed"]["version"] == 2
    info = updater.get_targetinfo("infusion-pump/1.2.0/release.tar")
    assert info is not None
    updater.download_target(info)


def test_root_rotation_refuses_too_few_old_signatures(repo: ImageRepository, ceremony: Ceremony) -> None:
    from medsec.updates.errors import KeyCeremonyError

    newcomer = CryptoSigner.generate_ed25519()
    with pytest.raises(KeyCeremonyError, match="previous root"):
        rotate_root(repo, [newcomer.public_key], old_signers=ceremony.root[:1], new_signers=[newcomer], threshold=1)
    assert repo.roots.versions() == [1]


def test_revoked_timestamp_key_is_refused_by_the_client(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    first_root = repo.roots.path(1).read_bytes()
    compromised = ceremony.online.timestamp
    replacement = CryptoSigner.generate_ed25519()
    result = revoke_key(
        repo,
        role="timestamp",
        compromised_keyid=compromised.public_key.keyid,
        replacement=replacement,
        root_signers=ceremony.root[:2],
    )
    assert result.root_version == 2 and result.resigned == ("timestamp",)
    root2 = repo.root().signed
    assert root2.roles["timestamp"].keyids == [replacement.public_key.keyid]

    # The repository as published now verifies...
    updater_for(static_server, PRODUCT, tmp_path / "d1", first_root).refresh()

    # ...and a newer timestamp forged with the stolen key does not.
    forged = Metadata[Timestamp].from_bytes((repo.metadata_dir / "timestamp.json").read_bytes())
    forged.signed.version += 100
    forged.sign(compromised)
    write_metadata(repo.metadata_dir / "timestamp.json", forged)
    with pytest.raises(tuf_exc.UnsignedMetadataError):
        updater_for(static_server, PRODUCT, tmp_path / "d2", first_root).refresh()


def test_revoked_targets_key_resigns_targets_and_bins(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "1.1.0", 7)
    sign_release(repo, bundle.path, ceremony.targets)
    publish(repo, bundle.path, ceremony.online)
    first_root = repo.roots.path(1).read_bytes()
    client = tmp_path / "device"
    updater_for(static_server, PRODUCT, client, first_root).refresh()

    replacement = CryptoSigner.generate_ed25519()
    result = revoke_key(
        repo,
        role="targets",
        compromised_keyid=ceremony.targets.public_key.keyid,
        replacement=replacement,
        root_signers=ceremony.root[1:],
        online=ceremony.online,
    )
    assert "bins-0" in result.resigned and result.resigned[-1] == "timestamp"

    updater = updater_for(static_server, PRODUCT, client, first_root)
    updater.refresh()
    info = updater.get_targetinfo("infusion-pump/1.1.0/release.tar")
    assert info is not None
    updater.download_target(info)

    # The old targets key can no longer add releases.
    from medsec.updates.errors import KeyCeremonyError

    with pytest.raises(KeyCeremonyError):
        sign_release(repo, make_bundle(tmp_path, "1.2.0", 8).path, ceremony.targets)
    sign_release(repo, make_bundle(tmp_path, "1.2.0", 8).path, replacement)


def test_revoked_snapshot_key_resigns_snapshot(
    repo: ImageRepository, ceremony: Ceremony, static_server: StaticServer, tmp_path: Path
) -> None:
    replacement = CryptoSigner.generate_ed25519()
    revoke_key(
        repo,
        role="snapshot",
        compromised_keyid=ceremony.online.snapshot.public_key.keyid,
        replacement=replacement,
        root_signers=ceremony.root[:2],
        online=ceremony.online,
    )
    snapshot = repo.snapshot()
    assert list(snapshot.signatures) == [replacement.public_key.keyid]
    updater_for(static_server, PRODUCT, tmp_path / "d", repo.roots.path(1).read_bytes()).refresh()
    refreshed = repo.refresh(
        OnlineSigners(snapshot=replacement, timestamp=ceremony.online.timestamp), datetime.now(UTC)
    )
    assert refreshed.snapshot_version is None
